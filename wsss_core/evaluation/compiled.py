"""Compiled (numba) per-pixel kernels of the evaluator: the threshold histogram and boundary matching.

NumPy needs about ten passes over an image for the threshold histogram and a dozen full-size boolean
images per class for the boundary F-score; these kernels do the same work in a few fused passes. Each
gives results identical to the NumPy reference it replaces (threshold_sweep.ThresholdSweep with
``kernel="numpy"``; boundary.BoundaryScore with ``kernel="numpy"``), which the tests assert.

numba is a pinned dependency; without it (``available()`` False) the evaluator uses the NumPy paths.
Compiled code is cached on disk (numba ``cache=True``), so only the first process ever pays the compile.
"""

from __future__ import annotations

import numpy as np

try:  # the evaluator falls back to NumPy where numba cannot be imported
    import numba
except ImportError:  # pragma: no cover - numba is a pinned dependency
    numba = None

VOID = 255
# Every NaN, infinite or negative float32 has its sign bit or the top exponent bit set, so an OR of all
# the maps' bits without these two bits proves the maps valid; the rest (values >= 2, -0.0) are checked
# exactly by the caller.
SUSPECT_BITS = 0xC0000000


def available() -> bool:
    return numba is not None


if numba is not None:
    _jit = numba.njit(cache=True, nogil=True, boundscheck=False)

    # -- threshold histogram ------------------------------------------------------------------------

    @_jit
    def max_and_column(cams, bits, cols, m, c):
        """m = max over the maps, c = cols[first argmax] (ties: the lowest map); returns the OR of all the
        maps' bits (``bits``: the maps viewed as uint32; see SUSPECT_BITS)."""
        num_keys, n = cams.shape
        acc = np.uint32(0)
        c0 = np.int32(cols[0])
        if num_keys == 1:
            for j in range(n):
                m[j] = cams[0, j]
                c[j] = c0
                acc |= bits[0, j]
            return acc
        c1 = np.int32(cols[1])
        for j in range(n):
            x = cams[0, j]
            y = cams[1, j]
            c[j] = c1 if y > x else c0
            m[j] = max(x, y)
            acc |= bits[0, j] | bits[1, j]
        for k in range(2, num_keys):
            ck = np.int32(cols[k])
            for j in range(n):
                y = cams[k, j]
                c[j] = ck if y > m[j] else c[j]
                m[j] = max(m[j], y)
                acc |= bits[k, j]
        return acc

    @_jit
    def _row(g, num_classes):
        # gt value -> histogram row: classes as is, 255 to row C+1 (dropped), others to row C+2 (invalid)
        return g if g <= num_classes else (np.int32(num_classes + 1) if g == VOID else np.int32(num_classes + 2))

    @_jit
    def _bin_uniform(mj, scale, offset, a, d, count):
        # #{thresholds < mj} in float32: the estimate floor(mj * scale + offset) is never above the bin and
        # at most one below (ThresholdBinner); one comparison with the threshold at the estimate, (a + b) / d
        # in float32, which the caller has checked reproduces every threshold exactly
        q = min(max(mj * scale + offset, np.float32(0.0)), np.float32(count))
        b = np.int32(q)
        tb = (a + np.float32(b)) / d
        return b + np.int32((mj > tb) & (b < count))

    @_jit
    def _index_uniform_fused(cams, bits, cols, gt, num_classes, scale, offset, a, d, count, idx):
        # one or two maps: max, argmax, bin and index in one pass; returns (OR of the bits, invalid gt)
        num_keys, n = cams.shape
        nb = np.int32(count + 1)
        ncols = np.int32(num_classes + 1)
        c0 = np.int32(cols[0])
        c1 = np.int32(cols[num_keys - 1])
        acc = np.uint32(0)
        invalid = 0
        for j in range(n):
            x = cams[0, j]
            y = cams[num_keys - 1, j]
            c = c1 if y > x else c0
            mj = max(x, y)
            acc |= bits[0, j] | bits[num_keys - 1, j]
            b = _bin_uniform(mj, scale, offset, a, d, count)
            g = np.int32(gt[j])
            invalid += (g > num_classes) & (g != VOID)
            idx[j] = (_row(g, num_classes) * ncols + c) * nb + b
        return acc, invalid

    @_jit
    def _index_uniform_last(m, c, last, last_bits, last_col, gt, num_classes, scale, offset, a, d, count, idx):
        # three or more maps: m, c hold the max and column over all maps but the last; the last is merged
        # here, in the pass that bins and indexes (one pass less over the image)
        nb = np.int32(count + 1)
        ncols = np.int32(num_classes + 1)
        col = np.int32(last_col)
        acc = np.uint32(0)
        invalid = 0
        for j in range(gt.shape[0]):
            y = last[j]
            x = m[j]
            cj = col if y > x else c[j]
            mj = max(x, y)
            acc |= last_bits[j]
            b = _bin_uniform(mj, scale, offset, a, d, count)
            g = np.int32(gt[j])
            invalid += (g > num_classes) & (g != VOID)
            idx[j] = (_row(g, num_classes) * ncols + cj) * nb + b
        return acc, invalid

    @_jit
    def _index_lut(m, c, gt, num_classes, lut, resolution, upper, idx):
        # any sorted grid: lut[cell] = #{t < cell / R} (R a power of two, so cell = floor(m * R) is exact
        # in float32), then step up while m > upper[b] (upper ends with +inf)
        nb = np.int32(upper.shape[0])
        ncols = np.int32(num_classes + 1)
        r = np.float32(resolution)
        invalid = 0
        for j in range(gt.shape[0]):
            mj = m[j]
            q = mj * r
            q = q if q < r else r  # NaN -> r: a table index whatever the value (the caller rejects NaN)
            b = lut[np.int32(q) if q > 0 else 0]
            while mj > upper[b]:
                b += 1
            g = np.int32(gt[j])
            invalid += (g > num_classes) & (g != VOID)
            idx[j] = (_row(g, num_classes) * ncols + c[j]) * nb + b
        return invalid

    @_jit
    def _index_no_keys(gt, num_classes, count, idx):
        # an image without CAMs: every pixel in column 0, bin 0
        nb = np.int32(count + 1)
        ncols = np.int32(num_classes + 1)
        invalid = 0
        for j in range(gt.shape[0]):
            g = np.int32(gt[j])
            invalid += (g > num_classes) & (g != VOID)
            idx[j] = _row(g, num_classes) * ncols * nb
        return invalid

    @_jit
    def scatter(idx, hist4):
        # hist4[j % 4, idx[j]] += 1: four interleaved copies, so repeated bins do not wait on each other
        n = idx.shape[0]
        n4 = n - n % 4
        h0, h1, h2, h3 = hist4[0], hist4[1], hist4[2], hist4[3]
        for j in range(0, n4, 4):
            h0[idx[j]] += 1
            h1[idx[j + 1]] += 1
            h2[idx[j + 2]] += 1
            h3[idx[j + 3]] += 1
        for j in range(n4, n):
            h0[idx[j]] += 1

    @_jit
    def accumulate(cams, bits, cols, gt, num_classes, uniform, scale, offset, a, d, count, lut, resolution,
                   upper, m, c, idx, hist4):
        """Add one image to ``hist4`` (4 interleaved flat (C+3, C+1, count+1) histograms [gt row, column =
        key + 1 of the argmax (0: no key), bin]). cams (K, n) float32 with ``bits`` its uint32 view, cols
        (K,) = keys + 1, gt (n,) uint8. Returns (OR of the maps' bits, invalid gt pixels); nothing is added
        if the OR has SUSPECT_BITS or a gt value is invalid: the caller checks, then calls ``scatter``."""
        num_keys = cams.shape[0]
        acc = np.uint32(0)
        if num_keys == 0:
            invalid = _index_no_keys(gt, num_classes, count, idx)
        elif num_keys <= 2 and uniform:
            acc, invalid = _index_uniform_fused(cams, bits, cols, gt, num_classes, scale, offset, a, d, count, idx)
        elif uniform:
            acc = max_and_column(cams[: num_keys - 1], bits[: num_keys - 1], cols, m, c)
            acc2, invalid = _index_uniform_last(m, c, cams[num_keys - 1], bits[num_keys - 1], cols[num_keys - 1], gt,
                                                num_classes, scale, offset, a, d, count, idx)
            acc |= acc2
        else:
            acc = max_and_column(cams, bits, cols, m, c)
            invalid = _index_lut(m, c, gt, num_classes, lut, resolution, upper, idx)
        if (acc & SUSPECT_BITS) == 0 and invalid == 0:
            scatter(idx, hist4)
        return acc, invalid

    @_jit
    def reconstruct_uniform(a, d, count):
        """The thresholds as the uniform-grid kernels compute them (checked against the grid before use)."""
        out = np.empty(count, np.float32)
        for b in range(count):
            out[b] = (a + np.float32(b)) / d
        return out

    # -- boundary F -----------------------------------------------------------------------------------

    @_jit
    def _class_boxes(labels, num_classes, box):
        """box[k] = (ymin, ymax, xmin, xmax) of label k (1..C) in ``labels``; untouched where absent."""
        h, w = labels.shape
        for y in range(h):
            for x in range(w):
                k = labels[y, x]
                if 1 <= k <= num_classes:
                    if y < box[k, 0]:
                        box[k, 0] = y
                    if y > box[k, 1]:
                        box[k, 1] = y
                    if x < box[k, 2]:
                        box[k, 2] = x
                    if x > box[k, 3]:
                        box[k, 3] = x

    @_jit
    def _boundary(labels, k, y0, y1, x0, x1, out):
        """DAVIS seg2bmap of (labels == k) on rows y0..y1-1, cols x0..x1-1 (window coordinates in out):
        a pixel differs from its right, bottom or bottom-right neighbour; the last row compares right only,
        the last column bottom only, the corner never. Returns the number of boundary pixels."""
        h, w = labels.shape
        total = 0
        for y in range(y0, y1):
            for x in range(x0, x1):
                s = labels[y, x] == k
                if y < h - 1 and x < w - 1:
                    b = (s != (labels[y, x + 1] == k)) | (s != (labels[y + 1, x] == k)) \
                        | (s != (labels[y + 1, x + 1] == k))
                elif y == h - 1 and x < w - 1:
                    b = s != (labels[y, x + 1] == k)
                elif x == w - 1 and y < h - 1:
                    b = s != (labels[y + 1, x] == k)
                else:
                    b = False
                out[y - y0, x - x0] = b
                total += b
        return total

    @_jit
    def _row_distance(bmap, rows, cols, cap, out):
        """out[y, x] = horizontal distance to the nearest boundary pixel of row y (capped at ``cap``)."""
        for y in range(rows):
            last = -cap
            for x in range(cols):
                if bmap[y, x]:
                    last = x
                out[y, x] = min(x - last, cap)
            nxt = cols - 1 + cap
            for x in range(cols - 1, -1, -1):
                if bmap[y, x]:
                    nxt = x
                d = nxt - x
                if d < out[y, x]:
                    out[y, x] = d

    @_jit
    def _matched(bmap, other_distance, rows, cols, radius, widths):
        """Boundary pixels of ``bmap`` within the disk of radius ``radius`` of a boundary pixel of the other
        map: some row y + dy has one within widths[|dy|] = floor(sqrt(r^2 - dy^2)) columns."""
        count = 0
        for y in range(rows):
            for x in range(cols):
                if bmap[y, x]:
                    lo = max(0, y - radius)
                    hi = min(rows - 1, y + radius)
                    for yy in range(lo, hi + 1):
                        if other_distance[yy, x] <= widths[abs(yy - y)]:
                            count += 1
                            break
        return count

    @_jit
    def boundary_counts(pred, gt, num_classes, radius, widths, pred_matched, pred_total, gt_matched, gt_total,
                        bp, bg, dp, dg):
        """Add one image's per-class matched / total boundary pixels (index = label value) to the four
        arrays. pred 255 is in no class; gt 255 is background, which changes no foreground mask. Scratch
        arrays bp, bg (bool) and dp, dg (int32) have at least the image's shape."""
        h, w = gt.shape
        big = max(h, w)
        pbox = np.empty((num_classes + 1, 4), np.int64)
        gbox = np.empty((num_classes + 1, 4), np.int64)
        for box in (pbox, gbox):
            box[:, 0] = big
            box[:, 1] = -1
            box[:, 2] = big
            box[:, 3] = -1
        _class_boxes(pred, num_classes, pbox)
        _class_boxes(gt, num_classes, gbox)
        cap = radius + 1
        for k in range(1, num_classes + 1):
            if pbox[k, 1] < 0 and gbox[k, 1] < 0:
                continue
            # boundary pixels of class k lie within its box grown by one pixel up and left
            y0 = max(0, min(pbox[k, 0], gbox[k, 0]) - 1)
            y1 = max(pbox[k, 1], gbox[k, 1]) + 1
            x0 = max(0, min(pbox[k, 2], gbox[k, 2]) - 1)
            x1 = max(pbox[k, 3], gbox[k, 3]) + 1
            rows, cols = y1 - y0, x1 - x0
            n_pred = _boundary(pred, k, y0, y1, x0, x1, bp) if pbox[k, 1] >= 0 else 0
            n_gt = _boundary(gt, k, y0, y1, x0, x1, bg) if gbox[k, 1] >= 0 else 0
            pred_total[k] += n_pred
            gt_total[k] += n_gt
            if n_pred == 0 or n_gt == 0:
                continue
            _row_distance(bg, rows, cols, cap, dg)
            _row_distance(bp, rows, cols, cap, dp)
            pred_matched[k] += _matched(bp, dg, rows, cols, radius, widths)
            gt_matched[k] += _matched(bg, dp, rows, cols, radius, widths)

    @_jit
    def threshold_labels(m, c, threshold, out):
        """Label map at one threshold: c where m > threshold (float32), else 0 (flat arrays)."""
        for j in range(m.shape[0]):
            out[j] = c[j] if m[j] > threshold else 0


