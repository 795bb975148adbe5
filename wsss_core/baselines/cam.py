"""The CAM baseline (IRN style): backbone → 1×1 conv (no bias) to C CAM logits → GAP → multilabel soft margin.

GAP then the 1×1 conv (IRN's order) equals the 1×1 conv then GAP, since both are linear; computing the
CAM logits first exposes them to add-ons.

What trains, as IRN's ``resnet50_cam.Net``: its forward is ``stage2(x).detach()``, so conv1 … layer2 get no
gradient and only layer3, layer4 and the classifier learn (``detached_stages``: null = the backbone family's
default, 2 on ResNet-50; 0 on the small CNN, which is trained from scratch and would otherwise keep random
features; 0 restores the project's earlier behaviour of training every stage). BatchNorm is the backbone's
``bn`` option (ResNet-50 default ``frozen_stats``: IRN's fixed statistics with trainable weight and bias).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError
from . import BASELINES
from .base import Baseline, CamSite, TrainOutput


@dataclass
class CamOptions:
    # Leading backbone stages with no gradient (their output detached, as IRN's stage2().detach()).
    # null: the backbone's DEFAULT_DETACHED_STAGES (resnet50 2 = IRN; small 0; resnet38d 0).
    detached_stages: int | None = None

    def validate(self, where: str) -> None:
        if self.detached_stages is not None and self.detached_stages < 0:
            raise ConfigError(f"{where}.detached_stages: must be >= 0 or null, got {self.detached_stages}")


def detach_backbone_stages(backbone: nn.Module, count: int | None, where: str = "model.options.detached_stages") -> int:
    """Cut the first ``count`` stages of ``backbone`` from the gradient (null: the family's default)."""
    if count is None:
        count = int(getattr(backbone, "DEFAULT_DETACHED_STAGES", 0))
    if count == 0:
        return 0
    if not hasattr(backbone, "detach_leading_stages"):
        raise ConfigError(f"{where}: backbone {type(backbone).__name__} cannot detach stages; use 0")
    try:
        backbone.detach_leading_stages(count)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return count


@BASELINES.register("cam")
class CamBaseline(Baseline):
    Options = CamOptions

    def __init__(self, num_classes: int, backbone: nn.Module, options: CamOptions | None = None):
        super().__init__(num_classes, backbone, options)
        self.detached_stages = detach_backbone_stages(backbone, self.options.detached_stages)
        self.classifier = nn.Conv2d(backbone.out_channels, num_classes, 1, bias=False)

    def cam_logits(self, image: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.backbone(image))

    def forward_train(self, image: torch.Tensor, label: torch.Tensor) -> TrainOutput:
        logits = self.cam_logits(image)
        return TrainOutput(losses=self.classify(logits, label), sites={"cam": CamSite(logits, image, label)})

    def infer_logits(self, image: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        return self.cam_logits(image)
