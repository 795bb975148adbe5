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
    # Same-size images per forward (with their flips); the maps equal those of one image at a time (1e-5).
    # null: 1 on CPU (batches were slower there, bench/RESULTS.md), 8 on CUDA.
    batch_size: int | None = None

    def validate(self, where: str) -> None:
        if not self.scales or any(s <= 0 for s in self.scales):
            raise ConfigError(f"{where}.scales: need positive scales, got {list(self.scales)}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"{where}.batch_size: must be at least 1 (or null), got {self.batch_size}")


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
class FinalConfig:
    """The final segmentation stage (docs/fidelity.md, "Final segmentation stage"): pseudo-labels from the trial's
    maps → a DeepLab network trained on them → scored on ``val_split``. Off unless ``enabled``. Defaults are
    demo scale (small backbone, 64 px crops); the paper's DeepLab-v2 setting is spelled out at the top of
    sweeps/ablation_final_demo.yaml."""

    enabled: bool = False
    # Pseudo-labels: background threshold, a number or "best" (the best of the trial's eval stage)
    threshold: float | Literal["best"] = "best"
    refine: Literal["none", "crf", "probability"] = "none"  # crf: CRF(argmax([t, maps])); probability: SEAM's
    refine_options: dict[str, Any] = field(default_factory=dict)  # evaluation.crf.RefineConfig fields
    split: str | None = None  # the segmentation training split; null = data.train_split (train_aug)
    val_split: str = "val"
    # The network
    arch: Literal["deeplab_v2", "deeplab_v3plus"] = "deeplab_v2"
    backbone: Literal["small", "resnet50", "resnet101"] = "small"
    backbone_options: dict[str, Any] = field(default_factory=dict)  # small: widths, output_stride
    pretrained: str | None = None  # local ImageNet weights of the backbone; null = random init
    aspp_rates: tuple[int, ...] | None = None  # null: v2 (6, 12, 18, 24) summed, v3+ (6, 12, 18)
    # Training (reference: crop 321, scale 0.5-1.5, flip, SGD 2.5e-4 ×10 head, momentum 0.9, wd 5e-4, poly 0.9,
    # 20000 iterations of batch 10, inputs at scales 1, 0.75, 0.5 max-fused)
    crop: int = 64
    scale: tuple[float, float] = (0.5, 1.5)
    batch_size: int = 8
    iterations: int = 300
    lr: float = 0.01
    head_lr_mult: float = 10.0
    momentum: float = 0.9
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    train_scales: tuple[float, ...] = (1.0,)  # DeepLab-v2 MSC: (1.0, 0.75, 0.5), every output + the max-fused
    # The loss's target size: labels resized (nearest) to the logits (kazuto1011 DeepLab-v2), or logits
    # upsampled (bilinear) to the labels (DeepLab-v3+ practice)
    label_resize: Literal["to_logits", "to_labels"] = "to_logits"
    # Test time: softmax averaged over scales (and flips), optional dense CRF (kazuto1011's parameters)
    test_scales: tuple[float, ...] = (1.0,)
    test_flip: bool = False
    test_crf: bool = False
    test_crf_params: dict[str, Any] = field(default_factory=dict)  # evaluation.crf.CrfParams fields

    def validate(self, where: str) -> None:
        from ..evaluation.crf import CrfParams, RefineConfig

        if isinstance(self.threshold, float) and not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"{where}.threshold: must be in [0, 1] or 'best', got {self.threshold}")
        for name in ("crop", "batch_size", "iterations"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{where}.{name}: must be at least 1, got {getattr(self, name)}")
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ConfigError(f"{where}.scale: need 0 < low <= high, got {list(self.scale)}")
        for name in ("train_scales", "test_scales"):
            if not getattr(self, name) or any(s <= 0 for s in getattr(self, name)):
                raise ConfigError(f"{where}.{name}: need positive scales, got {list(getattr(self, name))}")
        if self.lr <= 0:
            raise ConfigError(f"{where}.lr: must be positive, got {self.lr}")
        if self.aspp_rates is not None and (not self.aspp_rates or any(r < 1 for r in self.aspp_rates)):
            raise ConfigError(f"{where}.aspp_rates: need rates >= 1 (or null), got {list(self.aspp_rates)}")
        # Spell out every default, so {} and the explicit defaults key alike.
        self.refine_options = to_dict(from_dict(RefineConfig, self.refine_options, f"{where}.refine_options"))
        self.test_crf_params = to_dict(from_dict(CrfParams, {**TEST_CRF_DEFAULTS, **self.test_crf_params},
                                                 f"{where}.test_crf_params"))


# kazuto1011/deeplab-pytorch's test-time CRF (docs/fidelity.md): iterations 10, Gaussian sxy 1 weight 3, bilateral
# sxy 67 srgb 3 weight 4.
TEST_CRF_DEFAULTS = {"iterations": 10, "gaussian_sxy": 1.0, "gaussian_compat": 3.0, "bilateral_sxy": 67.0,
                     "bilateral_srgb": 3.0, "bilateral_compat": 4.0}


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    addons: list[AddonConfig] = field(default_factory=list)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cams: CamsConfig = field(default_factory=CamsConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    final: FinalConfig = field(default_factory=FinalConfig)  # the final segmentation stage (off by default)

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
