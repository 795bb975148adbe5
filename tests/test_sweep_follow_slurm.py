"""Submit and walk away on the real single-node Slurm cluster: `wsss sweep run --launcher slurm` returns once
the trials are submitted, they finish with the submitter gone, and `status`, `logs`, `cancel`, `wait` follow
them from the scheduler's truth (squeue/sacct). A job killed from outside (`scancel`, as for OOM or a node
failure) is shown failed with the scheduler's state and rerun only by `--retry-failed`."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from cluster_fixtures import slurm_cluster  # noqa: F401
from sweep_files import records_by_seed, tiny_sweep, wsss_cli, write_sweep
from wsss_core.pipeline import layout

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def _wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _sacct(job_id: str) -> str:
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "State", "-j", job_id], capture_output=True, text=True)
    return out.stdout.split()[0] if out.stdout.split() else ""


def test_submit_walk_away_then_status_logs_cancel_wait_and_retry(tmp_path, slurm_cluster):  # noqa: F811
    import mlflow

    # seed 0 finishes quickly; seeds 1 and 2 train slowly (1.5 s per step) so they can be cancelled mid-run.
    sweep = tiny_sweep("walkaway", axes={"seed": [0, 1, 2]},
                       launcher={"slurm": {"partition": slurm_cluster.partition, "array_parallelism": 3}},
                       faults=[{"stage": "train", "when": {"seed": s}, "kind": "delay", "seconds": 1.5}
                               for s in (1, 2)])
    sweep["base"]["train"].update({"max_steps": 20, "epochs": 10})
    path = write_sweep(tmp_path / "walkaway.yaml", sweep)
    workdir = tmp_path / "work"
    common = [str(path), "--workdir", str(workdir)]

    started = time.time()
    submit = wsss_cli("sweep", "run", *common, "--launcher", "slurm")
    took = time.time() - started
    assert submit.returncode == 0, submit.stdout + submit.stderr
    assert "submitted; the trials run without this process" in submit.stdout
    assert "wsss sweep wait" in submit.stdout and "(submitted 3, reused 0)" in submit.stdout
    records = records_by_seed(workdir, "walkaway")
    assert all(re.fullmatch(r"\d+_\d", r["job_id"]) for r in records.values()), records
    assert not any(r["state"] in ("finished", "failed") for r in records.values()), \
        f"the submitter waited for the trials ({took:.0f} s)"

    # The submitter is gone; the slow trials train in their jobs.
    _wait_until(lambda: all(records_by_seed(workdir, "walkaway")[s]["stages"]["train"]["state"] == "running"
                            or records_by_seed(workdir, "walkaway")[s]["state"] == "running" for s in (1, 2)), 180,
                "the slow trials to start training")
    status = wsss_cli("sweep", "status", *common)
    assert status.returncode == 0, status.stderr
    for seed in (1, 2):
        job = records[seed]["job_id"]
        assert re.search(rf"{re.escape(records[seed]['trial_id'])}\s+(running|pending)\s+slurm job {job} RUNNING",
                         status.stdout), status.stdout

    logs = wsss_cli("sweep", "logs", str(path), records[1]["trial_id"][:-3], *common[1:], "-n", "200")  # a prefix
    assert logs.returncode == 0, logs.stderr
    assert f"==> {records[1]['log']} <==" in logs.stdout and "submitit INFO" in logs.stdout, logs.stdout

    # Seed 1: cancelled with `wsss sweep cancel`; seed 2: its job killed from outside (what OOM or a node
    # failure look like to us: the job ends and the trial never records an outcome).
    cancel = wsss_cli("sweep", "cancel", str(path), records[1]["trial_id"], *common[1:])
    assert cancel.returncode == 0 and "1 trial(s) cancelled" in cancel.stdout, cancel.stdout + cancel.stderr
    subprocess.run(["scancel", records[2]["job_id"]], check=True)
    _wait_until(lambda: _sacct(records[2]["job_id"]) == "CANCELLED", 60, "sacct to record the scancel")

    wait = wsss_cli("sweep", "wait", *common, "--poll", "1")
    assert wait.returncode == 1, wait.stdout + wait.stderr  # not every trial finished
    assert "[wait] walkaway: 1/3 finished, 2 failed" in wait.stdout, wait.stdout
    after = records_by_seed(workdir, "walkaway")
    assert after[0]["state"] == "finished" and Path(after[0]["eval_json"]).is_file()
    assert after[1]["state"] == "failed" and "cancelled (slurm job" in after[1]["error"]
    assert after[2]["state"] == "failed" and after[2]["scheduler"]["state"] == "CANCELLED"
    assert f"slurm job {records[2]['job_id']} CANCELLED" in after[2]["error"]
    assert "without recording the trial's outcome" in after[2]["error"] and "--retry-failed" in after[2]["error"]
    assert "without recording" in wait.stderr  # the failures are listed with their reasons
    client = mlflow.MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    parent = client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.`wsss.role` = 'sweep'")
    assert [r.info.status for r in parent] == ["FAILED"]  # `wait` closed the sweep's run the submitter left open

    # A plain rerun leaves failed trials alone; --retry-failed reruns both, and --wait blocks until done.
    again = wsss_cli("sweep", "run", *common, "--launcher", "slurm")
    assert again.returncode == 1 and "(submitted 0, reused 1)" in again.stdout, again.stdout + again.stderr
    assert "2 failed (rerun with --retry-failed)" in again.stdout and "submitted; the trials" not in again.stdout
    retry = wsss_cli("sweep", "run", *common, "--launcher", "slurm", "--retry-failed", "--wait", timeout=600)
    assert retry.returncode == 0, retry.stdout + retry.stderr
    assert "3 finished" in retry.stdout
    final = records_by_seed(workdir, "walkaway")
    assert all(r["state"] == "finished" for r in final.values())
    assert final[2]["attempts"] == 2 and final[2]["job_id"] != records[2]["job_id"]
    # The data stage, shared by all three, ran once; seed 0 was not run again.
    assert layout.read_stage(Path(final[0]["stages"]["data"]["dir"]))["attempts"] == 1
    assert final[0]["attempts"] == 1


def test_scheduler_states_of_running_pending_and_cancelled_array_tasks(tmp_path, slurm_cluster):  # noqa: F811
    """`slurm_jobs` reads squeue and sacct as this Slurm writes them: a pending task's reason, and a cancelled
    task that never started (sacct folds those into one row, `12_[2-3%1]`)."""
    from launchers.scheduler import slurm_jobs

    out = subprocess.run(["sbatch", "--parsable", "--array=0-3%1", "-p", slurm_cluster.partition, "-c", "1",
                          "--mem", "100M", "-o", str(tmp_path / "%A_%a.out"), "--wrap", "sleep 60"],
                         capture_output=True, text=True, check=True, cwd=tmp_path)
    array = out.stdout.strip().split(";")[0]
    ids = [f"{array}_{i}" for i in range(4)]
    _wait_until(lambda: slurm_jobs(ids)[ids[0]].state == "RUNNING", 60, "the first task to run")
    live = slurm_jobs(ids + ["999999_0"])
    assert live[ids[0]].alive and live[ids[0]].node == "localhost"
    assert live[ids[2]].state == "PENDING" and live[ids[2]].reason == "JobArrayTaskLimit" and live[ids[2]].alive
    assert live["999999_0"].state == "UNKNOWN" and not live["999999_0"].alive
    subprocess.run(["scancel", array], check=True)
    _wait_until(lambda: not any(s.alive for s in slurm_jobs(ids).values()), 60, "every task to end")
    ended = slurm_jobs(ids)
    assert {s.state for s in ended.values()} == {"CANCELLED"}, ended
    assert "slurm job " + ids[3] + " CANCELLED" in ended[ids[3]].describe()
