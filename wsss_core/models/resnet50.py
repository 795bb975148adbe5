"""ResNet-50 (Bottleneck) with torchvision/ImageNet state-dict names, as IRN's CAM network uses it.

``strides=(2, 2, 2, 1)`` gives output stride 16 (IRN); ``(2, 2, 2, 2)`` the classic 32. BatchNorm by
default as IRN and AMN have it (``bn: frozen_stats``: running statistics fixed, weight and bias trainable;
``frozen`` also takes their gradient, the project's earlier default; see ``frozen.py``); conv1/bn1 get no
gradient as in IRN (``freeze_stem``). :meth:`ResNet50.detach_leading_stages` is IRN's ``stage2(x).detach()``:
the CAM baseline calls it with 2 by default (``DEFAULT_DETACHED_STAGES``), so layer1 and layer2 keep their
pretrained weights.
"""

from __future__ import annotations

import torch
from torch import nn

from . import BACKBONES
from .frozen import apply_bn_mode, freeze, freeze_leading_stages, keep_bn_stats


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_planes != out_planes:
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out_planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50(nn.Module):
    """Stem + 4 stages; ``forward`` returns stage-4 features (2048 channels)."""

    layers = (3, 4, 6, 3)
    # Stages the CAM baseline cuts from the gradient unless told otherwise: IRN detaches after layer2.
    DEFAULT_DETACHED_STAGES = 2

    def __init__(self, strides: tuple[int, int, int, int] | list[int] = (2, 2, 2, 1), bn: str = "frozen_stats",
                 freeze_stem: bool = True, layers: tuple[int, ...] | None = None,
                 dilations: tuple[int, int, int, int] | list[int] = (1, 1, 1, 1), ceil_pool: bool = False):
        """``layers``: blocks per stage (default ResNet-50's; (3, 4, 23, 3) is ResNet-101); ``dilations``: of
        each stage's 3×3 convolutions (DeepLab); ``ceil_pool``: the stem's max-pool rounds up (Caffe's)."""
        super().__init__()
        strides = tuple(strides)
        if len(strides) != 4 or any(s not in (1, 2) for s in strides):
            raise ValueError(f"strides must be 4 values of 1 or 2, got {strides}")
        self.layers = tuple(layers) if layers is not None else type(self).layers
        self.bn_mode = bn
        self.detached_stages = 0
        self.conv1 = nn.Conv2d(3, 64, 7, stride=strides[0], padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=ceil_pool)
        in_planes = 64
        stage_strides = (1, strides[1], strides[2], strides[3])
        for index, (blocks, planes, stride, dilation) in enumerate(zip(self.layers, (64, 128, 256, 512),
                                                                        stage_strides, dilations)):
            layer = [Bottleneck(in_planes, planes, stride, dilation)]
            in_planes = planes * Bottleneck.expansion
            layer += [Bottleneck(in_planes, planes, 1, dilation) for _ in range(blocks - 1)]
            setattr(self, f"layer{index + 1}", nn.Sequential(*layer))
        self.out_channels = 2048
        self.stage_channels = (256, 512, 1024, 2048)
        self.output_stride = strides[0] * 2 * strides[1] * strides[2] * strides[3]  # the max-pool halves once more
        apply_bn_mode(self, bn)
        if freeze_stem:
            freeze(self.conv1)
            freeze(self.bn1)

    def train(self, mode: bool = True) -> "ResNet50":
        super().train(mode)
        keep_bn_stats(self, self.bn_mode)
        return self

    def detach_leading_stages(self, count: int) -> None:
        """The stem and layer1 … layer<count> get no gradient; their output is detached (IRN: count 2)."""
        freeze_leading_stages([self.conv1, self.bn1], [self.layer1, self.layer2, self.layer3, self.layer4], count)
        self.detached_stages = count

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        stages = []
        for index, layer in enumerate((self.layer1, self.layer2, self.layer3, self.layer4), start=1):
            x = layer(x)
            if index == self.detached_stages:
                x = x.detach()
            stages.append(x)
        return stages

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_stages(x)[-1]


@BACKBONES.register("resnet50")
def resnet50(strides: tuple[int, int, int, int] | list[int] = (2, 2, 2, 1), bn: str = "frozen_stats",
             freeze_stem: bool = True) -> ResNet50:
    return ResNet50(strides=strides, bn=bn, freeze_stem=freeze_stem)
