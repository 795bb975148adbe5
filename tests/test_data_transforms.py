"""Augmentations: mask stays aligned with image, crop padding, and output determined by the rng alone."""

import numpy as np
import pytest

from wsss_core.data.transforms import (
    ColorJitter, Compose, Normalize, RandomCrop, RandomHFlip, RandomScale, ResizeLong, denormalize,
    train_transform,
)


def coordinate_sample(height: int = 20, width: int = 30) -> dict:
    """Image whose red/green channels encode (row, column); mask encodes the column band."""
    rows, cols = np.mgrid[0:height, 0:width]
    image = np.stack([rows * 8 % 256, cols * 8 % 256, np.full_like(rows, 77)], -1).astype(np.uint8)
    mask = (cols // 5).astype(np.uint8)
    return {"id": "x", "image": image, "label": np.ones(3, np.float32), "mask": mask}


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_random_crop_pads_image_with_zero_and_mask_with_ignore():
    sample = coordinate_sample(10, 12)
    out = RandomCrop(16)(sample, rng(1))
    assert out["image"].shape == (16, 16, 3) and out["mask"].shape == (16, 16)
    assert (out["mask"] == 255).sum() == 16 * 16 - 10 * 12
    valid = out["mask"] != 255
    assert (out["image"][~valid] == 0).all()
    rows, cols = np.nonzero(valid)
    top, left = rows.min(), cols.min()
    np.testing.assert_array_equal(out["image"][top:top + 10, left:left + 12], sample["image"])
    np.testing.assert_array_equal(out["mask"][top:top + 10, left:left + 12], sample["mask"])


def test_random_crop_of_larger_image_is_an_aligned_window():
    sample = coordinate_sample(20, 30)
    out = RandomCrop(8)(sample, rng(3))
    top, left = out["image"][0, 0, 0] // 8, out["image"][0, 0, 1] // 8
    np.testing.assert_array_equal(out["image"], sample["image"][top:top + 8, left:left + 8])
    np.testing.assert_array_equal(out["mask"], sample["mask"][top:top + 8, left:left + 8])


def test_random_crop_handles_normalized_chw_images():
    sample = Normalize()(coordinate_sample(10, 12), rng())
    out = RandomCrop(16)(sample, rng(1))
    assert out["image"].shape == (3, 16, 16) and out["image"].dtype == np.float32
    assert (out["image"][:, out["mask"] == 255] == 0).all()


@pytest.mark.parametrize("normalize_first", [False, True])
def test_flip_keeps_image_and_mask_aligned(normalize_first):
    sample = coordinate_sample()
    if normalize_first:
        sample = Normalize()(sample, rng())
    out = RandomHFlip(p=1.0)(sample, rng())
    np.testing.assert_array_equal(out["mask"], sample["mask"][:, ::-1])
    flipped = out["image"][..., ::-1] if normalize_first else out["image"][:, ::-1]
    np.testing.assert_array_equal(flipped, sample["image"])
    assert RandomHFlip(p=0.0)(sample, rng())["mask"] is not None


def test_resize_long_and_scale_keep_mask_nearest_and_aligned():
    sample = coordinate_sample(20, 30)
    out = ResizeLong(40, 60)(sample, rng(4))
    height, width = out["mask"].shape
    assert out["image"].shape[:2] == (height, width) and 40 <= width <= 60
    assert round(20 * width / 30) == height
    assert set(np.unique(out["mask"])) <= set(np.unique(sample["mask"]))  # nearest: no blended ids
    # The mask's column bands still match the image's encoded column (green channel) after resizing.
    column_of_pixel = out["image"][..., 1].astype(float) / 8
    agreement = (np.abs(column_of_pixel // 5 - out["mask"]) == 0).mean()
    assert agreement > 0.9
    scaled = RandomScale(0.5, 0.5)(sample, rng())
    assert scaled["image"].shape == (10, 15, 3) and scaled["mask"].shape == (10, 15)


def test_normalize_gives_float_chw_and_round_trips():
    sample = coordinate_sample()
    out = Normalize()(sample, rng())
    assert out["image"].shape == (3, 20, 30) and out["image"].dtype == np.float32
    np.testing.assert_allclose(denormalize(out["image"]).transpose(1, 2, 0), sample["image"] / 255.0, atol=1e-6)


def test_color_jitter_changes_colours_only():
    sample = coordinate_sample()
    out = ColorJitter(0.3, 0.3, 0.3, 0.1)(sample, rng(2))
    assert out["image"].dtype == np.uint8 and out["image"].shape == sample["image"].shape
    assert not np.array_equal(out["image"], sample["image"])
    assert out["mask"] is sample["mask"]
    with pytest.raises(ValueError, match="before Normalize"):
        ColorJitter(0.3)(Normalize()(sample, rng()), rng())


@pytest.mark.parametrize("baseline", ["cam", "seam", "amn"])
def test_pipeline_is_a_pure_function_of_the_rng(baseline):
    pipeline = train_transform(baseline, 24)
    sample = coordinate_sample(40, 50)
    np.random.seed(0)
    first = pipeline(sample, rng(11))
    np.random.seed(123)  # the global RNG must not matter
    second = pipeline(sample, rng(11))
    np.testing.assert_array_equal(first["image"], second["image"])
    np.testing.assert_array_equal(first["mask"], second["mask"])
    assert first["image"].shape == (3, 24, 24) and first["mask"].shape == (24, 24)
    others = [pipeline(sample, rng(seed)) for seed in range(12, 16)]
    assert any(not np.array_equal(first["image"], o["image"]) for o in others)
    np.testing.assert_array_equal(sample["image"], coordinate_sample(40, 50)["image"])  # input untouched


def test_transforms_tolerate_missing_masks():
    sample = dict(coordinate_sample(), mask=None)
    pipeline = Compose((ResizeLong(20, 40), RandomScale(0.8, 1.2), RandomHFlip(1.0),
                        ColorJitter(0.2, 0.2, 0.2, 0.05), Normalize(), RandomCrop(32)))
    out = pipeline(sample, rng(5))
    assert out["mask"] is None and out["image"].shape == (3, 32, 32)
