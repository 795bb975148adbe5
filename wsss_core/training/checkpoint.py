"""Checkpoints that make a resumed run bit-identical to an uninterrupted one.

A checkpoint holds the model, the optimiser (momentum buffers), the step / epoch / position in the
epoch, and every rank's RNG states (torch, CUDA, numpy, python, the add-ons' generators). Only rank 0
writes it, atomically (temp file + ``os.replace``), so a kill mid-write leaves the previous one.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import TrainingError

CHECKPOINT_DIR = "checkpoints"
LAST = "last.pt"


def checkpoint_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / LAST


def capture_rng(addons: list[Any]) -> dict[str, Any]:
    """This process's RNG states; restored by :func:`restore_rng`."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "addons": [addon.state_dict() for addon in addons],
    }


def restore_rng(state: dict[str, Any], addons: list[Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    for addon, addon_state in zip(addons, state["addons"]):
        addon.load_state_dict(addon_state)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        # Our own file: it carries numpy/python RNG states, which the weights-only unpickler refuses.
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a truncated or foreign file
        raise TrainingError(f"{path}: cannot read checkpoint: {exc}; delete it or use --resume never") from None


def load_model_weights(run_dir: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The trained model's state dict and the checkpoint's metadata (step, stage key)."""
    path = checkpoint_path(run_dir)
    if not path.is_file():
        raise TrainingError(f"{path}: no trained model in run dir {run_dir}; run `wsss train` first")
    state = load_checkpoint(path)
    return state["model"], {k: state.get(k) for k in ("step", "total_steps", "stage_key", "finished")}
