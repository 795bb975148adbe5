"""``wsss eval`` (score CAMs at every threshold, or label PNGs) and ``wsss refine`` (CRF pseudo-labels)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError
from .protocols import DEFAULT_PROTOCOL, PRED_255_CHOICES, PROTOCOLS

# The evaluator (numpy, scipy, pydensecrf) is imported inside the commands: `wsss --help` stays fast.


def register(subparsers) -> None:
    _register_eval(subparsers)
    _register_refine(subparsers)


def _register_eval(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="score CAMs at every background threshold in one pass (or label PNGs)",
        description="Score a CAM store at every background threshold in one pass (mIoU, precision, recall, "
                    "robustness, boundary F), or a folder of label PNGs. Writes eval.json, eval.csv and "
                    "threshold_curve.png.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--cams", type=Path, help="CAM store folder (the destination with --import-format)")
    source.add_argument("--labels", type=Path, help="folder of <id>.png label maps (e.g. from wsss refine)")
    p.add_argument("--data", type=Path, required=True, help="dataset root in the VOC layout")
    p.add_argument("--split", required=True, help="split name: <data>/ImageSets/Segmentation/<split>.txt")
    p.add_argument("--thresholds", default=None,
                   help="START:STOP:STEP or comma list (default 0:0.95:0.01, 96 values)")
    p.add_argument("--boundary-at", default=None,
                   help="thresholds for the boundary F-score, comma list; 'best' allowed; 'none' to skip "
                        "(default best,0.25)")
    _add_protocol_flags(p)
    p.add_argument("--num-classes", type=int, default=None,
                   help="foreground classes C (default: the store's, or the length of cls_labels.npy vectors)")
    p.add_argument("--workers", type=int, default=1, help="processes (the image list is sharded)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default <source>/eval)")
    p.add_argument("--import-format", choices=("irn", "seam"), default=None,
                   help="first import reference CAM files from --import-dir into the --cams store")
    p.add_argument("--import-dir", type=Path, default=None, help="folder of reference <id>.npy CAM dicts")
    p.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_cams, evaluate_label_dir
    from .ground_truth import num_foreground_classes
    from .report import format_table, write_eval_outputs
    from .threshold_sweep import parse_thresholds

    if (args.import_format is None) != (args.import_dir is None):
        raise ConfigError("--import-format and --import-dir go together")
    if args.import_format and args.cams is None:
        raise ConfigError("--import-format needs --cams: the store to import into")
    if args.import_format:
        from .importers import import_cams

        num_classes = args.num_classes or num_foreground_classes(args.data)
        if num_classes is None:
            raise ConfigError(f"{args.data}: no cls_labels.npy to read the number of classes from; "
                              "pass --num-classes")
        import_cams(args.import_dir, args.import_format, args.cams, num_classes)
    thresholds = parse_thresholds(args.thresholds) if args.thresholds else None
    if args.cams is not None:
        result = evaluate_cams(args.cams, args.data, args.split, thresholds=thresholds,
                               num_classes=args.num_classes, boundary_thresholds=_boundary_at(args.boundary_at),
                               pred_255=args.pred_255, workers=args.workers, protocol=args.protocol)
    else:
        if args.thresholds:
            raise ConfigError("--thresholds applies to --cams only: label PNGs have no threshold")
        result = evaluate_label_dir(args.labels, args.data, args.split, num_classes=args.num_classes,
                                    pred_255=args.pred_255, boundary=args.boundary_at != "none",
                                    workers=args.workers, protocol=args.protocol)
    out = args.out or (args.cams if args.cams is not None else args.labels) / "eval"
    paths = write_eval_outputs(result, out)
    print(format_table(result))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _add_protocol_flags(p) -> None:
    names = ", ".join(f"{n} ({PROTOCOLS[n].reference})" for n in PROTOCOLS)
    p.add_argument("--protocol", choices=tuple(PROTOCOLS), default=DEFAULT_PROTOCOL,
                   help=f"scoring conventions of one reference (default {DEFAULT_PROTOCOL}): {names}")
    p.add_argument("--pred-255", choices=PRED_255_CHOICES, default=None,
                   help="label PNGs: how a predicted 255 counts (default: the protocol's; irn: background, "
                        "seam/hfpl: wrong; protocol project: wrong or ignore)")


def _boundary_at(spec: str | None):
    if spec is None:
        return None
    if spec.strip().lower() == "none":
        return []
    return [item.strip() for item in spec.split(",") if item.strip()]


_CRF_FLAGS = ("gaussian_sxy", "gaussian_compat", "bilateral_sxy", "bilateral_srgb", "bilateral_compat", "iterations")


def _register_refine(subparsers) -> None:
    p = subparsers.add_parser(
        "refine", help="dense-CRF pseudo-labels from CAMs (AMN confident seeds or SEAM/HFPL probabilities)",
        description="Dense-CRF pseudo-labels from a CAM store, written as VOC palette PNGs. Defaults are the "
                    "references': confident (t_fg 0.30, t_bg 0.05, gt_prob 0.7, bilateral sxy 50 srgb 5) or "
                    "probability (alpha 1, bilateral sxy 80 srgb 13); gaussian sxy 3 compat 3, bilateral "
                    "compat 10, 10 iterations.")
    p.add_argument("--cams", type=Path, required=True, help="CAM store folder")
    p.add_argument("--data", type=Path, required=True, help="dataset root in the VOC layout (JPEGImages)")
    p.add_argument("--split", required=True)
    p.add_argument("--out", type=Path, required=True, help="folder for <id>.png labels")
    p.add_argument("--mode", choices=("confident", "probability"), default="confident")
    p.add_argument("--fg-threshold", type=float, help="confident: t_fg (default 0.30)")
    p.add_argument("--bg-threshold", type=float, help="confident: t_bg (default 0.05)")
    p.add_argument("--gt-prob", type=float, help="confident: unary certainty (default 0.7)")
    p.add_argument("--alpha", type=float, help="probability: background = (1 - max)^alpha (default 1)")
    for name in _CRF_FLAGS:
        p.add_argument("--" + name.replace("_", "-"), type=int if name == "iterations" else float,
                       help="CRF parameter of the chosen mode")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--overwrite", action="store_true", help="redo labels already in --out")
    p.add_argument("--eval", action="store_true", help="score the labels afterwards (as wsss eval --labels)")
    _add_protocol_flags(p)
    p.set_defaults(func=run_refine)


def run_refine(args: argparse.Namespace) -> int:
    from ..config import from_dict
    from .cam_store import CamStore
    from .crf import refine_cams, RefineConfig
    from .evaluate import evaluate_label_dir
    from .report import format_table, write_eval_outputs

    settings = {"mode": args.mode}
    for name in ("fg_threshold", "bg_threshold", "gt_prob", "alpha"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    crf = {name: getattr(args, name) for name in _CRF_FLAGS if getattr(args, name) is not None}
    if crf:
        defaults = RefineConfig()
        base = defaults.confident_crf if args.mode == "confident" else defaults.probability_crf
        settings[f"{args.mode}_crf"] = {**base.__dict__, **crf}
    cfg = from_dict(RefineConfig, settings, "wsss refine")
    summary = refine_cams(args.cams, args.data, args.split, args.out, cfg, workers=args.workers,
                          overwrite=args.overwrite)
    print(f"refine ({cfg.mode}): {summary['written']} written, {summary['skipped']} already present "
          f"-> {summary['out_dir']}")
    if args.eval:
        result = evaluate_label_dir(args.out, args.data, args.split, num_classes=CamStore(args.cams).num_classes,
                                    pred_255=args.pred_255, protocol=args.protocol, workers=args.workers)
        write_eval_outputs(result, args.out / "eval")
        print(format_table(result))
    return 0
