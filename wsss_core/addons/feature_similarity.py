"""HFPL feature similarity loss (FSL): CAMs should be smooth where colours agree and may jump at edges.

What matches HFPL's code (``feature_similarity_loss`` in its tool/probutils.py, called from train_cam_voc.py):
- Targets y (N × (C+1) × h × w, background first), binomial: SEAM's ``max_norm`` of the CAM logits,
  relu(relu(z) − min − 1e-5) / (max − min + 1e-5) per image and class (min/max of relu(z), gradient through
  them), zeroed for classes absent from the label; background = 1 − max over the foreground channels.
  Multinomial (this project's reading of "y from the softmax posterior"; HFPL has no such switch): softmax
  over [0, z_c for present c], a background logit fixed at 0 and absent classes excluded.
- Colour x: the input image, RGB in [0, 1], resized to the CAM grid bilinearly with align_corners=True,
  clamped to [0, 1], no gradient.
- For every ordered pair (i, j), i = j included (it adds 0): d_x = ‖x_i − x_j‖₁ / 3 clamped to [0, 1];
  ψ = tanh(μ + log((d_x + ε) / (1 − d_x + ε))) with ε = 1e-5; d_y = ½‖y_i − y_j‖²;
  k_ij = exp(−‖p_i − p_j‖² / (2σ²)) / (2πσ²), the normalised Gaussian density of the grid distance,
  untruncated. L = −(1/(N·h·w)) Σ_ij k_ij d_y ψ. So ``weight`` 1.0 here is HFPL's 1.0 (VOC; COCO 0.2).

Truncation and forms (the cost, not the loss, is what differs between forms):
- ``truncate`` (default 5): pairs farther apart than truncate·σ cells (25 at σ = 5; a disc) are dropped,
  which drops exp(−truncate²/2) = 3.7e-6 of the kernel's mass. On SEAM's 56 × 56 grid the default is within
  1e-5 of the untruncated loss in value and gradient (1e-3 is what the tests require); a radius of 3σ,
  the former one, is 2–3 % off there (bench/RESULTS.md). ``truncate: null`` keeps every pair, HFPL's
  literal sum; nothing is dropped on a grid whose diagonal is within the radius (up to 18 × 18 at the default).
- ``blocked``: all pairs in blocks of grid rows (``BLOCK_ENTRIES`` pairs at a time, each unordered pair of
  blocks once, matrix products for W·y), skipping row blocks beyond the radius.
- ``windowed``: one pass per grid offset (a, b) within the radius (shifted differences), half of them by
  symmetry; its cost grows with h·w·radius², so it wins on grids much wider than the radius.
- ``auto`` (default): :func:`choose_form` picks the cheaper of the two by a cost model: ``blocked`` on small
  grids and for many classes (VOC's 21 channels on 56 × 56), ``windowed`` on large grids.
- ``all_pairs``: the formula materialised with autograd, O((h·w)²) memory; the reference for tests.
``blocked`` and ``windowed`` need O(N·C·h·w) memory (plus one block) and get the gradient in closed form:
with W_ij = k_ij ψ_ij (symmetric, no gradient) the loss is quadratic in y, ∂L/∂y_i = −(2/(N·h·w))
Σ_j W_ij (y_i − y_j), so one no-grad pass accumulates it and autograd keeps nothing per block or offset.
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

MAX_NORM_EPS = 1e-5  # SEAM's max_norm e, which HFPL uses for the binomial targets
BLOCK_ENTRIES = 1 << 17  # pairs per block (N · cells_i · cells_j): 512 KiB per temporary, cache-sized


@dataclass
class FeatureSimilarityParams:
    weight: float = 1.0  # loss weight, HFPL's scale (1.0 VOC, 0.2 COCO)
    mu: float = 2.5  # μ: colour-difference offset inside tanh
    sigma: float = 5.0  # σ of the spatial kernel, in CAM cells
    truncate: float | None = 5.0  # drop pairs farther apart than truncate·σ cells; null = every pair (HFPL)
    form: Literal["auto", "blocked", "windowed", "all_pairs"] = "auto"  # auto: see choose_form
    eps: float = 1e-5  # ε in log((d_x + ε) / (1 − d_x + ε)), HFPL's 1e-5

    def validate(self, where: str) -> None:
        if self.sigma <= 0:
            raise ConfigError(f"{where}.sigma: must be positive, got {self.sigma}")
        if self.truncate is not None and self.truncate * self.sigma < 1:
            raise ConfigError(f"{where}.truncate: truncate·sigma = {self.truncate * self.sigma:g} cells keeps no "
                              f"pair of cells; use at least {1 / self.sigma:g} (1 cell), or null for every pair")
        if self.eps <= 0:
            raise ConfigError(f"{where}.eps: must be positive, got {self.eps}")

    def radius(self) -> float | None:
        """The truncation radius in cells (null: none)."""
        return None if self.truncate is None else self.truncate * self.sigma


def binomial_targets(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """y from independent per-class maps: SEAM's max_norm of the CAMs, masked by the label, bg = 1 − max."""
    p = F.relu(logits.float())
    flat = p.flatten(2)
    low = flat.min(dim=2).values[:, :, None, None]
    high = flat.max(dim=2).values[:, :, None, None]
    fg = F.relu(p - low - MAX_NORM_EPS) / (high - low + MAX_NORM_EPS) * label.float()[:, :, None, None]
    bg = 1.0 - fg.max(dim=1, keepdim=True).values
    return torch.cat([bg, fg], dim=1)


