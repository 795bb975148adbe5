"""The baseline interface: what every WSSS baseline (CAM, SEAM, AMN, …) tells the rest of the system.

A baseline owns its network (backbone + head), its losses and its CAM inference. During training it
declares where its CAM logits are (:class:`CamSite`: N × C × h × w, background excluded) and routes
every image-level classification through ``self.classify`` (the pooling step). That is all an add-on
needs: an add-on may replace ``classify`` (global average pooling → importance sampling) and/or add
loss terms computed from each CAM site and the input image (feature similarity). So any baseline
composes with any subset of add-ons from config, with no per-combination code (see ``compose.py``).

How the later baselines fit:
- SEAM: two branches (full crop, rescaled crop), each a CAM site classified through ``classify``; the
  PCM-refined CAMs are a site too (with ``regularise`` as the author chooses); ER/ECR go in ``losses``;
  it overrides :meth:`Baseline.infer_logits` to return the PCM output and :meth:`normalise_cams` to do
  min-max.
- AMN: a label-conditioned per-pixel classifier trained on seed labels; ``uses_pooling = False`` (no
  image-level pooling, so a pooling add-on is refused at config time); its foreground logit channels
  are its CAM site; it overrides :meth:`Baseline.multiscale_cams` for its softmax-over-C+1 inference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import nn

# Classification step: CAM logits (N×C×h×w) and multi-hot labels (N×C) → named loss terms.
ClassificationLoss = Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]


def global_average_pooling_loss(logits: torch.Tensor, label: torch.Tensor) -> dict[str, torch.Tensor]:
    """The default pooling: GAP of the CAM logits, multilabel soft margin (= mean BCE-with-logits)."""
    pooled = logits.float().mean(dim=(2, 3))
    return {"cls": F.multilabel_soft_margin_loss(pooled, label.float())}


@dataclass
class CamSite:
    """One place where a baseline computes CAM logits during training."""

    logits: torch.Tensor  # N × C × h × w, background excluded
    image: torch.Tensor  # the network input that produced them, N × 3 × H × W (normalised)
    label: torch.Tensor  # N × C multi-hot
    regularise: bool = True  # whether add-on loss terms (e.g. feature similarity) apply here


@dataclass
class TrainOutput:
    """A training forward: named loss terms (already weighted; the total is their sum) and CAM sites."""

    losses: dict[str, torch.Tensor]
    sites: dict[str, CamSite]


@dataclass
class ParamGroup:
    """Parameters sharing a learning-rate multiplier (the references' 1× backbone, 10× head, …)."""

    name: str
    params: list[nn.Parameter]
    lr_mult: float = 1.0
    weight_decay_mult: float = 1.0


@dataclass
class CamResult:
    """CAMs of one image at image size: ground-truth class keys (0-based), K × H × W maps, optional bg."""

    keys: list[int]
    cams: torch.Tensor
    bg: torch.Tensor | None = None


@dataclass
class NoOptions:
    """Baselines without options accept an empty ``model.options`` mapping."""


class Baseline(nn.Module):
    """Base class of baselines. Subclasses set ``Options`` and implement the abstract methods."""

    Options: ClassVar[type] = NoOptions
    uses_pooling: ClassVar[bool] = True  # False: no image-level classification, pooling add-ons refused

    def __init__(self, num_classes: int, backbone: nn.Module, options: Any = None):
        super().__init__()
        self.num_classes = num_classes
        self.backbone = backbone
        self.options = options if options is not None else self.Options()
        self.classify: ClassificationLoss = global_average_pooling_loss

    # --- training -------------------------------------------------------------------------------
    def forward(self, image: torch.Tensor, label: torch.Tensor) -> TrainOutput:
        return self.forward_train(image, label)

    def forward_train(self, image: torch.Tensor, label: torch.Tensor) -> TrainOutput:
        raise NotImplementedError

    def param_groups(self) -> list[ParamGroup]:
        """Trainable parameters by group; the default is the backbone at 1× and everything else at 10×."""
        backbone_ids = {id(p) for p in self.backbone.parameters()}
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        head = [p for p in self.parameters() if p.requires_grad and id(p) not in backbone_ids]
        return [ParamGroup("backbone", backbone, 1.0), ParamGroup("head", head, 10.0)]

    # --- inference ------------------------------------------------------------------------------
    def infer_logits(self, image: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        """CAM logits used for CAM generation, N × C × h × w (SEAM: the PCM output)."""
        raise NotImplementedError

    def normalise_cams(self, cams: torch.Tensor) -> torch.Tensor:
        """Per-class normalisation of the summed maps (K × H × W): divide by max + 1e-5 (IRN)."""
        return cams / (cams.flatten(1).max(dim=1).values[:, None, None] + 1e-5)

    def scale_maps(self, batch: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """The class maps of one scale's batch (the image, and its flip), before the flip-back and the sum
        over scales: IRN's ReLU(CAM). A baseline with other inference maps overrides this."""
        return F.relu(self.infer_logits(batch, label).float())

    @torch.no_grad()
    def multiscale_cams(self, image: torch.Tensor, label: torch.Tensor, scales: Sequence[float],
                        flip: bool) -> CamResult:
        """IRN-style CAMs of one image (1 × 3 × H × W normalised): per scale ReLU, flip back, sum over
        scales at image size, keep ground-truth classes, normalise each."""
        height, width = image.shape[-2:]
        keys = torch.nonzero(label > 0.5).flatten().tolist()
        total = image.new_zeros((self.num_classes, height, width), dtype=torch.float32)
        for scale in scales:
            size = (max(1, round(height * scale)), max(1, round(width * scale)))
            scaled = image if scale == 1.0 else F.interpolate(image, size=size, mode="bilinear",
                                                               align_corners=False)
            batch = torch.cat([scaled, scaled.flip(-1)]) if flip else scaled
            logits = self.scale_maps(batch, label[None].expand(len(batch), -1))
            if flip:
                logits = logits[:1] + logits[1:].flip(-1)
            total += F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)[0]
        cams = self.normalise_cams(total[keys]) if keys else total[:0]
        return CamResult(keys, cams)


def options_from_config(baseline_cls: type[Baseline], options: dict[str, Any], where: str) -> Any:
    from ..config import from_dict

    return from_dict(baseline_cls.Options, options, where)


def sites_to_regularise(output: TrainOutput) -> dict[str, CamSite]:
    return {name: site for name, site in output.sites.items() if site.regularise}


