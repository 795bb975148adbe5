"""VOC-layout loader on the synthetic tree, and the reproducible batch loader."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wsss_core.data import build_dataset
from wsss_core.data.loading import build_loader, validate_dataset
from wsss_core.data.palette import VOC_CLASSES
from wsss_core.data.synth import generate_synthetic_voc
from wsss_core.data.transforms import train_transform
from wsss_core.data.voc import VOCSegmentation
from wsss_core.errors import ConfigError

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return generate_synthetic_voc(tmp_path_factory.mktemp("voc") / "voc", seed=1, n_train=8, n_aug_extra=4,
                                  n_val=4, size=64, show_progress=False)


@pytest.fixture
def voc_root(pristine, tmp_path) -> Path:
    """A private copy the test may modify."""
    return Path(shutil.copytree(pristine, tmp_path / "voc"))


def test_sample_dict_and_attributes(pristine):
    dataset = VOCSegmentation(pristine, "train")
    assert len(dataset) == 8 and dataset.ids[0] == "2007_000001"
    assert dataset.num_classes == 6 and dataset.class_names[:2] == ["zebra", "leaf"]
    sample = dataset[0]
    assert set(sample) == {"id", "image", "label", "mask"}
    assert sample["image"].dtype == np.uint8 and sample["image"].shape[2] == 3
    assert sample["label"].dtype == np.float32 and sample["label"].shape == (6,)
    assert sample["mask"].dtype == np.uint8 and sample["mask"].shape == sample["image"].shape[:2]
    assert dataset.image_path("2007_000001") == pristine / "JPEGImages/2007_000001.jpg"
    assert dataset.mask_path("2007_000001") == pristine / "SegmentationClass/2007_000001.png"
    validate_dataset(dataset)


def test_train_aug_prefers_sbd_masks(voc_root):
    aug = voc_root / "SegmentationClassAug"
    aug.mkdir()
    ids = (voc_root / "ImageSets/Segmentation/train_aug.txt").read_text().split()
    for image_id in ids:  # SBD's masks differ from VOC's: make them all class 6
        mask = np.asarray(Image.open(voc_root / "SegmentationClass" / f"{image_id}.png")).copy()
        mask[mask != 0] = 6
        Image.fromarray(mask).save(aug / f"{image_id}.png")
    (voc_root / "cls_labels.npy").unlink()  # labels must then come from the SBD masks
    train_aug = VOCSegmentation(voc_root, "train_aug")
    assert train_aug.uses_sbd_masks and len(train_aug) == 12
    sample = train_aug[0]
    assert set(np.unique(sample["mask"])) <= {0, 6, 255}
    assert sample["label"].tolist() == [0, 0, 0, 0, 0, 1]
    assert VOCSegmentation(voc_root, "train").mask_path(ids[0]).parent.name == "SegmentationClass"


def test_train_aug_without_sbd_uses_cls_labels_where_masks_are_missing(voc_root):
    extra_id = (voc_root / "ImageSets/Segmentation/train_aug.txt").read_text().split()[-1]
    expected = np.load(voc_root / "cls_labels.npy", allow_pickle=True).item()[extra_id]
    (voc_root / "SegmentationClass" / f"{extra_id}.png").unlink()
    dataset = VOCSegmentation(voc_root, "train_aug")
    dataset.validate()  # VOC's own train_aug has masks for only part of its ids
    sample = dataset[len(dataset) - 1]
    assert sample["id"] == extra_id and sample["mask"] is None
    np.testing.assert_array_equal(sample["label"], expected)


def test_labels_derived_from_masks_without_cls_labels(voc_root):
    with_file = [s["label"] for s in VOCSegmentation(voc_root, "val")]
    (voc_root / "cls_labels.npy").unlink()
    derived = [s["label"] for s in VOCSegmentation(voc_root, "val")]
    np.testing.assert_array_equal(np.stack(with_file), np.stack(derived))


def test_irn_integer_keyed_cls_labels(voc_root):
    labels = np.load(voc_root / "cls_labels.npy", allow_pickle=True).item()
    np.save(voc_root / "cls_labels.npy", {int(k.replace("_", "")): np.ones(6, np.float32) for k in labels})
    assert VOCSegmentation(voc_root, "train")[0]["label"].tolist() == [1.0] * 6


def test_class_name_fallbacks(voc_root):
    (voc_root / "classes.txt").unlink()
    assert VOCSegmentation(voc_root, "train").class_names == [f"class_{c}" for c in range(1, 7)]
    assert VOCSegmentation(voc_root, "train", class_names=list("abcdef")).class_names == list("abcdef")
    labels = np.load(voc_root / "cls_labels.npy", allow_pickle=True).item()
    np.save(voc_root / "cls_labels.npy", {k: np.zeros(20, np.float32) for k in labels})
    voc20 = VOCSegmentation(voc_root, "train")
    assert voc20.num_classes == 20 and voc20.class_names == list(VOC_CLASSES)


def test_test_split_has_no_masks_and_deeplab_style_lists(voc_root):
    split_dir = voc_root / "ImageSets/Segmentation"
    (split_dir / "test.txt").write_text("2007_000001\n2007_000002\n")
    test = VOCSegmentation(voc_root, "test")
    assert test[0]["mask"] is None and test.mask_path("2007_000001") is None
    (split_dir / "deeplab.txt").write_text("/JPEGImages/2007_000003.jpg /SegmentationClassAug/2007_000003.png\n")
    assert VOCSegmentation(voc_root, "deeplab").ids == ["2007_000003"]


def test_build_dataset_by_name(pristine):
    assert isinstance(build_dataset("voc", pristine, "val"), VOCSegmentation)
    with pytest.raises(ConfigError, match="unknown dataset 'pascal'; valid choices: coco, voc"):
        build_dataset("pascal", pristine, "val")


def test_loader_batches_and_reproducible_augmentation(pristine):
    dataset = VOCSegmentation(pristine, "train_aug", transform=train_transform("cam", 48))
    loader = build_loader(dataset, batch_size=4, shuffle=True, seed=5, drop_last=True)
    loader.set_epoch(2)
    batches = list(loader)
    assert len(batches) == len(loader) == 3
    batch = batches[0]
    assert batch["image"].shape == (4, 3, 48, 48) and batch["image"].dtype == torch.float32
    assert batch["label"].shape == (4, 6) and batch["label"].dtype == torch.float32
    assert batch["mask"].shape == (4, 48, 48) and batch["mask"].dtype == torch.int64
    assert len(batch["id"]) == 4 and set(batch["mask"].unique().tolist()) <= set(range(7)) | {255}
    # Two workers give the same batches as the main process: rng depends on (seed, epoch, index) only.
    parallel = build_loader(dataset, batch_size=4, shuffle=True, seed=5, drop_last=True, num_workers=2)
    parallel.set_epoch(2)
    for a, b in zip(batches, parallel):
        assert a["id"] == b["id"] and torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    loader.set_epoch(3)
    assert [b["id"] for b in loader] != [b["id"] for b in batches]


def test_same_image_same_augmentation_whatever_the_order(pristine):
    dataset = VOCSegmentation(pristine, "train", transform=train_transform("seam", 40))
    shuffled = build_loader(dataset, batch_size=1, shuffle=True, seed=9)
    ordered = build_loader(dataset, batch_size=1, seed=9)
    by_id = {b["id"][0]: b["image"] for b in ordered}
    for batch in shuffled:
        assert torch.equal(batch["image"], by_id[batch["id"][0]])
    other_seed = build_loader(dataset, batch_size=1, seed=10)
    assert any(not torch.equal(b["image"], by_id[b["id"][0]]) for b in other_seed)
