"""ResNet-38 ("resnet38d", Wu et al.'s wide ResNet) as SEAM and HFPL's public code use it.

Key names follow the reference (``conv1a``, ``b2``, ``b2_1`` … ``b7``, ``bn7``; inside a block
``bn_branch2a``, ``conv_branch2a``, ``bn_branch2b1``, ``conv_branch2b1``, ``conv_branch1`` and, in the
bottleneck blocks b6/b7, ``bn_branch2b2``, ``conv_branch2b2``), so the converted ImageNet weights
(``ilsvrc-cls_rna-a1_cls1000_ep-0001`` converted to a ``.pth`` state dict) load with
:func:`~wsss_core.models.load_weights`. Output stride 8 (b5–b7 dilated). As in SEAM's ``train()``, every
BatchNorm is frozen by default (``bn: frozen``: running statistics and no gradient to weight and bias;
``frozen_stats`` and ``train`` as for ResNet-50) and ``conv1a`` gets no gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import BACKBONES
from .frozen import apply_bn_mode, freeze, freeze_leading_stages, keep_bn_stats


class ResBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv3×3-BN-ReLU-conv3×3, projection on the activated input."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, stride: int = 1,
                 first_dilation: int | None = None, dilation: int = 1):
        super().__init__()
        first_dilation = dilation if first_dilation is None else first_dilation
        self.same_shape = in_channels == out_channels and stride == 1
        self.bn_branch2a = nn.BatchNorm2d(in_channels)
        self.conv_branch2a = nn.Conv2d(in_channels, mid_channels, 3, stride, padding=first_dilation,
                                       dilation=first_dilation, bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(mid_channels)
        self.conv_branch2b1 = nn.Conv2d(mid_channels, out_channels, 3, padding=dilation, dilation=dilation,
                                        bias=False)
        if not self.same_shape:
            self.conv_branch1 = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = F.relu(self.bn_branch2a(x))
        shortcut = x if self.same_shape else self.conv_branch1(activated)
        branch = self.conv_branch2a(activated)
        branch = self.conv_branch2b1(F.relu(self.bn_branch2b1(branch)))
        return shortcut + branch


class ResBottleneckBlock(nn.Module):
    """Pre-activation bottleneck (1×1 → 3×3 → 1×1, widths out/4, out/2, out) with Dropout2d (b6, b7)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1,
                 dropout: float = 0.0):
        super().__init__()
        self.same_shape = in_channels == out_channels and stride == 1
        self.bn_branch2a = nn.BatchNorm2d(in_channels)
        self.conv_branch2a = nn.Conv2d(in_channels, out_channels // 4, 1, stride, bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(out_channels // 4)
        self.dropout_2b1 = nn.Dropout2d(dropout)
        self.conv_branch2b1 = nn.Conv2d(out_channels // 4, out_channels // 2, 3, padding=dilation,
                                        dilation=dilation, bias=False)
        self.bn_branch2b2 = nn.BatchNorm2d(out_channels // 2)
        self.dropout_2b2 = nn.Dropout2d(dropout)
        self.conv_branch2b2 = nn.Conv2d(out_channels // 2, out_channels, 1, bias=False)
        if not self.same_shape:
            self.conv_branch1 = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = F.relu(self.bn_branch2a(x))
        shortcut = x if self.same_shape else self.conv_branch1(activated)
        branch = self.conv_branch2a(activated)
        branch = self.conv_branch2b1(self.dropout_2b1(F.relu(self.bn_branch2b1(branch))))
        branch = self.conv_branch2b2(self.dropout_2b2(F.relu(self.bn_branch2b2(branch))))
        return shortcut + branch


class ResNet38d(nn.Module):
    """Stages b2–b7 (output stride 8); ``forward`` returns ReLU(bn7(b7)) with 4096 channels."""

    STAGE_BLOCKS = (("b2", "b2_1", "b2_2"), ("b3", "b3_1", "b3_2"), ("b4", "b4_1", "b4_2", "b4_3", "b4_4", "b4_5"),
                    ("b5", "b5_1", "b5_2"), ("b6", "b7", "bn7"))
    DEFAULT_DETACHED_STAGES = 0  # no CAM reference on ResNet-38 detaches a stage (SEAM freezes b2 itself)

    def __init__(self, bn: str = "frozen", freeze_stem: bool = True):
        super().__init__()
        self.bn_mode = bn
        self.detached_stages = 0
        self.conv1a = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        self.b2 = ResBlock(64, 128, 128, stride=2)
        self.b2_1 = ResBlock(128, 128, 128)
        self.b2_2 = ResBlock(128, 128, 128)
        self.b3 = ResBlock(128, 256, 256, stride=2)
        self.b3_1 = ResBlock(256, 256, 256)
        self.b3_2 = ResBlock(256, 256, 256)
        self.b4 = ResBlock(256, 512, 512, stride=2)
        for index in range(1, 6):
            setattr(self, f"b4_{index}", ResBlock(512, 512, 512))
        self.b5 = ResBlock(512, 512, 1024, stride=1, first_dilation=1, dilation=2)
        self.b5_1 = ResBlock(1024, 512, 1024, dilation=2)
        self.b5_2 = ResBlock(1024, 512, 1024, dilation=2)
        self.b6 = ResBottleneckBlock(1024, 2048, stride=1, dilation=4, dropout=0.3)
        self.b7 = ResBottleneckBlock(2048, 4096, dilation=4, dropout=0.5)
        self.bn7 = nn.BatchNorm2d(4096)
        self.out_channels = 4096
        self.stage_channels = (128, 256, 512, 1024, 4096)
        self.output_stride = 8
        apply_bn_mode(self, bn)
        if freeze_stem:
            freeze(self.conv1a)

    def train(self, mode: bool = True) -> "ResNet38d":
        super().train(mode)
        keep_bn_stats(self, self.bn_mode)
        return self

    def detach_leading_stages(self, count: int) -> None:
        """conv1a and the first ``count`` stages (b2…, b3…, …) get no gradient; their output is detached."""
        stages = [nn.ModuleList(getattr(self, name) for name in group) for group in self.STAGE_BLOCKS]
        freeze_leading_stages([self.conv1a], stages, count)
        self.detached_stages = count

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of b2_2, b3_2, b4_5, b5_2 and the final activated b7 (the levels SEAM's PCM reads)."""
        x = self.conv1a(x)
        stages = []
        for index, group in enumerate(self.STAGE_BLOCKS[:-1], start=1):
            for name in group:
                x = getattr(self, name)(x)
            if index == self.detached_stages:
                x = x.detach()
            stages.append(x)
        x = self.b7(self.b6(x))
        stages.append(F.relu(self.bn7(x)))
        return stages

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_stages(x)[-1]


@BACKBONES.register("resnet38d")
def resnet38d(bn: str = "frozen", freeze_stem: bool = True) -> ResNet38d:
    return ResNet38d(bn=bn, freeze_stem=freeze_stem)
