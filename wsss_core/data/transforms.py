"""Augmentations of the reference implementations, as pure functions of (sample, rng).

Contract: a transform is a callable ``t(sample: dict, rng: numpy.random.Generator) -> dict`` that draws
every random number from ``rng`` (never from a global RNG), so that an image's augmentation depends only
on (seed, epoch, index): identical on every DDP rank and after an exact resume. Transforms return a new
dict and keep ``mask`` aligned with ``image``; ``mask`` may be None.

Layout: images are uint8 HxWx3 RGB until :class:`Normalize`, float32 3xHxW after it; geometric
transforms (:class:`ResizeLong`, :class:`RandomScale`, :class:`RandomHFlip`, :class:`RandomCrop`) accept
both. Masks are uint8 HxW with 255 = ignore throughout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

Sample = dict[str, Any]
Transform = Callable[[Sample, np.random.Generator], Sample]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IGNORE_INDEX = 255


def _is_chw(image: np.ndarray) -> bool:
    """Float images are CHW (Normalize's output); uint8 images are HWC."""
    return image.dtype != np.uint8


def image_size(image: np.ndarray) -> tuple[int, int]:
    """(height, width) of an image in either layout."""
    return tuple(image.shape[1:3]) if _is_chw(image) else tuple(image.shape[:2])


def _resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    if not _is_chw(image):
        return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
    channels = [np.asarray(Image.fromarray(np.ascontiguousarray(c, dtype=np.float32)).resize(
        (width, height), Image.BILINEAR)) for c in image]
    return np.stack(channels).astype(image.dtype)


def _resize_mask(mask: np.ndarray | None, height: int, width: int) -> np.ndarray | None:
    if mask is None:
        return None
    return np.asarray(Image.fromarray(mask).resize((width, height), Image.NEAREST))


def rescale(sample: Sample, scale: float) -> Sample:
    """Resize image (bilinear) and mask (nearest) by ``scale``; a size never drops below 1 px."""
    height, width = image_size(sample["image"])
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    if (new_h, new_w) == (height, width):
        return dict(sample)
    out = dict(sample)
    out["image"] = _resize_image(sample["image"], new_h, new_w)
    out["mask"] = _resize_mask(sample.get("mask"), new_h, new_w)
    return out


@dataclass(frozen=True)
class Compose:
    """Apply transforms in order, all drawing from the same rng."""

    transforms: Sequence[Transform]

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        for transform in self.transforms:
            sample = transform(sample, rng)
        return sample


@dataclass(frozen=True)
class ResizeLong:
    """Resize so the long side is a random integer in [min_long, max_long] (IRN/SEAM resize_long)."""

    min_long: int
    max_long: int

    def __post_init__(self):
        if not 0 < self.min_long <= self.max_long:
            raise ValueError(f"ResizeLong: need 0 < min_long <= max_long, got {self.min_long}, {self.max_long}")

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        target = int(rng.integers(self.min_long, self.max_long + 1))
        return rescale(sample, target / max(image_size(sample["image"])))


@dataclass(frozen=True)
class RandomScale:
    """Rescale by a factor uniform in [lo, hi] (AMN's random scale, (0.5, 1.5) there)."""

    lo: float
    hi: float

    def __post_init__(self):
        if not 0 < self.lo <= self.hi:
            raise ValueError(f"RandomScale: need 0 < lo <= hi, got {self.lo}, {self.hi}")

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        return rescale(sample, float(rng.uniform(self.lo, self.hi)))


@dataclass(frozen=True)
class RandomHFlip:
    """Mirror image and mask left-right with probability p."""

    p: float = 0.5

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if rng.random() >= self.p:
            return dict(sample)
        out = dict(sample)
        image = sample["image"]
        out["image"] = np.ascontiguousarray(image[..., ::-1] if _is_chw(image) else image[:, ::-1])
        if sample.get("mask") is not None:
            out["mask"] = np.ascontiguousarray(sample["mask"][:, ::-1])
        return out


def _grayscale(image: np.ndarray) -> np.ndarray:
    return image @ np.asarray([0.299, 0.587, 0.114], np.float32)


@dataclass(frozen=True)
class ColorJitter:
    """Brightness, contrast, saturation (factors in [1-x, 1+x]) and hue shift (in [-hue, hue]) in a random
    order, as torchvision's ColorJitter that SEAM uses with (0.3, 0.3, 0.3, 0.1). Needs uint8 images."""

    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0

    def __post_init__(self):
        if not 0 <= self.hue <= 0.5:
            raise ValueError(f"ColorJitter: hue must be in [0, 0.5], got {self.hue}")

    def _factor(self, amount: float, rng: np.random.Generator) -> float | None:
        return float(rng.uniform(max(0.0, 1 - amount), 1 + amount)) if amount > 0 else None

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        image = sample["image"]
        if image.dtype != np.uint8:
            raise ValueError("ColorJitter works on uint8 RGB images: place it before Normalize")
        pixels = image.astype(np.float32)
        for op in rng.permutation(4):
            if op == 0 and (f := self._factor(self.brightness, rng)) is not None:
                pixels = pixels * f
            elif op == 1 and (f := self._factor(self.contrast, rng)) is not None:
                mean = _grayscale(np.clip(pixels, 0, 255)).mean()
                pixels = mean + (pixels - mean) * f
            elif op == 2 and (f := self._factor(self.saturation, rng)) is not None:
                gray = _grayscale(np.clip(pixels, 0, 255))[..., None]
                pixels = gray + (pixels - gray) * f
            elif op == 3 and self.hue > 0:
                shift = float(rng.uniform(-self.hue, self.hue))
                pixels = _shift_hue(np.clip(pixels, 0, 255).round().astype(np.uint8), shift).astype(np.float32)
            pixels = np.clip(pixels, 0, 255)
        out = dict(sample)
        out["image"] = pixels.round().astype(np.uint8)
        return out


def _shift_hue(image: np.ndarray, shift: float) -> np.ndarray:
    hsv = np.array(Image.fromarray(image).convert("HSV"))
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(round(shift * 255))) % 256
    return np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"))


