"""``data``: generate the synthetic benchmark (only when the sweep file asks for ``synthetic_data``)."""

from __future__ import annotations

from typing import Any

from ..stage import StageDef, StageRun


def key_slice(cfg: Any, extras: dict[str, Any]) -> dict[str, Any]:
    return {"synthetic": extras["synthetic"], "generator": "wsss_core.data.synth"}


def run(stage: StageRun) -> dict[str, Any]:
    from ...data.synth import generate_synthetic_voc

    settings = dict(stage.trial.synthetic or {})
    root = generate_synthetic_voc(stage.stage_dir / DATA_DIR, show_progress=False, **settings)
    return {"root": str(root)}


DATA_DIR = "voc"  # the benchmark's root inside the stage folder (trial configs point data.root here)
STAGE = StageDef("data", (), key_slice, run)
