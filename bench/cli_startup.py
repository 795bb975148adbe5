"""Start-up time of `wsss --help` and of every `wsss <cmd> --help`: median wall time of fresh processes.

    .venv/bin/python bench/cli_startup.py [--runs 7] [--compare REF]

``--compare REF`` also times the checkout of git revision REF (a temporary `git worktree` under /tmp,
removed afterwards), command by command in the same run, so before/after share the machine's load.
Each run is one new interpreter running the CLI's ``main`` (``wsss.cli``; ``wsss_core.cli`` before it
moved) on the given tree (``PYTHONPATH``), as the ``wsss`` console script does; "python (bare)" is the
floor: an interpreter that imports nothing.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHERE = "import importlib, sys; print(importlib.import_module(sys.argv[1]).__file__)"


def cli_module(tree: Path) -> str:
    """The CLI's module in ``tree``: ``wsss.cli``, or ``wsss_core.cli`` in checkouts from before the move."""
    return "wsss.cli" if (tree / "wsss" / "cli.py").is_file() else "wsss_core.cli"


def main_code(tree: Path) -> str:
    return f"import sys; from {cli_module(tree)} import main; sys.exit(main())"


def command_paths() -> list[tuple[str, ...]]:
    """Every (sub-)command of this checkout's CLI, e.g. ('data', 'synth')."""
    sys.path.insert(0, str(ROOT))
    build_parser = importlib.import_module(cli_module(ROOT)).build_parser

    def walk(parser: argparse.ArgumentParser, prefix: tuple[str, ...]) -> list[tuple[str, ...]]:
        out = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    out += [prefix + (name,)] + walk(sub, prefix + (name,))
        return out

    return walk(build_parser(), ())


def run_once(tree: Path, code: str, argv: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *argv], cwd=tree, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{tree}: `wsss {' '.join(argv)}` exited {done.returncode}:\n{done.stderr}")
    return elapsed


def check_tree(tree: Path) -> None:
    """The interpreter must import the CLI from ``tree``, not from the editable install of another checkout."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    where = subprocess.run([sys.executable, "-c", WHERE, cli_module(tree)], cwd=tree, env=env, capture_output=True,
                           text=True, check=True).stdout.strip()
    if not Path(where).resolve().is_relative_to(tree.resolve()):
        raise SystemExit(f"{tree}: {cli_module(tree)} resolves to {where}, not to this tree")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7, help="processes per command (median reported)")
    parser.add_argument("--compare", metavar="REF", help="also time git revision REF (e.g. the commit before)")
    args = parser.parse_args()

    trees: dict[str, Path] = {}
    scratch = None
    if args.compare:
        scratch = Path(tempfile.mkdtemp(prefix="wsss-cli-startup-"))
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(scratch / "tree"), args.compare],
                       check=True, capture_output=True)
        trees[args.compare] = scratch / "tree"
    trees["this tree"] = ROOT
    try:
        for tree in trees.values():
            check_tree(tree)
        rows: list[tuple[str, list[float]]] = []
        floor = [statistics.median(run_once(tree, "pass", []) for _ in range(args.runs)) for tree in trees.values()]
        rows.append(("python (bare)", floor))
        for path in [()] + command_paths():
            argv = [*path, "--help"]
            # Interleave the trees run by run, so a burst of load elsewhere hits both columns alike.
            times: dict[Path, list[float]] = {tree: [] for tree in trees.values()}
            for _ in range(args.runs):
                for tree in trees.values():
                    times[tree].append(run_once(tree, main_code(tree), argv))
            rows.append(("wsss " + " ".join(argv), [statistics.median(times[t]) for t in trees.values()]))
            print(f"  {rows[-1][0]}: " + ", ".join(f"{v:.3f} s" for v in rows[-1][1]), file=sys.stderr)
    finally:
        if scratch is not None:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(scratch / "tree")],
                           check=False, capture_output=True)
            shutil.rmtree(scratch, ignore_errors=True)

    print(f"median of {args.runs} fresh processes per command, seconds")
    print("| command | " + " | ".join(trees) + " |")
    print("|---|" + "---:|" * len(trees))
    for name, values in rows:
        print(f"| `{name}` | " + " | ".join(f"{v:.3f}" for v in values) + " |")


if __name__ == "__main__":
    main()
