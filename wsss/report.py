"""``wsss report SWEEP``: the ablation, robustness and contour tables and plots of a sweep.

Given a sweep file, the report covers exactly that file's trials (after ``--set`` overrides, planned as
``wsss sweep plan`` plans them), so trials left in the work dir by an earlier version of the file do not
enter its tables; given a sweep name, every recorded trial of that sweep. It lives in the ``wsss`` package
because it uses both the planner (launchers) and the tables (analysis).
"""

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
    parser.add_argument("sweep", help="a sweep YAML file (exactly its trials are reported), or a sweep name "
                                      "(every recorded trial of that sweep)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a sweep file value, as for `wsss sweep plan` (repeatable)")
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


def _is_sweep_file(spec: str) -> bool:
    path = Path(spec)
    return path.suffix in (".yaml", ".yml") or path.is_file()


def run_report(args: argparse.Namespace) -> int:
    from wsss_core.pipeline.layout import resolve_workdir

    from analysis.report import build_report

    workdir = resolve_workdir(args.workdir)
    trial_ids = None
    if _is_sweep_file(args.sweep):
        from launchers.plan import plan_sweep
        from launchers.spec import load_sweep

        try:
            plan = plan_sweep(load_sweep(args.sweep, args.overrides, allow_large=True), workdir)
        except ConfigError as exc:
            raise ConfigError(f"{exc}\n(the report plans the sweep file to know its trials; to report every "
                              f"recorded trial without planning, pass the sweep name instead of the file)") from None
        name, trial_ids = plan.spec.name, [t.trial_id for t in plan.trials]
    elif args.overrides:
        raise ConfigError(f"--set needs a sweep file to override; {args.sweep!r} is a sweep name")
    else:
        name = args.sweep
    report = build_report(name, workdir, source=args.source, tracking_uri=args.tracking_uri,
                          fixed_threshold=args.fixed_threshold, out_dir=args.out, trial_ids=trial_ids)
    trials = report["trials"]
    print(f"sweep {name}: {len(trials)} trials from {args.source}")
    print(report["text"])
    print(f"tables and plots in {report['out_dir']}", file=sys.stderr)
    return 0
