"""Idempotence: racing processes never both run a stage; failed trials rerun only on request; stale owners."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
from pathlib import Path

import pytest

from launchers.plan import plan_sweep
from launchers.spec import load_sweep
from launchers.submit import SubmitOptions, claim_trials, run_sweep, write_trial_spec
from sweep_files import tiny_sweep, write_sweep
from wsss_core.pipeline import layout

pytestmark = pytest.mark.slow


def _records(workdir: Path, sweep: str) -> dict[str, dict]:
    return {r["trial_id"]: r for r in layout.list_trials(workdir, sweep)}


def _stage_attempts(record: dict) -> dict[str, int]:
    return {name: layout.read_stage(Path(s["dir"])).get("attempts", 0) for name, s in record["stages"].items()}


def test_two_processes_racing_on_one_trial_never_both_run_a_stage(tmp_path):
    spec = load_sweep(write_sweep(tmp_path / "race.yaml", tiny_sweep("race")))
    plan = plan_sweep(spec, tmp_path / "work")
    (trial,) = plan.trials
    spec_path = write_trial_spec(trial)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    procs = [subprocess.Popen([sys.executable, "-m", "launchers.worker", str(spec_path)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    for stage in trial.stages:
        record = layout.read_stage(Path(stage.dir))
        assert record["state"] == "finished" and record["attempts"] == 1, (stage.name, record)
    assert "waiting for it" in "".join(outputs)  # the loser waited on the stage lock, then reused the result
    assert len(json.loads(Path(trial.stage("eval").dir, "eval.json").read_text())["thresholds"]) == 3


def _hold_lock(path: str, ready, release) -> None:
    lock = layout.StageLock(Path(path))
    lock.acquire()
    ready.set()
    release.wait(30)
    lock.release()


def test_stage_lock_is_exclusive_between_processes(tmp_path):
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(tmp_path), ready, release))
    holder.start()
    assert ready.wait(60)
    lock = layout.StageLock(tmp_path)
    assert lock.is_held() and not lock.acquire(blocking=False)
    assert lock.holder().endswith(str(holder.pid))
    release.set()
    holder.join(30)
    assert lock.acquire(blocking=False)
    lock.release()


def test_failed_trial_reruns_only_with_retry_failed_and_a_rerun_trains_nothing(tmp_path):
    sweep = tiny_sweep("flaky", faults=[{"stage": "train", "times": 1}])
    spec = load_sweep(write_sweep(tmp_path / "flaky.yaml", sweep))
    workdir = tmp_path / "work"
    opts = SubmitOptions(launcher="local", tracking=False)
    first = run_sweep(spec, workdir, opts)
    (record,) = first.records
    assert record["state"] == "failed" and record["attempts"] == 1
    assert "stage train" in record["error"] and "injected fault" in record["error"]

    second = run_sweep(spec, workdir, opts)  # no --retry-failed: left alone
    assert second.ran == [] and second.skipped_failed == [record["trial_id"]]
    assert second.records[0]["attempts"] == 1 and second.records[0]["state"] == "failed"

    third = run_sweep(spec, workdir, SubmitOptions(launcher="local", tracking=False, retry_failed=True))
    assert third.ran == [record["trial_id"]] and third.ok
    done = third.records[0]
    assert done["attempts"] == 2 and done["error"] is None and Path(done["eval_json"]).is_file()
    assert _stage_attempts(done) == {"data": 1, "train": 2, "cams": 1, "eval": 1}

    fourth = run_sweep(spec, workdir, opts)  # everything finished: no training, no process started
    assert fourth.ran == [] and fourth.skipped_finished == [done["trial_id"]] and fourth.ok
    assert _stage_attempts(fourth.records[0]) == {"data": 1, "train": 2, "cams": 1, "eval": 1}


def test_dead_owner_is_stale_and_live_owner_is_reattached(tmp_path):
    spec = load_sweep(write_sweep(tmp_path / "own.yaml", tiny_sweep("own", axes={"seed": [0, 1]})))
    plan = plan_sweep(spec, tmp_path / "work")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live, gone = plan.trials
    for trial, pid in ((live, os.getpid()), (gone, dead.pid)):
        owner = {"launcher": "local", "host": layout.hostname(), "pid": pid,
                 "pid_start": layout.process_start_time(pid)}
        layout.write_trial(trial.record_path, {"trial_id": trial.trial_id, "state": "running",
                                                    "attempts": 1, "owner": owner})
    outcome = claim_trials(plan, SubmitOptions(launcher="local", tracking=False), None)
    assert outcome.reattached == [live.trial_id] and outcome.ran == [gone.trial_id]
    record = layout.read_trial(gone.record_path)
    assert record["state"] == "pending" and record["error"].startswith("stale")
    # A second submitter now sees the first one (this process) as the live owner of the claimed trial.
    again = claim_trials(plan, SubmitOptions(launcher="local", tracking=False), None)
    assert sorted(again.reattached) == sorted([live.trial_id, gone.trial_id]) and again.ran == []


def test_two_concurrent_submissions_of_one_sweep_run_each_trial_once(tmp_path):
    path = write_sweep(tmp_path / "twice.yaml", tiny_sweep("twice", axes={"seed": [0, 1]}))
    workdir = tmp_path / "work"
    cmd = [sys.executable, "-m", "wsss.cli", "sweep", "run", str(path), "--workdir", str(workdir),
           "--no-tracking"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    records = _records(workdir, "twice")
    assert len(records) == 2
    for record in records.values():
        assert record["state"] == "finished" and record["attempts"] == 1
        assert set(_stage_attempts(record).values()) == {1}
    started = sum(out.count("[local] started") for out in outputs)
    assert started == 2, outputs  # each trial started by exactly one of the two submissions
