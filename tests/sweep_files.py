"""Test helper: tiny sweep files for tests and benchmarks, seconds per trial on a CPU core, every stage real."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

TINY_BASE: dict[str, Any] = {
    "data": {"crop": 32, "num_workers": 0},
    "model": {"backbone": "small", "backbone_options": {"widths": [8, 16, 16], "output_stride": 4}},
    "train": {"epochs": 1, "max_steps": 3, "batch_size": 4, "device": "cpu", "checkpoint_every": 1,
              "log_every": 1},
    "cams": {"scales": [1.0], "flip": False},
}
TINY_DATA = {"seed": 0, "n_train": 12, "n_aug_extra": 4, "n_val": 4, "size": 40, "num_classes": 3}


def tiny_sweep(name: str = "tiny", axes: dict[str, Any] | None = None, **sections: Any) -> dict[str, Any]:
    """A sweep mapping: the tiny base, synthetic data, one baseline, no add-on, seed 0 unless ``axes`` says."""
    out: dict[str, Any] = {
        "name": name,
        "synthetic_data": dict(TINY_DATA),
        "base": yaml.safe_load(yaml.safe_dump(TINY_BASE)),
        "axes": {"baseline": ["cam"], "addons": {"none": []}, "seed": [0], "thresholds": [0.1, 0.2, 0.3],
                 **(axes or {})},
        "resources": {"cpus_per_task": 1, "mem_gb": 1, "time_min": 5},
    }
    out.update(sections)
    return out


def write_sweep(path: str | Path, sweep: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


def wsss_cli(*args: str, timeout: float = 300):
    """The real `wsss` command in its own process (a submitter that exits, as on a login node); the
    repository root is its working directory and it gets this process's environment (SLURM_CONF, ...)."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    return subprocess.run([sys.executable, "-m", "wsss.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=repo, env=dict(os.environ))


def records_by_seed(workdir: str | Path, sweep: str) -> dict[int, dict[str, Any]]:
    """A sweep's trial records keyed by seed."""
    from wsss_core.pipeline import layout

    return {r["seed"]: r for r in layout.list_trials(Path(workdir), sweep)}
