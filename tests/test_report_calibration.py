"""Calibration rows of the report: trivial predictions from the ground truth, scored with the trials'
protocol on the trials' split. Expected values are computed by formula here, independently of the code."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from analysis.calibration import (all_background, calibration_rows, ground_truth_boxes,
                                  largest_class_fills_image)
from wsss_core.data.palette import voc_palette_array

GT_A = np.array([[0, 0, 1, 1],
                 [0, 0, 1, 1],
                 [2, 0, 0, 255],
                 [2, 0, 0, 0]], np.uint8)
GT_B = np.array([[3, 3, 0, 0],
                 [3, 0, 0, 3],
                 [0, 0, 0, 3],
                 [1, 0, 0, 0]], np.uint8)


def test_trivial_predictions_by_hand():
    assert (all_background(GT_A) == 0).all()
    # class 1 has 4 pixels, class 2 has 2: class 1 fills the image (void does not count)
    assert (largest_class_fills_image(GT_A) == 1).all()
    assert (largest_class_fills_image(np.zeros((2, 2), np.uint8)) == 0).all()
    # GT_B: class 3 has two regions (boxes rows 0-1 x cols 0-1, and rows 1-2 x col 3), class 1 one pixel
    expected = np.array([[3, 3, 0, 0],
                         [3, 3, 0, 3],
                         [0, 0, 0, 3],
                         [1, 0, 0, 0]], np.uint8)
    assert (ground_truth_boxes(GT_B) == expected).all()
    # a smaller box is painted over a larger one
    nested = np.zeros((5, 5), np.uint8)
    nested[0, 0] = nested[4, 4] = 1  # two separate class-1 pixels: two 1x1 boxes
    nested[1:4, 1:4] = 2
    nested[2, 2] = 4
    boxes = ground_truth_boxes(nested)
    assert boxes[2, 2] == 4 and boxes[1, 1] == 2 and boxes[0, 0] == 1 and boxes[0, 4] == 0


def write_dataset(root, masks: dict[str, np.ndarray], num_classes: int):
    (root / "SegmentationClass").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    palette = voc_palette_array().reshape(-1).tolist()
    for name, mask in masks.items():
        img = Image.fromarray(mask, mode="P")
        img.putpalette(palette)
        img.save(root / "SegmentationClass" / f"{name}.png")
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(masks) + "\n")
    labels = {name: np.array([float(k + 1 in mask) for k in range(num_classes)], np.float32)
              for name, mask in masks.items()}
    np.save(root / "cls_labels.npy", labels)
    return root


def miou_by_formula(pairs, n, mean_over_all: bool):
    """IoU per class from explicit pixel counts over all images; GT 255 skipped."""
    ious = []
    for c in range(n):
        tp = gt = pr = 0
        for pred, truth in pairs:
            for p, g in zip(pred.ravel(), truth.ravel()):
                if g == 255:
                    continue
                tp += (p == c) and (g == c)
                gt += g == c
                pr += p == c
        union = gt + pr - tp
        ious.append(tp / (union + 1e-10) if mean_over_all else (tp / union if union else np.nan))
    return float(np.mean(ious)) if mean_over_all else float(np.nanmean(ious))


@pytest.mark.parametrize("protocol", ["irn", "hfpl"])
def test_calibration_rows_score_with_the_protocol(tmp_path, protocol):
    root = write_dataset(tmp_path / "data", {"a": GT_A, "b": GT_B}, num_classes=5)  # class 4, 5 absent
    rows = {r["name"]: r for r in calibration_rows(root, "train", 6, protocol, cache_dir=tmp_path / "cache")}
    every = protocol == "hfpl"
    for name, predict in (("all background", all_background), ("image label fills image", largest_class_fills_image),
                          ("ground-truth boxes", ground_truth_boxes)):
        pairs = [(predict(GT_A), GT_A), (predict(GT_B), GT_B)]
        assert rows[name]["miou"] == pytest.approx(miou_by_formula(pairs, 6, every), abs=1e-9), name
    # all background under irn: only class 0 has a defined IoU besides the present classes' 0s
    # (classes 4 and 5 are absent everywhere: left out by nanmean, counted 0 by the all-class mean)
    bg = (GT_A == 0).sum() + (GT_B == 0).sum()
    scored = (GT_A != 255).sum() + (GT_B != 255).sum()
    expected_bg = bg / scored / (6 if every else 4)
    assert rows["all background"]["miou"] == pytest.approx(expected_bg, abs=1e-9)
    # boxes: boundary F is perfect where boxes equal the masks (class 1 of GT_A is a square, class 1 of
    # GT_B one pixel), so F of the box row is above the all-background row's
    assert rows["ground-truth boxes"]["contour_f"] > rows["all background"]["contour_f"]


def test_calibration_cache_follows_the_masks(tmp_path):
    root = write_dataset(tmp_path / "data", {"a": GT_A, "b": GT_B}, num_classes=5)
    first = calibration_rows(root, "train", 6, "irn", cache_dir=tmp_path / "cache")
    cache = next((tmp_path / "cache").glob("calibration_*.json"))
    # a changed mask is rescored, not served from the cache
    changed = GT_B.copy()
    changed[2:, :] = 5
    img = Image.fromarray(changed, mode="P")
    img.putpalette(voc_palette_array().reshape(-1).tolist())
    img.save(root / "SegmentationClass" / "b.png")
    second = calibration_rows(root, "train", 6, "irn", cache_dir=tmp_path / "cache")
    assert second[0]["miou"] != first[0]["miou"]
    # a damaged cache is recomputed, never trusted
    cache.write_text("{not json")
    assert calibration_rows(root, "train", 6, "irn", cache_dir=tmp_path / "cache") == second
