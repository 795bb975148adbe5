"""A picture of what a stage produced: image, CAM, pseudo-label and ground truth for a few images."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.palette import voc_palette_array
from ..errors import DataError
from ..evaluation.cam_store import CamStore
from ..evaluation.ground_truth import read_gt_mask, read_image, read_split_ids
from ..evaluation.threshold_sweep import class_map_from_cams, predict_labels

VOID = 255


def colorize(labels: np.ndarray) -> np.ndarray:
    """Label map -> RGB with the VOC palette (255 void in its palette colour)."""
    return voc_palette_array()[labels]


def blend(image: np.ndarray, overlay: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    return (image.astype(np.float32) * (1 - alpha) + overlay.astype(np.float32) * alpha).astype(np.uint8)


def overlay_grid(cam_store_path: str | Path, data_root: str | Path, split: str, threshold: float,
                 out_png: str | Path, n: int = 4) -> Path:
    """Write an ``n`` x 4 grid (image | CAM heat map | pseudo-label at ``threshold`` | ground truth) of the
    first ``n`` images of ``split`` that have CAMs; returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    store = CamStore(cam_store_path)
    ids = [i for i in read_split_ids(data_root, split) if i in store][:n]
    if not ids:
        raise DataError(f"{cam_store_path}: no CAMs for any image of split {split!r} of {data_root}")
    columns = ("image", "CAM (max over classes)", f"pseudo-label (t={threshold:g})", "ground truth")
    fig, axes = plt.subplots(len(ids), 4, figsize=(10, 2.4 * len(ids)), dpi=80, squeeze=False)
    cmap = plt.get_cmap("jet")
    for row, image_id in enumerate(ids):
        image = read_image(data_root, image_id)
        gt = read_gt_mask(data_root, image_id)
        keys, cams = store.read(image_id)
        m, class_map = class_map_from_cams(keys, cams)
        heat = (cmap(np.clip(m, 0, 1))[..., :3] * 255).astype(np.uint8)
        label = predict_labels(m, class_map, threshold)
        panels = (image, blend(image, heat), blend(image, colorize(label)), blend(image, colorize(gt)))
        for col, panel in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(panel)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(columns[col], fontsize=9)
            if col == 0:
                ax.set_ylabel(image_id, fontsize=8)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png)
    plt.close(fig)
    return out_png
