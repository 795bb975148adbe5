"""HFPL add-ons (importance sampling, feature similarity) and their registry."""

from __future__ import annotations

from ..registry import Registry

ADDONS: Registry = Registry("add-on")

from .base import AddOn, Posterior  # noqa: E402
from . import feature_similarity, importance_sampling  # noqa: E402,F401  (register on import)

__all__ = ["ADDONS", "AddOn", "Posterior"]
