"""SEAM's pixel correlation module (PCM) and the map operations its losses share.

PCM refines CAMs with feature affinities: features f (the downscaled image concatenated with
projected mid/high backbone features) → 1×1 conv → L2-normalised per position; affinity
A_ij = ReLU(f_i · f_j), each column divided by its sum; refined map y = x · A (x: N × (C+1) × hw).
Only the projections learn from the PCM losses: the CAMs it refines and the features it reads are
detached, as in the reference.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def max_norm(maps: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """SEAM's per-map min-max of ReLU'd maps (N × C × h × w): ReLU(p − min − ε) / (max − min + ε)."""
    p = F.relu(maps)
    flat = p.flatten(2)
    low = flat.min(dim=2).values[:, :, None, None]
    high = flat.max(dim=2).values[:, :, None, None]
    return F.relu(p - low - eps) / (high - low + eps)


def with_background(fg: torch.Tensor) -> torch.Tensor:
    """Prepend a background channel 1 − max over the foreground channels (N × C × h × w → N × (C+1) …)."""
    return torch.cat([1.0 - fg.max(dim=1, keepdim=True).values, fg], dim=1)


def keep_max_foreground(maps: torch.Tensor) -> torch.Tensor:
    """SEAM's max_onehot: in the foreground channels (1:) keep only the per-pixel maximum, zero the rest."""
    fg = maps[:, 1:]
    top = fg.max(dim=1, keepdim=True).values
    return torch.cat([maps[:, :1], torch.where(fg == top, fg, torch.zeros_like(fg))], dim=1)


@torch.no_grad()
def pcm_input(logits: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """What PCM refines (no gradient): ReLU CAMs over their max, background = 1 − max, and in the
    foreground only each pixel's top class kept (N × C logits → N × (C+1) maps)."""
    cams = F.relu(logits.detach().float())
    top = cams.flatten(2).max(dim=2).values[:, :, None, None] + eps
    fg = F.relu(cams - eps) / top
    return keep_max_foreground(with_background(fg))


class PixelCorrelationModule(nn.Module):
    """Projections of two backbone levels plus the image, and the affinity propagation of SEAM.

    The convs carry SEAM's names, so a released SEAM checkpoint's ``f8_3``/``f8_4``/``f9`` load as they are.
    """

    def __init__(self, mid_channels: int, high_channels: int, widths: Sequence[int] = (64, 128)):
        super().__init__()
        mid_width, high_width = widths
        self.f8_3 = nn.Conv2d(mid_channels, mid_width, 1, bias=False)  # projection of the mid level
        self.f8_4 = nn.Conv2d(high_channels, high_width, 1, bias=False)  # projection of the high level
        self.f9 = nn.Conv2d(mid_width + high_width + 3, mid_width + high_width, 1, bias=False)  # embedding
        nn.init.kaiming_normal_(self.f8_3.weight)
        nn.init.kaiming_normal_(self.f8_4.weight)
        nn.init.xavier_uniform_(self.f9.weight, gain=4)

    def features(self, image: torch.Tensor, mid: torch.Tensor, high: torch.Tensor,
                 size: tuple[int, int]) -> torch.Tensor:
        """[image, ReLU(proj(mid)), ReLU(proj(high))] on the CAM grid; backbone features detached."""
        mid, high = (x.detach() if x.shape[-2:] == size else
                     F.interpolate(x.detach(), size=size, mode="bilinear", align_corners=False) for x in (mid, high))
        small = F.interpolate(image, size=size, mode="bilinear", align_corners=True)
        return torch.cat([small, F.relu(self.f8_3(mid)), F.relu(self.f8_4(high))], dim=1)

    def forward(self, maps: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Refine ``maps`` (N × K × h × w) with the affinities of ``features`` (N × F × h × w)."""
        n, _, h, w = features.shape
        maps = F.interpolate(maps, size=(h, w), mode="bilinear", align_corners=True) \
            if maps.shape[-2:] != (h, w) else maps
        f = self.f9(features).flatten(2).float()
        f = f / (f.norm(dim=1, keepdim=True) + 1e-5)
        affinity = F.relu(f.transpose(1, 2) @ f)
        affinity = affinity / (affinity.sum(dim=1, keepdim=True) + 1e-5)
        return (maps.flatten(2).float() @ affinity).view(n, -1, h, w)
