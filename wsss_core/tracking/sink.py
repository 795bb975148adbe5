"""One MLflow child run per trial stage, behind the trainers' ``MetricsSink`` protocol.

``stage_sink(ctx, stage_dir, stage, tags, params)`` opens (or, for a requeued / resumed stage, reopens:
the run id lives in ``<stage_dir>/tracking.json``) a run under the sweep's parent run. Training curves go
through ``log_metrics``; ``log_eval`` turns an evaluation result into the threshold curve
(``miou_by_threshold`` etc., step = threshold in hundredths, so the MLflow UI plots mIoU against the
threshold), summary metrics and artifacts.

Tracking never fails a trial: when the store is unreachable the sink switches to its local record
(``tracking_buffer.jsonl``, see :mod:`.record`) for the rest of its life, and ``wsss sync`` (or the next
sink opened on the same stage) uploads it. An artifact upload the store refuses (its disk full, a write
error) is kept in that record too, and retried at close and by ``wsss sync``: the files are never lost.
Anything else MLflow refuses (a bad value, which retrying would not fix) is reported on stderr and skipped.

A rebuild (:mod:`.rebuild`) logs a finished stage through this same sink, from its folder: ``log_history``
replays ``metrics.jsonl``, ``log_eval`` takes ``eval.json`` and the overlay grid already drawn.
"""

from __future__ import annotations

import math
import socket
import sys
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import yaml

from .record import BUFFER_FILE, StageRecord, now_ms
from .store import (METRICS_PER_BATCH, TrackingContext, clean_key, client, find_run, flatten, git_commit,
                    is_unreachable, log_params_once, param_value, server_reachable, tag_value)

STATUS = {"running": "RUNNING", "finished": "FINISHED", "failed": "FAILED", "killed": "KILLED"}
TRACKING_ARTIFACTS = "tracking_artifacts"
EVAL_ARTIFACT_PATH = "eval"
EVAL_FILES = ("eval.json", "eval.csv", "threshold_curve.png")
OVERLAYS_FILE = "overlays.png"
OVERLAY_IMAGES = 4


def metric_name(*parts: str) -> str:
    return clean_key("_".join(p for p in parts if p))


def threshold_step_scale(thresholds: Iterable[float]) -> int:
    """Steps are thresholds in hundredths (``round(t * 100)``); a finer grid that would collide uses
    thousandths (recorded in the run's ``threshold_step_scale`` tag)."""
    thresholds = [float(t) for t in thresholds]
    for scale in (100, 1000, 10000):
        if len({round(t * scale) for t in thresholds}) == len(thresholds):
            return scale
    return 100000


def eval_metrics(result: dict) -> tuple[dict[str, list[tuple[int, float]]], dict[str, float], int]:
    """(series name -> [(step, value)], summary metrics, step scale) of an evaluation result.

    Series: ``miou_by_threshold``, ``precision_by_threshold``, ``recall_by_threshold``. Summary:
    ``best_miou``, ``best_threshold``, ``robust_mean_miou``, ``robust_width``, ``robust_low``/``high``,
    ``num_images``, and per boundary entry ``contour_f``/``contour_precision``/``contour_recall`` with a
    suffix ``_best`` (at the best threshold), ``_t0.25`` (at a fixed one) or ``_labels``.
    """
    rows = [r for r in result.get("per_threshold", []) if r.get("threshold") is not None]
    scale = threshold_step_scale(r["threshold"] for r in rows) if rows else 100
    series: dict[str, list[tuple[int, float]]] = {"miou_by_threshold": [], "precision_by_threshold": [],
                                                  "recall_by_threshold": []}
    for row in rows:
        step = round(float(row["threshold"]) * scale)
        for name, key in (("miou_by_threshold", "miou"), ("precision_by_threshold", "mean_precision"),
                          ("recall_by_threshold", "mean_recall")):
            if _finite(row.get(key)):
                series[name].append((step, float(row[key])))
    summary: dict[str, float] = {}
    best = result.get("best") or {}
    if _finite(best.get("miou")):
        summary["best_miou"] = float(best["miou"])
    if _finite(best.get("threshold")):
        summary["best_threshold"] = float(best["threshold"])
    rob = result.get("robustness") or {}
    for name, value in (("robust_mean_miou", rob.get("mean_miou_near_best")), ("robust_width", rob.get("plateau_width")),
                        ("robust_low", (rob.get("plateau") or [None, None])[0]),
                        ("robust_high", (rob.get("plateau") or [None, None])[1])):
        if _finite(value):
            summary[name] = float(value)
    if _finite(result.get("num_images")):
        summary["num_images"] = float(result["num_images"])
    for entry in result.get("boundary") or []:
        for suffix in boundary_suffixes(entry.get("threshold"), best.get("threshold")):
            for key, name in (("f", "contour_f"), ("precision", "contour_precision"), ("recall", "contour_recall")):
                if _finite(entry.get(key)):
                    summary[metric_name(name, suffix)] = float(entry[key])
    return series, summary, scale


