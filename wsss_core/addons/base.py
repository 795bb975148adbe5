"""The add-on interface: an add-on may replace a baseline's pooling and/or add loss terms per CAM site.

Add-ons are plain objects (no parameters of their own). One that samples keeps a ``torch.Generator``
whose state the trainer checkpoints, so a resumed run draws the same samples.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch

from ..baselines.base import CamSite, ClassificationLoss

Posterior = Literal["binomial", "multinomial"]


class AddOn:
    """Base class. ``Params`` is the dataclass of the add-on's ``params`` config mapping."""

    name: ClassVar[str] = ""
    Params: ClassVar[type]
    replaces_pooling: ClassVar[bool] = False

    def __init__(self, params: Any, posterior: Posterior = "binomial"):
        self.params = params
        self.posterior = posterior

    def classification(self, default: ClassificationLoss) -> ClassificationLoss:
        """The pooling step to use instead of ``default`` (only when ``replaces_pooling``)."""
        return default

    def losses(self, site: CamSite, rgb: torch.Tensor) -> dict[str, torch.Tensor]:
        """Extra (weighted) loss terms for one CAM site; ``rgb`` is its input image in [0, 1]."""
        return {}

    def seed(self, seed: int) -> None:
        """Seed any random state (called once per process with a rank-specific seed)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
