"""MS COCO 2014 for WSSS: 80 classes (81 with background), class masks rasterised from instances.

Layout under ``root`` (what WSSS codebases use)::

    train2014/COCO_train2014_000000xxxxxx.jpg   images (val2014/ likewise)
    mask/train2014/<id>.png                     class masks: 0 background, 1..80, 255 void
    ImageSets/train.txt                         (optional) ids; default: every image in train2014/
    cls_labels_train.npy | cls_labels_coco.npy | cls_labels.npy
                                                (optional) dict id -> multi-hot (80,); else from masks
    annotations/instances_train2014.json        source of ``wsss data coco-masks``

``<id>`` is the image file's stem. ``write_coco_masks`` rasterises the instances JSON without
pycocotools: polygons with PIL, RLE (uncompressed counts and COCO's compressed strings) with the decoder
below; category ids 1..90 map to 1..80 in category order; later instances overwrite earlier ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ..errors import DataError
from ..progress import progress
from .base import SegmentationDataset
from .palette import COCO_CATEGORY_IDS, COCO_CLASSES, voc_palette
from .reading import read_id_list
from .transforms import Transform

SPLITS = ("train", "val")
CATEGORY_TO_CLASS = {cat: index + 1 for index, cat in enumerate(COCO_CATEGORY_IDS)}
EXPECTED_LAYOUT = ("a COCO 2014 layout: train2014/ and val2014/ images, mask/<split>2014/<id>.png class "
                   "masks (make them with `wsss data coco-masks --root ROOT --split train`) and/or "
                   "cls_labels_<split>.npy")
LABEL_FILES = ("cls_labels_{split}.npy", "cls_labels_coco.npy", "cls_labels.npy")


def _split_name(split: str) -> str:
    name = split[:-4] if split.endswith("2014") else split
    if name not in SPLITS:
        raise DataError(f"COCO split {split!r} is not valid; valid choices: {', '.join(SPLITS)}")
    return name


def coco_image_number(image_id: str) -> int | None:
    """COCO_train2014_000000000009 -> 9 (some cls_labels files are keyed by the numeric id)."""
    tail = image_id.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else None


class COCOSegmentation(SegmentationDataset):
    """One split of COCO 2014 (train or val); same sample dict and attributes as VOCSegmentation."""

    def __init__(self, root: str | Path, split: str, transform: Transform | None = None):
        self.root = Path(root)
        self.split = _split_name(split)
        self.transform = transform
        self.class_names = list(COCO_CLASSES)
        self.num_classes = len(COCO_CLASSES)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: dataset root not found; expected {EXPECTED_LAYOUT}")
        self.image_dir = self.root / f"{self.split}2014"
        self.mask_dir = self.root / "mask" / f"{self.split}2014"
        self.ids = self._read_ids()
        for pattern in LABEL_FILES:
            path = self.root / pattern.format(split=self.split)
            if path.is_file():
                self.set_cls_labels(path)
                break
        if self.cls_labels is None and not self.mask_dir.is_dir():
            raise DataError(f"{self.root}: no image-level labels for COCO {self.split} (no "
                            f"{' / '.join(p.format(split=self.split) for p in LABEL_FILES)}) and no masks in "
                            f"{self.mask_dir}; run `wsss data coco-masks --root {self.root} --split {self.split}`")

    def _read_ids(self) -> list[str]:
        split_file = self.root / "ImageSets" / f"{self.split}.txt"
        if split_file.is_file():
            ids = read_id_list(split_file)
            if not ids:
                raise DataError(f"{split_file}: split file lists no image ids")
            return ids
        if not self.image_dir.is_dir():
            present = sorted(p.name for p in self.root.iterdir())[:10]
            raise DataError(f"{self.root}: neither {split_file} nor the image folder {self.image_dir} exists "
                            f"(found: {', '.join(present) or 'nothing'}); expected {EXPECTED_LAYOUT}")
        ids = sorted(p.stem for p in self.image_dir.glob("*.jpg"))
        if not ids:
            raise DataError(f"{self.image_dir}: no .jpg images; expected {EXPECTED_LAYOUT}")
        return ids

    def image_path(self, image_id: str) -> Path:
        return self.image_dir / f"{image_id}.jpg"

    def mask_path(self, image_id: str) -> Path | None:
        return self.mask_dir / f"{image_id}.png" if self.mask_dir.is_dir() else None

    def label_keys(self, image_id: str) -> list[Any]:
        return [image_id, coco_image_number(image_id)]


# --- rasterising instance annotations -------------------------------------------------------------


def decode_rle_string(encoded: str) -> list[int]:
    """COCO's compressed RLE string -> run lengths (pycocotools' rleFrString, re-implemented)."""
    counts: list[int] = []
    position = 0
    while position < len(encoded):
        value, shift, more = 0, 0, True
        while more:
            chunk = ord(encoded[position]) - 48
            value |= (chunk & 0x1F) << (5 * shift)
            more = bool(chunk & 0x20)
            position += 1
            shift += 1
            if not more and chunk & 0x10:
                value |= -1 << (5 * shift)  # sign extension of the last 5-bit group
        if len(counts) > 2:
            value += counts[-2]  # runs after the second are stored as differences
        counts.append(value)
    return counts


def encode_rle_string(counts: list[int]) -> str:
    """Run lengths -> COCO's compressed RLE string (pycocotools' rleToString)."""
    out = []
    for index, count in enumerate(counts):
        value = count - counts[index - 2] if index > 2 else count
        more = True
        while more:
            chunk = value & 0x1F
            value >>= 5
            more = value != -1 if chunk & 0x10 else value != 0
            if more:
                chunk |= 0x20
            out.append(chr(chunk + 48))
    return "".join(out)


def rle_to_mask(counts: list[int], height: int, width: int) -> np.ndarray:
    """Run lengths (alternating 0s and 1s, column-major, starting with 0s) -> bool HxW."""
    if sum(counts) != height * width:
        raise ValueError(f"RLE counts sum to {sum(counts)}, expected {height}x{width} = {height * width}")
    flat = np.repeat((np.arange(len(counts)) % 2).astype(bool), counts)
    return flat.reshape((height, width), order="F")


def mask_to_rle(mask: np.ndarray) -> list[int]:
    """bool HxW -> uncompressed run lengths (column-major, starting with a run of 0s)."""
    flat = np.asarray(mask, bool).reshape(-1, order="F")
    changes = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(bounds).tolist()
    return runs if not flat[0] else [0] + runs


def segmentation_to_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """One annotation's ``segmentation`` (polygons, uncompressed or compressed RLE) -> bool HxW."""
    if isinstance(segmentation, list):
        canvas = Image.new("L", (width, height), 0)
        draw = ImageDraw.Draw(canvas)
        for polygon in segmentation:
            if len(polygon) >= 6:  # at least three points
                draw.polygon([float(v) for v in polygon], fill=1, outline=1)
        return np.asarray(canvas, bool)
    if isinstance(segmentation, dict) and "counts" in segmentation:
        rle_h, rle_w = segmentation.get("size", (height, width))
        counts = segmentation["counts"]
        if isinstance(counts, str):
            counts = decode_rle_string(counts)
        return rle_to_mask(list(counts), int(rle_h), int(rle_w))
    raise ValueError(f"unsupported segmentation of type {type(segmentation).__name__}")


