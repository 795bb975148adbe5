"""Backbones in plain torch (no torchvision), a name → constructor registry, and local weight loading.

Every backbone is an ``nn.Module`` with ``out_channels`` (channels of its last stage),
``output_stride`` and ``forward(x) -> Tensor`` (last-stage features). ``forward_stages(x)`` returns
the list of stage outputs for baselines that need intermediate features (SEAM's PCM, say).
Weights are never downloaded: ``pretrained: null`` means random init, a path means "load this file".
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import ConfigError
from ..registry import Registry
from .weights import load_weights

BACKBONES: Registry = Registry("backbone")


def build_backbone(name: str, pretrained: str | None = None, options: dict[str, Any] | None = None,
                   where: str = "model.backbone") -> nn.Module:
    """Construct backbone ``name`` with ``options`` and load ``pretrained`` (a local path) if given."""
    constructor = BACKBONES.get(name, where)
    try:
        model = constructor(**(options or {}))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}_options: {exc} (backbone {name!r}, options {options or {}})") from None
    if pretrained:
        load_weights(model, pretrained)
    return model


# Importing the modules registers their backbones.
from . import resnet38, resnet50, small  # noqa: E402,F401

__all__ = ["BACKBONES", "build_backbone", "load_weights"]
