"""A small reader of ground truth in the PASCAL VOC layout (independent of the training data loaders).

``<root>/ImageSets/Segmentation/<split>.txt`` lists ids; ``<root>/SegmentationClass/<id>.png`` holds
class indices (0 background, foreground class k is value k + 1, 255 void); ``<root>/JPEGImages/<id>.jpg``
the image; ``<root>/cls_labels.npy`` a dict id -> multi-hot vector of length C.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError

SPLIT_DIR = Path("ImageSets") / "Segmentation"
MASK_DIR = "SegmentationClass"
IMAGE_DIR = "JPEGImages"
CLS_LABELS = "cls_labels.npy"
VOID = 255


def read_split_ids(data_root: str | Path, split: str) -> list[str]:
    """Image ids listed in ``<root>/ImageSets/Segmentation/<split>.txt`` (first column, in file order)."""
    root = Path(data_root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset root not found")
    split_file = root / SPLIT_DIR / f"{split}.txt"
    if not split_file.is_file():
        available = sorted(p.stem for p in (root / SPLIT_DIR).glob("*.txt"))
        raise DataError(f"{split_file}: split {split!r} not found; available splits: "
                        f"{', '.join(available) or 'none'}")
    ids = [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]
    if not ids:
        raise DataError(f"{split_file}: split {split!r} lists no images")
    return ids


def read_label_png(path: str | Path, image_id: str | None = None) -> np.ndarray:
    """Class indices of a palette or grayscale label PNG as an (H, W) uint8 array."""
    path = Path(path)
    name = f"image {image_id!r}: " if image_id else ""
    try:
        with Image.open(path) as img:
            if img.mode not in ("P", "L"):
                raise DataError(f"{path}: {name}label image has mode {img.mode!r}; expected a palette ('P') "
                                "or grayscale ('L') PNG of class indices")
            return np.asarray(img)
    except FileNotFoundError:
        raise DataError(f"{path}: {name}label PNG not found") from None
    except OSError as exc:
        raise DataError(f"{path}: {name}unreadable label PNG: {exc}") from None


def mask_path(data_root: str | Path, image_id: str) -> Path:
    return Path(data_root) / MASK_DIR / f"{image_id}.png"


def read_gt_mask(data_root: str | Path, image_id: str) -> np.ndarray:
    """Ground-truth class indices of one image (255 = void)."""
    return read_label_png(mask_path(data_root, image_id), image_id)


def read_image(data_root: str | Path, image_id: str) -> np.ndarray:
    """The RGB image of one id as a C-contiguous (H, W, 3) uint8 array."""
    path = Path(data_root) / IMAGE_DIR / f"{image_id}.jpg"
    try:
        with Image.open(path) as img:
            return np.array(img.convert("RGB"), dtype=np.uint8, order="C")  # writable: pydensecrf needs it
    except FileNotFoundError:
        raise DataError(f"{path}: image {image_id!r} not found") from None
    except OSError as exc:
        raise DataError(f"{path}: image {image_id!r} unreadable: {exc}") from None


def num_foreground_classes(data_root: str | Path) -> int | None:
    """C from the length of the ``cls_labels.npy`` vectors, or None if the file is absent."""
    path = Path(data_root) / CLS_LABELS
    if not path.is_file():
        return None
    try:
        labels = np.load(path, allow_pickle=True).item()
        first = next(iter(labels.values()))
    except (OSError, ValueError, AttributeError, StopIteration) as exc:
        raise DataError(f"{path}: expected a dict image id -> multi-hot vector: {exc}") from None
    return int(np.asarray(first).reshape(-1).shape[0])
