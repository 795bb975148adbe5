"""``train``: the classifier (:func:`wsss_core.training.train`), DDP over every rank, resumable.

``amn_cam_train`` is the same stage on the CAM config of an AMN trial; it is keyed and stored as ``train``,
so an AMN trial and a CAM trial with equal settings share one training.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..stage import StageDef, StageRun

if TYPE_CHECKING:
    from ...training.config import RunConfig


def key_slice(cfg: "RunConfig", extras: dict[str, Any]) -> dict[str, Any]:
    from ...training.config import stage_slice

    out = stage_slice(cfg, "train")
    if extras.get("synthetic") is not None:
        out["data"] = {k: v for k, v in out["data"].items() if k != "root"}  # the data stage key stands for it
    # The global batch is batch_size × world size: a different DDP size is a different training.
    out["world_size"] = extras["world_size"]
    return out


def run(stage: StageRun) -> dict[str, Any]:
    from ...training.trainer import train

    return train(stage.cfg, stage.stage_dir, sink=stage.sink, resume="auto")


def amn_cam_config(cfg: "RunConfig") -> "RunConfig":
    from ...training.amn import amn_chain

    return amn_chain(cfg).cam


STAGE = StageDef("train", ("data",), key_slice, run, distributed=True, sink_stage="train", trains_model=True)
AMN_CAM_STAGE = StageDef("amn_cam_train", ("data",), key_slice, run, distributed=True, sink_stage="train",
                         trains_model=True, same_as="train", config_view=amn_cam_config)