def rasterise_image(annotations: list[dict], height: int, width: int) -> np.ndarray:
    """Class mask (uint8: 0 background, 1..80) of one image; later instances overwrite earlier ones."""
    mask = np.zeros((height, width), np.uint8)
    for annotation in annotations:
        category = annotation["category_id"]
        if category not in CATEGORY_TO_CLASS:
            raise ValueError(f"unknown COCO category id {category}")
        region = segmentation_to_mask(annotation["segmentation"], height, width)
        if region.shape != mask.shape:
            raise ValueError(f"annotation {annotation.get('id')} is {region.shape}, image is {mask.shape}")
        mask[region] = CATEGORY_TO_CLASS[category]
    return mask


@dataclass(frozen=True)
class CocoMaskResult:
    mask_dir: Path
    labels_path: Path
    split_file: Path
    masks_written: int
    masks_skipped: int


def write_coco_masks(root: str | Path, split: str, annotations: str | Path | None = None,
                     overwrite: bool = False, show_progress: bool = True) -> CocoMaskResult:
    """Rasterise ``instances_<split>2014.json`` into ``mask/<split>2014/<id>.png`` (palette PNGs),
    write ``cls_labels_<split>.npy`` (labels from the annotated categories) and ``ImageSets/<split>.txt``
    (the images with at least one annotation, as the field's COCO lists)."""
    root = Path(root)
    split = _split_name(split)
    source = Path(annotations) if annotations else root / "annotations" / f"instances_{split}2014.json"
    if not source.is_file():
        raise DataError(f"{source}: COCO instances file not found; pass --annotations or put it under "
                        f"{root / 'annotations'}")
    try:
        data = json.loads(source.read_text())
        images = data["images"]
        instance_list = data["annotations"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(f"{source}: not a COCO instances file ({exc}); expected keys images, annotations") from None
    by_image: dict[int, list[dict]] = {}
    for annotation in instance_list:  # file order is the drawing order
        by_image.setdefault(annotation["image_id"], []).append(annotation)
    mask_dir = root / "mask" / f"{split}2014"
    mask_dir.mkdir(parents=True, exist_ok=True)
    palette = voc_palette()
    labels: dict[str, np.ndarray] = {}
    written = skipped = 0
    for image in progress(images, desc=f"coco {split} masks", total=len(images), unit="img",
                          disable=not show_progress):
        image_id = Path(image["file_name"]).stem
        anns = by_image.get(image["id"], [])
        label = np.zeros(len(COCO_CLASSES), np.float32)
        for annotation in anns:
            category = annotation["category_id"]
            if category not in CATEGORY_TO_CLASS:
                raise DataError(f"{source}: image {image['file_name']}: unknown category id {category}; "
                                f"COCO 2014 ids are {COCO_CATEGORY_IDS[0]}..{COCO_CATEGORY_IDS[-1]} (80 used)")
            label[CATEGORY_TO_CLASS[category] - 1] = 1.0
        if anns:
            labels[image_id] = label
        path = mask_dir / f"{image_id}.png"
        if path.is_file() and not overwrite:
            skipped += 1
            continue
        try:
            mask = rasterise_image(anns, int(image["height"]), int(image["width"]))
        except ValueError as exc:
            raise DataError(f"{source}: image {image['file_name']}: {exc}") from None
        png = Image.fromarray(mask, mode="P")
        png.putpalette(palette)
        png.save(path)
        written += 1
    labels_path = root / f"cls_labels_{split}.npy"
    np.save(labels_path, labels, allow_pickle=True)
    split_file = root / "ImageSets" / f"{split}.txt"
    split_file.parent.mkdir(parents=True, exist_ok=True)
    split_file.write_text("".join(f"{image_id}\n" for image_id in sorted(labels)))
    return CocoMaskResult(mask_dir, labels_path, split_file, written, skipped)
