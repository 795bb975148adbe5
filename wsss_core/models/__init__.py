"""Backbones in plain torch (no torchvision), a name → constructor registry, and local weight loading.

Every backbone is an ``nn.Module`` with ``out_channels`` (channels of its last stage),
``output_stride`` and ``forward(x) -> Tensor`` (last-stage features). ``forward_stages(x)`` returns
the list of stage outputs for baselines that need intermediate features (SEAM's PCM, say).
``detach_leading_stages(k)`` cuts the first k stages from the gradient (IRN's CAM network: 2 on ResNet-50);
``DEFAULT_DETACHED_STAGES`` is the backbone family's default for the CAM baseline (2 for ResNet-50 as IRN,
0 for the small CNN trained from scratch and for ResNet-38).
Weights are never downloaded: ``pretrained: null`` means random init, a path means "load this file".
"""

from __future__ import annotations

import inspect
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


def backbone_options_with_defaults(name: str, options: dict[str, Any] | None,
                                   where: str = "model.backbone_options") -> dict[str, Any]:
    """``options`` with every constructor default of backbone ``name`` spelled out (so ``{}`` and the explicit
    defaults give one stage key, and a changed default gives a new one); an unknown option is an error."""
    constructor = BACKBONES.get(name, where.rsplit("_options", 1)[0])
    parameters = inspect.signature(constructor).parameters
    unknown = sorted(set(options or {}) - set(parameters))
    if unknown:
        raise ConfigError(f"{where}: unknown option(s) {', '.join(unknown)} for backbone {name!r}; valid options: "
                          f"{', '.join(parameters)}")
    defaults = {key: p.default for key, p in parameters.items() if p.default is not inspect.Parameter.empty}
    return {**defaults, **(options or {})}


# Importing the modules registers their backbones.
from . import resnet38, resnet50, small  # noqa: E402,F401

__all__ = ["BACKBONES", "backbone_options_with_defaults", "build_backbone", "load_weights"]