def boundary_suffixes(threshold: float | None, best_threshold: float | None) -> list[str]:
    """Names of a boundary entry: ``labels`` (no threshold), ``best`` and/or ``t0.25``."""
    if threshold is None:
        return ["labels"]
    names = [f"t{float(threshold):g}"]
    if best_threshold is not None and np.float32(threshold) == np.float32(best_threshold):
        names.insert(0, "best")
    return names


def _finite(value: Any) -> bool:
    return _number(value) and math.isfinite(value)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _warn(message: str) -> None:
    print(f"wsss tracking: {message}", file=sys.stderr, flush=True)


class StageSink:
    """The MLflow run of one trial stage (a ``MetricsSink``); see the module docstring."""

    def __init__(self, ctx: TrackingContext, stage_dir: str | Path, stage: str, tags: Mapping[str, Any] | None = None,
                 params: Mapping[str, Any] | None = None, run_name: str | None = None, local=None):
        self.ctx = ctx
        self.stage = stage
        self.stage_dir = Path(stage_dir)
        self.record = StageRecord(self.stage_dir)
        self.local = local  # an optional second sink (e.g. JsonlSink) that sees every call too
        self.offline = False
        self.run_id: str | None = None
        self.resumed = False
        self._client = None
        self._steps_present: dict[str, set[int]] | None = None
        self._existing_params: dict[str, str] = {}
        self._existing_metric_keys: list[str] = []
        self._closed = False
        tags = dict(tags or {})
        self.tags = self._run_tags(tags)
        self.run_name = run_name or _default_run_name(tags, stage)
        entry = self.record.run_entry(ctx.parent_run_id) or {}
        self.uid = entry.get("uid") or uuid.uuid4().hex
        self.run_id = entry.get("run_id")
        if not entry:  # git_commit: the code that ran the stage, which a rebuild cannot know otherwise
            self.record.save_run_entry(ctx.parent_run_id, {"uid": self.uid, "run_id": None, "stage": stage,
                                                           "experiment_id": ctx.experiment_id,
                                                           "tracking_uri": ctx.tracking_uri,
                                                           "git_commit": self.tags.get("git_commit")})
        self._open()
        nested = dict(params or {})
        if nested:
            self.log_params(flatten(nested))
            self._log_config(nested)

    # -- opening ---------------------------------------------------------------------------------------
    def _run_tags(self, tags: dict[str, Any]) -> dict[str, str]:
        out: dict[str, Any] = {"sweep": self.ctx.sweep_name, "stage": self.stage}
        axes = tags.get("axes")
        if isinstance(axes, Mapping):
            out.update({f"axis.{k}": v for k, v in axes.items()})
        out.update(tags)
        out.setdefault("host", socket.gethostname())
        commit = out.get("git_commit") or git_commit()
        if commit:
            out["git_commit"] = commit
        out["mlflow.parentRunId"] = self.ctx.parent_run_id
        out["wsss.role"] = "stage"
        out["wsss.stage_dir"] = str(self.stage_dir.resolve())
        return {clean_key(k): tag_value(v) for k, v in out.items()}

    def _open(self) -> None:
        if not server_reachable(self.ctx.tracking_uri):
            self._go_offline(f"tracking server {self.ctx.tracking_uri} is unreachable")
            return
        try:
            self._client = client(self.ctx.tracking_uri)
            if self.record.has_pending():
                from .sync import sync_stage  # a previous session's buffer goes first, to keep the order

                sync_stage(self.record, quiet=True, raise_unreachable=True)
                self.run_id = (self.record.run_entry(self.ctx.parent_run_id) or {}).get("run_id")
            if self.run_id is not None:
                run = find_run(self._client, self.run_id)
                if run is None or run.info.lifecycle_stage == "deleted":
                    gone = "was deleted" if run is not None else "is not in the store (emptied or replaced?)"
                    _warn(f"{self.stage_dir}: run {self.run_id} {gone}; starting a new one")
                    self.run_id = None
                else:
                    self.resumed = True
                    self._existing_params = dict(run.data.params)
                    self._existing_metric_keys = list(run.data.metrics)
            if self.run_id is None:
                run = self._client.create_run(self.ctx.experiment_id, run_name=self.run_name,
                                              tags={**self.tags, "wsss.stage_uid": self.uid})
                self.run_id = run.info.run_id
                self.record.save_run_entry(self.ctx.parent_run_id, {"run_id": self.run_id})
                self._existing_params = {}
            else:
                self._set_tags_online(self.tags)
                if run.info.status != "RUNNING":
                    self._client.update_run(self.run_id, status="RUNNING")
        except Exception as exc:  # noqa: BLE001 - tracking must never fail the trial
            if not is_unreachable(exc):
                _warn(f"{self.stage_dir}: opening the MLflow run failed ({type(exc).__name__}: {exc}); "
                      "keeping a local record")
            self._go_offline(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")

    def _go_offline(self, reason: str) -> None:
        if self.offline:
            return
        self.offline = True
        _warn(f"{self.stage_dir}: {reason}; recording locally in {self.record.buffer_path.name} "
              "(upload later with `wsss sync`)")
        if self.run_id is None:
            self._buffer("open", ctx=self.ctx.to_dict(), uid=self.uid, run_name=self.run_name,
                         tags={**self.tags, "wsss.stage_uid": self.uid}, start_time=now_ms())
        else:
            self._buffer("tags", tags=self.tags)

    def _buffer(self, kind: str, **payload: Any) -> None:
        self.record.append(self.ctx.parent_run_id, kind, uri=self.ctx.tracking_uri, **payload)

    def _call(self, what: str, action: Callable[[], None], kind: str, keep_refused: bool = False,
              **payload: Any) -> None:
        """Run ``action`` against MLflow; unreachable → buffer ``payload`` from now on; refused → warn, and
        with ``keep_refused`` (artifacts: a full or failing artifact store) buffer this one call for a retry."""
        if not self.offline:
            try:
                action()
                return
            except Exception as exc:  # noqa: BLE001
                if not is_unreachable(exc):
                    reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                    if not keep_refused:
                        _warn(f"{self.stage_dir}: run {self.run_id}: MLflow refused {what}: {reason}")
                        return
                    _warn(f"{self.stage_dir}: run {self.run_id}: uploading {what} failed ({reason}); kept in "
                          f"{BUFFER_FILE}, retried when the stage ends and by `wsss sync`")
                    self._buffer(kind, **payload)
                    return
                self._go_offline(f"{type(exc).__name__} while logging {what}")
        self._buffer(kind, **payload)

    def _set_tags_online(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, v) for k, v in tags.items()]
        for start in range(0, len(items), 100):
            self._client.log_batch(self.run_id, tags=items[start: start + 100])

    # -- MetricsSink -----------------------------------------------------------------------------------
    def log_params(self, params: dict[str, Any]) -> None:
        if self.local is not None:
            self.local.log_params(params)
        flat = {clean_key(k): param_value(v) for k, v in flatten(params).items()}

        def action():
            conflicts = log_params_once(self._client, self.run_id, flat, self._existing_params)
            self._existing_params.update({k: v for k, v in flat.items() if k not in conflicts})
            if conflicts:
                _warn(f"{self.stage_dir}: run {self.run_id}: params {', '.join(conflicts[:5])} already logged with "
                      "other values; MLflow params are immutable, the first values stay")

        self._call("params", action, "params", params=flat)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.local is not None:
            self.local.log_metrics(metrics, step)
        values = {clean_key(k): float(v) for k, v in metrics.items()}
        self._log_points({k: [(int(step), v)] for k, v in values.items()})

    def set_status(self, status: str, error: str | None = None) -> None:
        if self.local is not None:
            self.local.set_status(status, error)
        mlflow_status = STATUS.get(status)
        if mlflow_status is None:
            _warn(f"{self.stage_dir}: unknown status {status!r}; valid: {', '.join(STATUS)}")
            return

        def action():
            if error:
                self._client.set_tag(self.run_id, "error", tag_value(error))
            if mlflow_status == "RUNNING":
                self._client.update_run(self.run_id, status="RUNNING")
            else:
                self._client.set_terminated(self.run_id, status=mlflow_status)

        self._call(f"status {status}", action, "status", status=status, error=error)

    # -- evaluation and artifacts ------------------------------------------------------------------------
    def log_eval(self, result: dict, eval_dir: str | Path | None = None, overlays: bool = True,
                 drawn_overlays: bool = False) -> None:
        """The evaluation of this stage: threshold curves, summary metrics, eval.json / eval.csv /
        threshold_curve.png from ``eval_dir`` and an image / CAM / pseudo-label / ground-truth grid.
        ``drawn_overlays``: log the grid already in ``eval_dir`` (if any) instead of drawing it: a rebuild
        must not rewrite a finished stage's outputs."""
        series, summary, scale = eval_metrics(result)
        protocol = result.get("protocol")
        self.set_tags({"threshold_step_scale": scale, "eval_split": result.get("split"),
                       "eval_data_root": result.get("data_root"), "eval_num_classes": result.get("num_classes"),
                       "eval_protocol": protocol.get("name") if isinstance(protocol, dict) else protocol,
                       "eval_pred_255": result.get("pred_255")})
        points = {name: values for name, values in series.items() if values}
        points.update({name: [(0, value)] for name, value in summary.items()})
        self._log_points(points)
        paths: list[Path] = []
        if eval_dir is not None:
            eval_dir = Path(eval_dir)
            paths = [eval_dir / n for n in EVAL_FILES if (eval_dir / n).is_file()]
            if drawn_overlays:
                paths += [eval_dir / OVERLAYS_FILE] if overlays and (eval_dir / OVERLAYS_FILE).is_file() else []
            elif overlays and (result.get("source") or {}).get("kind") == "cams" and \
                    _finite(summary.get("best_threshold")):
                grid = self._overlays(result, summary["best_threshold"], eval_dir / OVERLAYS_FILE)
                if grid is not None:
                    paths.append(grid)
        if paths:
            self.log_artifacts(paths, artifact_path=EVAL_ARTIFACT_PATH)

    def _overlays(self, result: dict, threshold: float, out_png: Path) -> Path | None:
        try:
            from .overlays import overlay_grid

            return overlay_grid(result["source"]["path"], result["data_root"], result["split"], threshold,
                                out_png, n=OVERLAY_IMAGES)
        except Exception as exc:  # noqa: BLE001 - a missing image must not cost the trial its metrics
            _warn(f"{self.stage_dir}: overlay grid skipped: {type(exc).__name__}: {exc}")
            return None

    def log_artifacts(self, paths: Iterable[str | Path], artifact_path: str | None = None) -> None:
        """Upload files (or folders) as artifacts of the run, under ``artifact_path``."""
        paths = [str(Path(p).resolve()) for p in paths]
        missing = [p for p in paths if not Path(p).exists()]
        if missing:
            _warn(f"{self.stage_dir}: artifacts not found, skipped: {', '.join(missing)}")
            paths = [p for p in paths if p not in missing]
        if not paths:
            return

        def action():
            upload_artifacts(self._client, self.run_id, paths, artifact_path)

        self._call("artifacts", action, "artifacts", keep_refused=True, paths=paths, artifact_path=artifact_path)

    def log_history(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Log a recorded metric history (``metrics.jsonl`` lines: ``{"step", "time", **metrics}``) in
        batches, as a rebuild replays a finished stage; the first value of a (key, step) counts, as in a run.
        The local sink is not told: the history is its own record."""
        points: dict[str, list[tuple[int, float]]] = {}
        seen: set[tuple[str, int]] = set()
        for row in rows:
            step = row.get("step")
            if not _finite(step):
                continue
            for key, value in row.items():
                name = clean_key(key)
                if key in ("step", "time") or not _number(value) or (name, int(step)) in seen:  # NaN: as logged
                    continue
                seen.add((name, int(step)))
                points.setdefault(name, []).append((int(step), float(value)))
        self._log_points(points)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        values = {clean_key(k): tag_value(v) for k, v in tags.items()}
        self._call("tags", lambda: self._set_tags_online(values), "tags", tags=values)

    def close(self) -> None:
        """Nothing is held open; what the local record holds (the store was unreachable, or the artifact store
        refused a file) is uploaded once more now, and what is still left is named with `wsss sync`."""
        if self._closed:
            return
        self._closed = True
        if not self.record.has_pending() or not server_reachable(self.ctx.tracking_uri):
            return
        try:
            from .sync import sync_stage

            stats = sync_stage(self.record, quiet=True, raise_unreachable=True)
            self.offline = False
        except Exception as exc:  # noqa: BLE001
            _warn(f"{self.stage_dir}: upload at close failed ({type(exc).__name__}); run `wsss sync` later")
            return
        for line in stats.deferred + stats.orphaned:
            _warn(f"{line}; left in {BUFFER_FILE} for `wsss sync`")

    def __enter__(self) -> "StageSink":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------------------
    def _log_config(self, config: Mapping[str, Any]) -> None:
        folder = self.stage_dir / TRACKING_ARTIFACTS
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "config.yaml"
        path.write_text(yaml.safe_dump(_plain(config), sort_keys=False))
        self.log_artifacts([path])

    def _log_points(self, points: dict[str, list[tuple[int, float]]]) -> None:
        """Log (step, value) points per key; on a resumed run, points whose (key, step) is already there are
        skipped (a training resumed from its checkpoint re-logs the steps after it)."""
        if not self.offline and self.resumed:
            points = self._drop_present(points)
        points = {k: v for k, v in points.items() if v}
        if not points:
            return
        timestamp = now_ms()

        def action():
            log_points(self._client, self.run_id, points, timestamp)
            if self._steps_present is not None:
                for key, values in points.items():
                    self._steps_present.setdefault(key, set()).update(s for s, _ in values)

        self._call("metrics", action, "metrics", points={k: [[s, v] for s, v in vs] for k, vs in points.items()},
                   timestamp=timestamp)

    def _drop_present(self, points: dict[str, list[tuple[int, float]]]) -> dict[str, list[tuple[int, float]]]:
        if self._steps_present is None:
            try:
                self._steps_present = {key: {m.step for m in self._client.get_metric_history(self.run_id, key)}
                                       for key in self._existing_metric_keys}
            except Exception:  # noqa: BLE001 - then nothing is skipped; the sync dedupes later
                self._steps_present = {}
        return {k: [(s, v) for s, v in vs if s not in self._steps_present.get(k, ())] for k, vs in points.items()}


def log_points(mlflow_client, run_id: str, points: Mapping[str, list[tuple[int, float]]], timestamp: int) -> None:
    from mlflow.entities import Metric

    metrics = [Metric(key, float(value), int(timestamp), int(step)) for key, values in points.items()
               for step, value in values]
    for start in range(0, len(metrics), METRICS_PER_BATCH):
        mlflow_client.log_batch(run_id, metrics=metrics[start: start + METRICS_PER_BATCH])


def upload_artifacts(mlflow_client, run_id: str, paths: Iterable[str], artifact_path: str | None) -> None:
    for path in paths:
        if Path(path).is_dir():
            mlflow_client.log_artifacts(run_id, path, artifact_path=_join(artifact_path, Path(path).name))
        else:
            mlflow_client.log_artifact(run_id, path, artifact_path=artifact_path)


def _join(*parts: str | None) -> str:
    return "/".join(p for p in parts if p)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def _default_run_name(tags: Mapping[str, Any], stage: str) -> str:
    trial = tags.get("trial_id") or tags.get("trial")
    if trial:
        return f"{trial}/{stage}"
    parts = [str(tags[k]) for k in ("baseline", "addons", "seed") if k in tags and tags[k] is not None]
    if "addons" in tags and isinstance(tags["addons"], (list, tuple)):
        parts = [str(tags.get("baseline", "")), "+".join(tags["addons"]) or "none", f"seed{tags.get('seed')}"]
    return "/".join(parts + [stage]) if parts else stage


def stage_sink(ctx: TrackingContext, stage_dir: str | Path, stage: str, tags: Mapping[str, Any] | None = None,
               params: Mapping[str, Any] | None = None, run_name: str | None = None, local=None) -> StageSink:
    """The MLflow sink of one trial stage, on rank 0. ``tags``: sweep, stage, baseline, addons (list),
    posterior, seed, stage_key, launcher, trial_id, axes (a mapping, also tagged ``axis.<name>``); git
    commit and host are added when missing. ``params``: the resolved config (nested; logged flattened
    with dotted keys, and as ``config.yaml``). ``local``: a sink that also receives every call."""
    return StageSink(ctx, stage_dir, stage, tags=tags, params=params, run_name=run_name, local=local)
