"""A tiny fast CNN for CPU tests and the demo (a few thousand parameters, output stride 4 by default).

GroupNorm rather than BatchNorm: per-sample normalisation trains from scratch and gives the same result
whether a batch is split across DDP processes or not. It has no pretrained weights, so no stage is cut from
the gradient by default (``DEFAULT_DETACHED_STAGES = 0``): detaching, as IRN does, keeps pretrained features;
on a network trained from scratch it would freeze random ones.
"""

from __future__ import annotations

import torch
from torch import nn

from . import BACKBONES
from .frozen import freeze_leading_stages


def _conv_block(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
                         nn.GroupNorm(min(8, out_channels), out_channels), nn.ReLU(inplace=True))


class SmallNet(nn.Module):
    """Stages of two 3×3 conv blocks each; the first block of a stage downsamples by 2."""

    DEFAULT_DETACHED_STAGES = 0

    def __init__(self, widths: tuple[int, ...] | list[int] = (16, 32, 64), output_stride: int = 4):
        super().__init__()
        widths = tuple(widths)
        downsamples = output_stride.bit_length() - 1
        if 2 ** downsamples != output_stride or downsamples > len(widths):
            raise ValueError(f"output_stride must be a power of 2 up to 2**{len(widths)}, got {output_stride}")
        stages, in_channels = [], 3
        for index, width in enumerate(widths):
            stride = 2 if index < downsamples else 1
            stages.append(nn.Sequential(_conv_block(in_channels, width, stride), _conv_block(width, width, 1)))
            in_channels = width
        self.stages = nn.ModuleList(stages)
        self.out_channels = widths[-1]
        self.stage_channels = widths
        self.output_stride = output_stride
        self.detached_stages = 0

    def detach_leading_stages(self, count: int) -> None:
        """The first ``count`` stages get no gradient; their output is detached."""
        freeze_leading_stages([], list(self.stages), count)
        self.detached_stages = count

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for index, stage in enumerate(self.stages, start=1):
            x = stage(x)
            if index == self.detached_stages:
                x = x.detach()
            outputs.append(x)
        return outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_stages(x)[-1]


@BACKBONES.register("small")
def small(widths: tuple[int, ...] | list[int] = (16, 32, 64), output_stride: int = 4) -> SmallNet:
    return SmallNet(widths=widths, output_stride=output_stride)
