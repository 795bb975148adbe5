"""SEAM: ER / ECR / min-pooling losses by hand, PCM propagation, the two-branch forward with the add-ons,
the reference's parameter groups, the classification pooled over the upsampled CAM, fc8's unused background
row and infer_SEAM.py's min-max."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsss_core.baselines.compose import build_model
from wsss_core.baselines.pcm import PixelCorrelationModule, keep_max_foreground, max_norm, pcm_input
from wsss_core.baselines.seam import (adaptive_min_pooling_loss, equivariant_cross_regularisation,
                                      equivariant_regularisation, released_min_max)
from wsss_core.errors import ConfigError
from wsss_core.training.config import AddonConfig, ModelConfig, load_run_config

torch.set_num_threads(1)


def seam_model(addons=(), backbone="small", **options):
    cfg = ModelConfig(baseline="seam", backbone=backbone,
                      backbone_options={"widths": [8, 16, 16]} if backbone == "small" else {}, options=options)
    cfg.validate("model")
    torch.manual_seed(0)
    return build_model(cfg, [AddonConfig(**a) for a in addons], 3)


def test_equivariant_regularisation_is_l1_against_the_resized_full_branch():
    rng = np.random.default_rng(0)
    full = rng.random((2, 3, 4, 4)).astype(np.float32)
    scaled = rng.random((2, 3, 2, 2)).astype(np.float32)
    # bilinear with align_corners=True from 4 to 2 samples exactly rows/cols 0 and 3
    expected = np.abs(full[:, :, [0, 3]][:, :, :, [0, 3]] - scaled).mean()
    got = equivariant_regularisation(torch.from_numpy(full), torch.from_numpy(scaled))
    assert float(got) == pytest.approx(float(expected), rel=1e-6)


def test_equivariant_cross_regularisation_keeps_top_errors_of_max_onehot_difference():
    # one image, background + 2 classes, 1 × 2 grid
    cam = np.array([[[[0.1, 0.5]], [[0.7, 0.2]], [[0.4, 0.9]]]], np.float32)
    pcm = np.array([[[[0.0, 0.3]], [[0.5, 0.5]], [[0.6, 0.1]]]], np.float32)
    onehot = cam.copy()  # fg channels: keep the per-pixel max only; background untouched
    fg = onehot[:, 1:]
    fg[fg < fg.max(axis=1, keepdims=True)] = 0
    error = np.sort(np.abs(onehot - pcm).ravel())[::-1]
    expected = error[: int(6 * 0.5)].mean()
    got = equivariant_cross_regularisation(torch.from_numpy(cam), torch.from_numpy(pcm), 0.5)
    assert float(got) == pytest.approx(float(expected), rel=1e-6)
    # the CAM side is a target: no gradient flows into it
    cam_t = torch.from_numpy(cam).requires_grad_()
    pcm_t = torch.from_numpy(pcm).requires_grad_()
    equivariant_cross_regularisation(cam_t, pcm_t, 0.5).backward()
    assert cam_t.grad is None and pcm_t.grad.abs().sum() > 0


def test_adaptive_min_pooling_averages_the_lowest_quarter_of_the_channel_max():
    maps = torch.tensor([[[[-1.0, 0.2], [0.8, 0.1]], [[0.3, 0.0], [0.1, 0.9]]]])  # 1 × 2 × 2 × 2
    # per-pixel max: [0.3, 0.2, 0.8, 0.9]; k = 4 // 4 = 1 lowest → 0.2
    assert float(adaptive_min_pooling_loss(maps)) == pytest.approx(0.2)


def test_max_norm_and_pcm_input():
    maps = torch.tensor([[[[-1.0, 1.0, 3.0]]]])
    # ReLU → [0, 1, 3]; (p − 0 − ε) / (3 + ε), ReLU'd
    np.testing.assert_allclose(max_norm(maps).numpy().ravel(), [0.0, (1 - 1e-5) / (3 + 1e-5), (3 - 1e-5) / (3 + 1e-5)],
                               rtol=1e-6)
    logits = torch.tensor([[[[2.0, 0.0, 1.0]], [[1.0, 4.0, -1.0]]]])
    seeds = pcm_input(logits)
    assert seeds.shape == (1, 3, 1, 3)
    fg = seeds[0, 1:, 0]
    np.testing.assert_allclose(seeds[0, 0, 0].numpy(), 1 - fg.max(0).values.numpy(), rtol=1e-6)
    assert fg[1, 0] == 0 and fg[0, 1] == 0  # only each pixel's top class survives
    assert torch.equal(keep_max_foreground(seeds), seeds)


def test_pcm_propagates_with_normalised_feature_affinities():
    torch.manual_seed(0)
    pcm = PixelCorrelationModule(4, 4, (2, 2))
    maps = torch.rand(1, 3, 2, 3)
    same = torch.ones(1, 7, 2, 3)  # identical features everywhere: affinity uniform → each output = the mean
    out = pcm(maps, same)
    expected = maps.flatten(2).mean(dim=2)[:, :, None, None].expand_as(maps)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-6)
    features = torch.randn(1, 7, 2, 3)
    f = pcm.f9(features).flatten(2)
    f = f / (f.norm(dim=1, keepdim=True) + 1e-5)
    aff = torch.relu(f.transpose(1, 2) @ f)
    aff = aff / (aff.sum(dim=1, keepdim=True) + 1e-5)
    torch.testing.assert_close(pcm(maps, features), (maps.flatten(2) @ aff).view(1, 3, 2, 3))


@pytest.mark.parametrize("addons", [(), ({"name": "importance_sampling"}, {"name": "feature_similarity",
                                                                          "params": {"sigma": 2.0}})])
def test_two_branch_forward_has_every_term_and_trains_the_pcm(addons):
    model = seam_model(addons)
    image, label = torch.randn(2, 3, 40, 40), torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    total, terms, output = model(image, label)
    expected = {"scaled.cls", "rvmin", "er", "ecr"} | ({"cls"} if not addons else {"cls_gap", "cls_is", "fsl"})
    assert set(terms) == expected
    assert set(output.sites) == {"cam", "cam_scaled"}
    assert output.sites["cam_scaled"].logits.shape[-1] < output.sites["cam"].logits.shape[-1]
    assert not output.sites["cam_scaled"].regularise  # HFPL regularises the full branch only
    total.backward()
    assert model.baseline.pcm.f9.weight.grad.abs().sum() > 0
    assert model.baseline.classifier.weight.grad.abs().sum() > 0


def test_addons_on_scaled_branch_pools_and_regularises_both_branches():
    model = seam_model([{"name": "importance_sampling"}, {"name": "feature_similarity", "params": {"sigma": 2.0}}],
                       addons_on_scaled_branch=True)
    _, terms, _ = model(torch.randn(2, 3, 40, 40), torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]))
    assert {"scaled.cls_is", "cam.fsl", "cam_scaled.fsl"} <= set(terms)


def test_param_groups_follow_the_reference_multipliers():
    groups = {g.name: g for g in seam_model().baseline.param_groups()}
    assert [(g.lr_mult, g.weight_decay_mult) for g in groups.values()] == [(1.0, 1.0), (2.0, 0.0), (10.0, 1.0),
                                                                            (20.0, 0.0)]
    assert groups["backbone_bias"].params and groups["new"].params  # GroupNorm biases; classifier + PCM


def test_resnet38_first_stage_is_frozen_and_pcm_reads_activated_features():
    model = seam_model(backbone="resnet38d")
    backbone = model.baseline.backbone
    assert not any(p.requires_grad for p in backbone.b2.parameters())
    assert any(p.requires_grad for p in backbone.b3.parameters())
    assert model.baseline.pcm.f8_3.in_channels == 512 and model.baseline.pcm.f8_4.in_channels == 1024


def test_inference_is_min_max_of_the_summed_pcm_maps():
    model = seam_model()
    model.eval()
    label = torch.tensor([1.0, 0.0, 1.0])
    result = model.baseline.multiscale_cams(torch.randn(1, 3, 36, 44), label, (1.0, 0.5), True)
    assert result.keys == [0, 2] and result.cams.shape == (2, 36, 44)
    flat = result.cams.flatten(1)
    assert torch.all(flat.min(dim=1).values == 0) and torch.all(flat.max(dim=1).values > 0.99)


def test_bad_options_name_the_key():
    with pytest.raises(ConfigError, match="model.options.scale"):
        load_run_config(None, ["model.baseline=seam", "model.options={scale: 1.5}"])
    with pytest.raises(ConfigError, match="pcm_levels"):
        seam_model(pcm_levels=[-9, -2])


def gap_of_upsampled(grid: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Mean over an H × W bilinear align_corners=True upsampling of ``grid`` (N × C × h × w), by formula: output
    row i samples source row y = i (h − 1) / (H − 1) with weights max(0, 1 − |y − k|) on rows k, so the mean is
    Σ_k,l a_k b_l z_kl with a_k = mean_i max(0, 1 − |i (h − 1) / (H − 1) − k|) (b likewise for columns)."""
    def axis_weights(n_in: int, n_out: int) -> np.ndarray:
        positions = np.arange(n_out) * (n_in - 1) / (n_out - 1)
        return np.maximum(0.0, 1.0 - np.abs(positions[:, None] - np.arange(n_in)[None])).mean(axis=0)

    rows, cols = axis_weights(grid.shape[2], size[0]), axis_weights(grid.shape[3], size[1])
    return np.einsum("k,l,nckl->nc", rows, cols, grid.astype(np.float64))


