"""``seg_train``: the final segmentation network (DeepLab-v2 or v3+) trained on the pseudo-labels of the stage
before it (:func:`wsss_core.training.segmentation.train_segmentation`); DDP over every rank, resumable.
Plans count it apart from the classifier trainings (``segmentation_trainings``): it is the dominant GPU cost.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..stage import PREVIOUS, StageDef, StageRun

if TYPE_CHECKING:
    from ...training.config import RunConfig

# The final config's fields that the trained network depends on (test-time and label settings are not).
TRAINING_FIELDS = ("arch", "backbone", "backbone_options", "pretrained", "aspp_rates", "crop", "scale", "batch_size",
                   "iterations", "lr", "head_lr_mult", "momentum", "weight_decay", "poly_power", "train_scales",
                   "label_resize")


def key_slice(cfg: "RunConfig", extras: dict[str, Any]) -> dict[str, Any]:
    f = cfg.final
    return {"final": {name: getattr(f, name) for name in TRAINING_FIELDS},
            "seed": cfg.train.seed, "device": cfg.train.device, "amp": cfg.train.amp,
            "dataset": cfg.data.dataset, "world_size": extras["world_size"]}


def labels_stage(stage: StageRun):
    (name,) = [n for n in stage.inputs if n != "data"]
    return stage.inputs[name]


def run(stage: StageRun) -> dict[str, Any]:
    from ...training.segmentation import read_labels_dir, train_segmentation

    return train_segmentation(stage.cfg, read_labels_dir(labels_stage(stage)), stage.stage_dir, sink=stage.sink,
                              key=stage.stage_dir.name)


STAGE = StageDef("seg_train", ("data", PREVIOUS), key_slice, run, distributed=True, sink_stage="seg_train",
                 trains_model=True)
