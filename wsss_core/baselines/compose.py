"""Compose a baseline with any subset of add-ons: one ``nn.Module`` whose forward returns the loss terms.

The composition has no per-combination code: a pooling add-on replaces ``baseline.classify``; every
add-on's extra losses run on every CAM site the baseline marks ``regularise``. It is the module DDP wraps.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from ..addons import ADDONS, AddOn
from ..config import from_dict
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ..models import build_backbone
from . import BASELINES
from .base import Baseline, TrainOutput


class WsssModel(nn.Module):
    """Baseline + add-ons. ``forward(image, label)`` → (total loss, named terms, baseline output)."""

    def __init__(self, baseline: Baseline, addons: Sequence[AddOn] = (),
                 pixel_mean: Sequence[float] = IMAGENET_MEAN, pixel_std: Sequence[float] = IMAGENET_STD):
        super().__init__()
        self.baseline = baseline
        self.addons = list(addons)
        for addon in self.addons:
            if addon.replaces_pooling:
                baseline.classify = addon.classification(baseline.classify)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(1, 3, 1, 1), persistent=False)

    def rgb(self, image: torch.Tensor) -> torch.Tensor:
        """Un-normalise a network input back to RGB in [0, 1] (what feature similarity compares)."""
        return (image.float() * self.pixel_std + self.pixel_mean).clamp(0.0, 1.0)

    def forward(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor],
                                                                         TrainOutput]:
        output = self.baseline.forward_train(image, label)
        terms = dict(output.losses)
        sites = {name: site for name, site in output.sites.items() if site.regularise}
        for addon in self.addons:
            for site_name, site in sites.items():
                for term, value in addon.losses(site, self.rgb(site.image)).items():
                    terms[term if len(sites) == 1 else f"{site_name}.{term}"] = value
        total = sum(v.float() for v in terms.values())
        return total, terms, output


def build_model(model_cfg: Any, addon_cfgs: Sequence[Any], num_classes: int) -> WsssModel:
    """A :class:`WsssModel` from a ``ModelConfig`` and ``AddonConfig`` list (see training/config.py)."""
    baseline_cls = BASELINES.get(model_cfg.baseline, "model.baseline")
    backbone = build_backbone(model_cfg.backbone, model_cfg.pretrained, model_cfg.backbone_options)
    options = from_dict(baseline_cls.Options, model_cfg.options, "model.options")
    baseline = baseline_cls(num_classes, backbone, options)
    addons = []
    for index, entry in enumerate(addon_cfgs):
        addon_cls = ADDONS.get(entry.name, f"addons[{index}].name")
        params = from_dict(addon_cls.Params, entry.params, f"addons[{index}].params")
        addons.append(addon_cls(params, entry.posterior))
    return WsssModel(baseline, addons)
