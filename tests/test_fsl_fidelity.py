"""Feature similarity loss = HFPL's (arvijj/hfpl tool/probutils.py + train_cam_voc.py), pinned by formula.

The expected values are written out pair by pair here: SEAM's max_norm targets, ψ = tanh(μ + log((d_x + ε) /
(1 − d_x + ε))), d_y = ½‖y_i − y_j‖², the normalised Gaussian kernel exp(−d²/(2σ²)) / (2πσ²), every
ordered pair, −1/(N·h·w).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wsss_core.addons.feature_similarity import (FORMS, FeatureSimilarity, FeatureSimilarityParams,
                                                 binomial_targets, choose_form, feature_similarity_loss,
                                                 multinomial_targets, resize_to_grid)
from wsss_core.baselines import CamSite
from wsss_core.errors import ConfigError

torch.set_num_threads(1)

FORM_NAMES = sorted(FORMS)


def hfpl_formula(z: torch.Tensor, label: list[float], rgb: torch.Tensor, mu=2.5, sigma=5.0,
                 radius: float | None = None, posterior="binomial") -> torch.Tensor:
    """The loss for one image (C × h × w logits, 3 × h × w image already on the grid), pair by pair."""
    c, h, w = z.shape
    if posterior == "binomial":
        fg = []
        for k in range(c):
            p = torch.relu(z[k])
            low, high = p.min(), p.max()
            fg.append(torch.relu(p - low - 1e-5) / (high - low + 1e-5) * label[k])
        fg = torch.stack(fg)
        y = torch.cat([1 - fg.max(dim=0, keepdim=True).values, fg])
    else:
        logits = [torch.zeros(h, w, dtype=z.dtype)] + [z[k] if label[k] else torch.full((h, w), -math.inf)
                                                       for k in range(c)]
        y = torch.softmax(torch.stack(logits), dim=0)
    cells = [(r, q) for r in range(h) for q in range(w)]
    total = torch.zeros((), dtype=z.dtype)
    for ri, ci in cells:
        for rj, cj in cells:
            squared = (ri - rj) ** 2 + (ci - cj) ** 2
            if radius is not None and squared > radius ** 2:
                continue
            d_x = min(1.0, float((rgb[:, ri, ci] - rgb[:, rj, cj]).abs().sum()) / 3)
            psi = math.tanh(mu + math.log((d_x + 1e-5) / (1 - d_x + 1e-5)))
            d_y = 0.5 * ((y[:, ri, ci] - y[:, rj, cj]) ** 2).sum()
            k = math.exp(-squared / (2 * sigma ** 2)) / (2 * math.pi * sigma ** 2)
            total = total + k * d_y * psi
    return -total / (h * w)


def grid3() -> tuple[torch.Tensor, list[float], torch.Tensor]:
    """3 × 3 grid, 1 image, 2 foreground classes, a colour edge between the first and the other columns."""
    z = torch.tensor([[[2.0, -1.0, 0.5], [3.0, 1.5, -0.2], [0.7, 2.2, -1.3]],
                      [[-0.5, 1.0, 2.5], [0.1, -2.0, 1.2], [1.8, 0.4, 0.9]]], dtype=torch.float64)
    rgb = torch.tensor([[[0.9, 0.2, 0.25], [0.85, 0.2, 0.3], [0.95, 0.1, 0.2]],
                        [[0.1, 0.6, 0.55], [0.15, 0.65, 0.6], [0.1, 0.6, 0.5]],
                        [[0.2, 0.3, 0.35], [0.2, 0.25, 0.3], [0.3, 0.3, 0.4]]], dtype=torch.float64)
    return z, [1.0, 1.0], rgb


@pytest.mark.parametrize("form", FORM_NAMES)
@pytest.mark.parametrize("truncate", [None, 5.0, 0.3])  # 0.3σ = 1.5 cells: the 8 neighbours only
def test_3x3_loss_and_gradient_equal_hfpl_formula(form, truncate):
    z, label, rgb = grid3()
    radius = None if truncate is None else truncate * 5.0
    logits = z.clone().requires_grad_(True)
    expected = hfpl_formula(logits, label, rgb, radius=radius)
    expected.backward()
    expected_grad = logits.grad.clone()
    logits.grad = None
    got = feature_similarity_loss(logits[None], torch.tensor([label]), rgb[None].float(),
                                  FeatureSimilarityParams(form=form, truncate=truncate), "binomial")
    got.backward()
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(logits.grad, expected_grad, rtol=1e-4, atol=1e-9)
    if truncate == 0.3:  # the truncation drops pairs: the test would see a radius that did nothing
        assert abs(expected.item() - hfpl_formula(z, label, rgb).item()) > 1e-3 * abs(expected.item())


@pytest.mark.parametrize("posterior", ["binomial", "multinomial"])
@pytest.mark.parametrize("form", FORM_NAMES)
def test_loss_by_formula_with_an_absent_class_and_two_images(posterior, form):
    gen = torch.Generator().manual_seed(5)
    z = torch.randn(2, 3, 3, 4, generator=gen, dtype=torch.float64) * 2
    labels = [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]
    rgb = torch.rand(2, 3, 3, 4, generator=gen, dtype=torch.float64)
    expected = sum(hfpl_formula(z[i], labels[i], rgb[i], posterior=posterior) for i in range(2)) / 2
    got = feature_similarity_loss(z, torch.tensor(labels), rgb.float(), FeatureSimilarityParams(form=form),
                                  posterior)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_binomial_targets_are_seams_max_norm():
    """relu(relu(z) − min − 1e-5) / (max − min + 1e-5): a cell within 1e-5 of the minimum gets exactly 0."""
    z = torch.tensor([[[[-1.0, 5e-6, 2.0, 1.0]]], [[[0.5, 0.5, 0.5, 0.5]]]])  # 2 images, 1 class, 1 × 4
    y = binomial_targets(z, torch.tensor([[1.0], [1.0]]))
    fg = torch.tensor([0.0, 0.0, (2 - 1e-5) / (2 + 1e-5), (1 - 1e-5) / (2 + 1e-5)])
    torch.testing.assert_close(y[0, 1, 0], fg, rtol=1e-6, atol=0)
    torch.testing.assert_close(y[0, 0, 0], 1 - fg, rtol=1e-6, atol=0)
    torch.testing.assert_close(y[1, 1, 0], torch.zeros(4), rtol=0, atol=0)  # a flat map: 0 everywhere
    assert (binomial_targets(z, torch.tensor([[0.0], [1.0]]))[0, 1] == 0).all()  # an absent class


def test_weight_one_is_hfpl_weight_one():
    """weight 1.0 ⇒ the add-on's term is the formula itself (the unnormalised kernel made it 2πσ² ≈ 157×)."""
    z, label, rgb = grid3()
    expected = hfpl_formula(z, label, rgb).item()
    site = CamSite(z[None].float(), torch.zeros(1, 3, 3, 3), torch.tensor([label]))
    for weight in (1.0, 0.2):
        term = FeatureSimilarity(FeatureSimilarityParams(weight=weight), "binomial").losses(site, rgb[None].float())
        assert term["fsl"].item() == pytest.approx(weight * expected, rel=1e-5)
    assert 2 * math.pi * 25 == pytest.approx(157.08, abs=0.01)  # what the old kernel multiplied by


