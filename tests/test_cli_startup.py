"""`wsss --help` and every `wsss <cmd> --help` load no heavy library (torch, numpy, mlflow, ray, pandas, …):
each command imports what it needs when it runs. Timing is in bench/cli_startup.py, not here."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from wsss.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]

# Each of these costs 0.1–2 s to import; none is needed to print a usage text.
HEAVY = ("torch", "numpy", "scipy", "PIL", "pandas", "matplotlib", "mlflow", "ray", "pydensecrf")

# Runs `wsss ARGV` as main() does and reports the exit status, the output and which heavy modules got loaded.
PROBE = """
import contextlib, io, json, sys
from wsss.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        code = main(sys.argv[1:])
    except SystemExit as exc:
        code = exc.code
heavy = sorted({name.split(".")[0] for name in sys.modules} & set(json.loads(HEAVY)))
print(json.dumps({"code": code, "out": out.getvalue(), "heavy": heavy}))
"""


def command_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and sub-command of the parser: ('data',), ('data', 'synth'), …"""
    paths = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths.append(prefix + (name,))
                paths += command_paths(sub, prefix + (name,))
    return paths


COMMANDS = command_paths(build_parser())


def probe(argv: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = PROBE.replace("json.loads(HEAVY)", repr(list(HEAVY)))
    done = subprocess.run([sys.executable, "-c", code, *argv], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_command_is_found():
    # The walk below must see the whole CLI, or the per-command checks would pass vacuously.
    for expected in [("data", "synth"), ("train",), ("cams",), ("eval",), ("refine",), ("demo",),
                     ("sweep", "plan"), ("sweep", "run"), ("sweep", "status"), ("ui",), ("sync",), ("report",)]:
        assert expected in COMMANDS


@pytest.mark.parametrize("argv", [["--help"], []], ids=["--help", "no-args"])
def test_top_level_help_loads_no_heavy_module(argv):
    result = probe(argv)
    assert result["code"] in (0, None)
    assert "usage: wsss" in result["out"] and "sweep" in result["out"] and "train" in result["out"]
    assert result["heavy"] == []


@pytest.mark.parametrize("command", COMMANDS, ids=lambda path: " ".join(path))
def test_command_help_loads_no_heavy_module(command):
    result = probe([*command, "--help"])
    assert result["code"] == 0
    assert result["out"].startswith(f"usage: wsss {' '.join(command)}")
    assert result["heavy"] == []


@pytest.mark.parametrize("package", ["wsss_core.data", "wsss_core.evaluation", "wsss_core.training",
                                     "wsss_core.tracking"])
def test_lazy_package_exports_resolve(package):
    # Every exported name still imports (the lazy table names the right module) and unknown names still fail.
    module = __import__(package, fromlist=["__all__"])
    for name in module.__all__:
        assert getattr(module, name) is not None, name
    with pytest.raises(AttributeError, match="no_such_name"):
        getattr(module, "no_such_name")
