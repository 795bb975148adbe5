"""SEAM (Wang et al., CVPR 2020): two branches, the pixel correlation module, ER and ECR.

One training forward runs the same network on the crop and on a copy rescaled by ``scale`` (0.3).
Each branch gives CAM logits (C channels, background excluded) and their PCM refinement
(C+1 channels, background first), both upsampled to the branch's input size. Losses, as the reference:

- classification per branch through the pooling step, averaged: ½(L_cls(full) + L_cls(rescaled));
  the full branch goes through ``self.classify`` (so importance sampling replaces its GAP), the
  rescaled one too only with ``addons_on_scaled_branch`` (HFPL's code leaves it on GAP). SEAM's GAP
  pools the CAM upsampled to the branch's input size (bilinear, align_corners=True: the reference's
  ``adaptive_avg_pool2d`` of the upsampled ``cam``), not the feature grid (``pooling``); HFPL's
  importance sampling still samples the feature-grid logits, as its code does;
- SEAM's adaptive min-pooling on the label-masked PCM maps (``rvmin``), averaged over branches;
- ER: mean |↓(max_norm(cam_full)) − max_norm(cam_rescaled)| over the foreground channels;
- ECR: |max_onehot(cam_other) − pcm_this|, mean of the top 20 % per image, summed over both directions.

The CAM site of the full branch carries the feature-similarity add-on (HFPL applies it there only).
Inference is on the PCM output: scales × flip summed, ReLU, per-class min-max as ``infer_SEAM.py``
(:func:`released_min_max`).

The classifier is SEAM's ``fc8``: C+1 output rows (``background_row``), row 0 a background row that nothing
uses (the losses read rows 1:, the PCM input overwrites channel 0 with 1 − max foreground, inference keeps
PCM channels 1:), kept so a released checkpoint loads and the initialisation matches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from . import BASELINES
from .base import Baseline, CamSite, ParamGroup, TrainOutput, global_average_pooling_loss
from .pcm import PixelCorrelationModule, keep_max_foreground, max_norm, pcm_input, with_background


@dataclass
class SeamOptions:
    scale: float = 0.3  # size of the second branch's input, relative to the crop
    pcm_levels: tuple[int, int] = (-3, -2)  # backbone stages PCM reads (ResNet-38: b4_5, b5_2)
    pcm_widths: tuple[int, int] = (64, 128)  # channels of their projections
    feature_dropout: float = 0.5  # Dropout2d before the classifier (reference dropout7)
    er_weight: float = 1.0
    ecr_weight: float = 1.0
    ecr_top_fraction: float = 0.2  # share of the largest ECR errors kept per image
    min_pooling_weight: float = 1.0  # SEAM's adaptive min-pooling loss on the PCM maps (0 = off)
    addons_on_scaled_branch: bool = False  # also pool / regularise the rescaled branch with the add-ons
    freeze_first_stage: bool = True  # ResNet-38: b2, b2_1, b2_2 get no gradient (reference not_training)
    # GAP over the CAM upsampled to the input size (SEAM as released) or over the feature grid (earlier default)
    pooling: Literal["upsampled", "feature_grid"] = "upsampled"
    background_row: bool = True  # classifier fc8 with C+1 rows, row 0 unused (SEAM as released); False: C rows

    def validate(self, where: str) -> None:
        if not 0.0 < self.scale < 1.0:
            raise ConfigError(f"{where}.scale: must be in (0, 1), got {self.scale}")
        if not 0.0 < self.ecr_top_fraction <= 1.0:
            raise ConfigError(f"{where}.ecr_top_fraction: must be in (0, 1], got {self.ecr_top_fraction}")
        if not 0.0 <= self.feature_dropout < 1.0:
            raise ConfigError(f"{where}.feature_dropout: must be in [0, 1), got {self.feature_dropout}")
        for name in ("er_weight", "ecr_weight", "min_pooling_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{where}.{name}: must be >= 0, got {getattr(self, name)}")


def adaptive_min_pooling_loss(maps: torch.Tensor) -> torch.Tensor:
    """SEAM's rvmin: per image, the lowest quarter of the per-pixel max over channels, ReLU'd, averaged."""
    n, _, h, w = maps.shape
    k = max(1, h * w // 4)
    lowest = torch.topk(maps.max(dim=1).values.view(n, -1), k=k, dim=-1, largest=False).values
    return F.relu(lowest).sum() / (k * n)


def equivariant_regularisation(cam_full: torch.Tensor, cam_scaled: torch.Tensor) -> torch.Tensor:
    """ER: mean L1 between the full branch's normalised maps resized to the rescaled grid and the rescaled
    branch's (both N × C × …, already normalised and label-masked, background excluded)."""
    resized = F.interpolate(cam_full, size=cam_scaled.shape[-2:], mode="bilinear", align_corners=True)
    return (resized - cam_scaled).abs().mean()