def test_image_is_resized_to_the_grid_with_align_corners_true():
    """HFPL resizes with align_corners=True: 5 × 5 → 3 × 3 samples input pixels 0, 2, 4 exactly."""
    gen = torch.Generator().manual_seed(2)
    image = torch.rand(1, 3, 5, 5, generator=gen)
    torch.testing.assert_close(resize_to_grid(image, (3, 3)), image[:, :, ::2, ::2], rtol=0, atol=1e-7)
    z, label, _ = grid3()
    expected = hfpl_formula(z, label, image[0, :, ::2, ::2].double()).item()
    got = feature_similarity_loss(z[None].float(), torch.tensor([label]), image, FeatureSimilarityParams(),
                                  "binomial").item()
    assert got == pytest.approx(expected, rel=1e-5)
    misaligned = F.interpolate(image, size=(3, 3), mode="bilinear", align_corners=False)
    assert not torch.allclose(misaligned, image[:, :, ::2, ::2], atol=1e-3)


def test_image_outside_unit_range_is_clamped_as_hfpl():
    z, label, rgb = grid3()
    outside = rgb.clone()
    outside[0, 0, 0], outside[1, 2, 2], outside[2, 1, 1] = -0.4, 1.6, 1.3
    expected = hfpl_formula(z, label, outside.clamp(0.0, 1.0)).item()
    assert expected != pytest.approx(hfpl_formula(z, label, outside).item(), rel=1e-3)
    got = feature_similarity_loss(z[None].float(), torch.tensor([label]), outside[None].float(),
                                  FeatureSimilarityParams(), "binomial").item()
    assert got == pytest.approx(expected, rel=1e-5)


def noisy_image(n: int, size: int, gen: torch.Generator) -> torch.Tensor:
    regions = F.interpolate(torch.rand(n, 3, 5, 5, generator=gen), size=(size, size), mode="nearest")
    return (regions + 0.1 * torch.randn(n, 3, size, size, generator=gen)).clamp(0.0, 1.0)


def loss_and_grad(logits, label, image, params):
    z = logits.clone().requires_grad_(True)
    loss = feature_similarity_loss(z, label, image, params, "binomial")
    loss.backward()
    return loss.item(), z.grad


