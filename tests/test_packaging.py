"""The packaging promises: the conda and pip pins agree, and the console command is wired up."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[\[=<>!~ ]", req, maxsplit=1)[0].lower().replace("_", "-")


def _pins(reqs):
    return {_name(r): r.replace(" ", "") for r in reqs}


def test_environment_yml_has_the_same_pins_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pip_reqs = project["dependencies"] + project["optional-dependencies"]["test"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda_pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    conda_reqs = [r for r in conda_pip if not r.startswith("-e")]
    assert _pins(conda_reqs) == _pins(pip_reqs)
    # every runtime dependency is pinned exactly; torch is the CPU/GPU wheel the machine has
    assert all("==" in r for r in pip_reqs), [r for r in pip_reqs if "==" not in r]
    assert _pins(pip_reqs)["torch"] == "torch==2.13.0"
    assert "torchvision" not in _pins(pip_reqs)


def test_constraints_pin_torch():
    lines = [l.strip() for l in (ROOT / "constraints.txt").read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert "torch==2.13.0" in lines


def test_wsss_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "wsss.cli", "--help"], capture_output=True, text=True, check=True)
    for cmd in ("data", "train", "cams", "eval", "refine", "demo"):
        assert re.search(rf"^\s+{cmd}\b", out.stdout, re.M), f"{cmd!r} missing from wsss --help:\n{out.stdout}"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in readme and "bash scripts/test.sh" in ci
