"""Ray launcher on the real local Ray cluster: a 1-process trial that crashes once and is retried by Tune,
and a 2-worker DDP trial run by a Ray Train TorchTrainer from inside its Tune trial."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import ray

from cluster_fixtures import ray_cluster  # noqa: F401
from launchers.spec import load_sweep
from launchers.submit import SubmitOptions, run_sweep
from sweep_files import tiny_sweep, write_sweep
from wsss_core.pipeline import layout

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_ray_sweep_with_ddp_trial_and_retry(tmp_path, ray_cluster):  # noqa: F811
    sweep = tiny_sweep("raysweep", launcher={"ray": {"max_failures": 1, "cpus_per_worker": 0.9, "trial_cpus": 0.2}},
                       faults=[{"stage": "train", "when": {"resources.procs_per_node": 1}, "times": 1}])
    sweep["axes"]["resources.procs_per_node"] = [1, 2]
    spec = load_sweep(write_sweep(tmp_path / "ray.yaml", sweep))
    workdir = tmp_path / "work"
    outcome = run_sweep(spec, workdir, SubmitOptions(launcher="ray", address=ray_cluster, tracking=False, wait=True))
    assert outcome.ok, [(r["trial_id"], r.get("error")) for r in outcome.records]
    assert not ray.is_initialized()  # the launcher closes the connection it opened
    by_size = {r["axes"]["resources.procs_per_node"]: r for r in outcome.records}

    flaky = by_size[1]
    assert flaky["attempts"] == 2 and flaky["state"] == "finished" and flaky["launcher"] == "ray"
    assert layout.read_stage(Path(flaky["stages"]["train"]["dir"]))["attempts"] == 2
    assert layout.read_stage(Path(flaky["stages"]["data"]["dir"]))["attempts"] == 1  # reused on the retry

    ddp = by_size[2]
    assert ddp["attempts"] == 1 and ddp["job_id"]
    train = layout.read_stage(Path(ddp["stages"]["train"]["dir"]))
    assert train["summary"]["world_size"] == 2 and train["attempts"] == 1
    for record in outcome.records:
        assert json.loads(Path(record["eval_json"]).read_text())["best"]["miou"] is not None

    again = run_sweep(spec, workdir, SubmitOptions(launcher="ray", address=ray_cluster, tracking=False, wait=True))
    assert again.ran == [] and len(again.skipped_finished) == 2
