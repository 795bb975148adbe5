"""AMN (Lee et al., CVPR 2022), the Activation Manipulation Network, on the baseline interface.

Network: backbone → label conditioning (stage-4 features × Linear(C → channels)(multi-hot label)) →
Dropout → ASPP (four dilated 3×3 convs, summed) → C+1 logits, background first. Labels are inputs at
inference too. Its only loss is the per-pixel classification loss (PCL) against CRF seed labels, which
the AMN trainer (``training/amn.py``) hands over with :meth:`AmnBaseline.set_seed_targets` before
each training forward (the trainer's forward passes only image and label).

An AMN trial is a chain (CAM classifier → CRF seeds → AMN network → maps); the options below hold the
settings of the AMN-specific links, while the trial's own optim/train settings and add-ons drive the CAM
classifier stage (see ``training/amn.py``). The network has no image-level pooling: a pooling add-on
(importance sampling) acts on the CAM stage only. Its CAM site is the foreground channels of its logits,
so feature similarity applies to it unchanged when ``addons_on_network`` is set.

Inference (:meth:`AmnBaseline.multiscale_cams`): logits averaged over scales × flip at image size;
softmax over all C+1 channels; [bg] + ground-truth classes kept; per-channel min-max; where the CAM-stage
seed is not background the normalised value, else the raw probability. The foreground maps are stored as
CAMs and the background channel as the store's optional bg map.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, TrainingError
from ..evaluation.crf import CrfParams
from . import BASELINES
from .base import (Baseline, CamResult, CamSite, CamUpsample, ParamGroup, ScaledInputs, TrainOutput,
                   as_scaled_inputs)

IGNORE = 255


@dataclass
class AmnTrainingOptions:
    """How the AMN network trains (the trial's own optim/train settings drive its CAM stage)."""

    optimizer: Literal["adam", "sgd"] = "adam"  # adam: the reference; sgd: poly SGD with the trial's momentum
    lr: float = 5e-6  # backbone; head and label encoder get lr × head_lr_mult (reference 1e-4)
    head_lr_mult: float = 20.0
    weight_decay: float = 1e-4
    epochs: int = 5
    batch_size: int | None = None  # null: the trial's train.batch_size
    # Backbone init: "pretrained" = model.pretrained (ImageNet in the paper; random when null);
    # "cam_stage" = the trained CAM classifier's backbone; "auto" = pretrained if given, else cam_stage
    # (the stand-in for ImageNet weights where there are none, e.g. the demo).
    init: Literal["auto", "pretrained", "cam_stage"] = "auto"

    def validate(self, where: str) -> None:
        for name in ("lr", "head_lr_mult"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{where}.{name}: must be positive, got {getattr(self, name)}")
        if self.weight_decay < 0:
            raise ConfigError(f"{where}.weight_decay: must be >= 0, got {self.weight_decay}")
        if self.epochs < 1 or (self.batch_size is not None and self.batch_size < 1):
            raise ConfigError(f"{where}: epochs and batch_size must be at least 1, got {self.epochs}, "
                              f"{self.batch_size}")


@dataclass
class AmnSeedOptions:
    """CRF-confident seeds from the CAM stage (AMN's CAM-stage cam_to_ir_label)."""

    fg_threshold: float = 0.30
    bg_threshold: float = 0.05
    gt_prob: float = 0.7
    crf: CrfParams = field(default_factory=CrfParams)

    def validate(self, where: str) -> None:
        if not 0.0 <= self.bg_threshold <= self.fg_threshold <= 1.0:
            raise ConfigError(f"{where}: need 0 <= bg_threshold <= fg_threshold <= 1, got "
                              f"bg_threshold={self.bg_threshold}, fg_threshold={self.fg_threshold}")
        if not 0.0 < self.gt_prob < 1.0:
            raise ConfigError(f"{where}.gt_prob: must be in (0, 1), got {self.gt_prob}")


@dataclass
class AmnCamStageOptions:
    """The classifier whose CAMs make the seeds: the trial's config with this baseline and options."""

    baseline: str = "cam"
    options: dict[str, Any] = field(default_factory=dict)

    def validate(self, where: str) -> None:
        if self.baseline == "amn":
            raise ConfigError(f"{where}.baseline: the CAM stage needs an image-level classifier, not 'amn'; "
                              f"valid choices: {', '.join(n for n in BASELINES.names() if n != 'amn')}")
        from ..config import from_dict, to_dict

        baseline = BASELINES.get(self.baseline, f"{where}.baseline")
        self.options = to_dict(from_dict(baseline.Options, self.options, f"{where}.options"))


@dataclass
class AmnOptions:
    label_conditioning: bool = True  # LC: multiply stage-4 features by Linear(label)
    dropout: float = 0.1  # head dropout before the ASPP
    aspp_rates: tuple[int, ...] = (6, 12, 18, 24)
    label_smoothing: float = 0.4  # ε of the PCL targets
    inference_dropout: bool = False  # True: the reference's quirk, dropout stays on at inference
    addons_on_network: bool = False  # also apply the trial's non-pooling add-ons (FSL) to the AMN network
    training: AmnTrainingOptions = field(default_factory=AmnTrainingOptions)
    seeds: AmnSeedOptions = field(default_factory=AmnSeedOptions)
    cam_stage: AmnCamStageOptions = field(default_factory=AmnCamStageOptions)

    def validate(self, where: str) -> None:
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"{where}.dropout: must be in [0, 1), got {self.dropout}")
        if not self.aspp_rates or any(r < 1 for r in self.aspp_rates):
            raise ConfigError(f"{where}.aspp_rates: need positive dilation rates, got {list(self.aspp_rates)}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"{where}.label_smoothing: must be in [0, 1), got {self.label_smoothing}")


class Aspp(nn.Module):
    """Atrous spatial pyramid pooling as AMN/DeepLab-v2 use it: parallel dilated 3×3 convs, summed."""

    def __init__(self, in_channels: int, out_channels: int, rates: Sequence[int]):
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, out_channels, 3, padding=rate, dilation=rate, bias=True) for rate in rates)
        for conv in self.branches:
            nn.init.normal_(conv.weight, mean=0.0, std=0.01)
            nn.init.constant_(conv.bias, 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(branch(x) for branch in self.branches)


def resize_seeds(seeds: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Seed labels (N × H × W) to the logit grid, nearest as PIL does it (pixel centres)."""
    if tuple(seeds.shape[-2:]) == tuple(size):
        return seeds.long()
    return F.interpolate(seeds[:, None].float(), size=size, mode="nearest-exact")[:, 0].long()


def smoothed_targets(seeds: torch.Tensor, channels: int, epsilon: float) -> torch.Tensor:
    """N × (C+1) × h × w: 1 − ε on the seed class, ε / C on every other channel (ignored pixels as bg)."""
    index = seeds.masked_fill(seeds == IGNORE, 0)
    targets = torch.full((seeds.shape[0], channels, *seeds.shape[1:]), epsilon / (channels - 1),
                         device=seeds.device, dtype=torch.float32)
    return targets.scatter_(1, index[:, None], 1.0 - epsilon)


def per_pixel_classification_loss(logits: torch.Tensor, seeds: torch.Tensor, epsilon: float) -> torch.Tensor:
    """AMN's PCL: label-smoothed cross-entropy (log-softmax over C+1), ½(mean over seed-background pixels
    + mean over seed-foreground pixels), 255 excluded. ``seeds`` must already be on the logit grid.
    A half with no pixels in the batch contributes 0 (the reference would give NaN)."""
    targets = smoothed_targets(seeds, logits.shape[1], epsilon)
    per_pixel = -(F.log_softmax(logits.float(), dim=1) * targets).sum(dim=1)
    background = (seeds == 0).float()
    foreground = ((seeds != 0) & (seeds != IGNORE)).float()
    loss_bg = (per_pixel * background).sum() / background.sum().clamp_min(1.0)
    loss_fg = (per_pixel * foreground).sum() / foreground.sum().clamp_min(1.0)
    return 0.5 * (loss_bg + loss_fg)


def activation_maps(logits: torch.Tensor, keys: Sequence[int], seed: torch.Tensor | None) -> torch.Tensor:
    """AMN's maps from averaged logits (C+1 × H × W): softmax over all channels, [bg] + keys kept, min-max per
    channel; raw probability where ``seed`` (H × W, VOC values) is background. Returns (1+K) × H × W."""
    probs = torch.softmax(logits.float(), dim=0)[[0] + [k + 1 for k in keys]]
    flat = probs.flatten(1)
    low, high = flat.min(dim=1).values[:, None, None], flat.max(dim=1).values[:, None, None]
    normalised = (probs - low) / (high - low + 1e-5)
    if seed is None:
        return normalised
    return torch.where((seed != 0)[None], normalised, probs)


@BASELINES.register("amn")
class AmnBaseline(Baseline):
    Options = AmnOptions
    # An AMN trial's add-ons are those of its chain: a pooling add-on (importance sampling) goes to the CAM
    # stage, whose GAP it replaces; the AMN network itself never pools (see training/amn.py).
    uses_pooling = True
    cam_upsampling = "direct"  # make_amn_cam upsamples each scale's logits straight to H x W

    def __init__(self, num_classes: int, backbone: nn.Module, options: AmnOptions | None = None):
        super().__init__(num_classes, backbone, options)
        opts = self.options
        channels = backbone.out_channels
        self.label_encoder = nn.Linear(num_classes, channels) if opts.label_conditioning else None
        self.head_dropout = nn.Dropout(opts.dropout)
        self.aspp = Aspp(channels, num_classes + 1, opts.aspp_rates)
        self._seed_targets: torch.Tensor | None = None

    def train(self, mode: bool = True) -> "AmnBaseline":
        super().train(mode)
        if self.options.inference_dropout:
            self.head_dropout.train(True)  # the reference's train() never calls super(): dropout never stops
        return self

    def logits(self, image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """N × (C+1) × h × w, background first."""
        features = self.backbone(image)
        if self.label_encoder is not None:
            features = features * self.label_encoder(label.to(features.dtype))[:, :, None, None]
        return self.aspp(self.head_dropout(features))

    # --- training -------------------------------------------------------------------------------
    def set_seed_targets(self, seeds: torch.Tensor) -> None:
        """Seed labels (N × H × W, VOC values, 255 uncertain) for the next :meth:`forward_train`."""
        self._seed_targets = seeds

    def forward_train(self, image: torch.Tensor, label: torch.Tensor) -> TrainOutput:
        seeds, self._seed_targets = self._seed_targets, None
        if seeds is None:
            raise TrainingError("model.baseline 'amn' trains on seed labels: run it with "
                                "wsss_core.training.amn.train_amn (or call set_seed_targets before "
                                "each forward), not with the plain trainer")
        logits = self.logits(image, label)
        seeds = resize_seeds(seeds.to(logits.device), tuple(logits.shape[-2:]))
        loss = per_pixel_classification_loss(logits, seeds, self.options.label_smoothing)
        return TrainOutput(losses={"pcl": loss}, sites={"cam": CamSite(logits[:, 1:], image, label)})

    def param_groups(self) -> list[ParamGroup]:
        """As AMN's ``trainable_parameters``: the backbone at 1× (conv1/bn1 frozen; layer1–layer4 all train,
        AMN detaches no stage; with ResNet-50's default ``bn: frozen_stats`` the BatchNorm weights and biases are
        in this group, their statistics fixed), the label encoder and ASPP head at ``head_lr_mult``×."""
        backbone_ids = {id(p) for p in self.backbone.parameters()}
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        head = [p for p in self.parameters() if p.requires_grad and id(p) not in backbone_ids]
        return [ParamGroup("backbone", backbone, 1.0),
                ParamGroup("head", head, self.options.training.head_lr_mult)]

    # --- inference ------------------------------------------------------------------------------
    def infer_logits(self, image: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        """Foreground logit channels (N × C × h × w); AMN's maps come from :meth:`multiscale_cams`."""
        if label is None:
            raise ConfigError("model.baseline 'amn': labels are an input of the network at inference too")
        return self.logits(image, label)[:, 1:]

    @torch.no_grad()
    def averaged_logits(self, image: torch.Tensor | ScaledInputs, label: torch.Tensor, scales: Sequence[float],
                        flip: bool, *, upsample: CamUpsample = "reference") -> torch.Tensor:
        """(C+1) x H x W logits of one image averaged over scales x flip, each upsampled to image size."""
        return self.batch_logits(as_scaled_inputs(image, scales), label[None], flip, upsample)[0]

    @torch.no_grad()
    def batch_logits(self, inputs: ScaledInputs, labels: torch.Tensor, flip: bool,
                     upsample: CamUpsample = "reference") -> torch.Tensor:
        """N x (C+1) x H x W logits of same-size images, averaged over scales x flip (make_amn_cam)."""
        total = self.summed_maps(inputs, labels, flip, upsample, scale_maps=self.logits)
        return total / (len(inputs.levels) * (2 if flip else 1))

    @torch.no_grad()
    def batch_cams(self, inputs: ScaledInputs, labels: torch.Tensor, flip: bool, upsample: CamUpsample = "reference",
                   seeds: torch.Tensor | None = None) -> list[CamResult]:
        """AMN activation maps of same-size images; ``seeds`` (N x H x W) are their CAM-stage seed labels
        (without them, every pixel takes the normalised value)."""
        results = []
        for index, (logits, label) in enumerate(zip(self.batch_logits(inputs, labels, flip, upsample), labels)):
            keys = torch.nonzero(label > 0.5).flatten().tolist()
            maps = activation_maps(logits, keys, None if seeds is None else seeds[index])
            results.append(CamResult(keys, maps[1:], bg=maps[0]))
        return results

    @torch.no_grad()
    def multiscale_cams(self, image: torch.Tensor | ScaledInputs, label: torch.Tensor, scales: Sequence[float],
                        flip: bool, seed: torch.Tensor | None = None, *,
                        upsample: CamUpsample = "reference") -> CamResult:
        """AMN activation maps of one image (see :meth:`Baseline.multiscale_cams` for ``image``); ``seed``
        (H x W) is its CAM-stage seed label."""
        return self.batch_cams(as_scaled_inputs(image, scales), label[None], flip, upsample,
                               seeds=None if seed is None else seed[None])[0]
