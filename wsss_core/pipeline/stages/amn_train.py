"""``amn_train``: the AMN network trained on the seeds (:func:`wsss_core.training.amn.train_amn`), its
backbone initialised from the CAM stage's when ``model.options.training.init`` says so; DDP, resumable."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..stage import StageDef, StageRun
from . import train

if TYPE_CHECKING:
    from ...training.config import RunConfig


def key_slice(cfg: "RunConfig", extras: dict[str, Any]) -> dict[str, Any]:
    from ...training.amn import amn_chain

    return train.key_slice(amn_chain(cfg).amn, extras)  # the network's own training settings


def run(stage: StageRun) -> dict[str, Any]:
    from ...training.amn import train_amn

    return train_amn(stage.cfg, stage.inputs["amn_seeds"], stage.stage_dir, stage.inputs["amn_cam_train"],
                     sink=stage.sink, key=stage.stage_dir.name)


STAGE = StageDef("amn_train", ("amn_seeds", "amn_cam_train"), key_slice, run, distributed=True, sink_stage="train",
                 trains_model=True)
