"""The pipeline package without training: stage keys, a chain cut short, the work-dir layout version (an old
work dir is refused with an explanation, never silently recomputed beside or reused)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launchers.plan import plan_sweep
from launchers.spec import load_sweep
from sweep_files import tiny_sweep, write_sweep
from wsss.cli import main
from wsss_core.config import stable_hash
from wsss_core.errors import ConfigError
from wsss_core.pipeline import CHAINS, PREVIOUS, StageDef, layout, plan_trial
from wsss_core.pipeline.keys import stage_keys
from wsss_core.pipeline.stages import cams, evaluate, train
from wsss_core.training.config import load_run_config


def _cfg(*overrides: str):
    return load_run_config(None, ["data.root=/nonexistent", *overrides])


def test_a_key_hashes_store_name_config_slice_and_input_keys():
    cfg = _cfg()
    keyed = stage_keys(cfg, CHAINS["*"], {"synthetic": None, "world_size": 1})
    assert [k.stage.name for k in keyed] == ["train", "cams", "eval"]
    extras = {"synthetic": None, "world_size": 1}
    train_key = stable_hash({"stage": "train", "config": train.key_slice(cfg, extras), "inputs": {}})
    cams_key = stable_hash({"stage": "cams", "config": cams.key_slice(cfg, extras), "inputs": {"train": train_key}})
    eval_key = stable_hash({"stage": "eval", "config": evaluate.key_slice(cfg, extras), "inputs": {"cams": cams_key}})
    assert [k.key for k in keyed] == [train_key, cams_key, eval_key]
    # a change upstream changes every key downstream; an evaluation setting only the eval key
    lr = stage_keys(_cfg("optim.lr=0.5"), CHAINS["*"], extras)
    assert all(a.key != b.key for a, b in zip(keyed, lr))
    thr = stage_keys(_cfg("eval.thresholds=[0.1, 0.2]"), CHAINS["*"], extras)
    assert [a.key == b.key for a, b in zip(keyed, thr)] == [True, True, False]
    # the evaluation protocol is an evaluation setting: it keys the eval stage only (layout version 2)
    for protocol in ("seam", "hfpl", "project"):
        other = stage_keys(_cfg(f"eval.protocol={protocol}"), CHAINS["*"], extras)
        assert [a.key == b.key for a, b in zip(keyed, other)] == [True, True, False], protocol


def test_a_stage_whose_input_is_missing_from_its_chain_is_named():
    orphan = StageDef("refine", ("amn_maps",), lambda cfg, extras: {}, lambda run: {})
    with pytest.raises(ConfigError, match=r"stage refine: needs stage 'amn_maps' before it in its chain; "
                                          r"the chain is train → refine"):
        stage_keys(_cfg(), (train.STAGE, orphan), {"synthetic": None, "world_size": 1})
    first = StageDef("score", (PREVIOUS,), lambda cfg, extras: {}, lambda run: {})
    with pytest.raises(ConfigError, match="stage score: takes the stage before it, but is first in its chain"):
        stage_keys(_cfg(), (first,), {"synthetic": None, "world_size": 1})


def test_amn_trial_cut_short_shares_the_cam_training_folder(tmp_path):
    cam = plan_trial(_cfg("model.baseline=cam"), tmp_path)
    amn = plan_trial(_cfg("model.baseline=amn"), tmp_path, until="amn_seeds")
    assert [s.name for s in amn.stages] == ["amn_cam_train", "amn_cam_cams", "amn_seeds"]
    assert amn.stage("amn_cam_train").dir == cam.stage("train").dir  # one training serves both
    assert Path(amn.stage("amn_seeds").dir).parent == tmp_path.resolve() / "stages" / "amn_seeds"
    with pytest.raises(ConfigError, match=r"until: 'seeds' is not a stage of the amn chain; valid choices: "
                                          r"amn_cam_train, amn_cam_cams, amn_seeds"):
        plan_trial(_cfg("model.baseline=amn"), tmp_path, until="seeds")


def _planned(tmp_path: Path):
    path = write_sweep(tmp_path / "v.yaml", tiny_sweep("v"))
    return path, plan_sweep(load_sweep(path), tmp_path / "work")


def test_records_carry_the_layout_version(tmp_path):
    _, plan = _planned(tmp_path)
    layout.prepare_workdir(plan.workdir)
    marker = json.loads((plan.workdir / layout.LAYOUT_FILE).read_text())
    assert marker["layout_version"] == layout.LAYOUT_VERSION
    stage = Path(plan.trials[0].stage("train").dir)
    layout.write_stage(stage, {"state": "finished", "attempts": 1})
    assert json.loads((stage / layout.STAGE_RECORD).read_text())["layout_version"] == layout.LAYOUT_VERSION
    assert layout.stage_state(stage) == "finished"
    # a record written before versioning is layout 1, older than this one: refused, never reused
    (stage / layout.STAGE_RECORD).write_text(json.dumps({"state": "finished", "attempts": 1}))
    assert layout.UNVERSIONED == 1 < layout.LAYOUT_VERSION
    with pytest.raises(layout.LayoutVersionError, match="layout version 1"):
        layout.read_stage(stage)


def test_a_work_dir_of_another_layout_is_refused_with_an_explanation(tmp_path, monkeypatch, capsys):
    path, plan = _planned(tmp_path)
    layout.prepare_workdir(plan.workdir)
    stage = Path(plan.trials[0].stage("train").dir)
    layout.write_stage(stage, {"state": "finished", "attempts": 1})
    # A later wsss changes what a key hashes and bumps the layout version: the old work dir is refused
    old, new = layout.LAYOUT_VERSION, layout.LAYOUT_VERSION + 1
    monkeypatch.setattr(layout, "LAYOUT_VERSION", new)
    monkeypatch.setitem(layout.LAYOUT_HISTORY, new, "keys also hash the crop policy")
    with pytest.raises(layout.LayoutVersionError) as err:
        plan_sweep(load_sweep(path), plan.workdir)
    message = str(err.value)
    assert str(plan.workdir / layout.LAYOUT_FILE) in message
    assert f"layout version {old}" in message and f"layout version {new} (keys also hash the crop policy)" in message
    assert "new --workdir" in message
    assert main(["sweep", "plan", str(path), "--workdir", str(plan.workdir)]) == 2
    assert f"layout version {old}" in capsys.readouterr().err
    # a single stage record of the old layout is refused too (never reused as if it were current)
    (plan.workdir / layout.LAYOUT_FILE).unlink()
    with pytest.raises(layout.LayoutVersionError, match=str(stage / layout.STAGE_RECORD)):
        layout.stage_state(stage)


def test_a_work_dir_from_a_newer_wsss_is_refused(tmp_path):
    path, plan = _planned(tmp_path)
    plan.workdir.mkdir(parents=True)
    (plan.workdir / layout.LAYOUT_FILE).write_text(json.dumps({"layout_version": 99}))
    with pytest.raises(layout.LayoutVersionError, match=r"layout version 99 \(an unknown layout"):
        plan_sweep(load_sweep(path), plan.workdir)
