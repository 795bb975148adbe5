"""Several baselines in one sweep: per-baseline settings, and AMN's chain through the launcher sharing the
CAM rows' training (one CAM training serves the CAM trial and AMN's CAM stage)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launchers.plan import plan_sweep
from launchers.spec import load_sweep, validate_trials
from sweep_files import tiny_sweep, write_sweep
from wsss.cli import main
from wsss_core.errors import ConfigError
from wsss_core.pipeline import layout

TINY_AMN = {"model": {"options": {"aspp_rates": [1, 1, 1, 1],
                                  "training": {"lr": 1.0e-4, "head_lr_mult": 10.0, "epochs": 1}}}}


def test_baseline_mapping_gives_each_baseline_its_own_settings(tmp_path):
    sweep = tiny_sweep("perbase", axes={"baseline": {"cam": {}, "seam": {"optim": {"lr": 0.01}}, "amn": TINY_AMN}})
    sweep["base"]["optim"] = {"lr": 0.05, "weight_decay": 1e-4}
    spec = load_sweep(write_sweep(tmp_path / "s.yaml", sweep))
    by_baseline = {cfg.model.baseline: cfg for _, cfg, _ in validate_trials(spec)}
    assert by_baseline["cam"].optim.lr == 0.05 and by_baseline["seam"].optim.lr == 0.01
    assert by_baseline["seam"].optim.weight_decay == 1e-4  # merged into base, not replacing the section
    assert list(by_baseline["amn"].model.options["aspp_rates"]) == [1, 1, 1, 1]
    assert "aspp_rates" not in by_baseline["cam"].model.options  # amn's options stay with amn

    sweep["axes"]["baseline"] = {"seam": {"optim": {"lr": "fast"}}}
    with pytest.raises(ConfigError, match=r"s2.yaml: trial baseline=seam .*optim.lr: expected a number"):
        validate_trials(load_sweep(write_sweep(tmp_path / "s2.yaml", sweep)))
    sweep["axes"]["baseline"] = {"seam": 0.01}
    with pytest.raises(ConfigError, match=r"axes.baseline.seam: expected a mapping of run config overrides"):
        load_sweep(write_sweep(tmp_path / "s3.yaml", sweep))
    sweep["axes"]["baseline"] = {"deeplab": {}}
    with pytest.raises(ConfigError, match=r"unknown baseline 'deeplab'; valid choices: amn, cam, seam"):
        load_sweep(write_sweep(tmp_path / "s4.yaml", sweep))


def test_amn_trial_runs_its_chain_and_shares_the_cam_training(tmp_path, capsys):
    sweep = tiny_sweep("camamn", axes={"baseline": {"cam": {}, "amn": TINY_AMN}})
    path = write_sweep(tmp_path / "camamn.yaml", sweep)
    workdir = tmp_path / "work"
    plan = plan_sweep(load_sweep(path), workdir)
    status = plan.stage_status()
    assert status["train"]["unique"] == 1 and status["amn_train"]["unique"] == 1  # 2 trials, 1 CAM training

    assert main(["sweep", "run", str(path), "--workdir", str(workdir), "--no-tracking"]) == 0
    records = {r["baseline"]: r for r in layout.list_trials(workdir, "camamn")}
    assert {r["state"] for r in records.values()} == {"finished"}
    cam, amn = records["cam"], records["amn"]
    assert list(amn["stages"]) == ["data", "amn_cam_train", "amn_cam_cams", "amn_seeds", "amn_train", "amn_maps",
                                   "amn_eval"]
    shared = cam["stages"]["train"]["dir"]
    assert amn["stages"]["amn_cam_train"]["dir"] == shared
    assert layout.read_stage(Path(shared))["attempts"] == 1  # trained once for both trials
    amn_eval = json.loads(Path(amn["eval_json"]).read_text())
    assert Path(amn["eval_json"]).parent == Path(amn["stages"]["amn_eval"]["dir"])
    assert amn_eval["best"]["miou"] is not None and len(amn_eval["thresholds"]) == 3
    capsys.readouterr()
    assert main(["report", "camamn", "--workdir", str(workdir)]) == 0
    out = capsys.readouterr().out
    assert "cam" in out and "amn" in out
