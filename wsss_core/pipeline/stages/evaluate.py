"""``eval``: score the CamStore of the stage before it (CAMs, or AMN's maps) over every threshold in one
pass, into eval.json / eval.csv / the curve in the stage folder; rank 0. :func:`score_cam_store` is the
one evaluation call of the pipeline.

``amn_eval`` is the same stage at the end of AMN's chain; its key also names the split (as AMN's chain
always keyed it).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...config import to_dict
from ..stage import PREVIOUS, StageDef, StageRun

if TYPE_CHECKING:
    from ...training.config import RunConfig


def key_slice(cfg: "RunConfig", extras: dict[str, Any]) -> dict[str, Any]:
    return {"eval": {"thresholds": to_dict(cfg.eval.thresholds), "protocol": cfg.eval.protocol,
                     "pred_255": cfg.eval.pred_255}}


def amn_key_slice(cfg: "RunConfig", extras: dict[str, Any]) -> dict[str, Any]:
    return {"eval": {**key_slice(cfg, extras)["eval"], "split": cfg.cams.split}}


def score_cam_store(cfg: "RunConfig", store: Path, out_dir: Path, sink: Any = None) -> dict[str, Any]:
    """Evaluate ``store`` on ``cfg.cams.split`` with ``cfg.eval``'s settings, write the outputs into
    ``out_dir``, log them to ``sink``; returns the summary scalars and ``eval_json``."""
    from ...training.cams import score_cams, summarise

    result, paths = score_cams(cfg, store, out_dir)
    scalars = summarise(result)
    if sink is not None:
        if hasattr(sink, "log_eval"):  # the tracking sink: curve, per-class table, overlays
            sink.log_eval(result, out_dir)
        else:
            sink.log_metrics({k: v for k, v in scalars.items() if isinstance(v, (int, float))
                              and not isinstance(v, bool)}, 0)
    best = result.get("best", {})
    return {**scalars, "eval_json": str(paths["json"]), "best_miou": best.get("miou"),
            "best_threshold": best.get("threshold")}


def run(stage: StageRun) -> dict[str, Any]:
    return score_cam_store(stage.cfg, stage.only_cam_store(), stage.stage_dir, stage.sink)


STAGE = StageDef("eval", (PREVIOUS,), key_slice, run, evaluation_only=True, sink_stage="eval")
AMN_STAGE = StageDef("amn_eval", (PREVIOUS,), amn_key_slice, run, evaluation_only=True, sink_stage="eval")
