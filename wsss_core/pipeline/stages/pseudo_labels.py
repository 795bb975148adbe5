"""``pseudo_labels``: the final stage's training labels (:func:`wsss_core.training.segmentation.make_pseudo_labels`)
from the trial's maps at ``final.threshold`` (a number, or the best of the trial's eval stage), optionally
CRF-refined, for the segmentation split; every rank (maps for that split are made when the chain's map
stage covered another split).

``amn_pseudo_labels`` is the same stage at the end of AMN's chain (AMN's maps). Both keep their PNGs in a
label set keyed by the maps, the resolved threshold and the refinement, so two threshold rules that resolve
to one value share one set.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...config import to_dict
from ..stage import StageDef, StageRun

if TYPE_CHECKING:
    from ...training.config import RunConfig


def key_slice(cfg: "RunConfig", extras: dict[str, Any]) -> dict[str, Any]:
    from ...training.segmentation import segmentation_split

    f = cfg.final
    return {"pseudo_labels": {"threshold": f.threshold, "refine": f.refine, "refine_options": f.refine_options,
                              "split": segmentation_split(cfg)}}


def _cams_slice(cfg: "RunConfig") -> dict[str, Any]:
    return {k: v for k, v in to_dict(cfg.cams).items() if k not in ("batch_size", "split")}


def run(stage: StageRun) -> dict[str, Any]:
    from ...training.cams import write_cams
    from ...training.distributed import setup_distributed
    from ...training.segmentation import make_pseudo_labels, segmentation_split

    cfg, split = stage.cfg, segmentation_split(stage.cfg)
    maps = {"train": stage.inputs["train"].name, "cams": _cams_slice(cfg), "split": split}
    store = stage.cam_stores["cams"] if cfg.cams.split == split else None
    plain = to_dict(cfg)
    plain["cams"]["split"] = split

    def make_maps(_: Path) -> Path:
        from ...training.config import run_config_from_dict

        view = run_config_from_dict(plain, "pseudo_labels (maps of the segmentation split)")
        return write_cams(view, stage.stage_dir, setup_distributed(cfg.train.device), weights_dir=stage.inputs["train"])

    return _logged(stage, make_pseudo_labels(cfg, stage.stage_dir, stage.trial.workdir, maps, store,
                                             stage.inputs["eval"], make_maps))


def _logged(stage: StageRun, summary: dict[str, Any]) -> dict[str, Any]:
    if stage.sink is not None and summary.get("threshold") is not None:
        stage.sink.log_metrics({"threshold": float(summary["threshold"])}, 0)
    return summary


def amn_run(stage: StageRun) -> dict[str, Any]:
    from ...training.amn import amn_chain, make_amn_cams, seed_splits
    from ...training.segmentation import make_pseudo_labels, segmentation_split
    from ...errors import ConfigError

    cfg, split = stage.cfg, segmentation_split(stage.cfg)
    maps = {"amn_train": stage.inputs["amn_train"].name, "amn_seeds": stage.inputs["amn_seeds"].name,
            "cams": _cams_slice(amn_chain(cfg).amn), "split": split}
    store = stage.cam_stores["amn_maps"] if cfg.cams.split == split else None
    plain = to_dict(cfg)
    plain["cams"]["split"] = split

    def make_maps(maps_dir: Path) -> Path:
        from ...training.config import run_config_from_dict

        view = run_config_from_dict(plain, "amn_pseudo_labels (maps of the segmentation split)")
        if split not in seed_splits(amn_chain(view)):
            raise ConfigError(f"final.split: {split!r} has no AMN seeds (they are made for "
                              f"{', '.join(seed_splits(amn_chain(cfg)))}); use data.train_split")
        make_amn_cams(view, stage.inputs["amn_train"], stage.inputs["amn_seeds"], maps_dir)
        return maps_dir

    return _logged(stage, make_pseudo_labels(cfg, stage.stage_dir, stage.trial.workdir, maps, store,
                                             stage.inputs["amn_eval"], make_maps))


STAGE = StageDef("pseudo_labels", ("train", "cams", "eval"), key_slice, run, distributed=True,
                 sink_stage="pseudo_labels")
AMN_STAGE = StageDef("amn_pseudo_labels", ("amn_train", "amn_seeds", "amn_maps", "amn_eval"), key_slice, amn_run,
                     distributed=True, same_as="pseudo_labels", sink_stage="pseudo_labels")
