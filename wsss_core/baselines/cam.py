"""The CAM baseline (IRN style): backbone → 1×1 conv (no bias) to C CAM logits → GAP → multilabel soft margin.

GAP then the 1×1 conv (IRN's order) equals the 1×1 conv then GAP, since both are linear; computing the
CAM logits first exposes them to add-ons.
"""

from __future__ import annotations

import torch
from torch import nn

from . import BASELINES
from .base import Baseline, CamSite, TrainOutput


@BASELINES.register("cam")
class CamBaseline(Baseline):
    def __init__(self, num_classes: int, backbone: nn.Module, options: object = None):
        super().__init__(num_classes, backbone, options)
        self.classifier = nn.Conv2d(backbone.out_channels, num_classes, 1, bias=False)

    def cam_logits(self, image: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.backbone(image))

    def forward_train(self, image: torch.Tensor, label: torch.Tensor) -> TrainOutput:
        logits = self.cam_logits(image)
        return TrainOutput(losses=self.classify(logits, label), sites={"cam": CamSite(logits, image, label)})

    def infer_logits(self, image: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        return self.cam_logits(image)
