"""The local Ray cluster (scripts/ray_cluster.sh) does what the Ray launcher relies on, against the real head
node: Tune trials reporting metrics, a Tune trial that drives a 2-worker TorchTrainer with a gloo group (Ray
Train V2), and a crashed trial retried by FailureConfig."""

from __future__ import annotations

import pytest
import ray
from ray import tune

import cluster_jobs
from cluster_fixtures import RAY_SCRIPT, _run_script, ray_cluster, ray_head  # noqa: F401

pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def ray_connection(ray_cluster):
    ray.init(address=ray_cluster, log_to_driver=False)
    try:
        yield ray_cluster
    finally:
        ray.shutdown()


def test_connects_to_the_started_head(ray_connection):
    # ray.init rewrites 127.0.0.1 to the node's own address; the port identifies our head
    assert ray.get_runtime_context().gcs_address.rsplit(":", 1)[1] == ray_connection.rsplit(":", 1)[1]
    assert ray.cluster_resources()["CPU"] == 2.0


def test_tuner_runs_two_trials_with_their_metrics(ray_connection, tmp_path):
    tuner = tune.Tuner(
        cluster_jobs.tune_square,
        param_space={"x": tune.grid_search([2, 3])},
        run_config=tune.RunConfig(name="plain", storage_path=str(tmp_path), verbose=0),
    )
    results = tuner.fit()
    assert results.num_errors == 0
    assert sorted((r.config["x"], r.metrics["y"]) for r in results) == [(2, 4), (3, 9)]


def test_trial_driving_a_torch_trainer_all_reduces_over_two_workers(ray_connection, tmp_path):
    tuner = tune.Tuner(
        # the trial itself only drives; its two workers take 0.9 CPU each of the 2
        tune.with_resources(cluster_jobs.torch_trainer_trial, {"CPU": 0.2}),
        param_space={"scale": 10.0, "storage_path": str(tmp_path / "train")},
        run_config=tune.RunConfig(name="ddp", storage_path=str(tmp_path / "tune"), verbose=0),
    )
    results = tuner.fit()
    assert results.num_errors == 0, [r.error for r in results]
    metrics = results[0].metrics
    assert metrics["sum"] == 30.0  # (0 + 1) * 10 + (1 + 1) * 10
    assert metrics["world_size"] == 2 and metrics["backend"] == "gloo"


def test_crashed_trial_is_retried_once(ray_connection, tmp_path):
    attempts = tmp_path / "attempts.txt"
    tuner = tune.Tuner(
        cluster_jobs.crash_first_attempt,
        param_space={"attempts_file": str(attempts)},
        run_config=tune.RunConfig(name="retry", storage_path=str(tmp_path), verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=1)),
    )
    results = tuner.fit()
    assert results.num_errors == 0, [r.error for r in results]
    assert results[0].metrics["ok"] == 1
    assert attempts.read_text().splitlines() == ["attempt", "attempt"]


def test_script_status_and_idempotent_start(ray_connection, ray_head):
    status = _run_script([RAY_SCRIPT, "status", "--dir", ray_head.dir], 120)
    assert status.returncode == 0 and f"export RAY_ADDRESS={ray_head.address}" in status.stdout, status.stderr
    again = _run_script([RAY_SCRIPT, "start", "--dir", ray_head.dir], 120)
    assert again.returncode == 0 and "already running" in again.stdout, again.stdout + again.stderr
    assert ray.cluster_resources()["CPU"] == 2.0, "a second head came up"
    missing = _run_script([RAY_SCRIPT, "status", "--dir", "/nonexistent-wsss-ray"], 60)
    assert missing.returncode == 3 and "no Ray cluster answers" in missing.stdout
