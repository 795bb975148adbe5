"""SynthVOC: the project's embedded default dataset, a small synthetic benchmark in the PASCAL VOC layout.

The real datasets (VOC 2012 + SBD, COCO 2014) are gigabytes and cannot ship with the project, so every
command, test and demo runs on a benchmark generated in seconds from a seed. It is built so that the
failure modes WSSS methods exist to fix show up on it, rather than being an easy colour-segmentation task:

* **Textured objects on clutter.** K classes (default 6), 1 to 3 objects per image, each a star-shaped
  blob, ellipse or rotated box filled with its class's texture family (stripes, checkerboards, dots,
  waves, veined noise) whose colours are jittered per instance. Backgrounds are smooth colour noise
  with 3 to 7 distractor shapes of their own textures and per-pixel sensor noise, saved as JPEG.
* **Contours on colour edges.** Every object (and every distractor) is drawn with a hard boundary and a
  darker one-pixel rim, so object contours coincide with image colour edges even where the body looks
  like the background: what the HFPL feature similarity loss exploits to spread CAMs up to the
  object boundary.
* **Part-discriminative classes.** For some classes ("beetle", "kite": every third class) only part of the
  object carries the class cue: a distinctive head patch or a band at one end; the rest of the body has
  a generic brown-grey texture that background distractors share. A plain CAM fires on the part and
  under-segments the body, as it does on real data (heads of people and animals).
* **Co-occurring classes.** Classes come in pairs (e.g. beetle on leaf, kite with dots): when one member is
  drawn its partner joins the image with probability 0.8, so the context is a shortcut a classifier can
  take and CAMs leak onto the partner.
* **VOC annotation conventions.** Palette PNG masks (0 = background, class c at value c + 1) with a void
  band of 255 a few pixels wide along every object border, train/train_aug/val split files
  (train_aug ⊇ train) and ``cls_labels.npy`` (image id → float32 multi-hot over the K foreground
  classes), plus ``classes.txt`` with the class names.

Defaults (``generate_synthetic_voc(out)``): 200 train images, 100 more in train_aug (300 in all), 100 val,
long side 128 px (short side 96 to 128 px), 6 classes; about 2 MB, generated in a couple of seconds on
one CPU core, small enough that the demo trains a small CNN on 2 cores in a couple of minutes.
Determinism: image ``i`` is drawn from ``numpy.random.default_rng([seed, i])`` and files are written
without time stamps at a fixed JPEG quality, so the same seed gives byte-identical files.
"""

from __future__ import annotations

import colorsys
import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from ..errors import DataError
from ..progress import progress
from .palette import voc_palette

_PALETTE = voc_palette()

JPEG_QUALITY = 90
VOID = 255
CO_OCCURRENCE_PROB = 0.8
MAX_OBJECTS = 3


@dataclass(frozen=True)
class ClassDesign:
    """How one synthetic class looks: a texture family, two colours, and where its cue lives."""

    name: str
    texture: str  # stripes | checker | dots | waves | veins
    colors: tuple[tuple[float, float, float], tuple[float, float, float]]  # RGB in [0, 1]
    part_cue: bool  # True: only one end of the object carries the texture, the body is generic
    partner: int | None  # class index drawn together with this one with CO_OCCURRENCE_PROB


# Six hand-made designs; classes beyond six reuse them with rotated hues (see class_designs).
_BASE_DESIGNS = (
    ("zebra", "stripes", ((0.95, 0.95, 0.9), (0.08, 0.08, 0.1)), False),
    ("leaf", "veins", ((0.15, 0.65, 0.2), (0.55, 0.9, 0.3)), False),
    ("beetle", "dots", ((0.85, 0.1, 0.1), (0.05, 0.05, 0.05)), True),
    ("kite", "stripes", ((0.95, 0.2, 0.8), (1.0, 0.9, 0.1)), True),
    ("ball", "checker", ((1.0, 0.55, 0.05), (0.1, 0.25, 0.85)), False),
    ("dots", "dots", ((0.2, 0.85, 0.9), (0.1, 0.15, 0.35)), False),
)
# Pairs (within each block of six) that co-occur: beetle on leaf, kite with dots.
_BASE_PARTNERS = {2: 1, 1: 2, 3: 5, 5: 3}
# The generic body of part-cue classes; background distractors use the same colours.
_GENERIC_COLORS = ((0.52, 0.45, 0.36), (0.40, 0.36, 0.31))
_BACKGROUND_COLORS = (
    (0.45, 0.5, 0.55), (0.6, 0.58, 0.5), (0.35, 0.42, 0.35), (0.5, 0.45, 0.4), (0.62, 0.6, 0.62),
)
_BACKGROUND_TEXTURES = ("stripes", "checker", "waves", "veins")