@dataclass(frozen=True)
class RandomCrop:
    """A random ``size`` x ``size`` window; a smaller image is placed at a random offset in a container
    padded with 0 (image) and ``ignore_index`` (mask), as the references' random_crop does."""

    size: int
    ignore_index: int = IGNORE_INDEX

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        image = sample["image"]
        height, width = image_size(image)
        top_src, top_dst, rows = self._placement(height, rng)
        left_src, left_dst, cols = self._placement(width, rng)
        if _is_chw(image):
            canvas = np.zeros((image.shape[0], self.size, self.size), image.dtype)
            canvas[:, top_dst:top_dst + rows, left_dst:left_dst + cols] = \
                image[:, top_src:top_src + rows, left_src:left_src + cols]
        else:
            canvas = np.zeros((self.size, self.size) + image.shape[2:], image.dtype)
            canvas[top_dst:top_dst + rows, left_dst:left_dst + cols] = \
                image[top_src:top_src + rows, left_src:left_src + cols]
        out = dict(sample)
        out["image"] = canvas
        mask = sample.get("mask")
        if mask is not None:
            cropped = np.full((self.size, self.size), self.ignore_index, mask.dtype)
            cropped[top_dst:top_dst + rows, left_dst:left_dst + cols] = \
                mask[top_src:top_src + rows, left_src:left_src + cols]
            out["mask"] = cropped
        return out

    def _placement(self, length: int, rng: np.random.Generator) -> tuple[int, int, int]:
        """(source offset, destination offset, extent) along one axis."""
        space = length - self.size
        if space > 0:
            return int(rng.integers(space + 1)), 0, self.size
        return 0, int(rng.integers(-space + 1)), length


def normalize_image(image: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """uint8 HxWx3 RGB -> float32 3xHxW, (x / 255 - mean) / std."""
    if image.dtype != np.uint8:
        raise ValueError("Normalize expects a uint8 HxWx3 image; it was normalized already")
    normalized = (image.astype(np.float32) / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(normalized.transpose(2, 0, 1))


def resize_bicubic(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 HxWx3 image resized with PIL's bicubic filter, as the references rescale inference inputs
    (IRN/AMN ``pil_rescale(img, s, order=3)``, SEAM/HFPL ``img.resize(size, Image.CUBIC)``)."""
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BICUBIC))


@dataclass(frozen=True)
class Normalize:
    """uint8 HxWx3 RGB -> float32 3xHxW, (x / 255 - mean) / std (ImageNet statistics by default)."""

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        out = dict(sample)
        out["image"] = normalize_image(sample["image"], self.mean, self.std)
        return out


def denormalize(image: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN,
                std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """Float 3xHxW normalized image back to RGB in [0, 1] (what HFPL's feature similarity compares)."""
    mean_a = np.asarray(mean, np.float32)[:, None, None]
    std_a = np.asarray(std, np.float32)[:, None, None]
    return np.clip(image * std_a + mean_a, 0.0, 1.0)


def train_transform(baseline: str, crop_size: int) -> Compose:
    """The training augmentation of each baseline's reference (see the methods notes), at ``crop_size``.

    cam (IRN): resize_long(320, 640) scaled to the crop, flip, normalize, crop. seam: resize_long(448, 768)
    scaled, flip, colour jitter (0.3, 0.3, 0.3, 0.1), normalize, crop. amn: scale (0.5, 1.5), flip,
    normalize, crop. The resize ranges keep the reference's ratio to its crop (512 / 448 / 512).
    """
    if baseline == "cam":
        lo, hi = round(crop_size * 320 / 512), round(crop_size * 640 / 512)
        steps: list[Transform] = [ResizeLong(lo, hi), RandomHFlip()]
    elif baseline == "seam":
        lo, hi = crop_size, round(crop_size * 768 / 448)
        steps = [ResizeLong(lo, hi), RandomHFlip(), ColorJitter(0.3, 0.3, 0.3, 0.1)]
    elif baseline == "amn":
        steps = [RandomScale(0.5, 1.5), RandomHFlip()]
    else:
        raise ValueError(f"train_transform: unknown baseline {baseline!r}; valid choices: cam, seam, amn")
    return Compose(tuple(steps) + (Normalize(), RandomCrop(crop_size)))


def eval_transform() -> Compose:
    """Full image, normalized: what CAM generation and evaluation read."""
    return Compose((Normalize(),))
