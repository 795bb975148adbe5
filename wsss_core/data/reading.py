"""Reading images, masks and image-level labels from disk, with errors that name the file and the fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError

VOID = 255


def read_image(path: Path) -> np.ndarray:
    """An RGB image as uint8 HxWx3; a missing, unreadable or truncated file raises DataError."""
    if not path.is_file():
        raise DataError(f"{path}: image listed in the split file is missing; restore it or remove its id "
                        f"from the split file")
    try:
        with Image.open(path) as img:
            img.load()  # decodes fully: a truncated JPEG fails here (LOAD_TRUNCATED_IMAGES is left off)
            return np.asarray(img.convert("RGB"))
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: unreadable or truncated image ({exc}); re-download or re-extract it, "
                        f"or remove its id from the split file") from None


def read_mask(path: Path, num_classes: int, image_shape: tuple[int, int] | None = None) -> np.ndarray:
    """A class-index mask as uint8 HxW (0 background, 1..C classes, 255 void), checked for range and size."""
    if not path.is_file():
        raise DataError(f"{path}: mask listed in the split file is missing; restore it or remove its id "
                        f"from the split file")
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode not in ("P", "L", "I", "I;16"):
                raise DataError(f"{path}: mask has mode {img.mode}; expected a palette (P) or grayscale (L) PNG "
                                f"whose pixel values are class indices")
            mask = np.asarray(img)
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError) as exc:
        raise DataError(f"{path}: unreadable or truncated mask ({exc}); regenerate or re-extract it") from None
    check_mask_values(mask, num_classes, path)
    if image_shape is not None and mask.shape != tuple(image_shape):
        raise DataError(f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
                        f"{image_shape[1]}x{image_shape[0]} (WxH); masks must match their images")
    return mask.astype(np.uint8)


def check_mask_values(mask: np.ndarray, num_classes: int, path: Path | str) -> None:
    """Class ids must lie in [0, C] or be 255 (void)."""
    values = np.unique(mask)
    bad = [int(v) for v in values if not (0 <= v <= num_classes or v == VOID)]
    if bad:
        shown = ", ".join(map(str, bad[:10])) + (", ..." if len(bad) > 10 else "")
        raise DataError(f"{path}: mask has class ids {shown} outside 0..{num_classes} (and 255 = void) for "
                        f"{num_classes} foreground classes; check the dataset's class count or the mask")


def labels_from_mask(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """Multi-hot float32 (C,) of the classes present in a mask (ignoring 0 and 255)."""
    present = np.unique(mask)
    label = np.zeros(num_classes, np.float32)
    label[[int(v) - 1 for v in present if 0 < v <= num_classes]] = 1.0
    return label


def load_cls_labels(path: Path) -> dict:
    """The field's cls_labels.npy: a pickled dict image id → multi-hot vector."""
    try:
        data = np.load(path, allow_pickle=True)
        if data.dtype == object and data.shape == ():
            data = data.item()
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: cannot read image-level labels ({exc}); expected np.save of a dict "
                        f"image id -> multi-hot vector") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a dict image id -> multi-hot vector, got {type(data).__name__}")
    return data


def read_id_list(path: Path) -> list[str]:
    """Image ids of a split file; accepts plain ids and DeepLab-style 'image.jpg mask.png' lines."""
    ids = []
    for line in path.read_text().splitlines():
        token = line.strip().split()[0] if line.strip() else ""
        if token:
            ids.append(Path(token).stem)
    return ids
