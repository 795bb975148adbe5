"""``wsss report SWEEP``: the ablation, robustness and contour tables and plots of a sweep."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wsss_core.errors import ConfigError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "report", help="ablation / robustness / contour tables and plots of a sweep",
        description="Build a sweep's tables (Markdown, LaTeX, CSV) and plots from its trial records or from "
                    "MLflow, and print the ablation table.")
    parser.add_argument("sweep", help="sweep name, or a sweep YAML file (its `name:` is used)")
    parser.add_argument("--workdir", type=Path, default=None, help="work dir (default $WSSS_WORKDIR or ./runs)")
    parser.add_argument("--from", dest="source", choices=("records", "mlflow"), default="records",
                        help="read trial records + eval.json (default) or the MLflow runs")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: the work dir's SQLite store); with --from mlflow")
    parser.add_argument("--fixed-threshold", type=float, default=0.25,
                        help="the fixed background threshold of the second mIoU column (default 0.25)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default <workdir>/sweeps/<sweep>/report)")
    parser.set_defaults(func=run_report)


def sweep_name(spec: str) -> str:
    """A sweep name as given, or the ``name:`` of a sweep YAML file."""
    path = Path(spec)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        from wsss_core.config import load_yaml

        data = load_yaml(path)
        name = data.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{path}: no `name:` key (a non-empty string) to read the sweep name from")
        return name
    return spec


def run_report(args: argparse.Namespace) -> int:
    from wsss_core.pipeline.layout import resolve_workdir

    from .report import build_report

    workdir = resolve_workdir(args.workdir)
    name = sweep_name(args.sweep)
    report = build_report(name, workdir, source=args.source, tracking_uri=args.tracking_uri,
                          fixed_threshold=args.fixed_threshold, out_dir=args.out)
    trials = report["trials"]
    print(f"sweep {name}: {len(trials)} trials from {args.source}")
    print(report["text"])
    print(f"tables and plots in {report['out_dir']}", file=sys.stderr)
    return 0
