"""Submit and walk away on the real local Ray cluster: with `--address`, `wsss sweep run --launcher ray` submits
the sweep as one Ray job (through the cluster's job server) and returns; the trials finish with the submitter
gone, and `status`, `logs`, `wait` and `cancel` follow the job."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from cluster_fixtures import ray_cluster  # noqa: F401
from sweep_files import records_by_seed, tiny_sweep, wsss_cli, write_sweep

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_ray_job_submit_walk_away_status_logs_wait_and_cancel(tmp_path, ray_cluster):  # noqa: F811
    import mlflow

    launcher = {"ray": {"address": ray_cluster, "max_concurrent": 1}}
    sweep = tiny_sweep("rayjob", axes={"seed": [0, 1]}, launcher=launcher,
                       faults=[{"stage": "train", "when": {"seed": 1}, "kind": "delay", "seconds": 0.5}])
    path = write_sweep(tmp_path / "rayjob.yaml", sweep)
    workdir = tmp_path / "work"
    common = [str(path), "--workdir", str(workdir)]

    submit = wsss_cli("sweep", "run", *common, "--launcher", "ray")
    assert submit.returncode == 0, submit.stdout + submit.stderr
    sid = re.search(r"as Ray job (\S+) on", submit.stdout).group(1)
    assert "submitted; the trials run without this process" in submit.stdout
    records = records_by_seed(workdir, "rayjob")
    assert all(r["owner"]["ray_job"] == sid for r in records.values())
    assert not any(r["state"] in ("finished", "failed") for r in records.values())

    status = wsss_cli("sweep", "status", *common)
    assert status.returncode == 0 and f"ray job {sid} " in status.stdout, status.stdout + status.stderr
    assert re.search(rf"ray job {sid} (PENDING|RUNNING)", status.stdout), status.stdout

    wait = wsss_cli("sweep", "wait", *common, "--poll", "1", timeout=600)
    assert wait.returncode == 0, wait.stdout + wait.stderr
    assert "[wait] rayjob: 2/2 finished, 0 failed" in wait.stdout
    done = records_by_seed(workdir, "rayjob")
    assert all(r["state"] == "finished" and Path(r["eval_json"]).is_file() for r in done.values())
    assert all(r["launcher"] == "ray" and r["attempts"] == 1 for r in done.values())
    client = mlflow.MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    parent = client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.`wsss.role` = 'sweep'")
    assert [r.info.status for r in parent] == ["FINISHED"]  # closed by `wait`, the submitter was gone

    logs = wsss_cli("sweep", "logs", str(path), done[1]["trial_id"], *common[1:])
    assert logs.returncode == 0 and f"==> ray job {sid}" in logs.stdout, logs.stdout + logs.stderr
    assert "[ray] job done: 2 finished, 0 not" in logs.stdout

    # A slow sweep, cancelled while its job runs: the Ray job is stopped, its trials recorded as cancelled.
    slow = tiny_sweep("rayslow", axes={"seed": [0]}, launcher=launcher,
                      faults=[{"stage": "train", "kind": "delay", "seconds": 3.0}])
    slow["base"]["train"].update({"max_steps": 40, "epochs": 20})
    slow_path = write_sweep(tmp_path / "rayslow.yaml", slow)
    slow_common = [str(slow_path), "--workdir", str(workdir)]
    assert wsss_cli("sweep", "run", *slow_common, "--launcher", "ray", "--no-tracking").returncode == 0
    deadline = time.time() + 180
    while time.time() < deadline and records_by_seed(workdir, "rayslow")[0].get("state") != "running":
        time.sleep(0.5)
    (trial,) = records_by_seed(workdir, "rayslow").values()
    assert trial["state"] == "running", trial
    cancel = wsss_cli("sweep", "cancel", *slow_common)
    assert cancel.returncode == 0 and "1 trial(s) cancelled" in cancel.stdout, cancel.stdout + cancel.stderr
    from launchers.scheduler import ray_jobs

    slow_sid, server = trial["owner"]["ray_job"], trial["owner"]["address"]
    assert server.startswith("http://")  # the job server, asked over HTTP (no GCS connection in this process)
    deadline = time.time() + 60
    while time.time() < deadline and ray_jobs({slow_sid: server})[slow_sid].state != "STOPPED":
        time.sleep(0.5)
    assert ray_jobs({slow_sid: server})[slow_sid].state == "STOPPED"
    (after,) = records_by_seed(workdir, "rayslow").values()
    assert after["state"] == "failed" and f"cancelled (ray job {slow_sid})" in after["error"]
    status = wsss_cli("sweep", "status", *slow_common)
    assert re.search(r"failed\s+ray job", status.stdout) and "cancelled" in status.stdout, status.stdout
