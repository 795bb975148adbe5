"""The single-node Slurm cluster (scripts/slurm_cluster.sh) does what the Slurm launcher relies on, through
submitit against the real daemons: job arrays, failures with their message, preemption with requeue and
resume from a checkpoint, and 2-task jobs that form a torch.distributed (gloo) group."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest
import submitit

import cluster_jobs
from cluster_fixtures import slurm_cluster, slurm_prerequisites_problem  # noqa: F401

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(300)]


def wait_for(predicate, timeout_s: float, what: str, poll_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def test_missing_packages_are_reported_not_skipped():
    problem = slurm_prerequisites_problem(path="/nonexistent")
    # /usr/sbin is always searched too, so only the client tools in /usr/bin can be missing here
    assert problem is not None and "install_system_deps.sh" in problem and "sbatch" in problem


def test_script_status_and_idempotent_start(slurm_cluster):
    status = slurm_cluster.script("status")
    assert status.returncode == 0, status.stdout + status.stderr
    for daemon in ("munged", "mariadb", "slurmdbd", "slurmctld", "slurmd"):
        assert f"{daemon} running" in status.stdout
    again = slurm_cluster.script("start")
    assert again.returncode == 0 and "already running" in again.stdout, again.stdout + again.stderr
    assert f"export SLURM_CONF={slurm_cluster.dir}/slurm.conf" in again.stdout
    assert os.environ["SLURM_CONF"] == str(slurm_cluster.dir / "slurm.conf")


def test_job_array_returns_each_result(slurm_cluster):
    executor = slurm_cluster.executor("array")
    jobs = executor.map_array(cluster_jobs.square, [2, 3, 4])
    assert len({job.job_id.split("_")[0] for job in jobs}) == 1, "one array, not three jobs"
    assert [job.result() for job in jobs] == [4, 9, 16]
    wait_for(lambda: all(slurm_cluster.sacct_state(job.job_id) == "COMPLETED" for job in jobs), 30,
             "sacct to record the array tasks as COMPLETED")


def test_failed_job_raises_with_the_original_message(slurm_cluster):
    job = slurm_cluster.executor("fail").submit(cluster_jobs.fail_with, "bad threshold 1.7 for seed 3")
    with pytest.raises(submitit.core.utils.FailedJobError) as failure:
        job.result()
    assert "bad threshold 1.7 for seed 3" in str(failure.value)
    assert wait_for(lambda: slurm_cluster.sacct_state(job.job_id) == "FAILED", 30, "sacct state FAILED")
    assert job.watcher.get_state(job.job_id, mode="force") == "FAILED"  # submitit reads it through sacct


def test_preempted_checkpointable_resumes_from_its_checkpoint(slurm_cluster, tmp_path):
    n_steps, step_s = 14, 0.5
    progress = tmp_path / "progress.txt"
    # submitit calls a signal within 10 min of the time limit a timeout, not a preemption
    executor = slurm_cluster.executor("preempt", timeout_min=60)
    job = executor.submit(cluster_jobs.CountSteps(), str(progress), n_steps, step_s)

    def steps_done():
        lines = progress.read_text().splitlines() if progress.exists() else []
        return [int(line.split()[1]) for line in lines if line.startswith("step")]

    wait_for(lambda: len(steps_done()) >= 3, 90, "the job to finish 3 steps")
    job._interrupt()  # what Slurm does on preemption: SIGTERM to the steps, then SIGUSR2
    assert job.result() == sum(i * i for i in range(n_steps))

    starts = [int(line.split()[1]) for line in progress.read_text().splitlines() if line.startswith("start")]
    assert len(starts) == 2 and starts[0] == 0, f"expected one requeue: starts at {starts}"
    assert starts[1] >= 3, f"the requeued run started over at step {starts[1]} instead of resuming"
    assert steps_done()[-1] == n_steps - 1
    assert "this job is preempted" in (job.stderr() or ""), "submitit's log does not show the preemption"


def test_two_tasks_form_a_gloo_group(slurm_cluster):
    executor = slurm_cluster.executor("ddp", tasks_per_node=2, nodes=1)
    job = executor.submit(cluster_jobs.gloo_all_reduce)
    results = sorted(job.results(), key=lambda r: r["global_rank"])
    assert [r["global_rank"] for r in results] == [0, 1]
    assert [r["local_rank"] for r in results] == [0, 1]
    assert all(r["num_tasks"] == 2 and r["world_size"] == 2 for r in results)
    assert all(r["sum"] == 3.0 for r in results), results  # (0 + 1) + (1 + 1)
    assert results[0]["pid"] != results[1]["pid"]


def test_start_on_a_stale_dir_gives_fresh_state_and_accounting(slurm_cluster):
    """A crashed cluster's folder is wiped on start: job ids restart and sacct knows no old jobs."""
    from cluster_fixtures import SLURM_SCRIPT, _free_port_block, _run_script

    cluster_dir = slurm_cluster.dir.parent / f"{slurm_cluster.dir.name}-stale"
    args = ["--dir", str(cluster_dir), "--port-base", str(_free_port_block(4))]
    env = {**os.environ, "SLURM_CONF": str(cluster_dir / "slurm.conf")}

    def sh(*cmd):
        return subprocess.run(cmd, capture_output=True, text=True, env=env, check=True, cwd=cluster_dir).stdout

    try:
        start = _run_script([SLURM_SCRIPT, "start", *args], 420)
        assert start.returncode == 0, start.stdout + start.stderr
        first = sh("sbatch", "--parsable", "--wrap", "true").strip()
        wait_for(lambda: "COMPLETED" in sh("sacct", "-n", "-X", "-P", "-o", "State", "-j", first), 60,
                 "the first job to complete")
        for pid_file in (cluster_dir / "run").glob("*.pid"):  # a crash: every daemon dies, state stays
            if pid_file.read_text().strip():
                subprocess.run(["kill", "-KILL", pid_file.read_text().strip()], check=False)
        restart = _run_script([SLURM_SCRIPT, "start", *args], 420)
        assert restart.returncode == 0, restart.stdout + restart.stderr
        assert "stale state" in restart.stdout
        assert sh("sacct", "-n", "-X", "-S", "2000-01-01", "-o", "JobID").strip() == "", "old jobs survived"
        assert sh("sbatch", "--parsable", "--wrap", "true").strip() == first, "job ids did not restart"
    finally:
        _run_script([SLURM_SCRIPT, "stop", "--dir", str(cluster_dir)], 180)
        shutil.rmtree(cluster_dir, ignore_errors=True)
