"""Concurrent submitters of one sweep never exceed its max_concurrent together and never run a stage twice.

The case the fault report found: a submitter killed outright (SIGKILL: no handler runs) leaves its trial's
worker running as an orphan; a second `wsss sweep run` re-attaches to that trial and claims the rest. Each
running trial holds one of the sweep's slot locks, inherited by its ranks, so the orphan keeps its slot and
the new submitter waits for it instead of starting a second trial beside it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from cluster_fixtures import REPO
from sweep_files import tiny_sweep, write_sweep
from wsss_core.pipeline import layout


def _submit(path: Path, workdir: Path, log: Path) -> subprocess.Popen:
    with open(log, "ab") as handle:
        return subprocess.Popen([sys.executable, "-m", "wsss.cli", "sweep", "run", str(path), "--workdir",
                                 str(workdir), "--no-tracking"], cwd=REPO, stdout=handle, stderr=subprocess.STDOUT)


def test_a_second_submitter_waits_for_the_orphaned_trial_of_a_killed_one(tmp_path):
    sweep = tiny_sweep("slots", axes={"seed": [0, 1, 2]}, launcher={"local": {"max_concurrent": 1}},
                       faults=[{"stage": "train", "kind": "delay", "seconds": 0.5}])
    sweep["base"]["train"].update({"max_steps": 8, "epochs": 4})
    path = write_sweep(tmp_path / "slots.yaml", sweep)
    workdir = tmp_path / "work"

    first = _submit(path, workdir, tmp_path / "first.log")
    deadline = time.time() + 120
    running: list[dict] = []
    while time.time() < deadline and not running:
        running = [r for r in layout.list_trials(workdir, "slots") if r.get("state") == "running"
                   and Path(r["stages"]["train"]["dir"], "metrics.jsonl").is_file()]
        time.sleep(0.2)
    assert running, (tmp_path / "first.log").read_text()
    os.kill(first.pid, signal.SIGKILL)  # its worker lives on, an orphan holding the sweep's only slot
    first.wait()
    orphan = running[0]["owner"]["pid"]
    assert layout.process_start_time(orphan) is not None

    second = _submit(path, workdir, tmp_path / "second.log")
    assert second.wait(timeout=300) == 0, (tmp_path / "second.log").read_text()
    out = (tmp_path / "second.log").read_text()
    assert "2 to run, 0 finished, 1 running elsewhere" in out, out

    records = layout.list_trials(workdir, "slots")
    assert [r["state"] for r in records] == ["finished"] * 3
    spans = sorted((r["started"], r["finished"], r["trial_id"]) for r in records)
    for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
        assert start >= end, f"{b} started at {start} before {a} ended at {end}: more than max_concurrent 1 at once"
    for record in records:  # every stage ran once: the orphan's trial was not started again
        for stage in ("train", "cams", "eval"):
            assert layout.read_stage(Path(record["stages"][stage]["dir"]))["attempts"] == 1, (record["trial_id"], stage)
