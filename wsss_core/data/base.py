"""What VOC and COCO datasets share: the sample dict, image-level labels, transforms and validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import DataError
from .reading import labels_from_mask, load_cls_labels, read_image, read_mask
from .transforms import Transform

Sample = dict[str, Any]


def irn_key(image_id: str) -> int | None:
    """IRN ships cls_labels.npy keyed by the id as an integer (2007_000032 -> 2007000032)."""
    digits = image_id.replace("_", "")
    return int(digits) if digits.isdigit() else None


class SegmentationDataset:
    """A split of a segmentation dataset with image-level labels.

    ``load(i)`` gives the raw sample ``dict(id, image uint8 HxWx3, label float32 (C,), mask uint8 HxW or
    None)``; ``dataset[i]`` applies ``transform`` with ``rng = default_rng([0, 0, i])`` (the loader uses
    ``[seed, epoch, i]`` instead). Foreground class c (0-based in ``label``) is value c + 1 in masks.
    """

    root: Path
    split: str
    ids: list[str]
    num_classes: int
    class_names: list[str]
    transform: Transform | None
    cls_labels: dict | None = None
    cls_labels_path: Path | None = None
    split_file: Path | None = None  # the file listing the split's ids (None: listed another way, e.g. a folder)

    def image_path(self, image_id: str) -> Path:
        raise NotImplementedError

    def mask_path(self, image_id: str) -> Path | None:
        """Where this image's mask lives, or None when the split has no masks for it."""
        raise NotImplementedError

    def mask_expected(self, image_id: str) -> bool:
        """Whether validation must find a mask for this image."""
        return self.mask_path(image_id) is not None

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, images={len(self)}, " \
               f"classes={self.num_classes})"

    def load(self, index: int) -> Sample:
        image_id = self.ids[index]
        image = read_image(self.image_path(image_id))
        mask_path = self.mask_path(image_id)
        mask = None
        if mask_path is not None and (self.mask_expected(image_id) or mask_path.is_file()):
            mask = read_mask(mask_path, self.num_classes, image.shape[:2])
        return {"id": image_id, "image": image, "label": self.label_of(image_id, mask), "mask": mask}

    def __getitem__(self, index: int) -> Sample:
        sample = self.load(index)
        if self.transform is not None:
            sample = self.transform(sample, np.random.default_rng([0, 0, index]))
        return sample

    def label_keys(self, image_id: str) -> list[Any]:
        """Keys under which cls_labels may hold this image: the id, or IRN's integer form of it."""
        return [image_id, irn_key(image_id)]

    def label_of(self, image_id: str, mask: np.ndarray | None) -> np.ndarray:
        """Image-level label from cls_labels when it has the id, else from the mask."""
        if self.cls_labels is not None:
            for key in self.label_keys(image_id):
                vector = self.cls_labels.get(key)
                if vector is not None:
                    return np.asarray(vector, np.float32).reshape(-1).copy()
        if mask is not None:
            return labels_from_mask(mask, self.num_classes)
        if self.split == "test":
            return np.zeros(self.num_classes, np.float32)  # test images come without labels
        where = self.cls_labels_path or "no cls_labels file"
        raise DataError(f"{self.image_path(image_id)}: no image-level label ({where} has no entry for "
                        f"{image_id!r} and there is no mask to derive one from); add the label or the mask")

    def set_cls_labels(self, path: Path, labels: dict | None = None) -> None:
        """Use image-level labels from ``path`` (read unless given), checking every vector has C entries."""
        self.cls_labels_path = path
        self.cls_labels = load_cls_labels(path) if labels is None else labels
        for key, vector in self.cls_labels.items():
            length = int(np.asarray(vector).size)
            if length != self.num_classes:
                raise DataError(f"{path}: label vector of {key!r} has {length} entries but the dataset has "
                                f"{self.num_classes} foreground classes ({', '.join(self.class_names[:5])}"
                                f"{', ...' if self.num_classes > 5 else ''}); regenerate cls_labels for this "
                                f"class list or pass the matching class names")

    def validate(self) -> None:
        """Check, before any training, that every listed image (and expected mask) exists: one stat per file,
        cheap enough for a submit host to run on every plan."""
        if not self.root.is_dir():
            raise DataError(f"{self.root}: dataset root not found (it existed when the dataset was opened)")
        missing: dict[str, list[str]] = {}  # image id -> its missing files
        for image_id in self.ids:
            files = [self.image_path(image_id)]
            mask = self.mask_path(image_id)
            if mask is not None and self.mask_expected(image_id):
                files.append(mask)
            lost = [str(path) for path in files if not path.is_file()]
            if lost:
                missing[image_id] = lost
        if missing:
            shown = "; ".join(f"{image_id} ({', '.join(paths)})" for image_id, paths in list(missing.items())[:3])
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            files = sum(len(paths) for paths in missing.values())
            raise DataError(f"{self.listing()}: {files} file(s) listed in split {self.split!r} are missing, for "
                            f"{len(missing)} of {len(self.ids)} image ids: {shown}{more}; restore them or remove "
                            f"their ids from the split file")

    def listing(self) -> str:
        """Where the split's ids come from, for messages: its split file, else the split of the root."""
        return f"{self.split_file or self.root} (split {self.split!r})"


