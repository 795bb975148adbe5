"""DAVIS boundary precision/recall/F, summed per class over a split, on hand-computed cases."""

import numpy as np
import pytest

from wsss_core.evaluation.boundary import BoundaryScore, disk, seg2bmap, tolerance_pixels


def test_seg2bmap_davis_semantics():
    mask = np.zeros((5, 5), bool)
    mask[1:3, 1:3] = True
    expected = np.array([[1, 1, 1, 0, 0],  # (0,0) differs from its bottom-right neighbour
                         [1, 0, 1, 0, 0],  # (1,1): right, bottom, bottom-right all inside
                         [1, 1, 1, 0, 0],
                         [0, 0, 0, 0, 0],
                         [0, 0, 0, 0, 0]], bool)
    np.testing.assert_array_equal(seg2bmap(mask), expected)
    full = np.ones((4, 4), bool)  # the image border is not a boundary
    assert not seg2bmap(full).any()


def test_tolerance_and_disk():
    assert tolerance_pixels((375, 500)) == 5  # ceil(0.008 * 625)
    assert tolerance_pixels((20, 20)) == 1
    assert disk(1).astype(int).tolist() == [[0, 1, 0], [1, 1, 1], [0, 1, 0]]


def test_perfect_and_shifted_predictions():
    gt = np.zeros((20, 20), np.uint8)
    gt[5:12, 5:12] = 1
    score = BoundaryScore(num_classes=2)
    score.add(gt.copy(), gt)
    p, r, f = score.per_class()
    assert (p[0], r[0], f[0]) == (1.0, 1.0, 1.0)
    assert np.isnan(f[1])  # class 2 never appears: excluded from the mean
    assert score.summary()["f"] == 1.0

    # a 3-pixel shift with a 1-pixel tolerance: hand count of matched boundary pixels
    pred = np.zeros_like(gt)
    pred[5:12, 8:15] = 1
    shifted = BoundaryScore(num_classes=2)
    shifted.add(pred, gt)
    pb, gb = seg2bmap(pred == 1), seg2bmap(gt == 1)
    assert pb.sum() == gb.sum() == 28  # 8x8 block minus the 6x6 interior
    # gt boundary: rows 4 and 11 (columns 4..11) and columns 4 and 11; pred: rows 4 and 11 (columns 7..14)
    # and columns 7 and 14. With a 1-pixel disk a pred pixel matches if a gt boundary pixel is itself or a
    # 4-neighbour: rows 4 and 11 at columns 7..12 (6 + 6), plus (5, 7) and (10, 7) touching gt rows 4 and
    # 11 = 14 of 28; the same count holds the other way round by symmetry.
    assert shifted.pred_matched[1] == 14 and shifted.gt_matched[1] == 14
    p, r, f = shifted.per_class()
    expected_p = shifted.pred_matched[1] / 28
    assert p[0] == pytest.approx(expected_p) and r[0] == pytest.approx(shifted.gt_matched[1] / 28)
    assert 0 < f[0] < 1


def test_sums_over_images_and_void_is_background():
    gt = np.zeros((20, 20), np.uint8)
    gt[5:12, 5:12] = 1
    with_void = gt.copy()
    with_void[12, 5:12] = 255  # void counts as background: same boundary as gt
    empty = np.zeros_like(gt)
    score = BoundaryScore(num_classes=1)
    score.add(gt, with_void)  # perfect
    score.add(empty, gt)  # missed object: no predicted boundary, 28 gt boundary pixels unmatched
    assert score.pred_matched[1] == 28 and score.pred_total[1] == 28
    assert score.gt_matched[1] == 28 and score.gt_total[1] == 56
    p, r, f = score.per_class()
    assert p[0] == 1.0 and r[0] == 0.5 and f[0] == pytest.approx(2 / 3)


def _random_labels(rng, h, w, num_classes):
    if rng.random() < 0.3:  # noise: boundaries everywhere, 255 included
        return rng.choice(np.array([*range(num_classes + 1), 255], np.uint8), (h, w))
    labels = np.zeros((h, w), np.uint8)
    for _ in range(rng.integers(0, 4)):  # rectangles touching the borders sometimes
        y, x = rng.integers(0, h), rng.integers(0, w)
        labels[y: y + rng.integers(1, 20), x: x + rng.integers(1, 20)] = rng.choice([*range(1, num_classes + 1), 255])
    return labels


def test_compiled_boundary_counts_equal_the_reference():
    """The compiled kernel (boundary maps, row distances, disk test) against seg2bmap + scipy dilation."""
    rng = np.random.default_rng(0)
    for case in range(300):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        fraction = float(rng.choice([0.008, 0.05, 0.2, 3]))  # radii 1 to ~11 px, and a fixed 3 px
        pred, gt = _random_labels(rng, h, w, 4), _random_labels(rng, h, w, 4)
        ref = BoundaryScore(4, fraction=fraction, kernel="numpy")
        new = BoundaryScore(4, fraction=fraction, kernel="compiled")
        ref.add(pred, gt)
        new.add(pred, gt)
        for name in ("pred_matched", "pred_total", "gt_matched", "gt_total"):
            assert getattr(new, name).tolist() == getattr(ref, name).tolist(), (case, name)
