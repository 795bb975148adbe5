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


class _WriteErrorKeeper:
    """The file object ``torch.save`` writes through, keeping the OSError of a failed write: torch's zip writer turns
    it into an "unexpected pos" RuntimeError that names neither the cause (e.g. a full disk) nor the file."""

    def __init__(self, handle: Any):
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self.handle.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.handle.flush()


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            writer = _WriteErrorKeeper(handle)
            try:
                torch.save(state, writer)
            except RuntimeError:
                if writer.error is None:
                    raise
                raise writer.error from None
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)  # a partial file would keep the space the stage's records still need
        if isinstance(exc, OSError) and exc.filename is None:  # a failed write names no file: name the checkpoint
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise


def _redo_advice(run_dir: str | Path) -> str:
    """What recovers from a damaged or missing checkpoint, in a sweep and for ``wsss train`` alike. Deleting the file
    alone is not enough everywhere: a stage recorded finished before its outputs were recorded would still be
    reused without it. Without its folder, the stage store recomputes the stage (and the stages after it) and an
    unfinished training starts from step 0."""
    return (f"delete its run folder (`rm -r {run_dir}`) and run again: that training is redone from the start "
            f"(and, in a sweep, the stages after it)")


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        # Our own file: it carries numpy/python RNG states, which the weights-only unpickler refuses.
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a truncated or foreign file
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise TrainingError(f"{path}: cannot read checkpoint, it is damaged ({reason}); "
                            f"{_redo_advice(Path(path).parent.parent)}") from None


def load_model_weights(run_dir: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The trained model's state dict and the checkpoint's metadata (step, stage key)."""
    path = checkpoint_path(run_dir)
    if not path.is_file():
        raise TrainingError(f"{path}: no trained model in run dir {run_dir}; train it first (`wsss train --run-dir "
                            f"{run_dir}`), or, if a sweep's stage left it, {_redo_advice(run_dir)}")
    state = load_checkpoint(path)
    return state["model"], {k: state.get(k) for k in ("step", "total_steps", "stage_key", "finished")}
