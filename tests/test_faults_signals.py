"""Fault suite, signals: SIGTERM (or SIGHUP) to `wsss sweep run` stops its local workers with it (none is
left running unsupervised), records the trial as interrupted, and a rerun claims it at once and resumes its
training from the last checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sweep_files import tiny_sweep, write_sweep
from wsss_core.pipeline import layout

REPO = Path(__file__).resolve().parents[1]


def _worker_pids(spec_dir: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "launchers.worker" in cmdline and str(spec_dir) in cmdline:
            pids.append(int(entry.name))
    return pids


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_signal_to_the_submitter_stops_its_workers_and_a_rerun_resumes(tmp_path, sig):
    sweep = tiny_sweep("sig")
    sweep["base"]["train"].update({"epochs": 100, "max_steps": 400, "checkpoint_every": 25, "log_every": 25})
    path = write_sweep(tmp_path / "s.yaml", sweep)
    workdir = tmp_path / "work"
    command = [sys.executable, "-m", "wsss.cli", "sweep", "run", str(path), "--workdir", str(workdir),
               "--no-tracking"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "WSSS_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    spec_dir = layout.sweep_dir(workdir, "sig") / "specs"
    deadline = time.time() + 240
    checkpoint = None
    while time.time() < deadline and checkpoint is None:  # wait for a checkpoint of the training stage
        found = sorted((workdir / "stages" / "train").glob("*/checkpoints/last.pt"))
        checkpoint = found[0] if found else None
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    assert checkpoint is not None, "the training never checkpointed"
    assert _worker_pids(spec_dir), "the worker runs"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert "interrupted" in err
    deadline = time.time() + 15
    while _worker_pids(spec_dir) and time.time() < deadline:
        time.sleep(0.2)
    assert not _worker_pids(spec_dir), "a worker outlived its submitter"
    [record] = layout.list_trials(workdir, "sig")
    assert record["state"] == "pending" and record["owner"] is None
    assert "interrupted" in record["error"] and signal.Signals(sig).name in record["error"]

    # the rerun claims it at once (no --retry-failed) and resumes the training from its checkpoint
    rerun = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    [record] = layout.list_trials(workdir, "sig")
    assert record["state"] == "finished"
    metrics = [json.loads(line) for line in (checkpoint.parents[1] / "metrics.jsonl").read_text().splitlines()
               if line.strip()]
    steps = [m["step"] for m in metrics if "step" in m]
    assert steps == sorted(set(steps)) and steps[-1] == 400  # each step once, to the end
    train_record = json.loads((checkpoint.parents[1] / "stage.json").read_text())
    assert train_record["state"] == "finished"
    assert train_record["summary"]["resumed_from_step"] >= 25  # from the checkpoint, not from scratch
