"""The ``wsss`` command: one entry point, one subcommand module per package area.

Each module listed in ``COMMAND_MODULES`` exposes ``register(subparsers)``, which adds its
subcommand(s) and sets ``func`` on the parsed namespace. User errors (:class:`WsssError`) are
printed as one line and exit with status 2; anything else is a bug and keeps its traceback.

Building the parser imports every command module, so those modules import only the standard library at
their top; torch, numpy, mlflow, ray, pandas… are imported inside the command functions, where they are
used (``wsss --help`` in about the time of a bare interpreter; tests/test_cli_startup.py pins it).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from wsss_core.errors import WsssError

# Order is the order in ``wsss --help``: the pipeline, then sweeps, tracking and analysis.
COMMAND_MODULES = (
    "wsss_core.data.cli",  # wsss data synth
    "wsss_core.training.cli",  # wsss train / wsss cams
    "wsss_core.evaluation.cli",  # wsss eval / wsss refine
    "wsss.demo",  # wsss demo
    "launchers.cli",  # wsss sweep plan|run|status
    "wsss_core.tracking.cli",  # wsss ui / wsss sync
    "wsss.report",  # wsss report
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsss",
        description="Weakly-supervised semantic segmentation experiment sweeps: "
        "train, make CAMs, evaluate every threshold, sweep, track and report.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            # A command area that is not part of this checkout yet; its own import errors still raise.
            if exc.name and name.startswith(exc.name):
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        result = args.func(args)
    except WsssError as exc:
        print(f"wsss {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"wsss {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
