"""Every background threshold's confusion matrix from one pass over the CAMs.

Reference semantics (docs/fidelity.md): per pixel m = max over the image's foreground maps and c = the class of
the argmax (lowest class index wins ties); at threshold t the pixel is predicted c if m > float32(t), else
background. Ground truth 255 is ignored.

One pass: per image, each pixel's bin b = #{thresholds < m} (float32 comparison, so a value exactly at a
threshold is background there), and a histogram over (gt, c, b) is accumulated with one ``np.bincount``.
Threshold j then predicts c exactly for the pixels with b > j: a reverse cumulative sum over bins gives
all matrices at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import CamStoreError, ConfigError
from .cam_store import check_finite_nonnegative

VOID = 255
# Safety margin (in bins) of the uniform-grid bin estimate; see ThresholdBinner.
_MARGIN_BINS = 0.01


def default_thresholds() -> list[float]:
    """0.00, 0.01, ..., 0.95 (96 values)."""
    return [round(0.01 * i, 2) for i in range(96)]


def parse_thresholds(spec: str, where: str = "--thresholds") -> list[float]:
    """``"0:0.95:0.01"`` (start:stop:step, stop included) or ``"0.1,0.2,0.3"``."""
    spec = spec.strip()
    try:
        if ":" in spec:
            parts = [float(p) for p in spec.split(":")]
            if len(parts) != 3 or parts[2] <= 0:
                raise ValueError
            start, stop, step = parts
            count = int(math.floor((stop - start) / step + 1e-6)) + 1
            decimals = max(_decimals(p) for p in parts)
            values = [round(start + i * step, decimals) for i in range(max(count, 0))]
        else:
            values = [float(p) for p in spec.split(",") if p.strip()]
    except ValueError:
        raise ConfigError(f"{where}: {spec!r} is not a threshold list; use START:STOP:STEP (e.g. 0:0.95:0.01) "
                          "or comma-separated values (e.g. 0.1,0.2,0.3)") from None
    return validate_thresholds(values, where)


def _decimals(value: float) -> int:
    text = repr(value)
    return len(text.split(".")[1]) if "." in text and "e" not in text else 6


def validate_thresholds(values, where: str = "thresholds") -> list[float]:
    """Sorted thresholds within [0, 1], distinct as float32 (the precision they are compared in)."""
    values = [float(v) for v in values]
    if not values:
        raise ConfigError(f"{where}: no thresholds given")
    bad = [v for v in values if not (0.0 <= v <= 1.0)]
    if bad:
        raise ConfigError(f"{where}: thresholds must lie within [0, 1]; got {bad[:5]}")
    values = sorted(values)
    as32 = np.asarray(values, dtype=np.float32)
    dupes = [values[i + 1] for i in range(len(values) - 1) if as32[i] == as32[i + 1]]
    if dupes:
        raise ConfigError(f"{where}: duplicate thresholds {dupes[:5]}; each value must be given once")
    return values


class ThresholdBinner:
    """Maps values m to b = #{t in thresholds : t < m}, compared in float32 exactly like the references.

    A uniform grid takes an arithmetic estimate that is never above the exact bin and at most one below
    it, then one exact float32 comparison with the threshold at the estimate (4 array passes instead of a
    binary search); other grids use ``np.searchsorted``.
    """

    def __init__(self, thresholds):
        self.thresholds = np.asarray(thresholds, dtype=np.float32)
        self.count = len(self.thresholds)
        # thresholds[b] with +inf past the end: "m > upper[b]" means the estimate b is one too low.
        self.upper = np.append(self.thresholds, np.float32(np.inf)).astype(np.float32)
        self.uniform = self._uniform_grid()

    def _uniform_grid(self) -> bool:
        t = self.thresholds.astype(np.float64)
        if self.count < 2 or self.count > 10000:
            return False
        step = (t[-1] - t[0]) / (self.count - 1)
        if step < 1e-4:
            return False
        # Each float32 threshold must sit within a small fraction of a bin of the ideal grid point.
        if np.max(np.abs(t - (t[0] + step * np.arange(self.count)))) / step > 1e-3:
            return False
        self.scale = np.float32(1.0 / step)
        # floor(q) + 1 with q = (m - t0)/step - margin counts the grid points certainly below m.
        self.offset = np.float32(1.0 - _MARGIN_BINS - t[0] / step)
        return True

    def bins(self, m: np.ndarray, out: np.ndarray, scratch_f32: np.ndarray, scratch_bool: np.ndarray) -> np.ndarray:
        """Fill ``out`` (int64, m's shape) with each value's bin; scratch arrays have m's shape."""
        if not self.uniform:
            out[...] = np.searchsorted(self.thresholds, m, side="left")
            return out
        np.multiply(m, self.scale, out=scratch_f32)
        np.add(scratch_f32, self.offset, out=scratch_f32)
        np.clip(scratch_f32, 0, self.count, out=out, casting="unsafe")  # truncation = floor for q >= 0
        # mode="wrap" skips the bounds check; out is within [0, count] by the clip above
        np.take(self.upper, out, out=scratch_f32, mode="wrap")
        np.greater(m, scratch_f32, out=scratch_bool)
        np.add(out, 1, out=out, where=scratch_bool)
        return out


class _Buffers:
    """Per-pixel scratch arrays reused across images (fresh large arrays cost page faults each time)."""

    def __init__(self):
        self.size = 0

    def get(self, n: int):
        if n > self.size:
            self.size = n
            self.m = np.empty(n, np.float32)
            self.f = np.empty(n, np.float32)
            self.mask = np.empty(n, bool)
            self.class_mask = np.empty(n, bool)
            self.bins = np.empty(n, np.int64)
            self.index = np.empty(n, np.int64)
            self.cidx = np.empty(n, np.int64)
            self.c32 = np.empty(n, np.int32)
            self.index32 = np.empty(n, np.int32)
            self.index16 = np.empty(n, np.uint16)
        return self


KERNELS = ("auto", "compiled", "numpy")


def resolve_kernel(kernel: str) -> str:
    """"auto" -> "compiled" where numba imports, else "numpy"."""
    from . import compiled

    if kernel not in KERNELS:
        raise ConfigError(f"kernel: {kernel!r} is not valid; valid choices: {', '.join(map(repr, KERNELS))}")
    if kernel == "auto":
        return "compiled" if compiled.available() else "numpy"
    if kernel == "compiled" and not compiled.available():
        raise ConfigError("kernel: 'compiled' needs numba, which cannot be imported here; use 'numpy'")
    return kernel


class _CompiledGrid:
    """How the compiled kernel finds each value's bin. On a uniform grid: the binner's estimate, then one
    comparison with the threshold at the estimate computed as (a + b) / d in float32 (a = t0 / step and
    d = 1 / step rounded to integers, e.g. d = 100 for a 0.01 grid), used only if that reproduces every
    threshold exactly. Otherwise a lookup table over [0, 1] in 4096 cells, then a walk up the thresholds."""

    RESOLUTION = 4096  # a power of two: floor(m * R) is exact in float32

    def __init__(self, binner: ThresholdBinner, values: list[float]):
        from . import compiled

        self.count = binner.count
        self.uniform = False
        self.scale, self.offset, self.a, self.d = np.float32(0), np.float32(0), np.float32(0), np.float32(1)
        if binner.uniform:
            step = (float(values[-1]) - float(values[0])) / (self.count - 1)
            d, a = round(1 / step), round(float(values[0]) / step)
            if 0 < d < 2 ** 24 and 0 <= a + self.count < 2 ** 24:  # integers exact in float32
                self.a, self.d = np.float32(a), np.float32(d)
                rebuilt = compiled.reconstruct_uniform(self.a, self.d, self.count)
                self.uniform = bool(np.array_equal(rebuilt, binner.thresholds))
                self.scale, self.offset = binner.scale, binner.offset
        cells = np.arange(self.RESOLUTION + 1, dtype=np.float64) / self.RESOLUTION
        self.lut = np.searchsorted(binner.thresholds.astype(np.float64), cells, side="left").astype(np.int32)
        self.upper = binner.upper


class ThresholdSweep:
    """Accumulates the (gt, predicted class, bin) histogram of a split, image by image.

    ``num_classes`` is the number of foreground classes C; matrices are (C+1) x (C+1) with background 0.
    ``kernel``: "compiled" (numba, one fused pass; see compiled.py), "numpy" (the vectorised reference) or
    "auto" (compiled where numba imports). Both give identical matrices. After an error from ``add`` the
    sweep should not be used further.
    """

    def __init__(self, num_classes: int, thresholds, kernel: str = "auto"):
        self.num_classes = num_classes
        self.thresholds = validate_thresholds(thresholds)
        self.binner = ThresholdBinner(self.thresholds)
        self.kernel = resolve_kernel(kernel)
        n_bins = len(self.thresholds) + 1
        self._hist = np.zeros((num_classes + 1, num_classes + 1, n_bins), dtype=np.int64)
        self.num_images = 0
        self._buffers = _Buffers()
        # Ground-truth value -> row of the per-image histogram: classes as is, 255 to a dropped row,
        # anything else to an "invalid" row that is checked after the bincount.
        self._row_of_value = np.full(256, num_classes + 2, dtype=np.int64)
        self._row_of_value[: num_classes + 1] = np.arange(num_classes + 1)
        self._row_of_value[VOID] = num_classes + 1
        self._grid = _CompiledGrid(self.binner, self.thresholds) if self.kernel == "compiled" else None
        self._hist4 = None  # compiled: four interleaved (C+3, C+1, bins) int32 histograms, folded on demand
        self._pixels_unfolded = 0
        self._hist_size = (num_classes + 3) * (num_classes + 1) * n_bins

    @property
    def hist(self) -> np.ndarray:
        """(C+1, C+1, bins) counts [gt, predicted class, bin]."""
        self._fold()
        return self._hist

    def _fold(self) -> None:
        if self._hist4 is not None:
            C = self.num_classes
            self._hist += self._hist4.sum(axis=0, dtype=np.int64).reshape(C + 3, C + 1, -1)[: C + 1]
            self._hist4 = None
            self._pixels_unfolded = 0

    def __getstate__(self):
        # what a worker process sends back: the folded counts, not its scratch buffers
        self._fold()
        return {**self.__dict__, "_buffers": _Buffers()}

    def add(self, image_id: str, keys: np.ndarray, cams: np.ndarray, gt: np.ndarray) -> None:
        """Add one image: keys (K,) sorted 0-based classes, cams (K, H, W) float32, gt (H, W) uint8."""
        C = self.num_classes
        if cams.shape[1:] != gt.shape:
            raise CamStoreError(f"image {image_id!r}: CAM shape {cams.shape[1:]} differs from its ground truth "
                                f"{gt.shape}")
        key_list = np.asarray(keys).tolist()  # a few keys: Python comparisons beat NumPy calls
        if key_list and (min(key_list) < 0 or max(key_list) >= C):
            raise CamStoreError(f"image {image_id!r}: keys {key_list} outside the class range 0..{C - 1}")
        if any(b <= a for a, b in zip(key_list, key_list[1:])):
            raise CamStoreError(f"image {image_id!r}: keys {key_list} must be sorted ascending and unique")
        if gt.dtype != np.uint8:  # the row lookup below relies on uint8 values (0..255)
            if gt.size and (gt.min() < 0 or gt.max() > VOID):
                raise CamStoreError(f"image {image_id!r}: ground truth values must lie in 0..255")
            gt = gt.astype(np.uint8)
        if self.kernel == "compiled":
            self._add_compiled(image_id, keys, cams, gt)
        else:
            check_finite_nonnegative(image_id, cams, "CAMs")
            m, class_index = self.max_and_argmax(cams, gt.size)
            local = self._image_histogram(m, class_index, gt.reshape(-1), len(keys))
            self._check_gt_values(image_id, gt, local)
            cols = np.concatenate([[0], np.asarray(keys, dtype=np.int64) + 1])
            self._hist[:, cols, :] += local[: C + 1]
        self.num_images += 1

    def _add_compiled(self, image_id: str, keys: np.ndarray, cams: np.ndarray, gt: np.ndarray) -> None:
        from . import compiled

        C, grid, n = self.num_classes, self._grid, gt.size
        buf = self._buffers.get(n)
        idx = buf.index16[:n] if self._hist_size < 2 ** 16 else buf.index32[:n]
        flat = np.ascontiguousarray(cams, dtype=np.float32).reshape(len(keys), n)
        if self._hist4 is None or self._pixels_unfolded + n >= 2 ** 31:  # int32 counts: fold before overflow
            self._fold()
            self._hist4 = np.zeros((4, self._hist_size), np.int32)
        self._pixels_unfolded += n
        bits, invalid = compiled.accumulate(
            flat, flat.view(np.uint32), np.asarray(keys, np.int32) + 1, np.ascontiguousarray(gt).reshape(-1),
            C, grid.uniform, grid.scale, grid.offset, grid.a, grid.d, grid.count, grid.lut, grid.RESOLUTION,
            grid.upper, buf.m[:n], buf.c32[:n], idx, self._hist4)
        if invalid:
            self._raise_gt_values(image_id, gt)
        if bits & compiled.SUSPECT_BITS:  # values >= 2, -0.0, or invalid ones: check exactly
            check_finite_nonnegative(image_id, cams, "CAMs")  # raises, naming the problem
            compiled.scatter(idx, self._hist4)

    def max_and_argmax(self, cams: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Per-pixel max over maps and the first argmax (None when K <= 1), as flat arrays."""
        buf = self._buffers.get(n)
        num_keys = cams.shape[0]
        if num_keys == 0:
            m = buf.m[:n]
            m.fill(0)
            return m, None
        flat = cams.reshape(num_keys, n)
        if num_keys == 1:
            return flat[0], None
        m = buf.m[:n]
        if num_keys == 2:
            np.maximum(flat[0], flat[1], out=m)
            second_wins = buf.class_mask[:n]
            np.greater(flat[1], flat[0], out=second_wins)  # strict: ties go to the lower class index
            return m, second_wins
        cidx = buf.cidx[:n]
        cidx.fill(0)
        np.copyto(m, flat[0])
        wins = buf.class_mask[:n]
        for k in range(1, num_keys):
            np.greater(flat[k], m, out=wins)
            np.copyto(cidx, k, where=wins)
            np.maximum(m, flat[k], out=m)
        return m, cidx

    def _image_histogram(self, m: np.ndarray, class_index, gt_flat: np.ndarray, num_keys: int) -> np.ndarray:
        """Histogram over (gt row, local class 0..K, bin) for one image; local class k+1 = keys[k]."""
        n = gt_flat.size
        buf = self._buffers.get(n)
        n_bins = self.binner.count + 1
        n_local = num_keys + 1
        bins = self.binner.bins(m, buf.bins[:n], buf.f[:n], buf.mask[:n]) if num_keys else None
        index = buf.index[:n]
        # Row offset of each pixel's gt value, plus the first key's column for every pixel.
        row_offset = self._row_of_value * (n_local * n_bins) + (n_bins if num_keys else 0)
        # mode="clip" is a no-op for uint8 indices into 256 entries, and 10x faster than the checked take
        np.take(row_offset, gt_flat, out=index, mode="clip")
        if num_keys:
            np.add(index, bins, out=index)
        if isinstance(class_index, np.ndarray) and class_index.dtype == bool:
            np.add(index, n_bins, out=index, where=class_index)
        elif class_index is not None:
            np.multiply(class_index, n_bins, out=class_index)
            np.add(index, class_index, out=index)
        counts = np.bincount(index, minlength=(self.num_classes + 3) * n_local * n_bins)
        return counts.reshape(self.num_classes + 3, n_local, n_bins)

    def _check_gt_values(self, image_id: str, gt: np.ndarray, local: np.ndarray) -> None:
        if local[self.num_classes + 2].any():
            self._raise_gt_values(image_id, gt)

    def _raise_gt_values(self, image_id: str, gt: np.ndarray) -> None:
        bad = sorted(set(np.unique(gt).tolist()) - set(range(self.num_classes + 1)) - {VOID})
        raise CamStoreError(f"image {image_id!r}: ground truth has values {bad[:10]} outside 0..{self.num_classes}"
                            f" and {VOID} (num_classes={self.num_classes} foreground classes)")

    def merge(self, other: "ThresholdSweep") -> None:
        self._hist += other.hist
        self.num_images += other.num_images

    def confusions(self) -> np.ndarray:
        """(T, C+1, C+1) int64 confusion matrices [gt, pred], one per threshold."""
        # above[..., j] = pixels whose bin > j, i.e. m > thresholds[j]
        self._fold()
        above = np.cumsum(self._hist[:, :, ::-1], axis=2)[:, :, ::-1][:, :, 1:]
        conf = np.ascontiguousarray(np.moveaxis(above, 2, 0))  # (T, gt, c)
        conf[:, :, 0] = 0
        totals = self._hist.sum(axis=(1, 2))  # pixels per gt class
        conf[:, :, 0] = totals[None, :] - conf.sum(axis=2)
        return conf


def predict_labels(m: np.ndarray, class_map: np.ndarray, threshold: float) -> np.ndarray:
    """Label map at one threshold: class_map where m > float32(threshold), else 0."""
    return np.where(m > np.float32(threshold), class_map, 0).astype(np.uint8)


def class_map_from_cams(keys: np.ndarray, cams: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(m, c): per-pixel max over the maps and the label value (key + 1) of the first argmax (0 if K = 0)."""
    if cams.shape[0] == 0:
        shape = cams.shape[1:]
        return np.zeros(shape, np.float32), np.zeros(shape, np.uint8)
    lut = (np.asarray(keys, dtype=np.int64) + 1).astype(np.uint8)
    return cams.max(axis=0), lut[cams.argmax(axis=0)]


@dataclass(frozen=True)
class ClassScores:
    """Per-class IoU, precision and recall of one confusion matrix (NaN where undefined). ``class_mean``:
    "present" averages the defined values (nanmean, chainercv); "all" averages every class (SEAM/HFPL,
    whose epsilon makes an absent class 0)."""

    iou: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    class_mean: str = "present"

    @property
    def miou(self) -> float:
        return self._mean(self.iou)

    @property
    def mean_precision(self) -> float:
        return self._mean(self.precision)

    @property
    def mean_recall(self) -> float:
        return self._mean(self.recall)

    def _mean(self, values: np.ndarray) -> float:
        return float(np.mean(values)) if self.class_mean == "all" else _nanmean(values)


def _nanmean(values: np.ndarray) -> float:
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def scores_from_confusion(conf: np.ndarray, void_predictions: np.ndarray | None = None, pred_255: str = "wrong",
                          epsilon: float = 0.0, class_mean: str = "present") -> ClassScores:
    """IoU_c = TP / (GT_c + Pred_c - TP + epsilon). ``void_predictions[g]``: pixels of gt g predicted 255,
    scored as ``pred_255``: "wrong" (in GT_g only), "background" (as predictions of class 0) or "ignore"
    (left out)."""
    conf = conf.astype(np.float64)
    if void_predictions is not None and pred_255 == "background":
        conf[:, 0] += void_predictions
    tp = np.diag(conf)
    gt_total = conf.sum(axis=1)
    if void_predictions is not None and pred_255 == "wrong":
        gt_total = gt_total + void_predictions
    pred_total = conf.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = tp / (gt_total + pred_total - tp + epsilon)
        precision = tp / (pred_total + epsilon)
        recall = tp / (gt_total + epsilon)
    return ClassScores(iou, precision, recall, class_mean)


@dataclass(frozen=True)
class Robustness:
    """How forgiving the mIoU curve is around its best threshold."""

    mean_miou_near_best: float  # mean mIoU over grid thresholds within +-window of the best
    window: float
    plateau_low: float  # contiguous run around the best with mIoU >= best - tolerance
    plateau_high: float
    plateau_width: float
    tolerance: float


def robustness(thresholds, mious, window: float = 0.1, tolerance: float = 0.01) -> Robustness:
    """Robustness of a threshold curve (mIoU as a fraction; tolerance 0.01 = 1 point)."""
    t = np.asarray(thresholds, dtype=np.float64)
    y = np.asarray(mious, dtype=np.float64)
    best = int(np.nanargmax(y))
    near = np.abs(t - t[best]) <= window + 1e-9
    lo = hi = best
    floor = y[best] - tolerance - 1e-12
    while lo > 0 and y[lo - 1] >= floor:
        lo -= 1
    while hi < len(y) - 1 and y[hi + 1] >= floor:
        hi += 1
    return Robustness(float(np.nanmean(y[near])), window, float(t[lo]), float(t[hi]),
                      round(float(t[hi] - t[lo]), 10), tolerance)
