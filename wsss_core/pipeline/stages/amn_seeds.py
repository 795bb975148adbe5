"""``amn_seeds``: CRF-confident seed labels from the CAM stage's CAMs (:func:`wsss_core.training.amn.make_seeds`),
for AMN's training split and the split its maps are made for; rank 0 (CRF on ``eval.workers`` processes)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...config import to_dict
from ..stage import StageDef, StageRun

if TYPE_CHECKING:
    from ...training.config import RunConfig


def key_slice(cfg: "RunConfig", extras: dict[str, Any]) -> dict[str, Any]:
    from ...training.amn import amn_chain, seed_splits

    chain = amn_chain(cfg)
    return {"seeds": to_dict(chain.seeds), "splits": seed_splits(chain)}


def run(stage: StageRun) -> dict[str, Any]:
    from ...training.amn import make_seeds

    return make_seeds(stage.cfg, stage.only_cam_store(), stage.stage_dir)


STAGE = StageDef("amn_seeds", ("amn_cam_cams",), key_slice, run)
