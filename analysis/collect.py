"""One row per finished trial, from the launchers' trial records (+ eval.json) or from MLflow.

Columns: ``trial_id``, one column per sweep axis (``baseline``, ``addons`` = the add-on setting's label,
``seed``, ...), ``addons_list`` (tuple of add-on names; empty = no add-on), ``posterior``, the scores
``best_miou``, ``best_threshold``, ``fixed_miou`` (mIoU at the report's fixed threshold),
``robust_mean_miou``, ``robust_width``, ``contour_{f,precision,recall}_{best,fixed}``, and ``curve``
(a dict threshold -> mIoU). Scores are fractions, exactly as evaluated.
"""

from __future__ import annotations

import json
import math
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from wsss_core.errors import WsssError
from wsss_core.pipeline import layout

SCORES = ("best_miou", "best_threshold", "fixed_miou", "robust_mean_miou", "robust_width",
          "contour_f_best", "contour_precision_best", "contour_recall_best",
          "contour_f_fixed", "contour_precision_fixed", "contour_recall_fixed")
CONTEXT = ("eval_data_root", "eval_split", "eval_num_classes", "eval_protocol", "eval_pred_255")
CONTOUR = (("f", "contour_f"), ("precision", "contour_precision"), ("recall", "contour_recall"))


class ReportError(WsssError):
    """A sweep cannot be reported: no trials, unreadable records, missing MLflow experiment."""


def same_threshold(a: float | None, b: float | None) -> bool:
    """Thresholds are compared in float32, as the evaluator compares them."""
    return a is not None and b is not None and np.float32(a) == np.float32(b)