def warm_up() -> None:
    """Load (or compile) every kernel signature the evaluator uses, e.g. in a parent process before it
    forks workers, which then inherit the machine code instead of each loading it."""
    if numba is None:
        return
    cams = np.zeros((1, 4), np.float32)
    gt = np.zeros(4, np.uint8)
    cols = np.ones(1, np.int32)
    lut, upper = np.zeros(4097, np.int32), np.full(2, np.inf, np.float32)
    m, c = np.empty(4, np.float32), np.empty(4, np.int32)
    for idx in (np.empty(4, np.uint16), np.empty(4, np.int32)):
        accumulate(cams, cams.view(np.uint32), cols, gt, 1, True, np.float32(1), np.float32(0), np.float32(0),
                   np.float32(1), 1, lut, 4096, upper, m, c, idx, np.zeros((4, 16), np.int32))
        scatter(idx, np.zeros((4, 16), np.int32))
    labels = np.zeros((2, 2), np.uint8)
    counts = [np.zeros(2, np.int64) for _ in range(4)]
    boundary_counts(labels, labels, 1, 1, np.ones(2, np.int64), *counts, np.empty((2, 2), np.bool_),
                    np.empty((2, 2), np.bool_), np.empty((2, 2), np.int32), np.empty((2, 2), np.int32))
    max_and_column(cams, cams.view(np.uint32), cols, m, c)
    threshold_labels(m, c, np.float32(0.5), np.empty(4, np.uint8))
