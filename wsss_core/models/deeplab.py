"""DeepLab segmentation networks for the final stage, in plain torch: DeepLab-v2 and DeepLab-v3+.

* DeepLab-v2 as kazuto1011/deeplab-pytorch runs it (AMN's authors' choice): ResNet-101 (blocks 3, 4, 23, 3) with
  layer3 / layer4 dilated 2 / 4 (output stride 8), an ASPP of four 3×3 convolutions with dilations 6, 12, 18,
  24 straight to the class scores, summed (weights N(0, 0.01), bias 0). ``MSC`` training: the network on
  the input at scales 1, 0.75, 0.5, every output plus their max-fused map scored (``forward_msc``).
* DeepLab-v3+: ResNet-50/101 at output stride 16 (layer4 dilated 2), ASPP (1×1, 3×3 at 6/12/18, image
  pooling) to 256 channels, decoder with the stride-4 features reduced to 48 channels, two 3×3 convolutions,
  the classifier, upsampled ×4.

Both also run on the project's small CNN (``small``) for the synthetic benchmark: the ASPP then sits on its
last stage and v3+'s decoder on its first. ResNets keep torchvision's state-dict names, so a local ImageNet
file loads with :func:`wsss_core.models.load_weights`; nothing is ever downloaded. The ResNet's
bottleneck puts the stride on the 3×3 convolution (torchvision), where kazuto's Caffe port has it on the
first 1×1; BatchNorm statistics are frozen (``frozen_stats``) as both references train with batch 10.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import build_backbone
from .resnet50 import ResNet50
from .weights import load_weights

RESNET_LAYERS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}
DEFAULT_ASPP_RATES = {"deeplab_v2": (6, 12, 18, 24), "deeplab_v3plus": (6, 12, 18)}


class DilatedResNet(ResNet50):
    """ResNet-50/101 with per-stage strides (layer1 … layer4; the stem always halves twice) and dilations:
    the project's ResNet with torchvision names (conv1, bn1, layer1..layer4)."""

    def __init__(self, layers: Sequence[int], strides: Sequence[int] = (1, 2, 1, 1),
                 dilations: Sequence[int] = (1, 1, 2, 4), bn: str = "frozen_stats", freeze_stem: bool = True,
                 ceil_pool: bool = False):
        if len(strides) != 4 or strides[0] != 1:
            raise ValueError(f"strides: 4 per-stage strides with layer1's 1, got {tuple(strides)}")
        super().__init__(strides=(2, *strides[1:]), bn=bn, freeze_stem=freeze_stem, layers=tuple(layers),
                         dilations=tuple(dilations), ceil_pool=ceil_pool)


class SummedAspp(nn.Module):
    """DeepLab-v2's ASPP: parallel dilated 3×3 convolutions straight to class scores, summed."""

    def __init__(self, in_channels: int, num_classes: int, rates: Sequence[int]):
        super().__init__()
        self.branches = nn.ModuleList(nn.Conv2d(in_channels, num_classes, 3, padding=r, dilation=r, bias=True)
                                      for r in rates)
        for conv in self.branches:
            nn.init.normal_(conv.weight, mean=0.0, std=0.01)
            nn.init.constant_(conv.bias, 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(branch(x) for branch in self.branches)


def _conv_bn(in_channels: int, out_channels: int, kernel: int, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel, padding=dilation * (kernel // 2),
                                   dilation=dilation, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class Aspp(nn.Module):
    """DeepLab-v3's ASPP: 1×1, 3×3 at each rate, image pooling; concatenated and projected to ``width``."""

    def __init__(self, in_channels: int, rates: Sequence[int], width: int = 256):
        super().__init__()
        self.branches = nn.ModuleList([_conv_bn(in_channels, width, 1)] +
                                      [_conv_bn(in_channels, width, 3, r) for r in rates])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, width, 1, bias=False),
                                  nn.GroupNorm(1, width), nn.ReLU(inplace=True))  # 1×1 map: no batch statistics
        self.project = _conv_bn(width * (len(rates) + 2), width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.interpolate(self.pool(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))


class SegmentationNet(nn.Module):
    """backbone → head; ``forward(x)`` gives class scores at the head's resolution (``head_stride``)."""

    addons: list[Any] = []  # the trainer's RNG capture walks model.addons; a segmentation net has none

    def __init__(self, backbone: nn.Module, arch: str, num_classes: int, rates: Sequence[int]):
        super().__init__()
        self.backbone = backbone
        self.arch = arch
        channels = backbone.stage_channels
        if arch == "deeplab_v2":
            self.head = SummedAspp(channels[-1], num_classes, rates)
        elif arch == "deeplab_v3plus":
            width = 256 if channels[-1] >= 256 else max(16, channels[-1])
            low = 48 if channels[0] >= 48 else channels[0]
            self.aspp = Aspp(channels[-1], rates, width)
            self.reduce = _conv_bn(channels[0], low, 1)
            self.decoder = nn.Sequential(_conv_bn(width + low, width, 3), _conv_bn(width, width, 3))
            self.classifier = nn.Conv2d(width, num_classes, 1)
        else:
            raise ValueError(f"unknown segmentation architecture {arch!r}; valid choices: deeplab_v2, deeplab_v3plus")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stages = self.backbone.forward_stages(x)
        if self.arch == "deeplab_v2":
            return self.head(stages[-1])
        low = self.reduce(stages[0])
        high = F.interpolate(self.aspp(stages[-1]), size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.decoder(torch.cat([high, low], dim=1)))

    def forward_msc(self, x: torch.Tensor, scales: Sequence[float]) -> list[torch.Tensor]:
        """kazuto1011's MSC: the scores at scale 1 and at each other scale (input resized bilinearly,
        outputs resized to the scale-1 scores), then their element-wise max; one scale gives one output."""
        base = self(x)
        if len(scales) == 1 and scales[0] == 1.0:
            return [base]
        outputs = [base if s == 1.0 else F.interpolate(
            self(F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)),
            size=base.shape[-2:], mode="bilinear", align_corners=False) for s in scales]
        return outputs + [torch.max(torch.stack(outputs), dim=0).values]

    def param_groups(self) -> list[tuple[str, list[nn.Parameter], bool]]:
        """(name, params, is_head): the head gets the ×10 learning rate."""
        head = [p for n, p in self.named_parameters() if not n.startswith("backbone.") and p.requires_grad]
        body = [p for p in self.backbone.parameters() if p.requires_grad]
        return [("backbone", body, False), ("head", head, True)]


def build_segmentation_net(arch: str, backbone: str, num_classes: int, *, backbone_options: dict | None = None,
                           pretrained: str | None = None, aspp_rates: Sequence[int] | None = None) -> SegmentationNet:
    """The network of a ``final`` config: ``num_classes`` includes the background."""
    rates = tuple(aspp_rates) if aspp_rates is not None else DEFAULT_ASPP_RATES[arch]
    if backbone in RESNET_LAYERS:
        # v2: output stride 8 (layer3, layer4 dilated 2, 4); v3+: 16 (layer4 dilated 2)
        strides, dilations = ((1, 2, 1, 1), (1, 1, 2, 4)) if arch == "deeplab_v2" else ((1, 2, 2, 1), (1, 1, 1, 2))
        body: nn.Module = DilatedResNet(RESNET_LAYERS[backbone], strides, dilations, ceil_pool=arch == "deeplab_v2",
                                        **(backbone_options or {}))
        if pretrained:
            load_weights(body, pretrained)
    else:
        body = build_backbone(backbone, pretrained, backbone_options, where="final.backbone")
    return SegmentationNet(body, arch, num_classes, rates)