@pytest.mark.parametrize("kind, classes", [("iid", 4), ("smooth", 4), ("iid", 20)])
def test_default_agrees_with_untruncated_loss_on_seam_grid(kind, classes):
    """56 × 56 (SEAM's CAM grid of a 448 crop), N = 2: the default within 1e-3 in value and gradient
    (auto: windowed for 4 classes, blocked for 20)."""
    gen = torch.Generator().manual_seed(11)
    if kind == "iid":
        logits = 3 * torch.randn(2, classes, 56, 56, generator=gen)
    else:  # CAM-like blobs: far pairs differ more than near ones, which weighs the dropped tail more
        logits = F.interpolate(3 * torch.randn(2, classes, 7, 7, generator=gen), size=(56, 56), mode="bilinear")
    label = (torch.arange(classes) % torch.tensor([[2], [3]]) == 0).float()  # classes 0, 2, … / 0, 3, …
    image = noisy_image(2, 448, gen)
    value, grad = loss_and_grad(logits, label, image, FeatureSimilarityParams())
    exact_value, exact_grad = loss_and_grad(logits, label, image, FeatureSimilarityParams(form="blocked",
                                                                                          truncate=None))
    assert abs(value - exact_value) <= 1e-3 * abs(exact_value)
    assert (grad - exact_grad).norm() <= 1e-3 * exact_grad.norm()
    # the former radius, 3σ, is too short for this tolerance: the test can tell truncations apart
    short_value, short_grad = loss_and_grad(logits, label, image, FeatureSimilarityParams(truncate=3.0))
    assert abs(short_value - exact_value) > 1e-3 * abs(exact_value)
    assert (short_grad - exact_grad).norm() > 1e-3 * exact_grad.norm()


@pytest.mark.parametrize("truncate", [None, 0.6, 1.5])
def test_forms_agree_on_a_larger_grid(truncate):
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(2, 4, 12, 10, generator=gen)
    label = torch.tensor([[1.0, 0, 1, 1], [0, 1, 0, 0]])
    rgb = torch.rand(2, 3, 12, 10, generator=gen)
    for targets in (binomial_targets, multinomial_targets):
        results = {}
        for name, form in FORMS.items():
            y_logits = z.clone().requires_grad_(True)
            loss = form(targets(y_logits, label), rgb, 2.5, 5.0, None if truncate is None else truncate * 5.0, 1e-5)
            loss.backward()
            results[name] = (loss.item(), y_logits.grad)
        reference = results["all_pairs"]
        for name in ("blocked", "windowed"):
            assert results[name][0] == pytest.approx(reference[0], rel=1e-5)
            torch.testing.assert_close(results[name][1], reference[1], rtol=1e-4, atol=1e-8)


def test_blocked_form_is_the_same_whatever_the_block_size():
    gen = torch.Generator().manual_seed(4)
    y = binomial_targets(torch.randn(2, 3, 9, 7, generator=gen), torch.tensor([[1.0, 1, 0], [0, 1, 1]]))
    rgb = torch.rand(2, 3, 9, 7, generator=gen)
    values = [FORMS["blocked"](y, rgb, 2.5, 5.0, None, 1e-5, block_entries=entries).item()
              for entries in (1, 2 * 14 * 14, 2 * 63 * 63)]  # one row, two rows, the whole grid per block
    assert values == pytest.approx([values[-1]] * 3, rel=1e-6)


def test_auto_form_takes_blocks_on_small_grids_or_many_classes_and_offsets_on_large_grids():
    assert choose_form(32, 32, 5, 25.0) == "blocked"
    assert choose_form(56, 56, 5, 25.0) == "windowed"  # 4 classes + background
    assert choose_form(56, 56, 21, 25.0) == "blocked"  # VOC
    assert choose_form(128, 128, 21, 25.0) == "windowed"
    assert choose_form(128, 128, 5, None) == "blocked"  # untruncated: every offset, so blocks
    params = FeatureSimilarityParams()
    assert params.form == "auto" and params.radius() == 25.0


@pytest.mark.parametrize("override, message", [
    ({"truncate": 0.1}, "truncate·sigma = 0.5 cells keeps no pair"),
    ({"sigma": 0.0}, "sigma: must be positive"),
    ({"eps": 0.0}, "eps: must be positive"),
])
def test_invalid_params_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        FeatureSimilarityParams(**override).validate("addons[0].params")


def test_formula_helper_matches_numpy_on_one_pair():
    """Guards the test's own formula: two cells, numbers worked out by hand."""
    z = torch.tensor([[[1.0, 3.0]]], dtype=torch.float64)  # one class, 1 × 2 grid
    rgb = torch.tensor([[[0.0, 0.3]], [[0.0, 0.3]], [[0.0, 0.3]]], dtype=torch.float64)
    # y_fg = [0, (2 − 1e-5)/(2 + 1e-5)], y_bg = 1 − y_fg; d_x = 0.3; k = e^{−1/50}/(50π); two ordered pairs
    fg = (2 - 1e-5) / (2 + 1e-5)
    d_y = 0.5 * (fg ** 2 + fg ** 2)
    psi = np.tanh(2.5 + np.log((0.3 + 1e-5) / (0.7 + 1e-5)))
    k = np.exp(-1 / 50) / (50 * np.pi)
    assert hfpl_formula(z, [1.0], rgb).item() == pytest.approx(-2 * k * d_y * psi / 2, rel=1e-12)
