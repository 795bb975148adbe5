"""Freezing helpers shared by the ResNets: frozen BatchNorm and frozen stem, as IRN and SEAM do."""

from __future__ import annotations

from torch import nn


def freeze(module: nn.Module) -> None:
    for param in module.parameters():
        param.requires_grad_(False)


def keep_batchnorm_frozen(model: nn.Module) -> None:
    """Put every BatchNorm in eval mode (running statistics); called after each ``train()``."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def freeze_batchnorm(model: nn.Module) -> None:
    """No gradient to BatchNorm affine parameters (their statistics stay the pretrained ones)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            freeze(module)
