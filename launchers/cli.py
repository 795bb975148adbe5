"""``wsss sweep plan|run|status FILE``: a sweep file fanned out to local processes, Ray or Slurm."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .submit import SubmitOptions

# The sweep machinery (run config → every baseline → torch) is imported inside the commands: `wsss --help`
# stays fast.


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="sweep YAML (e.g. sweeps/demo.yaml)")
    parser.add_argument("--workdir", help="work dir holding the stage store and sweep records "
                        "(default: $WSSS_WORKDIR or ./runs)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a sweep file value, e.g. --set base.train.max_steps=5 (repeatable)")
    parser.add_argument("--allow-large", action="store_true",
                        help="accept a grid of more than 10,000 trials (refused by default: a typo in an axis)")


def add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--launcher", choices=("local", "ray", "slurm"), default=None,
                        help="where trials run (default: the sweep file's launcher.default, else local)")
    parser.add_argument("--address", help="Ray cluster address (default: the sweep file's, else a local cluster)")
    parser.add_argument("--retry-failed", action="store_true", help="rerun trials whose last attempt failed")
    parser.add_argument("--max-concurrent", type=int, help="at most this many trials at once")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///<workdir>/mlflow.db)")
    parser.add_argument("--no-tracking", action="store_true", help="no MLflow; metrics stay in each stage dir")


def register(subparsers: argparse._SubParsersAction) -> None:
    sweep = subparsers.add_parser("sweep", help="plan, run and follow a sweep of trials",
                                  description="A sweep file fans baselines x add-on settings x seeds (x any run "
                                  "config key) out to trials; thresholds are evaluated in one pass per trial. "
                                  "Stages are cached by content key in <workdir>/stages, so reruns and grown "
                                  "sweeps only run what is new.")
    sub = sweep.add_subparsers(dest="sweep_command", metavar="ACTION")
    plan = sub.add_parser("plan", help="show trials, stages to run vs done and a cost estimate; submits nothing")
    _common(plan)
    plan.add_argument("--brief", action="store_true", help="only the totals, not every trial")
    plan.add_argument("--launcher", choices=("local", "ray", "slurm"), default=None,
                      help="also check the resources against this launcher's nodes")
    plan.set_defaults(func=cmd_plan)
    run = sub.add_parser("run", help="run the sweep's trials that are not finished")
    _common(run)
    add_run_options(run)
    run.set_defaults(func=cmd_run)
    status = sub.add_parser("status", help="counts per state, running trials, each failure's error")
    _common(status)
    status.set_defaults(func=cmd_status)
    sweep.set_defaults(func=lambda args: (sweep.print_help(), 2)[1])


def cmd_plan(args: argparse.Namespace) -> int:
    from .plan import format_plan, plan_sweep
    from .spec import load_sweep
    from .backend import get_backend

    spec = load_sweep(args.file, args.overrides, allow_large=args.allow_large)
    plan = plan_sweep(spec, args.workdir)
    if args.launcher:
        get_backend(args.launcher).check_resources(spec, plan, None)
    print(format_plan(plan, verbose=not args.brief))
    return 0


def options_from_args(args: argparse.Namespace, default_launcher: str) -> SubmitOptions:
    from .submit import SubmitOptions

    return SubmitOptions(launcher=args.launcher or default_launcher, retry_failed=args.retry_failed,
                         tracking_uri=args.tracking_uri, tracking=not args.no_tracking, address=args.address,
                         max_concurrent=args.max_concurrent)


def run_and_summarise(args: argparse.Namespace, file: str) -> tuple[Any, Any]:
    """Load, run and summarise a sweep (`wsss sweep run`, `wsss demo`); failures go to stderr. SIGTERM and
    SIGHUP stop the submitter like Ctrl-C: its local workers are stopped and their trials recorded as
    interrupted, so a rerun resumes them from their checkpoints (see :func:`stop_on_signals`)."""
    from .spec import load_sweep
    from .records import format_status
    from .submit import run_sweep, summary_line

    spec = load_sweep(file, args.overrides, allow_large=getattr(args, "allow_large", False))
    previous = stop_on_signals()
    try:
        outcome = run_sweep(spec, args.workdir, options_from_args(args, spec.launcher.default))
    finally:
        restore_signals(previous)
    print(summary_line(outcome))
    if outcome.failed:
        print(format_status(outcome.records, spec.name), file=sys.stderr)
    return spec, outcome


class SubmitterStopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP reached the submitting process (a KeyboardInterrupt, so every cleanup path that
    handles Ctrl-C handles it: the local launcher stops its workers)."""


def stop_on_signals() -> dict:
    """Turn SIGTERM and SIGHUP into :class:`SubmitterStopped` (by default they end Python at once, leaving
    the local workers running unsupervised); returns the previous handlers for :func:`restore_signals`."""
    import signal

    def stop(signum, frame):  # noqa: ARG001 - the signal handler signature
        raise SubmitterStopped(f"{signal.Signals(signum).name} received")

    return {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}


def restore_signals(previous: dict) -> None:
    import signal

    for sig, handler in previous.items():
        signal.signal(sig, handler)


def cmd_run(args: argparse.Namespace) -> int:
    _, outcome = run_and_summarise(args, args.file)
    return 0 if outcome.ok else 1


def cmd_status(args: argparse.Namespace) -> int:
    from wsss_core.pipeline import layout

    from .plan import plan_sweep
    from .records import format_status
    from .spec import load_sweep

    spec = load_sweep(args.file, args.overrides, allow_large=args.allow_large)
    plan = plan_sweep(spec, args.workdir)
    records = []
    for trial in plan.trials:
        record = layout.read_trial(trial.record_path)
        if record is None:
            record = {"trial_id": trial.trial_id, "state": "pending"}
        records.append(record)
    print(format_status(records, spec.name))
    return 0
