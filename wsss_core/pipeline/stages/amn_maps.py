"""``amn_maps``: AMN's activation maps (fg maps + bg map) into a CamStore in the stage folder
(:func:`wsss_core.training.amn.make_amn_cams`), sharded over the ranks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...config import to_dict
from ..stage import StageDef, StageRun

if TYPE_CHECKING:
    from ...training.config import RunConfig


def key_slice(cfg: "RunConfig", extras: dict[str, Any]) -> dict[str, Any]:
    from ...training.amn import amn_chain

    return {"cams": to_dict(amn_chain(cfg).amn.cams)}


def run(stage: StageRun) -> dict[str, Any]:
    from ...training.amn import make_amn_cams

    return make_amn_cams(stage.cfg, stage.inputs["amn_train"], stage.inputs["amn_seeds"], stage.stage_dir,
                         sink=stage.sink)


STAGE = StageDef("amn_maps", ("amn_train", "amn_seeds"), key_slice, run, distributed=True, sink_stage="cams",
                 cam_store="")