def _num(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def _warn(message: str) -> None:
    print(f"wsss report: {message}", file=sys.stderr)


# -- from trial records -------------------------------------------------------------------------------

def scores_from_eval(result: dict, fixed_threshold: float, where: str) -> dict[str, Any]:
    """The report's numbers of one eval.json."""
    best = result.get("best") or {}
    rows = result.get("per_threshold") or []
    curve = {float(r["threshold"]): _num(r.get("miou")) for r in rows if r.get("threshold") is not None}
    fixed = [r for r in rows if same_threshold(r.get("threshold"), fixed_threshold)]
    if not fixed and curve:
        _warn(f"{where}: threshold {fixed_threshold:g} was not evaluated (grid {min(curve):g}..{max(curve):g}); "
              "its mIoU is left empty")
    rob = result.get("robustness") or {}
    out = {"best_miou": _num(best.get("miou")), "best_threshold": _num(best.get("threshold")),
           "fixed_miou": _num(fixed[0].get("miou")) if fixed else math.nan,
           "robust_mean_miou": _num(rob.get("mean_miou_near_best")), "robust_width": _num(rob.get("plateau_width")),
           "curve": curve, **evaluation_context(result)}
    for which, threshold in (("best", best.get("threshold")), ("fixed", fixed_threshold)):
        entry = next((b for b in result.get("boundary") or [] if same_threshold(b.get("threshold"), threshold)), None)
        for key, name in CONTOUR:
            out[f"{name}_{which}"] = _num(entry.get(key)) if entry else math.nan
    return out


def evaluation_context(result: dict) -> dict[str, Any]:
    """Where and how a trial was scored: the split the calibration rows are computed on, and the protocol."""
    protocol = result.get("protocol")
    return {"eval_data_root": result.get("data_root"), "eval_split": result.get("split"),
            "eval_num_classes": result.get("num_classes"),
            "eval_protocol": protocol.get("name") if isinstance(protocol, dict) else protocol,
            "eval_pred_255": result.get("pred_255")}


def trials_from_records(sweep_name: str, workdir: str | Path, fixed_threshold: float = 0.25) -> pd.DataFrame:
    """Finished trials of ``sweep_name`` from ``<workdir>/sweeps/<sweep>/trials/*.json`` and their eval.json."""
    folder = layout.trials_dir(Path(workdir), sweep_name)
    paths = sorted(folder.glob("*.json"))
    if not paths:
        raise ReportError(f"{folder}: no trial records; run the sweep first, or check --workdir and the sweep "
                          "name")
    rows, skipped = [], []
    for path in paths:
        rebuild = ("run `wsss sweep run` on the sweep file again: it rebuilds trial records from the stage store "
                   "and recomputes only what is missing or damaged")
        try:
            record = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ReportError(f"{path}: trial record is not valid JSON ({exc}); {rebuild}") from None
        if not isinstance(record, dict):
            raise ReportError(f"{path}: trial record is a JSON {type(record).__name__}, not an object; {rebuild}")
        eval_json = record.get("eval_json")
        if not eval_json or not Path(eval_json).is_file():
            why = f"its eval.json {eval_json} is missing" if eval_json else "no evaluation recorded"
            skipped.append(f"{record.get('trial_id', path.stem)} ({record.get('state', 'no state')}; {why})")
            continue
        try:
            result = json.loads(Path(eval_json).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ReportError(f"{eval_json}: not valid JSON ({exc}); trial {record.get('trial_id')}; {rebuild}") \
                from None
        if not isinstance(result, dict):
            raise ReportError(f"{eval_json}: a JSON {type(result).__name__}, not an evaluation result; trial "
                              f"{record.get('trial_id')}; {rebuild}")
        rows.append({**_identity(record), **scores_from_eval(result, fixed_threshold, eval_json)})
    if skipped:
        _warn(f"{len(skipped)} trial(s) without an evaluation left out: {', '.join(skipped[:5])}"
              f"{' ...' if len(skipped) > 5 else ''}")
    missing = combinations_without_record(layout.sweep_dir(Path(workdir), sweep_name) / "sweep.json", paths)
    if missing:
        _warn(f"{len(missing)} combination(s) of the sweep's axes have no trial record (deleted, or never "
              f"submitted), left out: {'; '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    if not rows:
        raise ReportError(f"{folder}: none of the {len(paths)} trials has an eval.json yet")
    return _frame(rows)


def combinations_without_record(sweep_json: Path, record_paths: list[Path]) -> list[str]:
    """The axis combinations of the submitted sweep (its sweep.json) that no trial record holds."""
    import itertools

    try:
        axes = json.loads(sweep_json.read_text()).get("axes")
    except (OSError, ValueError, AttributeError):
        return []
    if not isinstance(axes, dict) or not axes:
        return []
    seen = set()
    for path in record_paths:
        try:
            record_axes = json.loads(path.read_text()).get("axes") or {}
        except (OSError, ValueError, AttributeError):
            continue
        seen.add(tuple(str(record_axes.get(name)) for name in axes))
    combos = itertools.product(*[[str(v) for v in values] for values in axes.values()])
    return [" ".join(f"{name}={value}" for name, value in zip(axes, combo)) for combo in combos if combo not in seen]


def _identity(record: dict) -> dict[str, Any]:
    axes = dict(record.get("axes") or {})
    addons = tuple(record.get("addons") or ())
    axes.setdefault("baseline", record.get("baseline"))
    axes.setdefault("addons", "+".join(addons) if addons else "none")
    axes.setdefault("seed", record.get("seed"))
    return {"trial_id": record.get("trial_id"), "trial_index": record.get("index"), **axes, "addons_list": addons,
            "posterior": record.get("posterior")}


def _frame(rows: list[dict]) -> pd.DataFrame:
    # The sweep file's order (its trial index) orders rows and columns of the tables; trial id breaks ties.
    frame = pd.DataFrame(rows)
    if "trial_index" not in frame:
        frame["trial_index"] = None
    frame["trial_index"] = pd.to_numeric(frame["trial_index"], errors="coerce")
    frame = frame.sort_values(["trial_index", "trial_id"], kind="stable", na_position="last").reset_index(drop=True)
    frame.attrs["axes"] = axis_columns(frame)
    return frame


def axis_columns(frame: pd.DataFrame) -> list[str]:
    fixed = {"trial_id", "trial_index", "addons_list", "posterior", "curve", *SCORES, *CONTEXT}
    return [c for c in frame.columns if c not in fixed]


# -- from MLflow ---------------------------------------------------------------------------------------

def trials_from_mlflow(sweep_name: str, tracking_uri: str, fixed_threshold: float = 0.25,
                       page_size: int = 1000) -> pd.DataFrame:
    """Finished evaluation runs (runs with a ``best_miou`` metric) of the sweep's experiment, all pages."""
    from wsss_core.tracking.store import client, experiment_name, search_runs_paged, way_forward

    name = experiment_name(sweep_name)
    try:
        mlflow_client = client(tracking_uri)
        experiment = mlflow_client.get_experiment_by_name(name)
    except Exception as exc:  # noqa: BLE001
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ReportError(f"tracking store {tracking_uri}: cannot read it: {type(exc).__name__}: {first}. "
                          f"{way_forward(tracking_uri)}") from None
    if experiment is None:
        names = [e.name for e in mlflow_client.search_experiments(max_results=50)]
        raise ReportError(f"tracking store {tracking_uri}: no experiment {name!r}; experiments there: "
                          f"{', '.join(names) or 'none'}")
    runs = list(search_runs_paged(tracking_uri, [experiment.experiment_id],
                                  "metrics.best_miou > -1 and attributes.status = 'FINISHED'", page_size))
    if not runs:
        raise ReportError(f"tracking store {tracking_uri}: experiment {name!r} has no finished run with an "
                          "evaluation (metric best_miou)")
    latest: dict[str, Any] = {}
    for run in runs:  # a trial evaluated twice (e.g. its record was lost): the latest run counts
        key = run.data.tags.get("trial_id") or run.info.run_id
        if key not in latest or run.info.start_time > latest[key].info.start_time:
            latest[key] = run
    with ThreadPoolExecutor(max_workers=4) as pool:
        rows = list(pool.map(lambda run: _row_from_run(mlflow_client, run, fixed_threshold), latest.values()))
    return _frame(rows)


def _row_from_run(mlflow_client, run, fixed_threshold: float) -> dict[str, Any]:
    tags, metrics = run.data.tags, run.data.metrics
    axes = {k[len("axis."):]: _typed(v) for k, v in tags.items() if k.startswith("axis.")}
    addons = tuple(a for a in tags.get("addons", "none").split(",") if a and a != "none")
    axes.setdefault("baseline", tags.get("baseline"))
    axes.setdefault("addons", "+".join(addons) if addons else "none")
    axes.setdefault("seed", _typed(tags.get("seed")))
    scale = int(tags.get("threshold_step_scale", 100))
    history = mlflow_client.get_metric_history(run.info.run_id, "miou_by_threshold")
    curve = {m.step / scale: float(m.value) for m in sorted(history, key=lambda m: m.step)}
    fixed_step = round(fixed_threshold * scale)
    fixed = [m.value for m in history if m.step == fixed_step]
    posterior = tags.get("posterior")
    row = {"trial_id": tags.get("trial_id") or run.info.run_name, "trial_index": tags.get("trial_index"), **axes,
           "addons_list": addons,
           "posterior": None if posterior in (None, "none") else posterior,
           "best_miou": metrics.get("best_miou", math.nan), "best_threshold": metrics.get("best_threshold", math.nan),
           "fixed_miou": float(fixed[0]) if fixed else math.nan,
           "robust_mean_miou": metrics.get("robust_mean_miou", math.nan),
           "robust_width": metrics.get("robust_width", math.nan), "curve": curve,
           "eval_data_root": tags.get("eval_data_root"), "eval_split": tags.get("eval_split"),
           "eval_num_classes": _typed(tags.get("eval_num_classes")), "eval_protocol": tags.get("eval_protocol"),
           "eval_pred_255": tags.get("eval_pred_255")}
    for which, suffix in (("best", "best"), ("fixed", f"t{fixed_threshold:g}")):
        for _, name in CONTOUR:
            row[f"{name}_{which}"] = metrics.get(f"{name}_{suffix}", math.nan)
    return row


def _typed(value: str | None) -> Any:
    """Tags are strings; a seed tagged "0" groups with the records' integer 0."""
    if value is None:
        return None
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value
