"""Trainer pieces: run config validation and stage keys, optimiser quirk, sampler, NaN failure, run dir."""

from __future__ import annotations

import json

import pytest
import torch

from wsss.cli import main as wsss_main
from wsss_core.baselines.base import ParamGroup
from wsss_core.data.synth import generate_synthetic_voc
from wsss_core.errors import ConfigError, TrainingError
from wsss_core.training import load_run_config, stage_key, train
from wsss_core.training.metrics import read_status
from wsss_core.training.optim import build_sgd, poly_lr_factor
from wsss_core.training.trainer import RankShardSampler

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "voc"
    return generate_synthetic_voc(root, seed=0, n_train=8, n_val=2, size=48, num_classes=3, n_aug_extra=8,
                                  show_progress=False)


def tiny(root, *extra):
    return load_run_config(None, [f"data.root={root}", "data.crop=32", "train.batch_size=4", "train.epochs=1",
                                  "model.backbone_options={widths: [8, 16]}", *extra])


@pytest.mark.parametrize("override, message", [
    ("model.baseline=seem", "unknown baseline 'seem'; valid choices: "),
    ("model.backbone=resnet18", "valid choices: resnet38d, resnet50, small"),
    ("addons=[{name: importance}]", "unknown add-on 'importance'; valid choices: feature_similarity, importance_sampling"),
    ("addons=[{name: feature_similarity, params: {sigmaa: 2}}]", "addons[0].params: unknown key 'sigmaa'"),
    ("addons=[{name: feature_similarity, posterior: softmax}]", "valid choices: 'binomial', 'multinomial'"),
    ("train.batch_size=eight", "train.batch_size: expected an integer"),
    ("train.amp=fp16", "valid choices: 'off', 'bf16'"),
    ("optim.lr=-1", "optim.lr: must be positive"),
    ("train.epoch=3", "unknown key 'epoch'; valid keys: epochs, max_steps"),
    ("addons=[{name: importance_sampling}, {name: importance_sampling, posterior: multinomial}]", "more than once"),
])
def test_config_errors_name_the_key_and_valid_choices(override, message):
    with pytest.raises(ConfigError) as err:
        load_run_config(None, [override])
    assert message in str(err.value)


def test_config_file_errors_name_the_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  baseline: cam\n  head: x\n")
    with pytest.raises(ConfigError, match=r"run.yaml.model: unknown key 'head'"):
        load_run_config(path)


def test_stage_key_covers_training_settings_only():
    base = load_run_config(None)
    assert stage_key(base) == stage_key(load_run_config(None, ["eval.thresholds=[0.1, 0.2]"]))
    assert stage_key(base) == stage_key(load_run_config(None, ["train.checkpoint_every=3", "data.num_workers=2"]))
    assert stage_key(base) != stage_key(load_run_config(None, ["optim.lr=0.02"]))
    assert stage_key(base) == stage_key(load_run_config(None, ["cams.scales=[1.0]"]))
    assert stage_key(base, "cams") != stage_key(load_run_config(None, ["cams.scales=[1.0]"]), "cams")
    implicit = load_run_config(None, ["addons=[{name: importance_sampling}]"])
    explicit = load_run_config(None, ["addons=[{name: importance_sampling, params: {samples: 10, weight: 0.2}}]"])
    assert stage_key(implicit) == stage_key(explicit)


def test_sgd_momentum_quirk_and_poly_schedule():
    w = torch.nn.Parameter(torch.zeros(2))
    h = torch.nn.Parameter(torch.zeros(2))
    groups = [ParamGroup("backbone", [w], 1.0), ParamGroup("head", [h], 10.0)]
    quirk = build_sgd(groups, lr=0.1, weight_decay=1e-4, momentum=0.9, momentum_quirk=True)
    assert [g["momentum"] for g in quirk.param_groups] == [1e-4, 1e-4]
    assert [g["weight_decay"] for g in quirk.param_groups] == [1e-4, 1e-4]
    assert [g["lr"] for g in quirk.param_groups] == [0.1, 1.0]
    assert build_sgd(groups, 0.1, 1e-4, 0.9, False).param_groups[0]["momentum"] == 0.9
    assert poly_lr_factor(0, 100, 0.9) == 1.0
    assert poly_lr_factor(50, 100, 0.9) == pytest.approx(0.5 ** 0.9)


def test_rank_shards_together_equal_the_single_process_batches():
    single = list(RankShardSampler(23, 4, 0, 1, seed=3))
    ranks = [list(RankShardSampler(23, 2, r, 2, seed=3)) for r in range(2)]
    for k in range(len(single) // 4):
        assert sorted(single[4 * k: 4 * k + 4]) == sorted(ranks[0][2 * k: 2 * k + 2] + ranks[1][2 * k: 2 * k + 2])
    resumed = RankShardSampler(23, 4, 0, 1, seed=3)
    resumed.skip_batches = 2
    assert list(resumed) == single[8:]
    other_epoch = RankShardSampler(23, 4, 0, 1, seed=3)
    other_epoch.set_epoch(1)
    assert list(other_epoch) != single


def test_short_run_writes_config_metrics_checkpoint_and_status(voc_root, tmp_path):
    cfg = tiny(voc_root, "addons=[{name: importance_sampling}]", "train.log_every=1")
    summary = train(cfg, tmp_path / "run")
    assert summary["steps"] == summary["total_steps"] == 4  # 16 train_aug images / batch 4
    assert load_run_config(tmp_path / "run" / "config.yaml") == cfg
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4]
    assert {"loss", "cls_gap", "cls_is", "lr", "images_per_s"} <= set(lines[0])
    assert read_status(tmp_path / "run")["status"] == "finished"
    # a finished run is not trained again
    before = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert train(cfg, tmp_path / "run")["steps"] == 4
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == before
    with pytest.raises(ConfigError, match="different config"):
        train(tiny(voc_root, "optim.lr=0.5"), tmp_path / "run")


def test_non_finite_loss_fails_with_step_terms_and_status(voc_root, tmp_path):
    cfg = tiny(voc_root, "optim.lr=1.0e+30", "addons=[{name: feature_similarity}]")
    with pytest.raises(TrainingError) as err:
        train(cfg, tmp_path / "run")
    message = str(err.value)
    assert message.startswith("step ") and "non-finite loss" in message and "cls=" in message and "fsl=" in message
    status = read_status(tmp_path / "run")
    assert status["status"] == "failed" and "non-finite loss" in status["error"]
    assert status["stages"]["train"]["status"] == "failed"


def test_cli_reports_config_errors_as_one_line(capsys, tmp_path):
    code = wsss_main(["train", "--run-dir", str(tmp_path / "r"), "--set", "train.epochz=1"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("wsss train: error:") and "'epochz'" in err and len(err.splitlines()) == 1
