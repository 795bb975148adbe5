"""Random-but-structured ground truth and CAMs in the VOC layout, for tests and benchmarks.

Each image has 1..``max_objects`` foreground classes drawn as ellipses (with a void band on their
outline, like VOC), a smooth colour image, and per class a CAM that peaks inside the object and
spreads past it, so threshold sweeps have an interior optimum.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .cam_store import CamStore
from .ground_truth import CLS_LABELS, IMAGE_DIR, MASK_DIR, SPLIT_DIR

VOID = 255


def _ellipse(shape, cy, cx, ry, rx) -> np.ndarray:
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2


def synthetic_image(rng: np.random.Generator, size: tuple[int, int], num_classes: int, max_objects: int = 3,
                    void_band: float = 0.08):
    """(gt uint8, rgb uint8, keys, cams float32) of one synthetic image."""
    h, w = size
    classes = np.sort(rng.choice(num_classes, size=rng.integers(1, max_objects + 1), replace=False))
    gt = np.zeros((h, w), np.uint8)
    rgb = np.empty((h, w, 3), np.uint8)
    rgb[...] = rng.integers(40, 90, size=3)
    cams = np.empty((len(classes), h, w), np.float32)
    for k, cls in enumerate(classes):
        cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
        ry, rx = rng.uniform(0.1, 0.3) * h, rng.uniform(0.1, 0.3) * w
        r2 = _ellipse((h, w), cy, cx, ry, rx)
        gt[r2 <= 1 - void_band] = cls + 1
        gt[(r2 > 1 - void_band) & (r2 <= 1 + void_band)] = VOID
        rgb[r2 <= 1] = rng.integers(120, 250, size=3)
        # CAM: off-centre peak, wider or narrower than the object, plus smooth noise
        spread = rng.uniform(0.6, 1.4)
        r2_cam = _ellipse((h, w), cy + rng.normal(0, 0.1) * ry, cx + rng.normal(0, 0.1) * rx, ry * spread, rx * spread)
        cam = np.exp(-1.2 * r2_cam) * rng.uniform(0.7, 1.0)
        cam += 0.05 * rng.random((h, w))
        cams[k] = (cam / cam.max()).astype(np.float32)
    return gt, rgb, classes.astype(np.int64), cams


def write_synthetic_voc(root: str | Path, num_images: int, num_classes: int = 20, size=(375, 500),
                        split: str = "train", seed: int = 0, store_path: str | Path | None = None,
                        max_objects: int = 3, jpeg: bool = True) -> list[str]:
    """Write a VOC-layout tree (masks, images, split list, cls_labels.npy) and, if ``store_path`` is
    given, a CAM store with the images' CAMs. Returns the ids."""
    root = Path(root)
    for sub in (MASK_DIR, IMAGE_DIR, SPLIT_DIR):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    store = CamStore.create(store_path, num_classes) if store_path is not None else None
    ids, cls_labels = [], {}
    for i in range(num_images):
        image_id = f"{2007 + i // 100000}_{i:06d}"
        gt, rgb, keys, cams = synthetic_image(rng, size, num_classes, max_objects)
        Image.fromarray(gt).save(root / MASK_DIR / f"{image_id}.png")
        if jpeg:
            Image.fromarray(rgb).save(root / IMAGE_DIR / f"{image_id}.jpg", quality=90)
        if store is not None:
            store.write(image_id, keys, cams)
        label = np.zeros(num_classes, np.float32)
        label[keys] = 1
        cls_labels[image_id] = label
        ids.append(image_id)
    (root / SPLIT_DIR / f"{split}.txt").write_text("\n".join(ids) + "\n")
    np.save(root / CLS_LABELS, cls_labels)
    return ids