def _rotate_hue(rgb: tuple[float, float, float], shift: float) -> tuple[float, float, float]:
    h, s, v = colorsys.rgb_to_hsv(*rgb)
    return colorsys.hsv_to_rgb((h + shift) % 1.0, s, v)


def class_designs(num_classes: int) -> list[ClassDesign]:
    """The designs of ``num_classes`` synthetic classes (first six hand-made, the rest hue-rotated)."""
    designs = []
    for index in range(num_classes):
        block, base = divmod(index, len(_BASE_DESIGNS))
        name, texture, colors, part_cue = _BASE_DESIGNS[base]
        if block:
            shift = (block * 0.381966) % 1.0  # golden-ratio hue steps keep blocks apart
            colors = (_rotate_hue(colors[0], shift), _rotate_hue(colors[1], shift))
            name = f"{name}{block + 1}"
        partner = _BASE_PARTNERS.get(base)
        if partner is not None:
            partner += block * len(_BASE_DESIGNS)
            if partner >= num_classes:
                partner = None
        designs.append(ClassDesign(name, texture, colors, part_cue, partner))
    return designs


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """Smooth noise in [0, 1]: a coarse random grid upsampled bilinearly."""
    coarse = rng.random((height // cell + 2, width // cell + 2)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse, mode="F").resize((width, height), Image.BILINEAR))


def _texture(kind: str, u: np.ndarray, v: np.ndarray, period: float, noise: np.ndarray) -> np.ndarray:
    """A pattern in [0, 1] over local coordinates (u, v): which of the two colours each pixel takes."""
    if kind == "stripes":
        return (np.sin(2 * np.pi * u / period) > 0).astype(np.float32)
    if kind == "checker":
        return ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    if kind == "dots":
        du = (u / period) % 1.0 - 0.5
        dv = (v / period) % 1.0 - 0.5
        return (du * du + dv * dv < 0.09).astype(np.float32)
    if kind == "waves":
        return (np.sin(2 * np.pi * (u + 0.3 * period * np.sin(2 * np.pi * v / period)) / period) > 0.3
                ).astype(np.float32)
    if kind == "veins":
        return np.clip(np.abs(np.sin(2 * np.pi * (u + 4 * noise) / period)) * 0.6 + noise * 0.4, 0, 1)
    raise ValueError(f"unknown texture {kind!r}")


@dataclass
class _Shape:
    """A placed object: its pixel mask and local coordinates (u along its main axis)."""

    mask: np.ndarray
    u: np.ndarray
    v: np.ndarray
    half_length: float


@functools.lru_cache(maxsize=8)
def _pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    return tuple(np.mgrid[0:height, 0:width].astype(np.float32))


def _random_shape(rng: np.random.Generator, height: int, width: int, scale: float) -> _Shape:
    """A star-shaped blob, ellipse or rotated box at a random place, size ``scale`` of the short side."""
    yy, xx = _pixel_grid(height, width)
    cy, cx = rng.uniform(0.15, 0.85) * height, rng.uniform(0.15, 0.85) * width
    angle = rng.uniform(0, np.pi)
    dy, dx = yy - cy, xx - cx
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    radius = scale * min(height, width) / 2
    a, b = radius, radius * rng.uniform(0.5, 0.9)
    kind = rng.integers(3)
    if kind == 0:  # ellipse
        mask = (u / a) ** 2 + (v / b) ** 2 <= 1.0
    elif kind == 1:  # rotated box
        mask = (np.abs(u) <= a * 0.9) & (np.abs(v) <= b * 0.8)
    else:  # star-shaped blob: radius wobbles with angle
        theta = np.arctan2(v / b, u / a)
        wobble = 1.0 + sum(rng.uniform(0.05, 0.15) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
                           for k in (2, 3, 5))
        mask = np.sqrt((u / a) ** 2 + (v / b) ** 2) <= wobble
    return _Shape(mask, u, v, a)


def _jitter(rgb: tuple[float, float, float], rng: np.random.Generator) -> np.ndarray:
    """Per-instance colour jitter: the class keeps a colour family, not one exact colour."""
    return np.clip(np.asarray(rgb) * rng.uniform(0.85, 1.15) + rng.normal(0, 0.04, 3), 0, 1)


def _paint(canvas: np.ndarray, region: np.ndarray, pattern: np.ndarray, colors, rng) -> None:
    c0, c1 = _jitter(colors[0], rng), _jitter(colors[1], rng)
    p = pattern[region][:, None]
    canvas[region] = c0 * (1 - p) + c1 * p


def _outline(canvas: np.ndarray, region: np.ndarray) -> None:
    """Darken the shape's rim so its contour is a colour edge even on a look-alike background."""
    inner = region.copy()  # 4-neighbour erosion by slicing (ndimage's is slower at this size)
    inner[1:] &= region[:-1]
    inner[:-1] &= region[1:]
    inner[:, 1:] &= region[:, :-1]
    inner[:, :-1] &= region[:, 1:]
    canvas[region & ~inner] *= 0.55


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth colour noise plus distractor shapes (some with the generic body texture)."""
    canvas = np.empty((height, width, 3), np.float32)
    base = np.asarray(_BACKGROUND_COLORS[rng.integers(len(_BACKGROUND_COLORS))])
    for channel in range(3):
        canvas[..., channel] = base[channel] + 0.25 * (_smooth_noise(rng, height, width, 24) - 0.5)
    noise = _smooth_noise(rng, height, width, 12)
    for _ in range(rng.integers(3, 8)):
        shape = _random_shape(rng, height, width, rng.uniform(0.15, 0.45))
        if rng.random() < 0.4:  # distractors in the generic body texture: the body is not a class cue
            colors, texture = _GENERIC_COLORS, "veins"
        else:
            i, j = rng.choice(len(_BACKGROUND_COLORS), 2, replace=False)
            colors = (_BACKGROUND_COLORS[i], _BACKGROUND_COLORS[j])
            texture = _BACKGROUND_TEXTURES[rng.integers(len(_BACKGROUND_TEXTURES))]
        pattern = _texture(texture, shape.u, shape.v, rng.uniform(4, 10), noise)
        _paint(canvas, shape.mask, pattern, colors, rng)
        _outline(canvas, shape.mask)  # distractors get rims too: a rim is an edge, not a class cue
    return canvas


def _draw_classes(rng: np.random.Generator, designs: list[ClassDesign]) -> list[int]:
    """1 to 3 object classes; a class with a partner brings it along with CO_OCCURRENCE_PROB."""
    count = int(rng.integers(1, MAX_OBJECTS + 1))
    classes: list[int] = []
    while len(classes) < count:
        c = int(rng.integers(len(designs)))
        classes.append(c)
        partner = designs[c].partner
        if partner is not None and len(classes) < MAX_OBJECTS and rng.random() < CO_OCCURRENCE_PROB:
            classes.append(partner)
    return classes


def _void_band(label: np.ndarray, radius: int) -> np.ndarray:
    """Pixels within ``radius`` of a label change: VOC's void band along object borders."""
    window = 2 * radius + 1
    hi = ndimage.maximum_filter(label, size=window, mode="nearest")
    lo = ndimage.minimum_filter(label, size=window, mode="nearest")
    return hi != lo


def render_image(rng: np.random.Generator, designs: list[ClassDesign], height: int, width: int,
                 void_radius: int) -> tuple[np.ndarray, np.ndarray]:
    """One image (uint8 HxWx3) and its mask (uint8 HxW: 0 background, c+1 class c, 255 void band)."""
    canvas = _background(rng, height, width)
    for _attempt in range(20):
        classes = _draw_classes(rng, designs)
        shapes = [_random_shape(rng, height, width, rng.uniform(0.45, 0.8)) for _ in classes]
        label = np.zeros((height, width), np.uint8)
        for c, shape in zip(classes, shapes):
            label[shape.mask] = c + 1
        band = _void_band(label, void_radius)
        # Every object must stay visible (occlusion by later objects, void band) or its label would lie.
        visible = [np.count_nonzero(s.mask & (label == c + 1) & ~band) for c, s in zip(classes, shapes)]
        if min(visible) >= 0.012 * height * width and all(
                v >= 0.4 * np.count_nonzero(s.mask) for v, s in zip(visible, shapes)):
            break
    noise = _smooth_noise(rng, height, width, 8)
    for c, shape in zip(classes, shapes):
        design = designs[c]
        period = rng.uniform(5, 10)
        pattern = _texture(design.texture, shape.u, shape.v, period, noise)
        if design.part_cue:
            # Generic body everywhere, the class texture only on the far end (a head / a band).
            body = _texture("veins", shape.u, shape.v, period, noise)
            _paint(canvas, shape.mask, body, _GENERIC_COLORS, rng)
            cue = shape.mask & (shape.u > 0.45 * shape.half_length)
            _paint(canvas, cue, pattern, design.colors, rng)
        else:
            _paint(canvas, shape.mask, pattern, design.colors, rng)
        _outline(canvas, shape.mask)
    canvas += rng.normal(0, 0.025, canvas.shape).astype(np.float32)  # sensor noise
    image = (np.clip(canvas, 0, 1) * 255 + 0.5).astype(np.uint8)
    label[band] = VOID
    return image, label


def _voc_id(index: int) -> str:
    return f"2007_{index + 1:06d}"


def _save_mask(mask: np.ndarray, path: Path) -> None:
    png = Image.fromarray(mask, mode="P")
    png.putpalette(_PALETTE)
    png.save(path, optimize=False)


def generate_synthetic_voc(out: str | Path, seed: int = 0, n_train: int = 200, n_val: int = 100,
                           size: int = 128, num_classes: int = 6, n_aug_extra: int = 100,
                           show_progress: bool = True) -> Path:
    """Write the synthetic benchmark in the PASCAL VOC 2012 layout under ``out`` and return its path.

    ``n_train`` images form ``train`` (the pseudo-label evaluation split), ``train_aug`` adds
    ``n_aug_extra`` more, ``val`` has ``n_val``. Images have long side ``size`` px. Same arguments,
    same bytes.
    """
    if num_classes < 1 or num_classes > 254:
        raise DataError(f"synthetic dataset: num_classes must be in 1..254, got {num_classes}")
    if n_train < 1 or n_val < 1 or n_aug_extra < 0:
        raise DataError(f"synthetic dataset: need n_train >= 1, n_val >= 1, n_aug_extra >= 0; got "
                        f"{n_train}, {n_val}, {n_aug_extra}")
    if size < 32:
        raise DataError(f"synthetic dataset: size must be at least 32 px, got {size}")
    root = Path(out)
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    designs = class_designs(num_classes)
    void_radius = max(1, round(size / 128))
    total = n_train + n_aug_extra + n_val
    ids = [_voc_id(i) for i in range(total)]
    labels: dict[str, np.ndarray] = {}
    for index in progress(range(total), desc="synth images", total=total, unit="img",
                          disable=not show_progress):
        rng = np.random.default_rng([seed, index])
        short = int(rng.integers(3 * size // 4, size + 1))
        height, width = (short, size) if rng.random() < 0.7 else (size, short)
        image, mask = render_image(rng, designs, height, width, void_radius)
        image_id = ids[index]
        Image.fromarray(image).save(root / "JPEGImages" / f"{image_id}.jpg", quality=JPEG_QUALITY,
                                    subsampling=0, optimize=False)
        _save_mask(mask, root / "SegmentationClass" / f"{image_id}.png")
        present = np.unique(mask)
        vector = np.zeros(num_classes, np.float32)
        vector[[v - 1 for v in present if 0 < v < VOID]] = 1.0
        labels[image_id] = vector
    splits = {
        "train": ids[:n_train],
        "train_aug": ids[:n_train + n_aug_extra],
        "val": ids[n_train + n_aug_extra:],
    }
    for split, split_ids in splits.items():
        (root / "ImageSets/Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in split_ids))
    np.save(root / "cls_labels.npy", labels, allow_pickle=True)
    (root / "classes.txt").write_text("".join(f"{d.name}\n" for d in designs))
    meta = {
        "generator": "wsss_core.data.synth", "seed": seed, "n_train": n_train, "n_aug_extra": n_aug_extra,
        "n_val": n_val, "size": size, "num_classes": num_classes,
        "part_cue_classes": [d.name for d in designs if d.part_cue],
        "co_occurring_pairs": sorted({tuple(sorted((d.name, designs[d.partner].name)))
                                      for d in designs if d.partner is not None}),
    }
    (root / "synth.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return root
