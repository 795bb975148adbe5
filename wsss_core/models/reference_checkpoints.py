"""Trained weights released with the reference code, loaded into the project's baselines.

Each format is the state dict the reference saves (``torch.save(model.module.state_dict())``):

- ``irn``: IRN's ``net/resnet50_cam.Net`` → the ``cam`` baseline on ``resnet50``. PyTorch writes a shared
  module once per attribute that holds it, so the backbone is there three times: ``resnet50.*`` (torchvision
  names), ``stage1.{0,1,4}.*`` / ``stage{2,3,4}.0.*`` (conv1, bn1, layer1 / layer2–4) and
  ``backbone.{0..3}.*`` (the same stages); the classifier ``classifier.weight`` (C × 2048 × 1 × 1, no bias)
  also as ``newly_added.0.weight``.
- ``seam``: SEAM's ``network/resnet38_SEAM.Net`` → the ``seam`` baseline on ``resnet38d``: ResNet-38 keys at
  the top level (``conv1a``, ``b2`` … ``b7``, ``bn7``), ``fc8.weight`` (C+1 rows, row 0 the unused
  background row), the PCM convs ``f8_3``, ``f8_4``, ``f9``.
- ``amn``: AMN's ``net/resnet50_amn.Net`` → the ``amn`` baseline on ``resnet50``: the backbone as IRN's,
  ``label_enc.{weight,bias}`` (also ``newly_added.1.*``), the ASPP convs ``classifier.1.c{i}.{weight,bias}``
  (``classifier.0`` is the dropout; also ``newly_added.0.1.c{i}.*``).

Every key of the file must map to a key of the model and every model key must be filled (BatchNorm's
``num_batches_tracked`` excepted): anything else is one :class:`ConfigError` naming the file and listing
the unexpected, missing, mismatched or disagreeing keys. Copies of one tensor under aliases must be equal.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Literal, Mapping

import torch
from torch import nn

from ..errors import ConfigError
from .weights import describe_keys, read_state_dict

CheckpointFormat = Literal["irn", "seam", "amn"]
FORMATS = ("irn", "seam", "amn")
SHOWN_KEYS = 20

Rule = tuple[str, "str | Callable[[re.Match], str]"]

# IRN's and AMN's ResNet-50: the torchvision names under resnet50., and the same modules as stages.
_RESNET50: list[Rule] = [
    (r"resnet50\.(.+)", r"backbone.\1"),
    (r"(?:stage1|backbone\.0)\.0\.(.+)", r"backbone.conv1.\1"),
    (r"(?:stage1|backbone\.0)\.1\.(.+)", r"backbone.bn1.\1"),
    (r"(?:stage1|backbone\.0)\.4\.(.+)", r"backbone.layer1.\1"),
    (r"stage([234])\.0\.(.+)", r"backbone.layer\1.\2"),
    (r"backbone\.([123])\.0\.(.+)", lambda m: f"backbone.layer{int(m[1]) + 1}.{m[2]}"),
]
RULES: dict[str, list[Rule]] = {
    "irn": _RESNET50 + [(r"(?:classifier|newly_added\.0)\.weight", "classifier.weight")],
    "amn": _RESNET50 + [
        (r"(?:label_enc|newly_added\.1)\.(weight|bias)", r"label_encoder.\1"),
        (r"(?:classifier|newly_added\.0)\.1\.c(\d+)\.(weight|bias)", r"aspp.branches.\1.\2"),
    ],
    "seam": [
        (r"fc8\.weight", "classifier.weight"),
        (r"(f8_3|f8_4|f9)\.weight", r"pcm.\1.weight"),
        (r"((?:conv1a|b[2-7](?:_\d)?|bn7)\..+)", r"backbone.\1"),
    ],
}
# The baseline and backbone each format's network is (registry names).
ARCHITECTURES = {"irn": ("cam", "ResNet50"), "seam": ("seam", "ResNet38d"), "amn": ("amn", "ResNet50")}


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ConfigError(f"checkpoint format {fmt!r} is not known; valid choices: {', '.join(FORMATS)}")


def _check_architecture(baseline: nn.Module, fmt: str, source: str) -> None:
    from ..baselines import BASELINES

    baseline_name, backbone_class = ARCHITECTURES[fmt]
    backbone = getattr(baseline, "backbone", None)
    if not isinstance(baseline, BASELINES.get(baseline_name)) or type(backbone).__name__ != backbone_class:
        raise ConfigError(f"{source}: checkpoint format {fmt!r} loads into model.baseline={baseline_name} with "
                          f"model.backbone={backbone_class.lower()}; this model is {type(baseline).__name__} on "
                          f"{type(backbone).__name__}")


def _target(key: str, rules: list[Rule]) -> str | None:
    for pattern, replacement in rules:
        match = re.fullmatch(pattern, key)
        if match:
            return replacement(match) if callable(replacement) else match.expand(replacement)
    return None


def reference_state_dict(state: Mapping[str, torch.Tensor], fmt: str, baseline: nn.Module,
                         source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """``state`` (a reference network's state dict, format ``fmt``) as a full state dict of ``baseline``."""
    _check_format(fmt)
    _check_architecture(baseline, fmt, source)
    expected = baseline.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    unexpected, disagree = [], []
    for key, value in state.items():
        target = _target(key, RULES[fmt])
        if target is None or target not in expected:
            unexpected.append(key)
            continue
        if fmt == "seam" and target == "classifier.weight" and value.shape[0] == expected[target].shape[0] + 1:
            value = value[1:]  # fc8's unused background row, for a model built with background_row: false
        if target in mapped and not (mapped[target].shape == value.shape and torch.equal(mapped[target], value)):
            disagree.append(f"{key} (≠ another copy of {target})")
            continue
        mapped[target] = value
    missing = sorted(k for k in expected if k not in mapped and not k.endswith("num_batches_tracked"))
    mismatched = sorted(f"{k} {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
                        for k, v in mapped.items() if v.shape != expected[k].shape)
    problems = [f"{what} {describe_keys(sorted(keys), SHOWN_KEYS)}" for what, keys in
                (("unexpected keys", unexpected), ("missing keys", missing), ("shape mismatches", mismatched),
                 ("aliases that disagree", disagree)) if keys]
    if problems:
        raise ConfigError(f"{source}: not a {fmt!r} checkpoint of this model "
                          f"({type(baseline).__name__} on {type(baseline.backbone).__name__}): " + "; ".join(problems))
    return {k: mapped.get(k, v) for k, v in expected.items()}


def load_reference_checkpoint(baseline: nn.Module, path: str | Path, fmt: str) -> None:
    """Load the reference checkpoint file ``path`` (format ``fmt``: irn, seam or amn) into ``baseline``."""
    _check_format(fmt)
    state = read_state_dict(path, what="checkpoint file", hint="give the reference's .pth file")
    baseline.load_state_dict(reference_state_dict(state, fmt, baseline, source=str(path)))