def multinomial_targets(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """y from a softmax over [background logit 0, present classes' logits]; absent classes get 0."""
    z = logits.float().masked_fill(label[:, :, None, None] < 0.5, float("-inf"))
    bg = torch.zeros_like(z[:, :1])
    return torch.softmax(torch.cat([bg, z], dim=1), dim=1)


def colour_potential(diff_l1: torch.Tensor, mu: float, eps: float) -> torch.Tensor:
    """ψ = tanh(μ + log((d_x + ε) / (1 − d_x + ε))) for d_x = ‖x_i − x_j‖₁ / 3 clamped to [0, 1], as HFPL."""
    d_x = (diff_l1 / 3.0).clamp(0.0, 1.0)
    return torch.tanh(mu + torch.log((d_x + eps) / (1.0 - d_x + eps)))


def weighted_colour_potential(diff_l1: torch.Tensor, kernel: torch.Tensor | float, mu: float,
                              eps: float) -> torch.Tensor:
    """k · :func:`colour_potential`, overwriting ``diff_l1``, in cheap passes without log or tanh.

    With u = ‖x_i − x_j‖₁ clamped to [0, 3], p = e^μ (u + 3ε) and q = 3 + 3ε − u:
    tanh(μ + log((d_x + ε) / (1 − d_x + ε))) = (p² − q²) / (p² + q²) = 1 − 2q² / (p² + q²).
    """
    u = diff_l1.clamp_(0.0, 3.0)
    q = ((3.0 + 3.0 * eps) - u).square_()
    p = u.mul_(math.exp(mu)).add_(math.exp(mu) * 3.0 * eps).square_().add_(q)  # p² + q²
    return q.div_(p).mul_(-2.0 * kernel).add_(kernel)


def spatial_kernel(squared_distance: torch.Tensor | float, sigma: float) -> torch.Tensor | float:
    """k = exp(−d² / (2σ²)) / (2πσ²), the normalised 2-D Gaussian density (HFPL's kernel)."""
    norm = 2.0 * math.pi * sigma ** 2
    if isinstance(squared_distance, torch.Tensor):
        return torch.exp(-squared_distance / (2.0 * sigma ** 2)) / norm
    return math.exp(-squared_distance / (2.0 * sigma ** 2)) / norm


def fsl_all_pairs(y: torch.Tensor, rgb: torch.Tensor, mu: float, sigma: float, radius: float | None,
                  eps: float) -> torch.Tensor:
    """The formula over every ordered pair of cells, materialised (O((hw)²) memory); the tests' reference."""
    n, _, h, w = y.shape
    yf = y.flatten(2).transpose(1, 2)  # N × P × C
    xf = rgb.flatten(2).transpose(1, 2)  # N × P × 3
    rows, cols = torch.meshgrid(torch.arange(h, device=y.device), torch.arange(w, device=y.device), indexing="ij")
    dr = (rows.flatten()[:, None] - rows.flatten()[None, :]).to(y.dtype)
    dc = (cols.flatten()[:, None] - cols.flatten()[None, :]).to(y.dtype)
    squared = dr ** 2 + dc ** 2
    kernel = spatial_kernel(squared, sigma)
    if radius is not None:
        kernel = kernel * (squared <= radius ** 2)
    d_y = 0.5 * ((yf[:, :, None, :] - yf[:, None, :, :]) ** 2).sum(-1)
    diff_l1 = (xf[:, :, None, :] - xf[:, None, :, :]).abs().sum(-1)
    psi = colour_potential(diff_l1, mu, eps)
    return -(kernel * d_y * psi).sum() / (n * h * w)


def _loss_from_pull(y: torch.Tensor, pull: torch.Tensor) -> torch.Tensor:
    """The loss and its gradient from pull_i = Σ_j W_ij (y_i − y_j) (same layout as y, no gradient).

    Σ_ij W_ij ½‖y_i − y_j‖² = Σ_i y_i · pull_i, and ∂/∂y_i of it is 2 pull_i (W symmetric).
    """
    n, _, h, w = y.shape
    with torch.no_grad():
        centred = y - y.mean(dim=(2, 3), keepdim=True)  # Σ_i pull_i = 0, so centring only cuts rounding
        value = -(centred.double() * pull.double()).sum() / (n * h * w)
    surrogate = -2.0 * (pull * y).sum() / (n * h * w)  # right gradient; its value is cancelled below
    return value.to(y.dtype) + surrogate - surrogate.detach()


def window_offsets(radius: float | None, h: int, w: int) -> list[tuple[int, int]]:
    """One offset of each ± pair (a > 0, or a = 0 and b > 0) within ``radius`` (null: all), on the grid."""
    reach_r, reach_c = h - 1, w - 1
    if radius is not None:
        reach_r, reach_c = min(reach_r, int(radius)), min(reach_c, int(radius))
    return [(a, b) for a in range(0, reach_r + 1) for b in range(-reach_c, reach_c + 1)
            if (a > 0 or b > 0) and (radius is None or a * a + b * b <= radius ** 2)]


def fsl_windowed(y: torch.Tensor, rgb: torch.Tensor, mu: float, sigma: float, radius: float | None,
                 eps: float) -> torch.Tensor:
    """:func:`fsl_all_pairs` one grid offset at a time (shifted differences), O(N·C·h·w) memory."""
    n, _, h, w = y.shape
    with torch.no_grad():
        yc = y - y.mean(dim=(2, 3), keepdim=True)  # Σ_j W_ij (y_i − y_j) is the same for centred y
        degree = torch.zeros_like(y[:, :1])
        weighted = torch.zeros_like(y)
        for a, b in window_offsets(radius, h, w):
            # cells i = (r, c) and j = (r + a, c + b) that both lie on the grid
            c0, c1 = max(0, -b), w - max(0, b)
            at_i = (slice(None), slice(None), slice(0, h - a), slice(c0, c1))
            at_j = (slice(None), slice(None), slice(a, h), slice(c0 + b, c1 + b))
            diff_l1 = (rgb[at_i] - rgb[at_j]).abs_().sum(1, keepdim=True)
            pair_weight = weighted_colour_potential(diff_l1, spatial_kernel(a * a + b * b, sigma), mu, eps)
            degree[at_i] += pair_weight
            degree[at_j] += pair_weight
            weighted[at_i].addcmul_(yc[at_j], pair_weight)
            weighted[at_j].addcmul_(yc[at_i], pair_weight)
        pull = degree * yc - weighted
    return _loss_from_pull(y, pull)


def fsl_blocked(y: torch.Tensor, rgb: torch.Tensor, mu: float, sigma: float, radius: float | None,
                eps: float, block_entries: int = BLOCK_ENTRIES) -> torch.Tensor:
    """:func:`fsl_all_pairs` over blocks of grid rows, each unordered pair of blocks once.

    Per block pair, W = k ⊙ ψ (N × |I| × |J|); pull_I += D_I y_I − W y_J and pull_J += D_J y_J − Wᵀ y_I
    (matrix products), with y centred per image and channel (the sum is unchanged, the rounding smaller).
    """
    n, c, h, w = y.shape
    rows_per_block = max(1, int(math.sqrt(block_entries / n)) // w)
    reach = h - 1 if radius is None else min(h - 1, int(radius))
    with torch.no_grad():
        yc = (y - y.mean(dim=(2, 3), keepdim=True)).flatten(2).transpose(1, 2).contiguous()  # N × P × C
        x = rgb.flatten(2).transpose(1, 2).contiguous()  # N × P × 3
        pos = torch.stack(torch.meshgrid(torch.arange(h, device=y.device), torch.arange(w, device=y.device),
                                         indexing="ij"), dim=-1).flatten(0, 1).to(y.dtype)  # P × 2
        degree = y.new_zeros(n, h * w)
        weighted = torch.zeros_like(yc)
        kernels: dict[tuple[int, int, int], torch.Tensor] = {}
        starts = list(range(0, h, rows_per_block))
        for bi, r0 in enumerate(starts):
            r1 = min(h, r0 + rows_per_block)
            cells_i = slice(r0 * w, r1 * w)
            for q0 in starts[bi:]:
                if q0 - (r1 - 1) > reach:
                    break
                q1 = min(h, q0 + rows_per_block)
                cells_j = slice(q0 * w, q1 * w)
                key = (q0 - r0, r1 - r0, q1 - q0)  # the kernel depends on the rows' offsets only
                if key not in kernels:
                    squared = (pos[cells_i, None, :] - pos[None, cells_j, :]).square().sum(-1)
                    kernel = spatial_kernel(squared, sigma)
                    if radius is not None:
                        kernel = kernel * (squared <= radius ** 2)
                    kernels[key] = kernel
                diff_l1 = torch.cdist(x[:, cells_i], x[:, cells_j], p=1.0)
                pair_weight = weighted_colour_potential(diff_l1, kernels[key], mu, eps)
                degree[:, cells_i] += pair_weight.sum(2)
                weighted[:, cells_i] += pair_weight @ yc[:, cells_j]
                if q0 != r0:
                    degree[:, cells_j] += pair_weight.sum(1)
                    weighted[:, cells_j] += pair_weight.transpose(1, 2) @ yc[:, cells_i]
        pull = (degree[:, :, None] * yc - weighted).transpose(1, 2).reshape(n, c, h, w)
    return _loss_from_pull(y, pull)


FORMS = {"blocked": fsl_blocked, "windowed": fsl_windowed, "all_pairs": fsl_all_pairs}


def choose_form(h: int, w: int, channels: int, radius: float | None) -> str:
    """``auto``: the cheaper form for this grid and number of target channels (C+1), by a cost model
    fitted to bench/feature_similarity.py (within about 2× either way; both forms give the same sum).

    Per cell, ``windowed`` visits one partner per offset at about 12 + 2·channels passes; ``blocked``
    visits its row band's w·min(h, 2·radius + 1)/2 partners at about 18 passes each (memory-bound blocks,
    but W·y is a matrix product, so channels cost it little).
    """
    band = h if radius is None else min(h, 2 * int(radius) + 1)
    blocked = 18 * w * band / 2
    windowed = len(window_offsets(radius, h, w)) * (12 + 2 * channels)
    return "blocked" if blocked <= windowed else "windowed"


def resize_to_grid(rgb: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The image on the CAM grid as HFPL makes it: bilinear, align_corners=True, clamped to [0, 1]."""
    with torch.no_grad():
        return F.interpolate(rgb.float(), size=size, mode="bilinear", align_corners=True).clamp_(0.0, 1.0)


def feature_similarity_loss(logits: torch.Tensor, label: torch.Tensor, rgb: torch.Tensor,
                            params: FeatureSimilarityParams, posterior: Posterior) -> torch.Tensor:
    """L_FS of CAM logits (N × C × h × w) against the image ``rgb`` (N × 3 × H × W in [0, 1]), unweighted."""
    targets = binomial_targets if posterior == "binomial" else multinomial_targets
    y = targets(logits, label)
    h, w = logits.shape[-2:]
    x = resize_to_grid(rgb, (h, w))
    form = choose_form(h, w, y.shape[1], params.radius()) if params.form == "auto" else params.form
    return FORMS[form](y, x, params.mu, params.sigma, params.radius(), params.eps)


@ADDONS.register("feature_similarity")
class FeatureSimilarity(AddOn):
    name = "feature_similarity"
    Params = FeatureSimilarityParams

    def losses(self, site: CamSite, rgb: torch.Tensor) -> dict[str, torch.Tensor]:
        loss = feature_similarity_loss(site.logits, site.label, rgb, self.params, self.posterior)
        return {"fsl": self.params.weight * loss}
