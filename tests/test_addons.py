"""HFPL add-ons: importance sampling and feature similarity, binomial and multinomial, checked by hand."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from wsss_core.addons.feature_similarity import FeatureSimilarityParams, feature_similarity_loss
from wsss_core.addons.importance_sampling import (ImportanceSampling, ImportanceSamplingParams, draw_pixels,
                                                  importance_sampling_loss, sampling_posterior)
from wsss_core.baselines import BASELINES, Baseline, CamSite, TrainOutput
from wsss_core.baselines.compose import build_model
from wsss_core.errors import ConfigError
from wsss_core.training.config import load_run_config

torch.set_num_threads(1)


def bce(z: float, y: float) -> float:
    return -(y * math.log(1 / (1 + math.exp(-z))) + (1 - y) * math.log(1 - 1 / (1 + math.exp(-z))))


# --- importance sampling ---------------------------------------------------------------------------

def two_class_grid() -> torch.Tensor:
    """Class 0: pixels 0 and 1 at +5; class 1: pixel 0 at +20. 1 × 2 × 2 × 2."""
    z0 = [[5.0, 5.0], [-5.0, -5.0]]
    z1 = [[20.0, -20.0], [-20.0, -20.0]]
    return torch.tensor([[z0, z1]])


@pytest.mark.parametrize("posterior", ["binomial", "multinomial"])
def test_sampling_frequencies_follow_the_posterior(posterior):
    z = two_class_grid()
    zf = z.flatten(2).numpy()[0]
    if posterior == "binomial":
        q = 1 / (1 + np.exp(-zf)) + 1e-5
    else:
        e = np.exp(zf - zf.max(axis=0))
        q = e / e.sum(axis=0) + 1e-5
    expected = q / q.sum(axis=1, keepdims=True)
    gen = torch.Generator().manual_seed(0)
    draws = draw_pixels(sampling_posterior(z.flatten(2), posterior), 20000, gen)[0].numpy()
    freq = np.stack([np.bincount(draws[c], minlength=4) / 20000 for c in range(2)])
    np.testing.assert_allclose(freq, expected, atol=0.015)
    # the two readings differ where another class dominates: pixel 0 of class 0
    assert (expected[0, 0] > 0.45) == (posterior == "binomial")


@pytest.mark.parametrize("posterior", ["binomial", "multinomial"])
def test_importance_sampling_loss_by_hand(posterior):
    z = two_class_grid()
    label = torch.tensor([[1.0, 0.0]])
    loss = importance_sampling_loss(z, label, samples=10, posterior=posterior,
                                    generator=torch.Generator().manual_seed(1))
    # the same seeded draws, scored by hand: mean BCE of the drawn logits against the label
    draws = draw_pixels(sampling_posterior(z.flatten(2), posterior), 10, torch.Generator().manual_seed(1))[0]
    zf = z.flatten(2)[0]
    by_hand = np.mean([bce(float(zf[c, i]), float(label[0, c])) for c in range(2) for i in draws[c].tolist()])
    assert loss.item() == pytest.approx(by_hand, rel=1e-5)
    if posterior == "binomial":
        # every class-0 draw lands on a +5 pixel, every class-1 draw on its +20 pixel
        assert loss.item() == pytest.approx((bce(5.0, 1) + bce(20.0, 0)) / 2, rel=1e-4)
    else:
        # relative to class 1, class 0 dominates the -5 pixels too: some draws land there
        assert set(draws[0].tolist()) & {2, 3}


def test_importance_sampling_mixes_with_gap_and_has_no_gradient_through_sampling():
    z = torch.tensor([[[[2.0, 2.0], [2.0, 2.0]], [[-1.0, -1.0], [-1.0, -1.0]]]], requires_grad=True)
    label = torch.tensor([[1.0, 0.0]])
    addon = ImportanceSampling(ImportanceSamplingParams(samples=10, weight=0.2))
    terms = addon.classification()(z, label)
    expected_each = (bce(2.0, 1) + bce(-1.0, 0)) / 2  # constant maps: GAP and any sample agree
    assert terms["cls_gap"].item() == pytest.approx(0.8 * expected_each, rel=1e-5)
    assert terms["cls_is"].item() == pytest.approx(0.2 * expected_each, rel=1e-5)
    # a pixel never drawn gets no IS gradient
    z2 = torch.tensor([[[[3.0, -30.0], [-30.0, -30.0]]]], requires_grad=True)
    importance_sampling_loss(z2, torch.tensor([[1.0]]), 10, "binomial", torch.Generator().manual_seed(0)).backward()
    grad = z2.grad.flatten()
    assert grad[0] != 0 and torch.all(grad[1:] == 0)
    pure = ImportanceSampling(ImportanceSamplingParams(weight=1.0)).classification()(z, label)
    assert set(pure) == {"cls_is"}


def test_importance_sampling_stream_is_seeded_and_restorable():
    z = torch.randn(2, 3, 4, 4)
    label = torch.tensor([[1.0, 0, 1], [0, 1, 0]])
    addon = ImportanceSampling(ImportanceSamplingParams())
    addon.seed(7)
    classify = addon.classification()
    first = classify(z, label)["cls_is"]
    state = addon.state_dict()
    second = classify(z, label)["cls_is"]
    other = ImportanceSampling(ImportanceSamplingParams())
    other.load_state_dict(state)
    assert other.classification()(z, label)["cls_is"].item() == second.item()
    fresh = ImportanceSampling(ImportanceSamplingParams())
    fresh.seed(7)
    assert fresh.classification()(z, label)["cls_is"].item() == first.item()


# --- feature similarity (its values against HFPL's formula: tests/test_fsl_fidelity.py) ----------------

def test_feature_similarity_prefers_maps_that_follow_colour_edges():
    rgb = torch.zeros(1, 3, 8, 8)
    rgb[..., :, 4:] = 1.0  # a vertical colour edge between columns 3 and 4
    label = torch.tensor([[1.0]])
    follows = torch.full((1, 1, 8, 8), -3.0)
    follows[..., :, 4:] = 3.0
    crosses = torch.full((1, 1, 8, 8), -3.0)
    crosses[..., 4:, :] = 3.0
    params = FeatureSimilarityParams(sigma=2.0)
    for posterior in ("binomial", "multinomial"):
        good = feature_similarity_loss(follows, label, rgb, params, posterior)
        bad = feature_similarity_loss(crosses, label, rgb, params, posterior)
        assert good < bad


def test_feature_similarity_gradient_is_finite():
    z = torch.randn(2, 3, 6, 6, requires_grad=True)
    loss = feature_similarity_loss(z, torch.tensor([[1.0, 0, 1], [0, 0, 1]]), torch.rand(2, 3, 24, 24),
                                   FeatureSimilarityParams(), "binomial")
    loss.backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


# --- composition -----------------------------------------------------------------------------------

def test_any_baseline_composes_with_addons_from_config():
    cfg = load_run_config(None, ["addons=[{name: importance_sampling, posterior: multinomial}, "
                                 "{name: feature_similarity, params: {weight: 0.5}}]"])
    model = build_model(cfg.model, cfg.addons, num_classes=3)
    total, terms, output = model(torch.randn(2, 3, 32, 32), torch.tensor([[1.0, 0, 1], [0, 1, 0]]))
    assert set(terms) == {"cls_gap", "cls_is", "fsl"}
    assert output.sites["cam"].logits.shape == (2, 3, 8, 8)
    assert total.item() == pytest.approx(sum(v.item() for v in terms.values()), rel=1e-6)


@dataclass
class _NoOptions:
    pass


class _PixelBaseline(Baseline):
    """An AMN-like baseline: per-pixel loss, no image-level pooling."""

    uses_pooling = False

    def forward_train(self, image, label):
        logits = self.backbone(image)[:, : self.num_classes]
        return TrainOutput({"pcl": logits.mean()}, {"fg": CamSite(logits, image, label)})


if "test_pixel" not in BASELINES:
    BASELINES.register("test_pixel")(_PixelBaseline)


def test_config_refuses_pooling_addon_on_a_baseline_without_pooling_and_two_poolers():
    with pytest.raises(ConfigError, match="no image-level pooling"):
        load_run_config(None, ["model.baseline=test_pixel", "addons=[{name: importance_sampling}]"])
    cfg = load_run_config(None, ["model.baseline=test_pixel", "addons=[{name: feature_similarity}]"])
    _, terms, _ = build_model(cfg.model, cfg.addons, 2)(torch.randn(1, 3, 16, 16), torch.tensor([[1.0, 0]]))
    assert set(terms) == {"pcl", "fsl"}
    with pytest.raises(ConfigError, match="more than once"):
        load_run_config(None, ["addons=[{name: feature_similarity}, {name: feature_similarity}]"])
