"""Contour quality: the DAVIS boundary F-measure, summed per class over a split (as HFPL reports it).

Per class, binary masks of prediction and ground truth; their boundary maps (DAVIS ``seg2bmap``: a pixel
is boundary if it differs from its right, bottom or bottom-right neighbour); each dilated by a disk of
radius ceil(0.008 x image diagonal). Matched boundary pixels and boundary totals are summed per class over
the whole split; precision, recall and F per class follow, and the means are over foreground classes
only. Ground truth 255 counts as background here (HFPL's choice). A class with no boundary pixels on either
side is left out of the means, or (HFPL) scores P = R = F = 1 with the means over all C classes.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from scipy import ndimage

VOID = 255
BOUND_FRACTION = 0.008


def seg2bmap(mask: np.ndarray) -> np.ndarray:
    """Boundary map of a binary mask, with DAVIS semantics (the last row/column compare one way only)."""
    seg = mask.astype(bool)
    east = np.zeros_like(seg)
    south = np.zeros_like(seg)
    south_east = np.zeros_like(seg)
    east[:, :-1] = seg[:, 1:]
    south[:-1, :] = seg[1:, :]
    south_east[:-1, :-1] = seg[1:, 1:]
    bmap = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
    bmap[-1, :] = seg[-1, :] ^ east[-1, :]
    bmap[:, -1] = seg[:, -1] ^ south[:, -1]
    bmap[-1, -1] = False
    return bmap


def tolerance_pixels(shape: tuple[int, int], fraction: float = BOUND_FRACTION) -> int:
    """DAVIS: ceil(fraction x image diagonal), or the value itself if it is >= 1 (pixels)."""
    if fraction >= 1:
        return int(fraction)
    return int(np.ceil(fraction * np.linalg.norm(shape)))


@lru_cache(maxsize=16)
def disk(radius: int) -> np.ndarray:
    """skimage.morphology.disk: the pixels with x^2 + y^2 <= radius^2."""
    yy, xx = np.mgrid[-radius: radius + 1, -radius: radius + 1]
    return (xx * xx + yy * yy) <= radius * radius


def dilate(bmap: np.ndarray, radius: int) -> np.ndarray:
    """Disk dilation, computed only on the boundary pixels' bounding box (plus the radius)."""
    rows = np.flatnonzero(bmap.any(axis=1))
    out = np.zeros_like(bmap)
    if rows.size == 0:
        return out
    cols = np.flatnonzero(bmap.any(axis=0))
    r0, r1 = max(rows[0] - radius, 0), min(rows[-1] + radius + 1, bmap.shape[0])
    c0, c1 = max(cols[0] - radius, 0), min(cols[-1] + radius + 1, bmap.shape[1])
    out[r0:r1, c0:c1] = ndimage.binary_dilation(bmap[r0:r1, c0:c1], structure=disk(radius))
    return out


@lru_cache(maxsize=16)
def disk_widths(radius: int) -> np.ndarray:
    """widths[dy] = floor(sqrt(r^2 - dy^2)): the disk's half-width on the row dy away from its centre."""
    return np.array([math.isqrt(radius * radius - dy * dy) for dy in range(radius + 1)], np.int64)


CONVENTIONS = ("drop", "perfect")


