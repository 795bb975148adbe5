"""Calibration rows: what trivial predictions made from the ground truth score on the trials' own split.

A table of pseudo-label mIoU means little without them: on a split where most pixels are background, or
where most images hold one large object, a near-chance classifier already scores well. Each row is a
prediction that needs no network, scored with the same evaluation protocol as the trials:

- ``all background``: every pixel background;
- ``image label fills image``: every pixel of an image gets one of its image-level classes, the one with
  the most ground-truth pixels (the best any single image-level label can do; background if it has none);
- ``ground-truth boxes``: the bounding box of each connected region of each ground-truth class, filled
  with that class (larger boxes first, so a smaller box lies on top), background elsewhere: what box
  supervision would give.

GT void (255) pixels are never scored, as for the trials.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import ndimage

from wsss_core.atomic import write_json_atomic
from wsss_core.evaluation.boundary import BoundaryScore
from wsss_core.evaluation.ground_truth import VOID, read_gt_mask, read_split_ids
from wsss_core.evaluation.protocols import Protocol, resolve_protocol
from wsss_core.evaluation.threshold_sweep import scores_from_confusion
from wsss_core.progress import progress

CACHE_VERSION = 1


def all_background(gt: np.ndarray) -> np.ndarray:
    return np.zeros_like(gt)


def largest_class_fills_image(gt: np.ndarray) -> np.ndarray:
    counts = np.bincount(gt[gt != VOID].ravel(), minlength=1)
    counts[0] = 0
    label = int(counts.argmax()) if counts.max() > 0 else 0
    return np.full_like(gt, label)


def ground_truth_boxes(gt: np.ndarray) -> np.ndarray:
    boxes = []
    for cls in np.unique(gt):
        if cls in (0, VOID):
            continue
        regions, _ = ndimage.label(gt == cls)
        for rows, cols in ndimage.find_objects(regions):
            area = (rows.stop - rows.start) * (cols.stop - cols.start)
            boxes.append((area, int(cls), rows, cols))
    pred = np.zeros_like(gt)
    for _, cls, rows, cols in sorted(boxes, key=lambda box: -box[0]):
        pred[rows, cols] = cls
    return pred


CALIBRATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "all background": all_background,
    "image label fills image": largest_class_fills_image,
    "ground-truth boxes": ground_truth_boxes,
}


def _split_fingerprint(data_root: Path, ids: list[str]) -> str:
    """Changes whenever a listed mask file changes (path, size, modification time)."""
    digest = hashlib.sha256()
    for image_id in ids:
        path = data_root / "SegmentationClass" / f"{image_id}.png"
        stat = path.stat()
        digest.update(f"{image_id}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def calibration_rows(data_root: str | Path, split: str, num_classes: int, protocol: str | Protocol,
                     cache_dir: str | Path | None = None) -> list[dict]:
    """One dict per calibration (``name``, ``miou``, ``contour_f``, ``contour_precision``,
    ``contour_recall``) on ``split`` of ``data_root``, scored with ``protocol``; ``num_classes`` counts the
    background. Cached in ``cache_dir`` under the split's fingerprint (a changed mask is rescored)."""
    data_root = Path(data_root)
    spec = protocol if isinstance(protocol, Protocol) else resolve_protocol(protocol)
    ids = read_split_ids(data_root, split)
    key = {"version": CACHE_VERSION, "data_root": str(data_root.resolve()), "split": split,
           "num_classes": num_classes, "protocol": spec.name, "masks": _split_fingerprint(data_root, ids)}
    cache = Path(cache_dir) / f"calibration_{split}_{spec.name}.json" if cache_dir is not None else None
    if cache is not None and cache.is_file():
        try:
            stored = json.loads(cache.read_text())
            if stored.get("key") == key:
                return stored["rows"]
        except (json.JSONDecodeError, KeyError, TypeError):
            pass  # a damaged cache is recomputed, never trusted
    conf = {name: np.zeros((num_classes, num_classes), np.int64) for name in CALIBRATIONS}
    bounds = {name: BoundaryScore(num_classes - 1) for name in CALIBRATIONS}
    for image_id in progress(ids, desc=f"calibration {split}", unit="img"):
        gt = read_gt_mask(data_root, image_id)
        keep = gt != VOID
        for name, predict in CALIBRATIONS.items():
            pred = predict(gt)
            index = gt[keep].astype(np.int64) * num_classes + pred[keep]
            conf[name] += np.bincount(index, minlength=num_classes ** 2).reshape(num_classes, num_classes)
            bounds[name].add(pred, gt)
    rows = []
    for name in CALIBRATIONS:
        # no calibration predicts 255, so the protocol's pred_255 does not enter
        scores = scores_from_confusion(conf[name], epsilon=spec.iou_epsilon, class_mean=spec.class_mean)
        contour = bounds[name].summary(spec.boundary_empty_class)
        rows.append({"name": name, "miou": scores.miou, "contour_f": contour["f"],
                     "contour_precision": contour["precision"], "contour_recall": contour["recall"]})
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(cache, {"key": key, "rows": rows})
    return rows
