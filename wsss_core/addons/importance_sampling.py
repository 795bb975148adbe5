"""HFPL importance sampling loss (ISL): classify CAM logits sampled where the posterior is high.

For each (image, class), S pixel indices are drawn with replacement from P(i) ∝ q_ci, where q is the
binomial posterior sigmoid(z) + 1e-5 or the multinomial posterior softmax over the C foreground classes
(+ 1e-5, so every pixel keeps a non-zero chance, as in the binomial case). No gradient flows through the
sampling; the sampled logits (N × C × S) are scored by multilabel soft margin against the image label
broadcast over samples, and mixed with the GAP loss: L_cls = (1 − w)·BCE(GAP) + w·L_IS.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..baselines.base import ClassificationLoss, global_average_pooling_loss
from ..errors import ConfigError
from . import ADDONS
from .base import AddOn, Posterior

POSTERIOR_FLOOR = 1e-5


@dataclass
class ImportanceSamplingParams:
    samples: int = 10  # S: draws per (image, class)
    weight: float = 0.2  # w: share of the IS term in the classification loss (1 = pure IS)

    def validate(self, where: str) -> None:
        if self.samples < 1:
            raise ConfigError(f"{where}.samples: must be at least 1, got {self.samples}")
        if not 0.0 <= self.weight <= 1.0:
            raise ConfigError(f"{where}.weight: must be in [0, 1], got {self.weight}")


def sampling_posterior(logits: torch.Tensor, posterior: Posterior) -> torch.Tensor:
    """q (N × C × P) from flattened CAM logits (N × C × P): per-class sigmoid or softmax over classes."""
    logits = logits.float()
    q = torch.sigmoid(logits) if posterior == "binomial" else torch.softmax(logits, dim=1)
    return q + POSTERIOR_FLOOR


def draw_pixels(q: torch.Tensor, samples: int, generator: torch.Generator | None) -> torch.Tensor:
    """S pixel indices per (image, class), with replacement, P(i) = q_ci / Σ_j q_cj → N × C × S."""
    n, c, p = q.shape
    indices = torch.multinomial(q.reshape(n * c, p), samples, replacement=True, generator=generator)
    return indices.reshape(n, c, samples)


def importance_sampling_loss(logits: torch.Tensor, label: torch.Tensor, samples: int, posterior: Posterior,
                             generator: torch.Generator | None = None) -> torch.Tensor:
    """L_IS: mean BCE-with-logits of the sampled logits against the label (= multilabel soft margin)."""
    flat = logits.flatten(2)
    with torch.no_grad():
        indices = draw_pixels(sampling_posterior(flat, posterior), samples, generator)
    sampled = flat.gather(2, indices).float()
    target = label.float()[:, :, None].expand_as(sampled)
    return F.binary_cross_entropy_with_logits(sampled, target)


@ADDONS.register("importance_sampling")
class ImportanceSampling(AddOn):
    name = "importance_sampling"
    Params = ImportanceSamplingParams
    replaces_pooling = True

    def __init__(self, params: ImportanceSamplingParams, posterior: Posterior = "binomial"):
        super().__init__(params, posterior)
        self._seed = 0
        self._generator: torch.Generator | None = None
        self._pending_state: torch.Tensor | None = None

    def generator(self, device: torch.device) -> torch.Generator:
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device)
            self._generator.manual_seed(self._seed)
            if self._pending_state is not None:
                self._generator.set_state(self._pending_state)
                self._pending_state = None
        return self._generator

    def classification(self, default: ClassificationLoss = global_average_pooling_loss) -> ClassificationLoss:
        weight, samples = self.params.weight, self.params.samples

        def gap_and_importance_sampling(logits: torch.Tensor, label: torch.Tensor) -> dict[str, torch.Tensor]:
            terms = {}
            if weight < 1.0:
                terms["cls_gap"] = (1.0 - weight) * default(logits, label)["cls"]
            if weight > 0.0:
                gen = self.generator(logits.device)
                terms["cls_is"] = weight * importance_sampling_loss(logits, label, samples, self.posterior, gen)
            return terms

        return gap_and_importance_sampling

    def seed(self, seed: int) -> None:
        self._seed = seed
        self._generator = None
        self._pending_state = None

    def state_dict(self) -> dict[str, Any]:
        if self._generator is None:
            return {"seed": self._seed, "state": self._pending_state}
        return {"seed": self._seed, "state": self._generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._seed = int(state["seed"])
        self._generator = None
        self._pending_state = state.get("state")
