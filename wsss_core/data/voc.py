"""PASCAL VOC 2012 (+ SBD's SegmentationClassAug) and anything in its layout, e.g. the synthetic benchmark.

Layout under ``root``::

    JPEGImages/<id>.jpg                  images
    SegmentationClass/<id>.png           palette masks: 0 background, c+1 class c, 255 void
    SegmentationClassAug/<id>.png        (optional) SBD masks, used for train_aug when present
    ImageSets/Segmentation/<split>.txt   one id per line (train, train_aug, val, test)
    cls_labels.npy                       (optional) dict id -> multi-hot (C,); else derived from masks
    classes.txt                          (optional) foreground class names, one per line
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from .base import SegmentationDataset
from .palette import VOC_CLASSES
from .reading import load_cls_labels, read_id_list
from .transforms import Transform

SPLITS_WITHOUT_MASKS = ("test",)
SPLIT_DIR = Path("ImageSets/Segmentation")
EXPECTED_LAYOUT = ("a PASCAL VOC 2012 layout: JPEGImages/, SegmentationClass/, ImageSets/Segmentation/"
                   "{train,train_aug,val}.txt, optional cls_labels.npy (make a synthetic one with "
                   "`wsss data synth --out DIR`)")


def _resolve_class_names(root: Path, class_names: list[str] | None, cls_label_length: int | None) -> list[str]:
    """Given names, else classes.txt, else VOC's 20 names when C = 20, else class_1..class_C."""
    if class_names is not None:
        return list(class_names)
    names_file = root / "classes.txt"
    if names_file.is_file():
        names = [line.strip() for line in names_file.read_text().splitlines() if line.strip()]
        if not names:
            raise DataError(f"{names_file}: empty; list the foreground class names, one per line")
        return names
    count = cls_label_length if cls_label_length is not None else len(VOC_CLASSES)
    if count == len(VOC_CLASSES):
        return list(VOC_CLASSES)
    return [f"class_{c + 1}" for c in range(count)]


class VOCSegmentation(SegmentationDataset):
    """One split of a VOC-layout dataset; see the module docstring for the layout."""

    def __init__(self, root: str | Path, split: str, transform: Transform | None = None,
                 class_names: list[str] | None = None):
        self.root = Path(root)
        self.split = split
        self.transform = transform
        if not self.root.is_dir():
            raise DataError(f"{self.root}: dataset root not found; expected {EXPECTED_LAYOUT}")
        split_file = self.root / SPLIT_DIR / f"{split}.txt"
        if not split_file.is_file():
            existing = sorted(p.stem for p in (self.root / SPLIT_DIR).glob("*.txt"))
            listed = ", ".join(existing) if existing else f"none (no .txt files in {self.root / SPLIT_DIR})"
            raise DataError(f"{split_file}: split file not found; splits available: {listed}")
        self.split_file = split_file
        self.ids = read_id_list(split_file)
        if not self.ids:
            raise DataError(f"{split_file}: split file lists no image ids")
        labels_file = self.root / "cls_labels.npy"
        cls_labels = load_cls_labels(labels_file) if labels_file.is_file() else None
        first = next(iter(cls_labels.values()), None) if cls_labels else None
        length = None if first is None else int(np.asarray(first).size)
        self.class_names = _resolve_class_names(self.root, class_names, length)
        self.num_classes = len(self.class_names)
        if cls_labels is not None:
            self.set_cls_labels(labels_file, cls_labels)
        aug_dir = self.root / "SegmentationClassAug"
        self.uses_sbd_masks = split == "train_aug" and aug_dir.is_dir()
        self.mask_dir = aug_dir if self.uses_sbd_masks else self.root / "SegmentationClass"

    def image_path(self, image_id: str) -> Path:
        return self.root / "JPEGImages" / f"{image_id}.jpg"

    def mask_path(self, image_id: str) -> Path | None:
        if self.split in SPLITS_WITHOUT_MASKS:
            return None
        return self.mask_dir / f"{image_id}.png"

    def mask_expected(self, image_id: str) -> bool:
        # VOC's own train_aug has GT masks for only part of its ids; SBD's folder covers all of them.
        if self.split == "train_aug" and not self.uses_sbd_masks:
            return False
        return self.split not in SPLITS_WITHOUT_MASKS
