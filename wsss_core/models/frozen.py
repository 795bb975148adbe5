"""What a backbone trains: BatchNorm modes, a frozen stem, and leading stages cut off from the gradient.

BatchNorm has two separate things to freeze: its running statistics (a module in eval mode keeps them) and
its affine weight and bias (parameters). The references differ, so each is a named mode (``bn``):

- ``frozen_stats``: running statistics fixed (eval mode, kept after every ``train()``); weight and bias
  trainable, in the backbone's parameter group. IRN's CAM network and AMN's network (IRN's ``FixedBatchNorm``
  always normalises with the running statistics; its ``weight``/``bias`` are parameters in the backbone group).
- ``frozen``: statistics fixed and no gradient to weight and bias. SEAM's ResNet-38 (its ``train()`` puts
  every BatchNorm in eval mode and sets ``requires_grad = False`` on both).
- ``train``: ordinary BatchNorm (batch statistics in training, everything trainable).
"""

from __future__ import annotations

from typing import Literal

from torch import nn

BatchNormMode = Literal["frozen_stats", "frozen", "train"]
BN_MODES = ("frozen_stats", "frozen", "train")


def freeze(module: nn.Module) -> None:
    for param in module.parameters():
        param.requires_grad_(False)


def check_bn_mode(mode: str) -> None:
    if mode not in BN_MODES:
        raise ValueError(f"bn: {mode!r} is not a BatchNorm mode; valid choices: {', '.join(BN_MODES)}")


def batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def apply_bn_mode(model: nn.Module, mode: str) -> None:
    """At construction: ``frozen`` takes the gradient from every BatchNorm's weight and bias."""
    check_bn_mode(mode)
    if mode == "frozen":
        for module in batchnorms(model):
            freeze(module)


def keep_bn_stats(model: nn.Module, mode: str) -> None:
    """After each ``train()``: both frozen modes put every BatchNorm back in eval mode (running statistics)."""
    if mode in ("frozen_stats", "frozen"):
        for module in batchnorms(model):
            module.eval()


def freeze_leading_stages(stem: list[nn.Module], stages: list[nn.Module], count: int) -> None:
    """No gradient to the stem and the first ``count`` stages (the backbone detaches their output too)."""
    if not 0 <= count <= len(stages):
        raise ValueError(f"detached stages: need 0 to {len(stages)} (the backbone has {len(stages)} stages), "
                         f"got {count}")
    if count:
        for module in [*stem, *stages[:count]]:
            freeze(module)
