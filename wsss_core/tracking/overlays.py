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


def heat_map(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> RGB, blue (0) through green to red (1)."""
    v = np.clip(values, 0, 1)[..., None]
    stops = np.array([[0, 0, 160], [0, 200, 255], [80, 255, 80], [255, 220, 0], [220, 0, 0]], np.float32)
    pos = v * (len(stops) - 1)
    low = np.floor(pos).astype(int).clip(0, len(stops) - 2)[..., 0]
    frac = pos[..., 0] - low
    return (stops[low] * (1 - frac[..., None]) + stops[low + 1] * frac[..., None]).astype(np.uint8)


TEXT_HEIGHT = 14  # rows of the default PIL bitmap font, with a margin


def _text_strip(width: int, items: list[tuple[int, str, tuple | None]]) -> np.ndarray:
    """A white strip with ``(x, text, swatch colour or None)`` items in the default bitmap font."""
    from PIL import Image, ImageDraw

    strip = Image.new("RGB", (width, TEXT_HEIGHT), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for x, text, colour in items:
        if colour is not None:
            draw.rectangle([x, 3, x + 8, 11], fill=tuple(int(c) for c in colour), outline=(0, 0, 0))
            x += 11
        draw.text((x, 1), text, fill=(0, 0, 0))
    return np.asarray(strip)


def _legend(width: int, classes: list[int], names: list[str]) -> np.ndarray:
    """Colour swatches with class names, wrapped over as many strips as the width needs."""
    palette = voc_palette_array()
    strips, items, x = [], [], 2
    for cls in classes:
        name = names[cls] if cls < len(names) else ("void" if cls == VOID else f"class {cls}")
        step = 11 + 6 * len(name) + 10  # swatch, ~6 px per character, gap
        if items and x + step > width:
            strips.append(_text_strip(width, items))
            items, x = [], 2
        items.append((x, name, palette[cls]))
        x += step
    strips.append(_text_strip(width, items))
    return np.concatenate(strips)


def overlay_grid(cam_store_path: str | Path, data_root: str | Path, split: str, threshold: float,
                 out_png: str | Path, n: int = 4, gap: int = 2) -> Path:
    """Write an ``n``-row grid of the first ``n`` images of ``split`` that have CAMs; columns: image | CAM heat
    map (max over classes) | pseudo-label at ``threshold`` | ground truth (labels in VOC colours over the
    image), with column titles above and a legend of the classes shown (their names) below. Composed with
    numpy and saved with PIL (a matplotlib figure costs seconds per trial)."""
    from PIL import Image

    store = CamStore(cam_store_path)
    ids = [i for i in read_split_ids(data_root, split) if i in store][:n]
    if not ids:
        raise DataError(f"{cam_store_path}: no CAMs for any image of split {split!r} of {data_root}")
    rows, shown = [], set()
    for image_id in ids:
        image = read_image(data_root, image_id)
        gt = read_gt_mask(data_root, image_id)
        keys, cams = store.read(image_id)
        m, class_map = class_map_from_cams(keys, cams)
        label = predict_labels(m, class_map, threshold)
        shown.update(np.unique(label).tolist() + np.unique(gt).tolist())
        panels = (image, blend(image, heat_map(m)), blend(image, colorize(label)), blend(image, colorize(gt)))
        rows.append(panels)
    height = max(p[0].shape[0] for p in rows)
    width = max(p[0].shape[1] for p in rows)
    grid = np.full((len(rows) * (height + gap) - gap, 4 * (width + gap) - gap, 3), 255, np.uint8)
    for r, panels in enumerate(rows):
        for c, panel in enumerate(panels):
            y, x = r * (height + gap), c * (width + gap)
            grid[y: y + panel.shape[0], x: x + panel.shape[1]] = panel
    titles = ("image", "CAM max", f"label t={threshold:g}", "ground truth")
    header = _text_strip(grid.shape[1], [(c * (width + gap) + 2, t, None) for c, t in enumerate(titles)])
    names = ["background"] + list(store.class_names or [])
    grid = np.concatenate([header, grid, _legend(grid.shape[1], sorted(shown), names)])
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(out_png)
    return out_png
