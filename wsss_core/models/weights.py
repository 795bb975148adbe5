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


def describe_keys(keys: list[str], shown: int = SHOWN_KEYS) -> str:
    listed = ", ".join(keys[:shown])
    more = f" (+{len(keys) - shown} more)" if len(keys) > shown else ""
    return f"{len(keys)}: {listed}{more}"


def read_state_dict(path: str | Path, what: str = "model.pretrained: weights file",
                    hint: str = "give a local path or null for random init") -> dict[str, torch.Tensor]:
    """The tensors of the local checkpoint ``path`` (bare state dict or a common wrapper, 'module.' removed)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"{what} {path} not found (weights are never downloaded; {hint})")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        raise ConfigError(f"{path}: cannot read weights: {exc}") from None
    return _unwrap(raw, path)


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load the local checkpoint ``path`` into ``model``; every backbone key must be matched.

    Missing or unexpected keys and shape mismatches raise :class:`ConfigError` listing the first few
    and the counts, so a wrong file (or a wrong backbone name) is obvious.
    """
    path = Path(path).expanduser()
    state = {k: v for k, v in read_state_dict(path).items() if not k.startswith(IGNORED_PREFIXES)}
    expected = model.state_dict()
    missing = sorted(k for k in expected if k not in state and not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in state if k not in expected)
    mismatched = sorted(f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
                        for k in state if k in expected and state[k].shape != expected[k].shape)
    problems = []
    if missing:
        problems.append(f"missing keys {describe_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {describe_keys(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches {describe_keys(mismatched)}")
    if problems:
        raise ConfigError(f"{path}: weights do not fit backbone {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict(state, strict=False)