def soft_margin(pooled: np.ndarray, label: np.ndarray) -> float:
    log_sig = -np.log1p(np.exp(-pooled))
    log_one_minus = -np.log1p(np.exp(pooled))
    return float(-(label * log_sig + (1 - label) * log_one_minus).mean())


def test_classification_pools_the_cam_upsampled_to_each_branch_input():
    model = seam_model()
    image, label = torch.randn(2, 3, 40, 36), torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    _, terms, output = model(image, label)
    full = output.sites["cam"].logits.detach().numpy()  # feature-grid CAM logits, background row dropped
    scaled = output.sites["cam_scaled"].logits.detach().numpy()
    y = label.numpy()
    assert terms["cls"].item() == pytest.approx(0.5 * soft_margin(gap_of_upsampled(full, (40, 36)), y), rel=1e-5)
    # the rescaled branch's input: int(0.3 × size)
    assert terms["scaled.cls"].item() == pytest.approx(0.5 * soft_margin(gap_of_upsampled(scaled, (12, 10)), y),
                                                       rel=1e-5)
    # pooling over the feature grid (the earlier behaviour) gives a different number on the same logits
    grid_loss = 0.5 * soft_margin(full.mean(axis=(2, 3)), y)
    assert abs(terms["cls"].item() - grid_loss) > 1e-4


