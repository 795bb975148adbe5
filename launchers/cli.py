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


def _positive(kind: type):
    """An argparse type: a number of ``kind`` above 0, else one message saying what is valid."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not value > 0:
            raise argparse.ArgumentTypeError(f"{text!r} is not valid; valid: a number above 0")
        return value

    parse.__name__ = kind.__name__
    return parse


def _check_data(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--check-data", action="store_true",
                        help="decode every listed image and mask of the dataset before anything is submitted "
                        "(truncated files, mask ids outside the classes); by default only their presence is checked")


def add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--launcher", choices=("local", "ray", "slurm"), default=None,
                        help="where trials run (default: the sweep file's launcher.default, else local)")
    parser.add_argument("--address", help="Ray cluster address (default: the sweep file's, else a local cluster)")
    parser.add_argument("--retry-failed", action="store_true", help="rerun trials whose last attempt failed")
    parser.add_argument("--max-concurrent", type=int, help="at most this many trials at once")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///<workdir>/mlflow.db)")
    parser.add_argument("--no-tracking", action="store_true", help="no MLflow; metrics stay in each stage dir")
    wait = parser.add_mutually_exclusive_group()
    wait.add_argument("--wait", dest="wait", action="store_true", default=None,
                      help="block until every trial has an outcome (the default for local, and for Ray without "
                      "--address)")
    wait.add_argument("--no-wait", dest="wait", action="store_false",
                      help="return once every trial is submitted and recorded (the default for Slurm, and for Ray "
                      "given --address)")


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
    _check_data(plan)
    plan.add_argument("--launcher", choices=("local", "ray", "slurm"), default=None,
                      help="also check the resources against this launcher's nodes")
    plan.set_defaults(func=cmd_plan)
    run = sub.add_parser("run", help="run the sweep's trials that are not finished")
    _common(run)
    _check_data(run)
    add_run_options(run)
    run.set_defaults(func=cmd_run)
    status = sub.add_parser("status", help="where each trial is: its record reconciled with the scheduler "
                            "(Slurm or Ray job states and reasons) and the stage store")
    _common(status)
    status.add_argument("--all", action="store_true", help="also list finished trials")
    status.set_defaults(func=cmd_status)
    wait = sub.add_parser("wait", help="block until every trial has an outcome; exit 0 when all finished")
    _common(wait)
    wait.add_argument("--poll", type=_positive(float), default=10.0,
                      help="seconds between looks at the scheduler (default 10)")
    wait.add_argument("--timeout", type=_positive(float), default=None,
                      help="give up after this many seconds (exit 124)")
    wait.set_defaults(func=cmd_wait)
    cancel = sub.add_parser("cancel", help="cancel running or queued trials (all, or those named)")
    _common(cancel)
    cancel.add_argument("trials", nargs="*", metavar="TRIAL", help="trial ids or unique prefixes (default: all); "
                        "give them right after FILE: wsss sweep cancel FILE TRIAL ... --workdir W")
    cancel.set_defaults(func=cmd_cancel)
    logs = sub.add_parser("logs", help="the tail of a trial's job log (Slurm) or rank logs (local)")
    _common(logs)
    logs.add_argument("trial", metavar="TRIAL", help="a trial id or a unique prefix of one")
    logs.add_argument("-n", "--lines", type=_positive(int), default=40, help="how many lines (default 40)")
    logs.set_defaults(func=cmd_logs)
    sweep.set_defaults(func=lambda args: (sweep.print_help(), 2)[1])


def cmd_plan(args: argparse.Namespace) -> int:
    from .plan import format_plan, plan_sweep
    from .spec import load_sweep
    from .backend import get_backend

    spec = load_sweep(args.file, args.overrides, allow_large=args.allow_large, check_data=args.check_data)
    plan = plan_sweep(spec, args.workdir)
    if args.launcher:
        get_backend(args.launcher).check_resources(spec, plan, None)
    print(format_plan(plan, verbose=not args.brief))
    return 0


def options_from_args(args: argparse.Namespace, default_launcher: str) -> SubmitOptions:
    from .submit import SubmitOptions

    return SubmitOptions(launcher=args.launcher or default_launcher, retry_failed=args.retry_failed,
                         tracking_uri=args.tracking_uri, tracking=not args.no_tracking, address=args.address,
                         max_concurrent=args.max_concurrent, wait=getattr(args, "wait", None))


def run_and_summarise(args: argparse.Namespace, file: str) -> tuple[Any, Any]:
    """Load, run and summarise a sweep (`wsss sweep run`, `wsss demo`); failures go to stderr. SIGTERM and
    SIGHUP stop the submitter like Ctrl-C: its local workers are stopped and their trials recorded as
    interrupted, so a rerun resumes them from their checkpoints (see :func:`stop_on_signals`)."""
    from .spec import load_sweep
    from .follow import format_views, reconcile
    from .submit import run_sweep, summary_line

    spec = load_sweep(file, args.overrides, allow_large=getattr(args, "allow_large", False),
                      check_data=getattr(args, "check_data", False))
    previous = stop_on_signals()
    try:
        outcome = run_sweep(spec, args.workdir, options_from_args(args, spec.launcher.default))
    finally:
        restore_signals(previous)
    print(summary_line(outcome))
    if outcome.failed:
        print(format_views(reconcile(outcome.plan.trials), spec.name), file=sys.stderr)
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


def _planned(args: argparse.Namespace):
    from .plan import plan_sweep
    from .spec import load_sweep

    spec = load_sweep(args.file, args.overrides, allow_large=args.allow_large)
    return spec, plan_sweep(spec, args.workdir)


def cmd_status(args: argparse.Namespace) -> int:
    from .follow import format_views, reconcile

    spec, plan = _planned(args)
    print(format_views(reconcile(plan.trials), spec.name, show_finished=args.all))
    return 0


def cmd_wait(args: argparse.Namespace) -> int:
    from .follow import close_tracking, format_views, wait

    spec, plan = _planned(args)
    try:
        views = wait(plan.trials, spec.name, sys.stdout, poll_s=args.poll, timeout_s=args.timeout)
    except TimeoutError as exc:
        print(f"wsss sweep wait: {exc}", file=sys.stderr)
        return 124
    ok = all(v.state == "finished" for v in views)
    if not any(v.state == "pending" for v in views):
        close_tracking(plan.trials, ok, sys.stdout)
    if not ok:
        print(format_views(views, spec.name), file=sys.stderr)
    return 0 if ok else 1


def cmd_cancel(args: argparse.Namespace) -> int:
    from .follow import cancel, select

    spec, plan = _planned(args)
    chosen = select(plan.trials, args.trials, "wsss sweep cancel")
    count = cancel(chosen, sys.stdout, every=plan.trials)
    print(f"[cancel] {spec.name}: {count} trial(s) cancelled; `wsss sweep run --retry-failed` reruns them")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from .follow import select, show_logs

    _, plan = _planned(args)
    return show_logs(select(plan.trials, [args.trial], "wsss sweep logs")[0], args.lines)
