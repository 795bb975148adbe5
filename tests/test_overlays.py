"""The overlay grid a stage logs: image / CAM / pseudo-label / ground truth per row, column titles above,
a legend of the classes shown (swatch in the class colour + its name) below."""

from __future__ import annotations

import numpy as np
from PIL import Image

from wsss_core.data.palette import voc_palette_array
from wsss_core.data.synth import generate_synthetic_voc
from wsss_core.evaluation.cam_store import CamStore
from wsss_core.evaluation.ground_truth import read_gt_mask, read_split_ids
from wsss_core.tracking.overlays import TEXT_HEIGHT, overlay_grid


def test_overlay_grid_titles_and_legend(tmp_path):
    root = generate_synthetic_voc(tmp_path / "data", n_train=3, n_val=1, n_aug_extra=0, size=48, show_progress=False)
    ids = read_split_ids(root, "train")
    store = CamStore.create(tmp_path / "cams", 6, class_names=[f"shape{k}" for k in range(6)])
    shown = set()
    for image_id in ids:
        gt = read_gt_mask(root, image_id)
        keys = np.array(sorted({int(v) - 1 for v in np.unique(gt) if 0 < v < 255}), np.int64)
        cams = np.stack([(gt == k + 1).astype(np.float32) for k in keys])  # a perfect CAM
        store.write(image_id, keys, cams)
        shown |= set(np.unique(gt).tolist())
    out = overlay_grid(tmp_path / "cams", root, "train", 0.5, tmp_path / "grid.png", n=3)
    grid = np.asarray(Image.open(out).convert("RGB"))
    height = read_gt_mask(root, ids[0]).shape[0]
    body = 3 * (height + 2) - 2
    assert grid.shape[0] >= TEXT_HEIGHT + body + TEXT_HEIGHT  # titles, 3 rows, at least one legend strip
    header = grid[:TEXT_HEIGHT]
    assert (header < 128).any(), "column titles are drawn"
    legend = grid[TEXT_HEIGHT + body:]
    colours = {tuple(c) for c in legend.reshape(-1, 3)}
    palette = voc_palette_array()
    for cls in shown:  # every class shown has its swatch in the legend
        assert tuple(palette[cls]) in colours, cls
