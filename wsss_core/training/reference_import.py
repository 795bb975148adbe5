"""A run dir holding a reference's released trained weights, so ``wsss cams`` and ``wsss eval`` run them.

``wsss cams --run-dir DIR --checkpoint FILE --checkpoint-format irn|seam|amn [CONFIG] [--set ...]`` imports
FILE (see :mod:`wsss_core.models.reference_checkpoints`) into DIR/checkpoints/last.pt with DIR/config.yaml,
as ``wsss train`` would have left them, then makes and scores the CAMs as for a trained run. Without CONFIG
(and without DIR/config.yaml) the defaults are used with the format's network (irn: cam on resnet50; seam:
seam on resnet38d; amn: amn on resnet50), so only the data settings need ``--set``. The checkpoint's stage
key is ``import-<sha256 of FILE>``; a run dir that holds another model is refused, so its CAMs never mix.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .config import RunConfig, load_run_config

# The network each format is, as config overrides (applied only when no config file is given).
FORMAT_MODEL = {"irn": ["model.baseline=cam", "model.backbone=resnet50"],
                "seam": ["model.baseline=seam", "model.backbone=resnet38d"],
                "amn": ["model.baseline=amn", "model.backbone=resnet50"]}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def import_config(run_dir: Path, fmt: str, config: str | Path | None, overrides: list[str]) -> RunConfig:
    """The run config: CONFIG, else DIR/config.yaml, else the defaults with the format's network."""
    if config is None and (run_dir / "config.yaml").is_file():
        config = run_dir / "config.yaml"
    if config is None:
        return load_run_config(None, [*FORMAT_MODEL[fmt], *overrides])
    return load_run_config(config, overrides)


def import_reference_run(checkpoint: str | Path | None, fmt: str | None, run_dir: str | Path,
                         config: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Import the reference checkpoint into ``run_dir`` (config.yaml + checkpoints/last.pt); its config."""
    from ..baselines.compose import build_model
    from ..data import build_dataset
    from ..models.reference_checkpoints import FORMATS, load_reference_checkpoint
    from .checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
    from .trainer import write_run_config

    if checkpoint is None or fmt is None:
        raise ConfigError("--checkpoint and --checkpoint-format go together")
    if fmt not in FORMATS:
        raise ConfigError(f"--checkpoint-format: {fmt!r} is not known; valid choices: {', '.join(FORMATS)}")
    checkpoint, run_dir = Path(checkpoint).expanduser(), Path(run_dir)
    if not checkpoint.is_file():
        raise ConfigError(f"--checkpoint: {checkpoint} not found (weights are never downloaded)")
    cfg = import_config(run_dir, fmt, config, list(overrides))
    sha = file_sha256(checkpoint)
    existing = checkpoint_path(run_dir)
    if existing.is_file():
        source = load_checkpoint(existing).get("imported_from") or {}
        if source.get("sha256") != sha:
            held = f"weights imported from {source.get('file')}" if source else "a model trained there"
            raise ConfigError(f"{run_dir}: holds {held}, not {checkpoint}; use a new --run-dir so CAMs of two "
                              "models never mix")
    num_classes = build_dataset(cfg.data.dataset, cfg.data.root, cfg.cams.split).num_classes
    model = build_model(cfg.model, cfg.addons, num_classes)
    load_reference_checkpoint(model.baseline, checkpoint, fmt)
    write_run_config(cfg, run_dir)
    meta: dict[str, Any] = {"model": model.state_dict(), "stage_key": f"import-{sha[:16]}", "finished": True,
                            "step": 0, "total_steps": 0,
                            "imported_from": {"file": str(checkpoint), "format": fmt, "sha256": sha}}
    save_checkpoint(existing, meta)
    return cfg
