"""HFPL feature similarity loss (FSL): CAMs should be smooth where colours agree and may jump at edges.

Targets y (N × (C+1) × h × w, background first):
- binomial: per image and class, ReLU CAM min-max normalised, (p − min)/(max − min + 1e-5), zeroed
  for classes absent from the label; background = 1 − max over foreground channels.
- multinomial (our reading of "y from the softmax posterior"): softmax over [0, z_c for present c],
  i.e. a background logit fixed at 0 and absent classes excluded; channel 0 is the background.
Colour x: the input image in [0, 1] RGB, resized (bilinear) to the CAM grid, no gradient.
For pairs (i, j): d_x = ‖x_i − x_j‖₁ / 3 clamped to [eps, 1 − eps]; ψ = tanh(μ + logit(d_x));
d_y = ½‖y_i − y_j‖²; k_ij = exp(−‖p_i − p_j‖² / (2σ²)) over grid positions.
L = −(1/(N·h·w)) Σ_ij k_ij d_y ψ, summed over ordered pairs.

All pairs costs O((hw)²) memory; the windowed form visits each grid offset (a, b) with |a|, |b| ≤ r
once (shifted differences, O(N·C·h·w) memory), using the symmetry of the pair terms to do half of them,
and gets its gradient in closed form (the loss is quadratic in y) instead of keeping one autograd
tensor per offset.
Both truncate the kernel to that square window, so they agree when given the same radius.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ..baselines.base import CamSite
from ..errors import ConfigError
from . import ADDONS
from .base import AddOn, Posterior


@dataclass
class FeatureSimilarityParams:
    weight: float = 1.0  # loss weight (1.0 VOC, 0.2 COCO)
    mu: float = 2.5  # μ: colour-difference offset inside tanh
    sigma: float = 5.0  # σ of the spatial kernel, in CAM cells
    radius: int | None = None  # window radius r in cells; null = ceil(3σ)
    form: Literal["windowed", "all_pairs"] = "windowed"
    eps: float = 1e-5  # keeps d_x away from 0 and 1 before the logit

    def validate(self, where: str) -> None:
        if self.sigma <= 0:
            raise ConfigError(f"{where}.sigma: must be positive, got {self.sigma}")
        if self.radius is not None and self.radius < 1:
            raise ConfigError(f"{where}.radius: must be at least 1 (or null for ceil(3σ)), got {self.radius}")
        if not 0.0 < self.eps < 0.5:
            raise ConfigError(f"{where}.eps: must be in (0, 0.5), got {self.eps}")

    def window_radius(self) -> int:
        return self.radius if self.radius is not None else math.ceil(3 * self.sigma)


def binomial_targets(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """y from independent per-class maps: min-max normalised ReLU CAMs, masked by the label, bg = 1 − max."""
    p = F.relu(logits.float())
    flat = p.flatten(2)
    low = flat.min(dim=2).values[:, :, None, None]
    high = flat.max(dim=2).values[:, :, None, None]
    fg = (p - low) / (high - low + 1e-5) * label.float()[:, :, None, None]
    bg = 1.0 - fg.max(dim=1, keepdim=True).values
    return torch.cat([bg, fg], dim=1)


def multinomial_targets(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """y from a softmax over [background logit 0, present classes' logits]; absent classes get 0."""
    z = logits.float().masked_fill(label[:, :, None, None] < 0.5, float("-inf"))
    bg = torch.zeros_like(z[:, :1])
    return torch.softmax(torch.cat([bg, z], dim=1), dim=1)


def colour_potential(diff_l1: torch.Tensor, mu: float, eps: float) -> torch.Tensor:
    """ψ = tanh(μ + logit(d_x)) for d_x = ‖x_i − x_j‖₁ / 3."""
    d_x = (diff_l1 / 3.0).clamp(eps, 1.0 - eps)
    return torch.tanh(mu + torch.logit(d_x))


def fsl_all_pairs(y: torch.Tensor, rgb: torch.Tensor, mu: float, sigma: float, radius: int | None,
                  eps: float) -> torch.Tensor:
    """Reference form over every pair of cells (O((hw)²) memory); ``radius`` truncates the kernel."""
    n, _, h, w = y.shape
    yf = y.flatten(2).transpose(1, 2)  # N × P × C
    xf = rgb.flatten(2).transpose(1, 2)  # N × P × 3
    rows, cols = torch.meshgrid(torch.arange(h, device=y.device), torch.arange(w, device=y.device), indexing="ij")
    dr = (rows.flatten()[:, None] - rows.flatten()[None, :]).float()
    dc = (cols.flatten()[:, None] - cols.flatten()[None, :]).float()
    kernel = torch.exp(-(dr ** 2 + dc ** 2) / (2 * sigma ** 2))
    if radius is not None:
        kernel = kernel * ((dr.abs() <= radius) & (dc.abs() <= radius))
    sq = (yf ** 2).sum(-1)
    d_y = 0.5 * (sq[:, :, None] + sq[:, None, :] - 2 * yf @ yf.transpose(1, 2)).clamp_min(0)
    diff_l1 = sum((xf[:, :, k, None] - xf[:, None, :, k]).abs() for k in range(xf.shape[-1]))
    psi = colour_potential(diff_l1, mu, eps)
    return -(kernel * d_y * psi).sum() / (n * h * w)


def window_offsets(radius: int, h: int, w: int) -> list[tuple[int, int]]:
    """One offset of each ± pair inside the window (a > 0, or a = 0 and b > 0), limited to the grid."""
    rows, cols = min(radius, h - 1), min(radius, w - 1)
    return [(a, b) for a in range(0, rows + 1) for b in range(-cols, cols + 1) if a > 0 or b > 0]


def fsl_windowed(y: torch.Tensor, rgb: torch.Tensor, mu: float, sigma: float, radius: int,
                 eps: float) -> torch.Tensor:
    """Same sum as :func:`fsl_all_pairs` with the kernel truncated to |a|, |b| ≤ radius, in O(N·C·h·w)
    memory whatever the radius.

    With W_ij = k_ij ψ_ij (symmetric, no gradient) the loss is a quadratic form in y, so its gradient is
    −(2/(N·h·w)) (D ⊙ y − W y) with D_i = Σ_j W_ij. One no-grad pass over the window offsets (shifted
    differences) accumulates the value, D and W y; autograd then only keeps those, not one tensor per
    offset.
    """
    n, _, h, w = y.shape
    with torch.no_grad():
        value = y.new_zeros((), dtype=torch.float64)
        degree = torch.zeros_like(y[:, :1])
        weighted = torch.zeros_like(y)
        for a, b in window_offsets(radius, h, w):
            # cells i = (r, c) and j = (r + a, c + b) that both lie on the grid
            c0, c1 = max(0, -b), w - max(0, b)
            at_i = (slice(None), slice(None), slice(0, h - a), slice(c0, c1))
            at_j = (slice(None), slice(None), slice(a, h), slice(c0 + b, c1 + b))
            yi, yj = y[at_i], y[at_j]
            psi = colour_potential((rgb[at_i] - rgb[at_j]).abs().sum(1, keepdim=True), mu, eps)
            pair_weight = math.exp(-(a * a + b * b) / (2 * sigma ** 2)) * psi
            value += (pair_weight * 0.5 * ((yi - yj) ** 2).sum(1, keepdim=True)).sum(dtype=torch.float64)
            degree[at_i] += pair_weight
            degree[at_j] += pair_weight
            weighted[at_i] += pair_weight * yj
            weighted[at_j] += pair_weight * yi
        # each unordered pair appears twice in the ordered sum
        loss_value = (-2.0 * value / (n * h * w)).to(y.dtype)
    # surrogate with the right gradient, −(2/(N·h·w)) Σ (D y − W y), and zero value
    surrogate = -(degree * y * y - 2.0 * weighted * y).sum() / (n * h * w)
    return loss_value + surrogate - surrogate.detach()


def feature_similarity_loss(logits: torch.Tensor, label: torch.Tensor, rgb: torch.Tensor,
                            params: FeatureSimilarityParams, posterior: Posterior) -> torch.Tensor:
    """L_FS of CAM logits (N × C × h × w) against the image ``rgb`` (N × 3 × H × W in [0, 1])."""
    targets = binomial_targets if posterior == "binomial" else multinomial_targets
    y = targets(logits, label)
    with torch.no_grad():
        x = F.interpolate(rgb.float(), size=logits.shape[-2:], mode="bilinear", align_corners=False)
    if params.form == "all_pairs":
        return fsl_all_pairs(y, x, params.mu, params.sigma, params.radius, params.eps)
    return fsl_windowed(y, x, params.mu, params.sigma, params.window_radius(), params.eps)


@ADDONS.register("feature_similarity")
class FeatureSimilarity(AddOn):
    name = "feature_similarity"
    Params = FeatureSimilarityParams

    def losses(self, site: CamSite, rgb: torch.Tensor) -> dict[str, torch.Tensor]:
        loss = feature_similarity_loss(site.logits, site.label, rgb, self.params, self.posterior)
        return {"fsl": self.params.weight * loss}
