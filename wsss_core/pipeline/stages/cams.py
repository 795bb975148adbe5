"""``cams``: multi-scale CAMs of ``cams.split`` into a CamStore at ``<stage dir>/cams``
(:func:`wsss_core.training.make_cams` with the weights of the training stage before it), all ranks.

``amn_cam_cams`` is the same stage on the CAM config of an AMN trial (CAMs of AMN's training split).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...config import to_dict
from ..stage import StageDef, StageRun
from .train import amn_cam_config

if TYPE_CHECKING:
    from ...training.config import RunConfig

CAM_DIR = "cams"  # make_cams writes <run dir>/cams


def key_slice(cfg: "RunConfig", extras: dict[str, Any]) -> dict[str, Any]:
    return {"cams": to_dict(cfg.cams)}


def run(stage: StageRun) -> dict[str, Any]:
    from ...training.cams import make_cams

    return make_cams(stage.cfg, stage.stage_dir, sink=stage.sink, weights_dir=stage.only_input(), evaluate=False)


STAGE = StageDef("cams", ("train",), key_slice, run, distributed=True, sink_stage="cams", cam_store=CAM_DIR)
AMN_CAM_STAGE = StageDef("amn_cam_cams", ("amn_cam_train",), key_slice, run, distributed=True, sink_stage="cams",
                         config_view=amn_cam_config, cam_store=CAM_DIR)
