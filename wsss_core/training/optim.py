"""SGD with the references' parameter groups and poly learning rate.

``momentum_quirk``: IRN and SEAM build ``torch.optim.SGD(params, lr, weight_decay)``; the third
positional argument of SGD is momentum, so momentum = weight decay (1e-4) while each param group still
sets its own weight decay. ``momentum_quirk: false`` gives the intended SGD with momentum 0.9.
"""

from __future__ import annotations

import torch

from ..baselines.base import ParamGroup


def build_sgd(groups: list[ParamGroup], lr: float, weight_decay: float, momentum: float,
              momentum_quirk: bool) -> torch.optim.SGD:
    param_groups = [
        {"params": g.params, "lr": lr * g.lr_mult, "initial_lr": lr * g.lr_mult,
         "weight_decay": weight_decay * g.weight_decay_mult, "name": g.name}
        for g in groups if g.params
    ]
    return torch.optim.SGD(param_groups, lr=lr, momentum=weight_decay if momentum_quirk else momentum)


def poly_lr_factor(step: int, total_steps: int, power: float) -> float:
    """(1 − step / total)^power, the IRN/SEAM PolyOptimizer schedule, applied before step ``step``."""
    return (1.0 - min(step, total_steps) / total_steps) ** power


def set_poly_lr(optimizer: torch.optim.Optimizer, step: int, total_steps: int, power: float) -> float:
    factor = poly_lr_factor(step, total_steps, power)
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor
    return optimizer.param_groups[0]["lr"]