class BoundaryScore:
    """Matched and total boundary pixels per class (index = label value), summed over images.

    ``convention`` (the default of ``summary``/``per_class``): a class with no boundary on either side is
    left out ("drop") or scores P = R = F = 1 ("perfect", HFPL). ``kernel``: "compiled" (numba: boundary
    maps and disk matching in a few passes per class window), "numpy" (seg2bmap + scipy dilation, the
    reference), or "auto"; both count the same pixels.
    """

    def __init__(self, num_classes: int, fraction: float = BOUND_FRACTION, convention: str = "drop",
                 kernel: str = "auto"):
        from .threshold_sweep import resolve_kernel

        if convention not in CONVENTIONS:
            raise ValueError(f"convention: {convention!r} is not valid; valid choices: 'drop', 'perfect'")
        self.num_classes = num_classes  # foreground classes C; arrays are indexed 0..C
        self.fraction = fraction
        self.convention = convention
        self.kernel = resolve_kernel(kernel)
        self.pred_matched = np.zeros(num_classes + 1, np.int64)
        self.pred_total = np.zeros(num_classes + 1, np.int64)
        self.gt_matched = np.zeros(num_classes + 1, np.int64)
        self.gt_total = np.zeros(num_classes + 1, np.int64)
        self._scratch = None

    def __getstate__(self):
        return {**self.__dict__, "_scratch": None}

    def add(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Add one image's label maps (pred 255 belongs to no class; gt 255 counts as background)."""
        if pred.shape != gt.shape:
            raise ValueError(f"prediction shape {pred.shape} differs from the ground truth's {gt.shape}")
        radius = tolerance_pixels(gt.shape, self.fraction)
        if self.kernel == "compiled":
            self._add_compiled(pred, gt, radius)
            return
        gt = np.where(gt == VOID, 0, gt)
        present = np.union1d(np.unique(pred), np.unique(gt))
        for cls in present[(present >= 1) & (present <= self.num_classes)]:
            pred_b = seg2bmap(pred == cls)
            gt_b = seg2bmap(gt == cls)
            self.pred_matched[cls] += np.count_nonzero(pred_b & dilate(gt_b, radius))
            self.gt_matched[cls] += np.count_nonzero(gt_b & dilate(pred_b, radius))
            self.pred_total[cls] += np.count_nonzero(pred_b)
            self.gt_total[cls] += np.count_nonzero(gt_b)

    def _add_compiled(self, pred: np.ndarray, gt: np.ndarray, radius: int) -> None:
        from . import compiled

        h, w = gt.shape
        if self._scratch is None or self._scratch[0].shape[0] < h or self._scratch[0].shape[1] < w:
            hh, ww = max(h, 1), max(w, 1)
            self._scratch = (np.empty((hh, ww), bool), np.empty((hh, ww), bool),
                             np.empty((hh, ww), np.int32), np.empty((hh, ww), np.int32))
        # gt 255 -> background changes no foreground class's mask, so neither map needs rewriting
        compiled.boundary_counts(np.ascontiguousarray(pred, dtype=np.uint8), np.ascontiguousarray(gt, dtype=np.uint8),
                                 self.num_classes, radius, disk_widths(radius), self.pred_matched, self.pred_total,
                                 self.gt_matched, self.gt_total, *self._scratch)

    def merge(self, other: "BoundaryScore") -> None:
        for name in ("pred_matched", "pred_total", "gt_matched", "gt_total"):
            getattr(self, name).__iadd__(getattr(other, name))

    def per_class(self, empty_class: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Precision, recall, F per foreground class (index 0 = class 1), DAVIS conventions when only one
        side has boundaries. A class with no boundary on either side: NaN (``empty_class="drop"``) or
        P = R = F = 1 (``"perfect"``, HFPL's contour_fscore.py)."""
        c = slice(1, self.num_classes + 1)
        pm, pt, gm, gtt = (a[c].astype(np.float64) for a in
                           (self.pred_matched, self.pred_total, self.gt_matched, self.gt_total))
        empty = np.nan if (empty_class or self.convention) == "drop" else 1.0
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = np.where(pt > 0, pm / pt, np.where(gtt > 0, 1.0, empty))
            recall = np.where(gtt > 0, gm / gtt, np.where(pt > 0, 1.0, empty))
            f = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
        f = np.where(np.isnan(precision), np.nan, f)
        return precision, recall, f

    def summary(self, empty_class: str | None = None) -> dict:
        """Means over foreground classes: over the classes with a boundary (``"drop"``) or over all C
        (``"perfect"``)."""
        empty_class = empty_class or self.convention
        if empty_class not in CONVENTIONS:
            raise ValueError(f"empty_class: {empty_class!r} is not 'drop' or 'perfect'")
        precision, recall, f = self.per_class(empty_class)
        mean = (lambda a: float(np.nanmean(a)) if np.isfinite(a).any() else math.nan)
        return {"precision": mean(precision), "recall": mean(recall), "f": mean(f),
                "per_class_precision": precision.tolist(), "per_class_recall": recall.tolist(),
                "per_class_f": f.tolist(), "tolerance_fraction": self.fraction, "empty_class": empty_class}
