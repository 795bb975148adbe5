"""Sweep file validation: every bad input is one ConfigError naming the file and the key, before any work."""

from __future__ import annotations

from pathlib import Path

import pytest

from launchers.plan import plan_sweep
from launchers.spec import check_local_resources, check_slurm_resources, load_sweep, threshold_grid
from launchers.submit import SubmitOptions, run_sweep
from sweep_files import TINY_DATA, tiny_sweep, write_sweep
from wsss_core.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def _error(tmp_path: Path, sweep: dict) -> str:
    path = write_sweep(tmp_path / "bad.yaml", sweep)
    with pytest.raises(ConfigError) as info:
        load_sweep(path)
    message = str(info.value)
    assert str(path) in message
    return message


def test_shipped_sweep_files_load():
    for name in ("demo.yaml", "voc_cam_hfpl.yaml", "coco_cam_hfpl.yaml"):
        spec = load_sweep(REPO / "sweeps" / name)
        assert spec.axis("addons") is not None and spec.axis("seed") is not None
    demo = load_sweep(REPO / "sweeps" / "demo.yaml")
    assert len(demo.axis("addons").values) == 7 and len(demo.axis("seed").values) >= 2
    assert demo.thresholds[0] == 0.0 and demo.thresholds[-1] == 0.95 and len(demo.thresholds) == 96


def test_unknown_top_level_key(tmp_path):
    message = _error(tmp_path, {**tiny_sweep(), "resourcez": {}})
    assert "'resourcez'" in message and "valid keys" in message and "resources" in message


def test_unknown_baseline_lists_choices(tmp_path):
    message = _error(tmp_path, tiny_sweep(axes={"baseline": ["cam", "deeplab"]}))
    assert "axes.baseline[1]" in message and "'deeplab'" in message and "cam" in message and "seam" in message


def test_unknown_addon_and_bad_posterior(tmp_path):
    message = _error(tmp_path, tiny_sweep(axes={"addons": {"x": [{"name": "dropblock"}]}}))
    assert "axes.addons.x[0].name" in message and "importance_sampling" in message
    message = _error(tmp_path, tiny_sweep(axes={"addons": {"x": [{"name": "importance_sampling",
                                                                    "posterior": "poisson"}]}}))
    assert "axes.addons.x[0].posterior" in message and "'binomial'" in message and "'multinomial'" in message


def test_wrong_type_seed(tmp_path):
    message = _error(tmp_path, tiny_sweep(axes={"seed": [0, "one"]}))
    assert "axes.seed[1]" in message and "'one'" in message


def test_threshold_outside_unit_interval(tmp_path):
    message = _error(tmp_path, tiny_sweep(axes={"thresholds": {"start": 0.5, "stop": 1.5, "step": 0.25}}))
    assert "axes.thresholds" in message and "within [0, 1]" in message
    message = _error(tmp_path, tiny_sweep(axes={"thresholds": [0.1, -0.2]}))
    assert "-0.2" in message


def test_threshold_grid_is_inclusive():
    grid = threshold_grid({"start": 0.0, "stop": 0.95, "step": 0.01}, "t")
    assert len(grid) == 96 and grid[-1] == 0.95 and grid[1] == 0.01


def test_axis_key_that_is_not_a_run_config_key(tmp_path):
    message = _error(tmp_path, tiny_sweep(axes={"optim.learning_rate": [0.1]}))
    assert "axes.optim.learning_rate" in message and "optim.lr" in message
    message = _error(tmp_path, tiny_sweep(axes={"train.seed": [1, 2]}))
    assert "'seed' axis" in message


def test_bad_combination_names_the_axis_values(tmp_path):
    message = _error(tmp_path, tiny_sweep(axes={"optim.lr": [0.1, -1.0]}))
    assert "optim.lr=-1.0" in message and "optim.lr: must be positive" in message


def test_bad_base_value(tmp_path):
    sweep = tiny_sweep()
    sweep["base"]["train"]["epochs"] = "three"
    message = _error(tmp_path, sweep)
    assert "base.train.epochs" in message and "integer" in message


def test_base_config_file(tmp_path):
    write_sweep(tmp_path / "base.yaml", tiny_sweep()["base"])
    sweep = tiny_sweep()
    del sweep["base"]
    sweep["base_config"] = "base.yaml"
    spec = load_sweep(write_sweep(tmp_path / "ok.yaml", sweep))
    assert spec.base["train"]["max_steps"] == 3


def test_unknown_fault_stage(tmp_path):
    message = _error(tmp_path, tiny_sweep(faults=[{"stage": "training"}]))
    assert "faults[0].stage" in message and "train" in message


def test_local_resources_beyond_the_machine(tmp_path):
    # data enough for a global batch of 512 × 4 (else plan rejects the batch first, naming the split's size)
    big_data = {**TINY_DATA, "n_aug_extra": 2048}
    spec = load_sweep(write_sweep(tmp_path / "big.yaml", tiny_sweep(resources={"procs_per_node": 512},
                                                                  synthetic_data=big_data)))
    workdir = tmp_path / "work"
    with pytest.raises(ConfigError) as info:
        run_sweep(spec, workdir, SubmitOptions(launcher="local", tracking=False))
    assert "resources" in str(info.value) and "512 process(es)" in str(info.value)
    assert not workdir.exists()  # validated before anything was written or started
    spec = load_sweep(write_sweep(tmp_path / "mem.yaml", tiny_sweep(resources={"mem_gb": 1e6})))
    with pytest.raises(ConfigError, match="mem_gb"):
        check_local_resources(spec, [spec.resources])


def test_slurm_resources_no_node_satisfies(tmp_path):
    spec = load_sweep(write_sweep(tmp_path / "s.yaml", tiny_sweep(resources={"gpus_per_node": 8},
                                                                  launcher={"slurm": {"partition": "gpu"}},
                                                                  synthetic_data={**TINY_DATA, "n_aug_extra": 32})))
    nodes = [{"name": "n1", "partition": "gpu", "cpus": 32, "mem_gb": 256, "gpus": 4}]
    with pytest.raises(ConfigError, match="no node of partition gpu"):
        check_slurm_resources(spec, [spec.resources], nodes)
    with pytest.raises(ConfigError, match="unknown partition 'gpu'; valid choices: cpu"):
        check_slurm_resources(spec, [spec.resources], [{**nodes[0], "partition": "cpu*"}])


def test_plan_expands_axes_in_order(tmp_path):
    spec = load_sweep(write_sweep(tmp_path / "ok.yaml", tiny_sweep(axes={"seed": [0, 1], "optim.lr": [0.01, 0.1]})))
    plan = plan_sweep(spec, tmp_path / "work")
    assert [t.axes for t in plan.trials][:2] == [
        {"baseline": "cam", "addons": "none", "seed": 0, "optim.lr": 0.01},
        {"baseline": "cam", "addons": "none", "seed": 0, "optim.lr": 0.1}]
    assert plan.trials[1].config["optim"]["lr"] == 0.1