def equivariant_cross_regularisation(cam: torch.Tensor, pcm: torch.Tensor, top_fraction: float) -> torch.Tensor:
    """One ECR direction: |max_onehot(cam) − pcm| (cam detached; both N × (C+1) × h × w on the same grid),
    mean of each image's ⌊fraction · (C+1)·h·w⌋ largest entries, averaged over images."""
    error = (keep_max_foreground(cam.detach()) - pcm).abs().flatten(1)
    k = max(1, int(error.shape[1] * top_fraction))
    return torch.topk(error, k=k, dim=-1).values.mean()


def _upsample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def released_min_max(summed: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``infer_SEAM.py``'s normalisation of the summed maps (K × H × W), per class: s = ReLU(sum); min and max
    of s; pixels below min + ε set to 0; then (s − min − ε) / (max − min + ε). The pixels it zeroed come out
    negative, −(min + ε) / (max − min + ε); every other pixel is ≥ 0."""
    s = F.relu(summed)
    low = s.flatten(1).min(dim=1).values[:, None, None]
    high = s.flatten(1).max(dim=1).values[:, None, None]
    s = torch.where(s < low + eps, torch.zeros_like(s), s)
    return (s - low - eps) / (high - low + eps)


@BASELINES.register("seam")
class SeamBaseline(Baseline):
    Options = SeamOptions
    cam_upsampling = "direct"  # infer_SEAM.py upsamples each scale's map straight to H x W

    def __init__(self, num_classes: int, backbone: nn.Module, options: SeamOptions | None = None):
        super().__init__(num_classes, backbone, options)
        opts = self.options
        channels = getattr(backbone, "stage_channels", None)
        if channels is None or not hasattr(backbone, "forward_stages"):
            raise ConfigError(f"model.backbone: SEAM's PCM needs intermediate features; backbone "
                              f"{type(backbone).__name__} has no forward_stages/stage_channels")
        try:
            mid, high = (channels[i] for i in opts.pcm_levels)
        except IndexError:
            raise ConfigError(f"model.options.pcm_levels: {list(opts.pcm_levels)} out of range for a backbone "
                              f"with {len(channels)} stages") from None
        self.dropout = nn.Dropout2d(opts.feature_dropout)
        rows = num_classes + 1 if opts.background_row else num_classes
        self.classifier = nn.Conv2d(backbone.out_channels, rows, 1, bias=False)  # reference fc8
        nn.init.xavier_uniform_(self.classifier.weight)
        # The pooling step; an add-on that replaces pooling wraps it (importance sampling mixes it with IS).
        self.gap_loss = self.upsampled_gap_loss if opts.pooling == "upsampled" else global_average_pooling_loss
        self.classify = self.gap_loss
        self._pooling_size: tuple[int, int] | None = None
        self.pcm = PixelCorrelationModule(mid, high, opts.pcm_widths)
        if opts.freeze_first_stage:
            for name in ("b2", "b2_1", "b2_2"):  # only ResNet-38 has them
                if hasattr(backbone, name):
                    for p in getattr(backbone, name).parameters():
                        p.requires_grad_(False)

    # --- network --------------------------------------------------------------------------------
    def _pcm_level(self, stages: list[torch.Tensor], index: int) -> torch.Tensor:
        """Stage output as PCM reads it. ResNet-38's stages are pre-activation: the reference takes the
        next block's BN-ReLU of them (its forward_as_dict conv4/conv5)."""
        x = stages[index]
        position = index % len(stages)
        following = {0: "b3", 1: "b4", 2: "b5", 3: "b6"}.get(position)
        block = getattr(self.backbone, following, None) if following else None
        if block is not None and hasattr(block, "bn_branch2a"):
            x = F.relu(block.bn_branch2a(x))
        return x

    def branch(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CAM logits (N × C × h × w) and PCM maps (N × (C+1) × h × w) at the feature grid."""
        stages = self.backbone.forward_stages(image)
        logits = self.classifier(self.dropout(stages[-1]))
        if self.options.background_row:
            logits = logits[:, 1:]  # fc8's background row: no loss and no map reads it
        mid, high = (self._pcm_level(stages, i) for i in self.options.pcm_levels)
        features = self.pcm.features(image, mid, high, tuple(logits.shape[-2:]))
        return logits, self.pcm(pcm_input(logits), features)

    # --- training -------------------------------------------------------------------------------
    def upsampled_gap_loss(self, logits: torch.Tensor, label: torch.Tensor) -> dict[str, torch.Tensor]:
        """SEAM's classification: GAP of the CAM logits upsampled (bilinear, align_corners=True) to the input
        size of the branch being classified, multilabel soft margin."""
        size = self._pooling_size
        if size is not None and tuple(logits.shape[-2:]) != tuple(size):
            logits = _upsample(logits.float(), size)
        return global_average_pooling_loss(logits, label)

    def _classify(self, pooling, logits: torch.Tensor, label: torch.Tensor,
                  size: tuple[int, int]) -> dict[str, torch.Tensor]:
        self._pooling_size = size  # the input size upsampled_gap_loss pools at
        try:
            return pooling(logits, label)
        finally:
            self._pooling_size = None

    def forward_train(self, image: torch.Tensor, label: torch.Tensor) -> TrainOutput:
        opts = self.options
        height, width = image.shape[-2:]
        small_size = (max(1, int(height * opts.scale)), max(1, int(width * opts.scale)))
        scaled = F.interpolate(image, size=small_size, mode="bilinear", align_corners=True)
        logits1, pcm1 = self.branch(image)
        logits2, pcm2 = self.branch(scaled)

        losses: dict[str, torch.Tensor] = {}
        scaled_pooling = self.classify if opts.addons_on_scaled_branch else self.gap_loss
        for prefix, pooling, logits, size in (("", self.classify, logits1, (height, width)),
                                              ("scaled.", scaled_pooling, logits2, small_size)):
            for name, value in self._classify(pooling, logits, label, size).items():
                losses[prefix + name] = 0.5 * value

        fg_mask = label.float()[:, :, None, None]
        full_mask = torch.cat([torch.ones_like(fg_mask[:, :1]), fg_mask], dim=1)
        pcm1_up, pcm2_up = _upsample(pcm1, (height, width)), _upsample(pcm2, small_size)
        if opts.min_pooling_weight > 0:
            rvmin = adaptive_min_pooling_loss((pcm1_up * full_mask)[:, 1:]) + \
                adaptive_min_pooling_loss((pcm2_up * full_mask)[:, 1:])
            losses["rvmin"] = opts.min_pooling_weight * 0.5 * rvmin

        cam1 = max_norm(_upsample(logits1.float(), (height, width))) * fg_mask
        cam2 = max_norm(_upsample(logits2.float(), small_size)) * fg_mask
        if opts.er_weight > 0:
            losses["er"] = opts.er_weight * equivariant_regularisation(cam1, cam2)
        if opts.ecr_weight > 0:
            cam1_small = with_background(_upsample(cam1, small_size))
            cam2_full = with_background(cam2)
            pcm1_small = _upsample(max_norm(pcm1_up) * full_mask, small_size)
            pcm2_norm = max_norm(pcm2_up) * full_mask
            ecr = equivariant_cross_regularisation(cam2_full, pcm1_small, opts.ecr_top_fraction) + \
                equivariant_cross_regularisation(cam1_small, pcm2_norm, opts.ecr_top_fraction)
            losses["ecr"] = opts.ecr_weight * ecr

        sites = {"cam": CamSite(logits1, image, label),
                 "cam_scaled": CamSite(logits2, scaled, label, regularise=opts.addons_on_scaled_branch)}
        return TrainOutput(losses=losses, sites=sites)

    def param_groups(self) -> list[ParamGroup]:
        """The reference's four groups: backbone weights 1×, backbone biases 2× (no decay), new weights
        10×, new biases 20× (no decay)."""
        backbone_ids = {id(p) for p in self.backbone.parameters()}
        groups = {key: [] for key in ("backbone", "backbone_bias", "new", "new_bias")}
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            key = "backbone" if id(param) in backbone_ids else "new"
            groups[key + ("_bias" if name.endswith("bias") else "")].append(param)
        return [ParamGroup("backbone", groups["backbone"], 1.0),
                ParamGroup("backbone_bias", groups["backbone_bias"], 2.0, weight_decay_mult=0.0),
                ParamGroup("new", groups["new"], 10.0),
                ParamGroup("new_bias", groups["new_bias"], 20.0, weight_decay_mult=0.0)]

    # --- inference ------------------------------------------------------------------------------
    def infer_logits(self, image: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        """The PCM output's foreground channels (N × C × h × w): what SEAM's CAMs are made of."""
        return self.branch(image)[1][:, 1:]

    def normalise_cams(self, cams: torch.Tensor) -> torch.Tensor:
        """:func:`released_min_max` with its negative pixels (those below min + 1e-5) stored as 0: CAM maps are
        ≥ 0. Equal to SEAM's wherever SEAM's is ≥ 0, so every threshold t ≥ 0 gives SEAM's labels."""
        return released_min_max(cams).clamp_min(0.0)

    def scale_maps(self, batch: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """SEAM inference: the PCM maps at the scale's input size, summed raw over scales × flip (no per-scale
        ReLU; ReLU and min-max per ground-truth class come after the sum, in normalise_cams)."""
        return _upsample(self.infer_logits(batch).float(), tuple(batch.shape[-2:]))
