"""AMN: the per-pixel classification loss and activation maps by hand, label conditioning, the dropout quirk,
the chain's configs and cache keys (one CAM training and one seeds stage for a sweep over AMN settings)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wsss_core.baselines.amn import activation_maps, per_pixel_classification_loss, resize_seeds
from wsss_core.baselines.compose import build_model
from wsss_core.data.synth import generate_synthetic_voc
from wsss_core.errors import ConfigError, TrainingError
from wsss_core.evaluation import CamStore
from wsss_core.pipeline import find_stage, layout, plan_trial, run_trial
from wsss_core.pipeline.stages.evaluate import score_cam_store
from wsss_core.training.amn import amn_chain
from wsss_core.training.config import load_run_config

torch.set_num_threads(1)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=0, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=0, keepdims=True))


def test_per_pixel_classification_loss_by_hand():
    logits = np.array([[0.5, -1.0, 2.0, 0.0], [1.5, 0.3, -0.2, 1.0], [-0.7, 2.2, 0.4, 0.0]], np.float32)  # 3 × 4 px
    seeds = np.array([0, 2, 255, 0])
    eps = 0.4
    lsm = log_softmax(logits)
    # smoothed targets over C+1 = 3 channels: 1 − ε on the seed class, ε / 2 elsewhere
    ce = [-(lsm[:, i] * np.where(np.arange(3) == seeds[i], 1 - eps, eps / 2)).sum() for i in (0, 1, 3)]
    expected = 0.5 * (np.mean([ce[0], ce[2]]) + ce[1])  # bg pixels 0 and 3, fg pixel 1; 255 excluded
    got = per_pixel_classification_loss(torch.from_numpy(logits).view(1, 3, 1, 4),
                                        torch.from_numpy(seeds).view(1, 1, 4), eps)
    assert float(got) == pytest.approx(float(expected), rel=1e-5)


def test_per_pixel_loss_without_foreground_is_half_the_background_term():
    logits = torch.randn(1, 3, 2, 2)
    seeds = torch.tensor([[[0, 0], [255, 0]]])
    lsm = torch.log_softmax(logits, 1)
    ce = -(lsm[0, 0] * 0.6 + lsm[0, 1] * 0.2 + lsm[0, 2] * 0.2)
    expected = 0.5 * ce[seeds[0] == 0].mean()
    assert float(per_pixel_classification_loss(logits, seeds, 0.4)) == pytest.approx(float(expected), rel=1e-5)


def test_seeds_resize_like_pil_nearest():
    seeds = np.random.default_rng(0).choice([0, 1, 3, 255], size=(37, 53)).astype(np.uint8)
    expected = np.asarray(Image.fromarray(seeds).resize((14, 10), Image.NEAREST))
    got = resize_seeds(torch.from_numpy(seeds)[None], (10, 14))[0].numpy()
    np.testing.assert_array_equal(got, expected)


def test_activation_maps_by_hand():
    logits = np.array([[[0.0, 1.0, 2.0]], [[1.0, 0.0, 0.0]], [[2.0, 3.0, -1.0]]], np.float32)  # C+1 = 3, 1 × 3
    keys = [1]  # class 1 → channel 2
    probs = np.exp(log_softmax(logits))[[0, 2]]
    low, high = probs.min(axis=(1, 2), keepdims=True), probs.max(axis=(1, 2), keepdims=True)
    normalised = (probs - low) / (high - low + 1e-5)
    seed = np.array([[0, 2, 255]])
    expected = np.where(seed[None] != 0, normalised, probs)
    got = activation_maps(torch.from_numpy(logits), keys, torch.from_numpy(seed))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-7)


def amn_model(**options):
    cfg = load_run_config(None, ["model.baseline=amn", "model.backbone_options={widths: [8, 16]}",
                                 f"model.options={json.dumps({'aspp_rates': [1, 2], **options})}"])
    torch.manual_seed(0)
    return build_model(cfg.model, [], 3)


def test_label_conditioning_and_labels_at_inference():
    model = amn_model()
    model.eval()
    image = torch.randn(1, 3, 32, 32)
    a = model.baseline.logits(image, torch.tensor([[1.0, 0.0, 0.0]]))
    b = model.baseline.logits(image, torch.tensor([[0.0, 1.0, 0.0]]))
    assert a.shape == (1, 4, 8, 8) and not torch.allclose(a, b)
    with pytest.raises(ConfigError, match="labels"):
        model.baseline.infer_logits(image)
    plain = amn_model(label_conditioning=False)
    plain.eval()
    assert torch.equal(plain.baseline.logits(image, torch.tensor([[1.0, 0, 0]])),
                       plain.baseline.logits(image, torch.tensor([[0.0, 1, 0]])))


def test_inference_dropout_quirk_is_an_option_off_by_default():
    image, label = torch.randn(1, 3, 32, 32), torch.tensor([1.0, 0.0, 1.0])
    corrected = amn_model(dropout=0.5)
    corrected.eval()
    assert torch.equal(corrected.baseline.averaged_logits(image, label, (1.0,), False),
                       corrected.baseline.averaged_logits(image, label, (1.0,), False))
    quirk = amn_model(dropout=0.5, inference_dropout=True)
    quirk.eval()
    assert quirk.baseline.head_dropout.training and not quirk.baseline.backbone.training
    assert not torch.equal(quirk.baseline.averaged_logits(image, label, (1.0,), False),
                           quirk.baseline.averaged_logits(image, label, (1.0,), False))


def test_training_forward_needs_seeds_and_exposes_foreground_logits_as_cam_site():
    model = amn_model()
    image, label = torch.randn(2, 3, 32, 32), torch.tensor([[1.0, 0, 0], [0, 1.0, 1.0]])
    with pytest.raises(TrainingError, match="seed labels"):
        model(image, label)
    model.baseline.set_seed_targets(torch.randint(0, 4, (2, 32, 32)))
    total, terms, output = model(image, label)
    assert set(terms) == {"pcl"} and output.sites["cam"].logits.shape == (2, 3, 8, 8)
    total.backward()
    assert model.baseline.label_encoder.weight.grad.abs().sum() > 0


def test_resnet50_network_trains_every_stage_and_bn_affine_with_frozen_statistics():
    """As AMN's resnet50_amn.Net: no stage detached (layer1 … layer4 learn), conv1/bn1 frozen, BatchNorm with
    fixed running statistics (IRN's FixedBatchNorm) and weight/bias in the backbone group (lr 1x)."""
    cfg = load_run_config(None, ["model.baseline=amn", "model.backbone=resnet50"])
    torch.manual_seed(0)
    model = build_model(cfg.model, [], 3)
    backbone = model.baseline.backbone
    groups = {g.name: g for g in model.baseline.param_groups()}
    optimizer = torch.optim.Adam([{"params": g.params, "lr": 1e-3 * g.lr_mult} for g in groups.values()])
    statistics = {k: v.clone() for k, v in backbone.state_dict().items() if "running" in k}
    bn_weight = backbone.layer1[0].bn1.weight.detach().clone()
    model.train()
    model.baseline.set_seed_targets(torch.randint(0, 4, (2, 64, 64)))
    total, _, _ = model(torch.randn(2, 3, 64, 64) * 3 + 1, torch.tensor([[1.0, 0, 0], [0, 1.0, 1.0]]))
    optimizer.zero_grad()
    total.backward()
    optimizer.step()
    assert backbone.layer1[0].conv1.weight.grad.abs().sum() > 0  # AMN detaches nothing
    assert backbone.conv1.weight.grad is None and backbone.bn1.weight.grad is None
    assert not torch.equal(bn_weight, backbone.layer1[0].bn1.weight)
    assert all(torch.equal(v, backbone.state_dict()[k]) for k, v in statistics.items())
    backbone_ids = {id(p) for p in groups["backbone"].params}
    assert id(backbone.layer1[0].bn1.weight) in backbone_ids and id(backbone.bn1.weight) not in backbone_ids
    assert {id(p) for p in groups["head"].params} == {id(p) for p in [*model.baseline.label_encoder.parameters(),
                                                                      *model.baseline.aspp.parameters()]}


def demo_overrides(root: Path, *extra: str) -> list[str]:
    return [f"data.root={root}", "data.crop=32", "train.epochs=1", "train.batch_size=4", "train.device=cpu",
            "model.baseline=amn", "model.backbone_options={widths: [8, 16]}", "cams.scales=[1.0]",
            "addons=[{name: importance_sampling}, {name: feature_similarity, params: {sigma: 2.0}}]", *extra]


def test_chain_configs_split_the_trial():
    cfg = load_run_config(None, demo_overrides(Path("/nonexistent"), "model.options={addons_on_network: true}"))
    chain = amn_chain(cfg)
    assert chain.cam.model.baseline == "cam" and chain.cam.cams.split == cfg.data.train_split
    assert [a.name for a in chain.cam.addons] == ["importance_sampling", "feature_similarity"]
    assert [a.name for a in chain.amn.addons] == ["feature_similarity"]  # the network has no pooling
    assert chain.amn.optim.lr == 5e-6 and chain.amn.optim.poly_power == 0.0 and chain.amn.train.epochs == 5
    assert chain.cam.optim == cfg.optim and chain.cam.train == cfg.train
    with pytest.raises(ConfigError, match="cam_stage.baseline"):
        load_run_config(None, ["model.baseline=amn", "model.options={cam_stage: {baseline: amn}}"])


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth_amn") / "voc"
    return generate_synthetic_voc(root, seed=3, n_train=6, n_val=2, size=40, num_classes=3, n_aug_extra=2,
                                  show_progress=False)


def test_sweep_over_amn_settings_trains_the_classifier_and_makes_seeds_once(voc_root, tmp_path):
    base = demo_overrides(voc_root, "train.max_steps=1")
    a = load_run_config(None, base + ["model.options={aspp_rates: [1, 2], training: {epochs: 1, lr: 0.001}}"])
    b = load_run_config(None, base + ["model.options={aspp_rates: [1, 2], training: {epochs: 1, lr: 0.001}, "
                                      "label_smoothing: 0.2}"])
    c = load_run_config(None, base + ["model.options={aspp_rates: [1, 2], training: {epochs: 1, lr: 0.001}, "
                                      "seeds: {fg_threshold: 0.4}}"])
    ta, tb, tc = (plan_trial(x, tmp_path, sweep="amn") for x in (a, b, c))
    ka, kb, kc = ({s.name: s.key for s in t.stages} for t in (ta, tb, tc))
    assert ka["amn_cam_train"] == kb["amn_cam_train"] == kc["amn_cam_train"]
    assert ka["amn_seeds"] == kb["amn_seeds"] != kc["amn_seeds"]
    assert ka["amn_train"] != kb["amn_train"]

    # AMN runs through the one trial runner, like every baseline
    first = run_trial(ta)
    seeds_dir = Path(ta.stage("amn_seeds").dir)
    stamp = {p.name: p.stat().st_mtime_ns for p in seeds_dir.glob("*.png")}
    second = run_trial(tb)
    assert not any(s["reused"] for s in first.values())
    assert [n for n, s in second.items() if s["reused"]] == ["amn_cam_train", "amn_cam_cams", "amn_seeds"]
    assert stamp == {p.name: p.stat().st_mtime_ns for p in seeds_dir.glob("*.png")}  # not rewritten
    stages = layout.stages_root(tmp_path)
    assert len(list((stages / "train").iterdir())) == 1 and len(list((stages / "amn_train").iterdir())) == 2
    assert {r["trial_id"]: r["state"] for r in layout.list_trials(tmp_path, "amn")} == \
        {ta.trial_id: "finished", tb.trial_id: "finished"}

    # seeds: VOC values, uncertain 255, only the image's classes
    labels = np.load(voc_root / "cls_labels.npy", allow_pickle=True).item()
    values = set()
    for png in seeds_dir.glob("*.png"):
        seed = np.asarray(Image.open(png))
        present = {int(v) for v in np.unique(seed)} - {0, 255}
        assert present <= {int(k) + 1 for k in np.flatnonzero(labels[png.stem])}
        values |= set(np.unique(seed).tolist())
    assert 0 in values and 255 in values
    # AMN maps: fg maps of the GT classes and a background map, in [0, 1]
    store = CamStore(ta.stage("amn_maps").dir)
    for image_id in store.ids():
        record = store.read_full(image_id)
        assert record.keys.tolist() == np.flatnonzero(labels[image_id]).tolist()
        assert record.bg is not None and 0.0 <= record.cams.min() and record.cams.max() <= 1.0 + 1e-6
    assert first["amn_eval"]["best_miou"] > 0
    # the CAM stage's CAMs score too (what a CAM row of the same sweep reports)
    cam_scores = score_cam_store(a, Path(ta.stage("amn_cam_cams").dir) / "cams", tmp_path / "cam_eval")
    assert cam_scores["best_miou"] > 0


def test_planner_stage_keys_share_the_cam_stage_and_seeds():
    a = load_run_config(None, demo_overrides(Path("/data"), "model.options={label_smoothing: 0.4}"))
    b = load_run_config(None, demo_overrides(Path("/data"), "model.options={label_smoothing: 0.2}"))
    extras = {"synthetic": None, "world_size": 2}

    def key_slice(name, cfg):
        stage = find_stage(name)
        return stage.key_slice(stage.view(cfg), extras)

    for name in ("amn_cam_train", "amn_cam_cams", "amn_seeds"):
        assert key_slice(name, a) == key_slice(name, b), name
    assert key_slice("amn_train", a) != key_slice("amn_train", b)
    assert key_slice("amn_cam_train", a)["model"]["baseline"] == "cam"
    assert find_stage("amn_cam_train").store_name == "train"  # one training with the CAM rows
