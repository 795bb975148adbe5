"""Baselines (CAM, and SEAM/AMN on the same interface) and their registry."""

from __future__ import annotations

import importlib

from ..registry import Registry

BASELINES: Registry = Registry("baseline")

from .base import Baseline, CamResult, CamSite, ParamGroup, TrainOutput  # noqa: E402

# Each module registers its baseline on import; a module not in this checkout yet is skipped.
BASELINE_MODULES = ("cam", "seam", "amn")
for _name in BASELINE_MODULES:
    try:
        importlib.import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{_name}":
            raise

__all__ = ["BASELINES", "Baseline", "CamResult", "CamSite", "ParamGroup", "TrainOutput"]
