"""The typed run config of a training + CAM run, validated before any work starts.

The embedded defaults are demo scale: the synthetic benchmark under ``data/synthetic_voc``, the small
backbone, CPU, a few epochs. Paper-scale settings come from sweep/config files that override them.
``stage_key`` hashes only what a stage's output depends on: evaluation settings (thresholds) and
bookkeeping (checkpoint cadence, logging, worker count) never change the training key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..addons import ADDONS
from ..baselines import BASELINES
from ..config import apply_overrides, from_dict, load_yaml, stable_hash, to_dict
from ..errors import ConfigError
from ..models import BACKBONES, backbone_options_with_defaults


@dataclass
class DataConfig:
    dataset: Literal["voc", "coco"] = "voc"
    root: str = "data/synthetic_voc"
    train_split: str = "train_aug"
    crop: int = 64  # random crop side in pixels (IRN 512, SEAM 448)
    augment: Literal["cam", "seam", "amn"] | None = None  # reference augmentation; null = the baseline's
    num_workers: int = 0  # loader processes; results do not depend on it (per-sample rngs)

    def validate(self, where: str) -> None:
        if self.crop < 8:
            raise ConfigError(f"{where}.crop: must be at least 8 pixels, got {self.crop}")
        if self.num_workers < 0:
            raise ConfigError(f"{where}.num_workers: must be >= 0, got {self.num_workers}")


@dataclass
class ModelConfig:
    baseline: str = "cam"
    backbone: str = "small"
    pretrained: str | None = None  # local weights file; null = random init (never downloaded)
    backbone_options: dict[str, Any] = field(default_factory=dict)  # e.g. {strides: [2, 2, 2, 1]}
    options: dict[str, Any] = field(default_factory=dict)  # the baseline's own options

    def validate(self, where: str) -> None:
        baseline = BASELINES.get(self.baseline, f"{where}.baseline")
        BACKBONES.get(self.backbone, f"{where}.backbone")
        # Spell out every default, so {} and the explicit defaults hash to the same stage key.
        self.options = to_dict(from_dict(baseline.Options, self.options, f"{where}.options"))
        self.backbone_options = to_dict(backbone_options_with_defaults(self.backbone, self.backbone_options,
                                                                       f"{where}.backbone_options"))


@dataclass
class AddonConfig:
    name: str
    posterior: Literal["binomial", "multinomial"] = "binomial"
    params: dict[str, Any] = field(default_factory=dict)

    def validate(self, where: str) -> None:
        addon = ADDONS.get(self.name, f"{where}.name")
        self.params = to_dict(from_dict(addon.Params, self.params, f"{where}.params"))


@dataclass
class OptimConfig:
    lr: float = 0.01  # backbone learning rate; the baseline's param groups scale it (CAM head ×10)
    weight_decay: float = 1e-4
    momentum: float = 0.9
    momentum_quirk: bool = False  # the references' SGD(params, lr, weight_decay): momentum = weight decay
    poly_power: float = 0.9

    def validate(self, where: str) -> None:
        if self.lr <= 0:
            raise ConfigError(f"{where}.lr: must be positive, got {self.lr}")
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"{where}.momentum: must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ConfigError(f"{where}.weight_decay: must be >= 0, got {self.weight_decay}")


@dataclass
class TrainConfig:
    epochs: int = 3
    max_steps: int | None = None  # stop after this many optimiser steps (the lr schedule ends there)
    batch_size: int = 8  # per process; the global batch is batch_size × world size
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["off", "bf16"] = "bf16"  # autocast dtype on GPU; CPU always runs fp32
    checkpoint_every: int = 50  # steps between checkpoints (plus one at each epoch end)
    log_every: int = 10  # steps between metric lines

    def validate(self, where: str) -> None:
        for name in ("epochs", "batch_size", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{where}.{name}: must be at least 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"{where}.max_steps: must be at least 1 (or null), got {self.max_steps}")


@dataclass
class CamsConfig:
    split: str = "train"  # the split CAMs are made for and scored on
    scales: tuple[float, ...] = (1.0, 0.5, 1.5, 2.0)
    flip: bool = True
    # Each scale's input: pil_bicubic = the references (uint8 image resized with PIL bicubic, then normalised);
    # tensor_bilinear = the normalised image resized bilinearly as a tensor.
    resize: Literal["pil_bicubic", "tensor_bilinear"] = "pil_bicubic"
    # Each scale's maps to image size: reference = the baseline's reference rule (CAM: IRN's stride-aligned
    # upsample then crop; SEAM, AMN: straight to H x W); direct = straight to H x W for every baseline.
    upsample: Literal["reference", "direct"] = "reference"
    batch_size: int = 4  # same-size images per forward (with their flips); results equal to one at a time

    def validate(self, where: str) -> None:
        if not self.scales or any(s <= 0 for s in self.scales):
            raise ConfigError(f"{where}.scales: need positive scales, got {list(self.scales)}")
        if self.batch_size < 1:
            raise ConfigError(f"{where}.batch_size: must be at least 1, got {self.batch_size}")


@dataclass
class EvalConfig:
    thresholds: tuple[float, ...] | None = None  # null = the evaluator's default sweep
    # Scoring conventions of one reference (wsss_core/evaluation/protocols.py): irn = chainercv nanmean,
    # predicted 255 -> background; seam / hfpl = mean over all classes, 255 wrong, HFPL's boundary F; project.
    protocol: Literal["irn", "seam", "hfpl", "project"] = "irn"
    # How a predicted 255 counts; null = the protocol's (wrong / ignore: protocol project only)
    pred_255: Literal["wrong", "ignore"] | None = None
    workers: int = 1


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    addons: list[AddonConfig] = field(default_factory=list)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cams: CamsConfig = field(default_factory=CamsConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self, where: str) -> None:
        names = [a.name for a in self.addons]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"{where}.addons: {', '.join(duplicates)} listed more than once")
        poolers = [n for n in names if ADDONS.get(n).replaces_pooling]
        if len(poolers) > 1:
            raise ConfigError(f"{where}.addons: {', '.join(poolers)} all replace the pooling step; keep one")
        baseline = BASELINES.get(self.model.baseline)
        if poolers and not baseline.uses_pooling:
            raise ConfigError(f"{where}.addons: {poolers[0]} replaces the pooling step, but baseline "
                              f"{self.model.baseline!r} has no image-level pooling")


# Settings that never change a stage's output (bookkeeping), left out of its key.
NON_RESULT_KEYS = {"data": ("num_workers",), "train": ("checkpoint_every", "log_every"), "cams": ("batch_size",),
                   "eval": ("workers",)}
STAGE_SLICES = {"train": ("data", "model", "addons", "optim", "train"), "cams": ("cams",), "eval": ("eval",)}
STAGE_ORDER = ("train", "cams", "eval")


def stage_slice(cfg: RunConfig, stage: str = "train") -> dict[str, Any]:
    """The config values a stage's output depends on: its own slice plus those of earlier stages."""
    if stage not in STAGE_SLICES:
        raise ConfigError(f"unknown stage {stage!r}; valid choices: {', '.join(STAGE_ORDER)}")
    plain = to_dict(cfg)
    stages = STAGE_ORDER[: STAGE_ORDER.index(stage) + 1]
    out = {}
    for part in (p for s in stages for p in STAGE_SLICES[s]):
        value = plain[part]
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in NON_RESULT_KEYS.get(part, ())}
        out[part] = value
    return out


def stage_key(cfg: RunConfig, stage: str = "train") -> str:
    """Content hash of :func:`stage_slice`: equal keys mean equal outputs (checkpoints, CAMs, scores)."""
    return stable_hash(stage_slice(cfg, stage))


def load_run_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Defaults ← the YAML file at ``path`` (if any) ← ``key=value`` overrides, validated."""
    data = load_yaml(path) if path is not None else {}
    where = str(path) if path is not None else "config"
    return from_dict(RunConfig, apply_overrides(data, list(overrides)), where)


def run_config_from_dict(data: dict[str, Any], where: str = "config") -> RunConfig:
    return from_dict(RunConfig, data, where)
