"""Entry points of the evaluation stage: score a CAM store at every threshold, or a folder of label PNGs.

Both return one JSON-serialisable dict (see ``evaluate_cams``); ``report.write_eval_outputs`` writes it
as eval.json, eval.csv and threshold_curve.png.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from ..errors import CamStoreError, ConfigError, DataError
from .boundary import BoundaryScore
from .cam_store import CamStore
from .parallel import ShardTask, run_sharded
from .protocols import Protocol, resolve_protocol
from .ground_truth import num_foreground_classes, read_label_png, read_split_ids
from .gt_cache import GroundTruth, ground_truth
from .threshold_sweep import (VOID, ThresholdSweep, class_map_from_cams, default_thresholds, predict_labels,
                              resolve_kernel, robustness, scores_from_confusion, validate_thresholds)

Pred255 = Literal["background", "wrong", "ignore"]
BoundarySpec = Sequence[float | str]
DEFAULT_BOUNDARY_AT: tuple[float | str, ...] = ("best", 0.25)


def evaluate_cams(cam_store_path: str | Path, data_root: str | Path, split: str,
                  thresholds: Sequence[float] | None = None, num_classes: int | None = None,
                  boundary_thresholds: BoundarySpec | None = None, pred_255: Pred255 | None = None,
                  workers: int = 1, protocol: str | None = None, *, kernel: str = "auto",
                  gt_cache: bool = True) -> dict:
    """Score a CAM store against ``<data_root>``'s ``split`` at every threshold, in one pass.

    Returns a dict with: ``thresholds``; ``per_threshold`` (threshold, miou, mean_precision, mean_recall,
    iou/precision/recall per class, background first); ``best`` (threshold, miou, index); ``robustness``
    (mean mIoU within +-0.1 of the best; the contiguous threshold interval within 1 point of the best
    and its width); ``boundary`` (DAVIS P/R/F at the chosen thresholds, default the best one and 0.25;
    ``"best"`` may be listed); ``confusion_at_best``; ``num_images``; ``protocol`` (the scoring preset,
    see :mod:`.protocols`, with its resolved settings). NaN becomes None.
    ``pred_255`` (None: the protocol's) is recorded only: CAMs never predict 255. ``kernel``
    ("auto", "compiled", "numpy") and ``gt_cache`` (the decoded ground truth shared by every evaluation of
    the split, see :mod:`.gt_cache`) change speed only, never a number.
    """
    proto = resolve_protocol(protocol, pred_255)
    store = CamStore(cam_store_path)
    C = store.num_classes
    if num_classes is not None and num_classes != C:
        raise CamStoreError(f"{store.path}: store has num_classes={C}, evaluation asked for {num_classes}")
    ids = read_split_ids(data_root, split)
    _check_store_covers(store, ids, split)
    thresholds = validate_thresholds(default_thresholds() if thresholds is None else thresholds)
    fixed_bt, want_best = _boundary_plan(DEFAULT_BOUNDARY_AT if boundary_thresholds is None else boundary_thresholds)
    kernel = _ready_kernel(kernel, workers)
    gt = ground_truth(data_root, split, ids, workers) if gt_cache else GroundTruth(data_root)

    task = _CamTask(str(store.path), gt, C, tuple(thresholds), tuple(fixed_bt), kernel)
    sweep, boundaries = run_sharded(task, ids, workers, f"eval {split}")
    conf = sweep.confusions()
    rows = [_scores_row(t, conf[j], proto) for j, t in enumerate(thresholds)]
    mious = np.array([r["miou"] if r["miou"] is not None else np.nan for r in rows])
    best = int(np.nanargmax(mious)) if np.isfinite(mious).any() else 0
    best_t = thresholds[best]
    if want_best and not any(np.float32(t) == np.float32(best_t) for t in fixed_bt):
        extra = _CamTask(task.store, gt, C, (best_t,), (best_t,), kernel, sweep=False)
        _, best_boundary = run_sharded(extra, ids, workers, f"eval {split}: boundary at best threshold {best_t:g}")
        boundaries.update(best_boundary)
    rob = robustness(thresholds, np.nan_to_num(mious, nan=0.0))
    result = {
        "source": {"kind": "cams", "path": str(store.path)},
        "data_root": str(data_root), "split": split, "num_images": sweep.num_images,
        "num_classes": C + 1, "class_names": _class_names(store.class_names, C),
        "protocol": proto.describe(), "pred_255": proto.pred_255, "thresholds": list(thresholds),
        "per_threshold": rows,
        "best": {"threshold": best_t, "miou": rows[best]["miou"], "index": best},
        "robustness": {"window": rob.window, "mean_miou_near_best": rob.mean_miou_near_best,
                       "tolerance": rob.tolerance, "plateau": [rob.plateau_low, rob.plateau_high],
                       "plateau_width": rob.plateau_width},
        "boundary": [dict(threshold=t, **boundaries[t].summary(proto.boundary_empty_class))
                     for t in sorted(boundaries)],
        "confusion_at_best": conf[best].tolist(),
    }
    return _json_safe(result)


def evaluate_label_dir(label_dir: str | Path, data_root: str | Path, split: str, num_classes: int | None = None,
                       pred_255: Pred255 | None = None, boundary: bool = True, workers: int = 1,
                       protocol: str | None = None, *, kernel: str = "auto", gt_cache: bool = True) -> dict:
    """Score label PNGs ``<label_dir>/<id>.png`` (e.g. CRF pseudo-labels) against the split's ground truth.

    Same dict as :func:`evaluate_cams` with one row (``threshold`` None) and no robustness. A predicted
    255 is scored as the protocol says: background (``irn``), wrong (``seam``/``hfpl``, ``project``'s
    default) or, with ``protocol="project", pred_255="ignore"``, left out. ``void_predictions[g]`` counts
    the pixels of ground truth g predicted 255 whatever the protocol. ``kernel`` and ``gt_cache`` as in
    :func:`evaluate_cams`.
    """
    proto = resolve_protocol(protocol, pred_255)
    label_dir = Path(label_dir)
    if not label_dir.is_dir():
        raise DataError(f"{label_dir}: label folder not found")
    C = num_classes if num_classes is not None else num_foreground_classes(data_root)
    if C is None:
        raise ConfigError(f"{data_root}: no cls_labels.npy to read the number of classes from; "
                          "pass num_classes (--num-classes)")
    ids = read_split_ids(data_root, split)
    missing = [i for i in ids if not (label_dir / f"{i}.png").is_file()]
    if missing:
        raise DataError(f"{label_dir}: {len(missing)} of {len(ids)} images of split {split!r} have no label "
                        f"PNG, e.g. {', '.join(missing[:5])}")
    gt = ground_truth(data_root, split, ids, workers) if gt_cache else GroundTruth(data_root)
    task = _LabelTask(str(label_dir), gt, C, boundary, _ready_kernel(kernel, workers))
    conf, boundaries = run_sharded(task, ids, workers, f"eval labels {split}")
    row = _scores_row(None, conf[:, : C + 1], proto, void_predictions=conf[:, C + 1])
    result = {
        "source": {"kind": "labels", "path": str(label_dir)},
        "data_root": str(data_root), "split": split, "num_images": len(ids),
        "num_classes": C + 1, "class_names": _class_names(None, C),
        "protocol": proto.describe(), "pred_255": proto.pred_255, "thresholds": [], "per_threshold": [row],
        "best": {"threshold": None, "miou": row["miou"], "index": 0}, "robustness": None,
        "boundary": [dict(threshold=None, **b.summary(proto.boundary_empty_class)) for b in boundaries.values()],
        "confusion_at_best": conf[:, : C + 1].tolist(),
        "void_predictions": conf[:, C + 1].tolist(),
    }
    return _json_safe(result)


# -- per-shard work (module level so process pools can pickle it) -----------------------------------



class _CamTask(ShardTask):
    def __init__(self, store: str, gt: GroundTruth, num_classes: int, thresholds: tuple, boundary_at: tuple,
                 kernel: str, sweep: bool = True):
        self.store, self.gt, self.num_classes, self.kernel = store, gt, num_classes, kernel
        self.thresholds, self.boundary_at, self.sweep = thresholds, boundary_at, sweep
        self._opened: CamStore | None = None
        self._labels = None

    def __getstate__(self):
        return {**self.__dict__, "_opened": None, "_labels": None}

    def new_state(self):
        sweep = ThresholdSweep(self.num_classes, self.thresholds, self.kernel) if self.sweep else None
        return sweep, {t: BoundaryScore(self.num_classes, kernel=self.kernel) for t in self.boundary_at}

    def add(self, state, image_id: str) -> None:
        sweep, boundaries = state
        if self._opened is None:
            self._opened = CamStore(self.store)
        keys, cams = self._opened.read(image_id)
        gt = self.gt.read(image_id)
        if cams.shape[1:] != gt.shape:
            raise CamStoreError(f"{self.store}: image {image_id!r}: CAM shape {cams.shape[1:]} differs from its "
                                f"ground truth {gt.shape}")
        if sweep is not None:
            sweep.add(image_id, keys, cams, gt)
        if boundaries:
            for t, labels in self._labels_at(keys, cams, boundaries):
                boundaries[t].add(labels, gt)

    def _labels_at(self, keys, cams, thresholds):
        """(t, label map at t) for each boundary threshold."""
        if self.kernel != "compiled" or len(keys) == 0:
            m, class_map = class_map_from_cams(keys, cams)
            for t in thresholds:
                yield t, predict_labels(m, class_map, t)
            return
        from . import compiled

        shape, n = cams.shape[1:], cams[0].size
        if self._labels is None or self._labels[0].size < n:
            self._labels = (np.empty(n, np.float32), np.empty(n, np.int32), np.empty(n, np.uint8))
        m, c, out = (a[:n] for a in self._labels)
        flat = np.ascontiguousarray(cams, dtype=np.float32).reshape(len(keys), n)
        compiled.max_and_column(flat, flat.view(np.uint32), (keys + 1).astype(np.int32), m, c)  # validated by the sweep
        for t in thresholds:
            compiled.threshold_labels(m, c, np.float32(t), out)
            yield t, out.reshape(shape)

    @staticmethod
    def merge(total, part) -> None:
        if total[0] is not None:
            total[0].merge(part[0])
        for t, score in total[1].items():
            score.merge(part[1][t])


class _LabelTask(ShardTask):
    def __init__(self, label_dir: str, gt: GroundTruth, num_classes: int, boundary: bool, kernel: str):
        self.label_dir, self.gt, self.num_classes = label_dir, gt, num_classes
        self.boundary, self.kernel = boundary, kernel

    def new_state(self):
        C = self.num_classes
        # columns 0..C are classes, column C+1 counts predictions of 255
        return np.zeros((C + 1, C + 2), np.int64), ({None: BoundaryScore(C, kernel=self.kernel)} if self.boundary else {})

    def add(self, state, image_id: str) -> None:
        conf, boundaries = state
        C = self.num_classes
        pred = read_label_png(Path(self.label_dir) / f"{image_id}.png", image_id)
        gt = self.gt.read(image_id)
        if pred.shape != gt.shape:
            raise DataError(f"{self.label_dir}: image {image_id!r}: label shape {pred.shape} differs from its "
                            f"ground truth {gt.shape}")
        _check_values(image_id, pred, C, f"{self.label_dir}: labels")
        _check_values(image_id, gt, C, "ground truth")
        keep = gt != VOID  # a predicted 255 goes to column C+1; the protocol scores it
        pred_column = pred[keep].astype(np.int64)
        pred_column[pred_column == VOID] = C + 1
        index = gt[keep].astype(np.int64) * (C + 2) + pred_column
        conf += np.bincount(index, minlength=(C + 1) * (C + 2)).reshape(C + 1, C + 2)
        for score in boundaries.values():
            score.add(pred, gt)

    @staticmethod
    def merge(total, part) -> None:
        total[0] += part[0]
        for key, score in total[1].items():
            score.merge(part[1][key])


def _ready_kernel(kernel: str, workers: int) -> str:
    kernel = resolve_kernel(kernel)
    if kernel == "compiled" and workers > 1:
        from . import compiled

        compiled.warm_up()  # forked workers inherit the loaded kernels
    return kernel


def _check_values(image_id: str, labels: np.ndarray, num_classes: int, what: str) -> None:
    values = np.flatnonzero(np.bincount(labels.reshape(-1), minlength=256))  # uint8: faster than np.unique
    bad = values[(values > num_classes) & (values != VOID)]
    if bad.size:
        raise DataError(f"{what}: image {image_id!r} has values {bad.tolist()[:10]} outside 0..{num_classes} "
                        f"and {VOID}")


def _check_store_covers(store: CamStore, ids: list[str], split: str) -> None:
    stored = set(store.ids())  # one directory listing instead of a stat per image
    missing = [i for i in ids if i not in stored]
    if missing:
        raise CamStoreError(f"{store.path}: {len(missing)} of {len(ids)} images of split {split!r} have no CAMs, "
                            f"e.g. {', '.join(missing[:5])}")


def _boundary_plan(spec: BoundarySpec) -> tuple[list[float], bool]:
    fixed, want_best = [], False
    for item in spec:
        if isinstance(item, str) and item.strip().lower() == "best":
            want_best = True
            continue
        try:
            value = float(item)
        except (TypeError, ValueError):
            raise ConfigError(f"boundary thresholds: {item!r} is not a number or 'best'") from None
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"boundary thresholds: {value} is outside [0, 1]")
        fixed.append(value)
    return sorted(set(fixed)), want_best


def _scores_row(threshold, conf: np.ndarray, proto: Protocol, void_predictions: np.ndarray | None = None) -> dict:
    scores = scores_from_confusion(conf, void_predictions, pred_255=proto.pred_255, epsilon=proto.iou_epsilon,
                                   class_mean=proto.class_mean)
    return {"threshold": threshold, "miou": scores.miou, "mean_precision": scores.mean_precision,
            "mean_recall": scores.mean_recall, "iou": scores.iou.tolist(),
            "precision": scores.precision.tolist(), "recall": scores.recall.tolist()}


def _class_names(names: list[str] | None, num_classes: int) -> list[str]:
    return ["background"] + (list(names) if names else [f"class_{k}" for k in range(num_classes)])


def _json_safe(value):
    """NaN/inf -> None, numpy scalars -> Python, so the dict is strict JSON."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value
