"""The final segmentation stage through the cluster launchers' real test clusters: a trial runs to val mIoU
on Ray (a 2-worker DDP trial: the segmentation network trained by a Ray Train TorchTrainer) and on Slurm."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster_fixtures import ray_cluster, slurm_cluster  # noqa: F401
from launchers.spec import load_sweep
from launchers.submit import SubmitOptions, run_sweep
from sweep_files import tiny_sweep, write_sweep
from wsss_core.pipeline import layout

pytestmark = pytest.mark.slow

FINAL = {"enabled": True, "threshold": "best", "iterations": 2, "batch_size": 2, "crop": 32,
         "backbone_options": {"widths": [8, 16]}, "aspp_rates": [1, 2]}


def final_sweep(name: str, **sections) -> dict:
    sweep = tiny_sweep(name, **sections)
    sweep["base"]["final"] = dict(FINAL)
    return sweep


def check_final(record: dict, world_size: int) -> None:
    assert record["state"] == "finished", record.get("error")
    seg_train = layout.read_stage(Path(record["stages"]["seg_train"]["dir"]))
    assert seg_train["summary"]["world_size"] == world_size and seg_train["summary"]["steps"] == 2
    seg_eval = layout.read_stage(Path(record["stages"]["seg_eval"]["dir"]))
    assert 0.0 <= seg_eval["summary"]["final_miou"] <= 1.0
    assert Path(record["stages"]["seg_eval"]["dir"], "val", "eval.json").is_file()


@pytest.mark.ray
def test_ray_trial_with_the_final_stage_runs_to_val_miou_with_ddp(tmp_path, ray_cluster):  # noqa: F811
    sweep = final_sweep("rayfinal", launcher={"ray": {"cpus_per_worker": 0.9, "trial_cpus": 0.2}})
    sweep["axes"]["resources.procs_per_node"] = [2]
    spec = load_sweep(write_sweep(tmp_path / "ray.yaml", sweep))
    outcome = run_sweep(spec, tmp_path / "work", SubmitOptions(launcher="ray", address=ray_cluster, tracking=False, wait=True))
    assert outcome.ok, [(r["trial_id"], r.get("error")) for r in outcome.records]
    (record,) = outcome.records
    assert record["launcher"] == "ray"
    check_final(record, world_size=2)


def test_slurm_trial_with_the_final_stage_runs_to_val_miou(tmp_path, slurm_cluster):  # noqa: F811
    sweep = final_sweep("slurmfinal", launcher={"slurm": {"partition": slurm_cluster.partition}})
    spec = load_sweep(write_sweep(tmp_path / "slurm.yaml", sweep))
    outcome = run_sweep(spec, tmp_path / "work", SubmitOptions(launcher="slurm", tracking=False, wait=True))
    assert outcome.ok, [(r["trial_id"], r.get("error")) for r in outcome.records]
    (record,) = outcome.records
    assert record["launcher"] == "slurm"
    check_final(record, world_size=1)
