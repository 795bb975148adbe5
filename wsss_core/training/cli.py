"""``wsss train`` and ``wsss cams``: the training recipe and CAM generation from the command line.

The config and launcher (torch, every baseline) are imported inside the commands: ``wsss --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import ConfigError


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="run config YAML (default: the built-in demo config)")
    parser.add_argument("--nproc", type=int, default=1, help="local DDP processes (gloo on CPU)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.epochs=2 (repeatable)")


def register(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser("train", help="train a baseline (+ add-ons) into a run dir",
                                  description="Train a CAM network. The run dir holds config.yaml, "
                                  "checkpoints/, status.json and metrics.jsonl.")
    _common(train)
    train.add_argument("--run-dir", help="output folder (default: runs/train-<training key>)")
    train.add_argument("--resume", choices=("auto", "never"), default="auto",
                       help="auto: continue from the run dir's last checkpoint (default); never: start over")
    train.set_defaults(func=run_train)

    cams = subparsers.add_parser("cams", help="make and score CAMs with a trained run",
                                 description="Multi-scale x flip CAMs of the config's cams.split into "
                                 "<run-dir>/cams, scored over every threshold into <run-dir>/eval.")
    _common(cams)
    cams.add_argument("--run-dir", required=True, help="the training run dir")
    cams.add_argument("--checkpoint", help="a reference's released trained weights (.pth) to run instead of a "
                      "trained model: imported into <run-dir>/checkpoints first (with --checkpoint-format)")
    cams.add_argument("--checkpoint-format", choices=("irn", "seam", "amn"),
                      help="irn: IRN resnet50_cam (cam on resnet50); seam: SEAM resnet38_SEAM (seam on resnet38d); "
                      "amn: AMN resnet50_amn (amn on resnet50)")
    cams.set_defaults(func=run_cams)


def run_train(args: argparse.Namespace) -> int:
    from .config import load_run_config, stage_key
    from .launch import launch_local

    cfg = load_run_config(args.config, args.overrides)
    run_dir = Path(args.run_dir or f"runs/train-{stage_key(cfg)}")
    summary = launch_local("train", cfg, run_dir, args.nproc, resume=args.resume)
    print(json.dumps(summary, indent=2))
    return 0


def run_cams(args: argparse.Namespace) -> int:
    from .config import load_run_config
    from .launch import launch_local

    run_dir = Path(args.run_dir)
    config = args.config
    if args.checkpoint or args.checkpoint_format:  # a reference's released weights instead of a trained run
        from .reference_import import import_reference_run

        cfg = import_reference_run(args.checkpoint, args.checkpoint_format, run_dir, config, args.overrides)
    else:
        if config is None:
            config = run_dir / "config.yaml"  # the resolved config `wsss train` wrote
            if not config.is_file():
                raise ConfigError(f"{run_dir}: no config.yaml; pass the run's CONFIG or train into this run dir "
                                  "first")
        cfg = load_run_config(config, args.overrides)
    summary = launch_local("make_cams", cfg, run_dir, args.nproc)
    print(json.dumps(summary, indent=2))
    return 0