def test_feature_grid_pooling_is_one_setting_away():
    model = seam_model(pooling="feature_grid")
    label = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    _, terms, output = model(torch.randn(2, 3, 40, 36), label)
    expected = 0.5 * soft_margin(output.sites["cam"].logits.detach().numpy().mean(axis=(2, 3)), label.numpy())
    assert terms["cls"].item() == pytest.approx(expected, rel=1e-5)


def test_importance_sampling_mixes_with_the_upsampled_gap():
    model = seam_model([{"name": "importance_sampling", "params": {"weight": 0.2}}])
    label = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    _, terms, output = model(torch.randn(2, 3, 40, 36), label)
    full = output.sites["cam"].logits.detach().numpy()
    expected = 0.5 * 0.8 * soft_margin(gap_of_upsampled(full, (40, 36)), label.numpy())
    assert terms["cls_gap"].item() == pytest.approx(expected, rel=1e-5)


def test_fc8_has_a_background_row_that_nothing_reads():
    model = seam_model()
    classifier = model.baseline.classifier
    assert classifier.weight.shape[0] == 4  # C + 1 rows, as SEAM's fc8
    image, label = torch.randn(2, 3, 40, 36), torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])

    def run():
        torch.manual_seed(5)  # the same dropout masks in both runs
        _, terms, output = model(image, label)
        model.eval()
        cams = model.baseline.multiscale_cams(image[:1], label[0], (1.0,), True).cams
        model.train()
        return terms, output.sites["cam"].logits, cams

    before = run()
    with torch.no_grad():
        classifier.weight[0] = 100.0  # background row
    after = run()
    for name in before[0]:
        assert torch.equal(before[0][name], after[0][name]), name
    assert torch.equal(before[1], after[1]) and torch.equal(before[2], after[2])
    assert before[1].shape[1] == 3  # the CAM site holds the C foreground rows
    assert seam_model(background_row=False).baseline.classifier.weight.shape[0] == 3


def test_released_min_max_on_a_hand_written_map():
    summed = torch.tensor([[[-1.0, 0.5, 2.0], [0.5, 3.0, 0.5]],     # min 0 (after ReLU), max 3
                           [[1.0, 2.0, 3.0], [1.0, 1.0, 4.0]]])     # min 1 (every pixel positive), max 4
    eps = 1e-5
    expected = np.array([
        # class 0: the ReLU'd pixel (0 < 0 + ε) is zeroed, then (0 − 0 − ε) / (3 − 0 + ε)
        [[-eps / (3 + eps), (0.5 - eps) / (3 + eps), (2 - eps) / (3 + eps)],
         [(0.5 - eps) / (3 + eps), (3 - eps) / (3 + eps), (0.5 - eps) / (3 + eps)]],
        # class 1: the three pixels at the minimum 1 (< 1 + ε) are zeroed, then (0 − 1 − ε) / (4 − 1 + ε)
        [[-(1 + eps) / (3 + eps), (2 - 1 - eps) / (3 + eps), (3 - 1 - eps) / (3 + eps)],
         [-(1 + eps) / (3 + eps), -(1 + eps) / (3 + eps), (4 - 1 - eps) / (3 + eps)]],
    ])
    np.testing.assert_allclose(released_min_max(summed).numpy(), expected, rtol=1e-6, atol=1e-9)
    # what the CAM store holds: the same where SEAM's is >= 0, the zeroed (negative) pixels as 0
    stored = seam_model().baseline.normalise_cams(summed).numpy()
    np.testing.assert_allclose(stored, np.maximum(expected, 0.0), rtol=1e-6, atol=1e-9)
