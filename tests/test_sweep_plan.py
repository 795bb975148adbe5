"""Planning: trials × stages with content keys; thresholds never multiply training; finished stages reused."""

from __future__ import annotations

from pathlib import Path

from launchers.plan import estimate_hours, plan_sweep
from launchers.spec import load_sweep
from sweep_files import tiny_sweep, write_sweep
from wsss.cli import main
from wsss_core.pipeline import layout

ADDONS = {"none": [], "is_binomial": [{"name": "importance_sampling", "posterior": "binomial"}],
          "fs_multinomial": [{"name": "feature_similarity", "posterior": "multinomial"}]}


def _plan(tmp_path: Path, workdir: Path | None = None, name: str = "grid.yaml", **axes):
    spec = load_sweep(write_sweep(tmp_path / name, tiny_sweep(axes={"baseline": ["cam", "seam"], "addons": ADDONS,
                                                                    "seed": [0, 1], **axes})))
    return plan_sweep(spec, workdir or tmp_path / "work")


def _keys(plan, stage):
    return [t.stage(stage).key for t in plan.trials]


def test_thresholds_do_not_multiply_training(tmp_path):
    plan = _plan(tmp_path, thresholds={"start": 0.0, "stop": 0.95, "step": 0.01})
    status = plan.stage_status()
    assert len(plan.trials) == 2 * 3 * 2
    assert status["train"]["unique"] == 12 and status["cams"]["unique"] == 12 and status["eval"]["unique"] == 12
    assert status["data"]["unique"] == 1  # one synthetic benchmark shared by every trial
    assert [s.name for s in plan.trials[0].stages] == ["data", "train", "cams", "eval"]
    assert plan.trials[0].config["eval"]["thresholds"][-1] == 0.95


def test_threshold_grid_changes_only_the_eval_key(tmp_path):
    coarse = _plan(tmp_path, name="a.yaml", thresholds=[0.1, 0.2])
    fine = _plan(tmp_path, name="b.yaml", thresholds={"start": 0.0, "stop": 0.5, "step": 0.05})
    assert _keys(coarse, "train") == _keys(fine, "train")
    assert _keys(coarse, "cams") == _keys(fine, "cams")
    assert set(_keys(coarse, "eval")).isdisjoint(_keys(fine, "eval"))
    assert [t.trial_id for t in coarse.trials] == [t.trial_id for t in fine.trials]


def test_keys_are_stable_and_independent_of_the_work_dir(tmp_path):
    one = _plan(tmp_path, tmp_path / "w1")
    two = _plan(tmp_path, tmp_path / "w2")
    for stage in ("data", "train", "cams", "eval"):
        assert _keys(one, stage) == _keys(two, stage)
    assert len(set(_keys(one, "train"))) == 12
    # Bookkeeping settings (log cadence) are not part of the training key.
    sweep = tiny_sweep(axes={"baseline": ["cam", "seam"], "addons": ADDONS, "seed": [0, 1]})
    sweep["base"]["train"]["log_every"] = 7
    other = plan_sweep(load_sweep(write_sweep(tmp_path / "c.yaml", sweep)), tmp_path / "w1")
    assert _keys(other, "train") == _keys(one, "train")


def test_world_size_is_part_of_the_training_key(tmp_path):
    spec = load_sweep(write_sweep(tmp_path / "ws.yaml", tiny_sweep(axes={"resources.procs_per_node": [1, 2]})))
    plan = plan_sweep(spec, tmp_path / "work")
    assert [t.world_size for t in plan.trials] == [1, 2]
    assert len(set(_keys(plan, "train"))) == 2


def test_grown_sweep_reuses_finished_stages(tmp_path):
    workdir = tmp_path / "work"
    small = _plan(tmp_path, workdir, seed=[0])
    for trial in small.trials:  # pretend the first sweep ran
        for stage in trial.stages:
            layout.write_stage(Path(stage.dir), {"state": "finished", "attempts": 1, "duration_s": 30.0})
    grown = _plan(tmp_path, workdir, name="grown.yaml", seed=[0, 1, 2])
    status = grown.stage_status()
    assert status["train"] == {"unique": 18, "finished": 6, "running": 0, "failed": 0, "to_run": 12}
    assert status["data"]["to_run"] == 0
    hours, unit, basis = estimate_hours(grown)
    assert unit == "CPU core-hours" and basis["train"] == "median of 6 finished"
    assert abs(hours - (12 * 3 * 30.0) / 3600) < 1e-9  # 12 trials left × (train + cams + eval) at the median


def test_duplicate_combinations_share_one_trial(tmp_path):
    spec = load_sweep(write_sweep(tmp_path / "d.yaml", tiny_sweep(axes={"train.log_every": [1, 5]})))
    plan = plan_sweep(spec, tmp_path / "work")
    assert len(plan.trials) == 1 and len(plan.duplicates) == 1


def test_plan_command_prints_counts_and_submits_nothing(tmp_path, capsys):
    path = write_sweep(tmp_path / "p.yaml", tiny_sweep(axes={"addons": ADDONS, "seed": [0, 1],
                                                             "thresholds": {"start": 0, "stop": 0.95, "step": 0.01}}))
    workdir = tmp_path / "work"
    assert main(["sweep", "plan", str(path), "--workdir", str(workdir)]) == 0
    out = capsys.readouterr().out
    assert "6 trials = baseline 1 × addons 3 × seed 2" in out
    assert "trainings: 6" in out and "96 thresholds" in out and "CPU core-hours" in out
    assert not workdir.exists()


def test_a_baseline_can_declare_a_longer_stage_chain(tmp_path, monkeypatch):
    from wsss_core.pipeline import CHAINS, StageDef
    from wsss_core.pipeline.stages import cams, evaluate, train

    refine = StageDef("refine", ("cams",), lambda cfg, extras: {"crf": "amn"}, lambda run: {}, distributed=False,
                      cam_store="")
    monkeypatch.setitem(CHAINS, "amn", (train.STAGE, cams.STAGE, refine, evaluate.STAGE))
    spec = load_sweep(write_sweep(tmp_path / "amn.yaml", tiny_sweep(axes={"baseline": ["cam", "amn"]})))
    plan = plan_sweep(spec, tmp_path / "work")
    cam, amn = plan.trials
    assert [s.name for s in cam.stages] == ["data", "train", "cams", "eval"]
    assert [s.name for s in amn.stages] == ["data", "train", "cams", "refine", "eval"]
    assert amn.stage("refine").inputs == {"cams": amn.stage("cams").key}
    assert amn.stage("eval").inputs == {"refine": amn.stage("refine").key}  # scores the refined maps
    assert plan.stage_status()["train"]["unique"] == 2
