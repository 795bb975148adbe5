"""``seg_eval``: the final network's val predictions (palette PNGs; optional multi-scale + flip and dense CRF)
scored with the trial's evaluation protocol into eval.json (:func:`wsss_core.training.segmentation.
evaluate_segmentation`); rank 0. Its ``final_miou`` is the report's "final val mIoU"."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..stage import PREVIOUS, StageDef, StageRun

if TYPE_CHECKING:
    from ...training.config import RunConfig


def key_slice(cfg: "RunConfig", extras: dict[str, Any]) -> dict[str, Any]:
    f = cfg.final
    return {"final_eval": {"val_split": f.val_split, "test_scales": f.test_scales, "test_flip": f.test_flip,
                           "test_crf": f.test_crf, "test_crf_params": f.test_crf_params if f.test_crf else None,
                           "protocol": cfg.eval.protocol, "pred_255": cfg.eval.pred_255}}


def run(stage: StageRun) -> dict[str, Any]:
    from ...training.segmentation import evaluate_segmentation

    summary = evaluate_segmentation(stage.cfg, stage.only_input(), stage.stage_dir / VAL_DIR)
    if stage.sink is not None:
        stage.sink.log_metrics({k: v for k, v in summary.items() if isinstance(v, float)}, 0)
    return summary


# eval.json and the predictions go one folder down: a trial's own eval.json (what its record points at, the
# pseudo-label scores of the threshold tables) stays the eval stage's; analysis/final.py reads this one.
VAL_DIR = "val"
STAGE = StageDef("seg_eval", (PREVIOUS,), key_slice, run, evaluation_only=True, sink_stage="seg_eval")
