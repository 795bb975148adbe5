"""Loading a user's local checkpoint into a backbone, with errors that name the file and the keys."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError

# Classifier heads of ImageNet checkpoints: present in the file, never in a backbone.
IGNORED_PREFIXES = ("fc.", "fc8.", "classifier.")
SHOWN_KEYS = 5


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """Accept a bare state dict or the common wrappers ({'state_dict': ...}, {'model': ...})."""
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(f"{path}: not a state dict of tensors (got {type(obj).__name__})")
    # Checkpoints saved from DataParallel/DDP prefix every key with 'module.'.
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _describe(keys: list[str]) -> str:
    shown = ", ".join(keys[:SHOWN_KEYS])
    more = f" (+{len(keys) - SHOWN_KEYS} more)" if len(keys) > SHOWN_KEYS else ""
    return f"{len(keys)}: {shown}{more}"


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load the local checkpoint ``path`` into ``model``; every backbone key must be matched.

    Missing or unexpected keys and shape mismatches raise :class:`ConfigError` listing the first few
    and the counts, so a wrong file (or a wrong backbone name) is obvious.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"model.pretrained: weights file {path} not found (weights are never downloaded; "
                          "give a local path or null for random init)")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        raise ConfigError(f"{path}: cannot read weights: {exc}") from None
    state = {k: v for k, v in _unwrap(raw, path).items() if not k.startswith(IGNORED_PREFIXES)}
    expected = model.state_dict()
    missing = sorted(k for k in expected if k not in state and not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in state if k not in expected)
    mismatched = sorted(f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
                        for k in state if k in expected and state[k].shape != expected[k].shape)
    problems = []
    if missing:
        problems.append(f"missing keys {_describe(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_describe(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches {_describe(mismatched)}")
    if problems:
        raise ConfigError(f"{path}: weights do not fit backbone {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict(state, strict=False)