def check_split(dataset: SegmentationDataset, decode: bool = False, desc: str | None = None) -> None:
    """The dataset check that ``wsss data check`` and ``wsss sweep plan`` share: every listed file present (cheap)
    and, with ``decode``, every image and mask read in full the way a trial reads it (a truncated image, a mask
    with a class id outside 0..C and 255, a mask of another size), with progress on stderr. One DataError names
    the first unusable file, why and what is valid, and how many listed ids have a problem."""
    from ..progress import progress

    if len(dataset) == 0:
        raise DataError(f"{dataset.listing()}: the split lists no images")
    dataset.validate()
    if not decode:
        return
    bad: list[str] = []
    first = ""
    for index in progress(range(len(dataset)), desc=desc or f"reading {dataset.split}", total=len(dataset),
                          unit="img"):
        try:
            dataset.load(index)
        except DataError as exc:
            first = first or str(exc)
            bad.append(dataset.ids[index])
    if bad:
        more = "" if len(bad) == 1 else (f"; {len(bad)} of {len(dataset)} listed image ids are unusable: "
                                         f"{', '.join(bad[:10])}{', ...' if len(bad) > 10 else ''}")
        raise DataError(first + more)


def read_mask_png(folder: str | Path, image_id: str, shape: tuple[int, int], what: str, hint: str) -> np.ndarray:
    """``<folder>/<image_id>.png`` as an H × W uint8 label map, checked against the image size; ``what`` names
    the labels in errors ("seed label"), ``hint`` says how to make a missing one."""
    path = Path(folder) / f"{image_id}.png"
    if not path.is_file():
        raise DataError(f"{path}: no {what} for image {image_id!r}; {hint}")
    with Image.open(path) as img:
        mask = np.array(img, dtype=np.uint8)
    if mask.shape != tuple(shape):
        raise DataError(f"{path}: {what} size {mask.shape} differs from the image's {tuple(shape)}")
    return mask


class MaskFolderDataset:
    """A dataset whose samples carry ``<folder>/<id>.png`` as ``mask`` (AMN's seeds, the final stage's
    pseudo-labels), so the augmentations keep it aligned with the image."""

    def __init__(self, dataset: Any, folder: str | Path, what: str, hint: str):
        self.dataset, self.folder, self.what, self.hint = dataset, Path(folder), what, hint
        self.transform = None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["dataset"], name)

    def load(self, index: int) -> dict[str, Any]:
        sample = self.dataset.load(index)
        sample["mask"] = read_mask_png(self.folder, sample["id"], sample["image"].shape[:2], self.what, self.hint)
        return sample

