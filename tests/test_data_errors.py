"""Bad data fails with one DataError that names the path and says what to do, also from loader workers."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wsss.cli import main as wsss_main
from wsss_core.data.loading import build_loader, validate_dataset
from wsss_core.data.synth import generate_synthetic_voc
from wsss_core.data.transforms import Compose, Normalize, RandomCrop
from wsss_core.data.voc import VOCSegmentation
from wsss_core.errors import DataError

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return generate_synthetic_voc(tmp_path_factory.mktemp("bad") / "voc", seed=2, n_train=6, n_aug_extra=0,
                                  n_val=2, size=48, show_progress=False)


@pytest.fixture
def voc_root(pristine, tmp_path) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / "voc"))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_missing_root_says_which_layout_is_expected(tmp_path):
    with pytest.raises(DataError, match=r"nowhere: dataset root not found; expected a PASCAL VOC 2012 layout: "
                                        r"JPEGImages/, SegmentationClass/, ImageSets/Segmentation/"):
        VOCSegmentation(tmp_path / "nowhere", "train")


def test_missing_split_file_lists_existing_splits(voc_root):
    with pytest.raises(DataError, match=r"trainval.txt: split file not found; splits available: "
                                        r"train, train_aug, val$"):
        VOCSegmentation(voc_root, "trainval")


def test_missing_image_and_mask_found_by_validate(voc_root):
    (voc_root / "JPEGImages/2007_000002.jpg").unlink()
    (voc_root / "SegmentationClass/2007_000004.png").unlink()
    dataset = VOCSegmentation(voc_root, "train")
    with pytest.raises(DataError) as info:
        validate_dataset(dataset)
    message = str(info.value)
    assert "2 file(s) listed in split 'train' are missing" in message
    assert "JPEGImages/2007_000002.jpg" in message and "SegmentationClass/2007_000004.png" in message
    assert "remove their ids from the split file" in message
    with pytest.raises(DataError, match=r"2007_000002.jpg: image listed in the split file is missing"):
        dataset[1]
    with pytest.raises(DataError, match=r"2007_000004.png: mask listed in the split file is missing"):
        dataset[3]


def test_truncated_jpeg_is_detected(voc_root):
    _truncate(voc_root / "JPEGImages/2007_000003.jpg")
    dataset = VOCSegmentation(voc_root, "train")
    dataset.validate()  # the file exists: only decoding finds the damage
    with pytest.raises(DataError, match=r"2007_000003.jpg: unreadable or truncated image \(.*\); re-download"):
        dataset[2]


def test_mask_with_out_of_range_class_ids(voc_root):
    path = voc_root / "SegmentationClass/2007_000001.png"
    mask = np.asarray(Image.open(path)).copy()
    mask[:2, :2], mask[-1, -1] = 9, 42
    Image.fromarray(mask).save(path)
    with pytest.raises(DataError, match=r"2007_000001.png: mask has class ids 9, 42 outside 0..6 \(and 255 = void\)"):
        VOCSegmentation(voc_root, "train")[0]


def test_colour_mask_is_rejected(voc_root):
    path = voc_root / "SegmentationClass/2007_000001.png"
    Image.open(path).convert("RGB").save(path)
    with pytest.raises(DataError, match="mask has mode RGB; expected a palette"):
        VOCSegmentation(voc_root, "train")[0]


def test_cls_labels_of_the_wrong_length(voc_root):
    labels = np.load(voc_root / "cls_labels.npy", allow_pickle=True).item()
    labels["2007_000005"] = np.zeros(20, np.float32)
    np.save(voc_root / "cls_labels.npy", labels)
    with pytest.raises(DataError, match=r"cls_labels.npy: label vector of '2007_000005' has 20 entries but the "
                                        r"dataset has 6 foreground classes \(zebra, leaf"):
        VOCSegmentation(voc_root, "train")


def test_worker_error_surfaces_as_one_clean_data_error(voc_root):
    _truncate(voc_root / "JPEGImages/2007_000005.jpg")
    dataset = VOCSegmentation(voc_root, "train", transform=Compose((Normalize(), RandomCrop(32))))
    loader = build_loader(dataset, batch_size=2, num_workers=2)
    with pytest.raises(DataError) as info:
        for _ in loader:
            pass
    message = str(info.value)
    assert message.startswith(str(voc_root / "JPEGImages/2007_000005.jpg") + ": unreadable or truncated image")
    assert "Caught" not in message and "Traceback" not in message and "worker process" not in message
    assert "\n" not in message


def test_unbatchable_sizes_name_the_fix(pristine):
    loader = build_loader(VOCSegmentation(pristine, "train", transform=Normalize()), batch_size=6)
    with pytest.raises(DataError, match="samples have different shapes .* add a RandomCrop"):
        next(iter(loader))


def test_cli_prints_one_line_and_exits_2(voc_root, capsys):
    _truncate(voc_root / "JPEGImages/2007_000006.jpg")
    assert wsss_main(["data", "check", "--root", str(voc_root), "--split", "train"]) == 0
    assert wsss_main(["data", "check", "--root", str(voc_root), "--split", "train", "--read"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("wsss data: error: ") and "2007_000006.jpg: unreadable or truncated" in err[-1]


def test_mask_folder_names_a_missing_or_misshapen_label(tmp_path):
    """AMN's seeds and the final stage's pseudo-labels are read through one reader: a missing PNG names its path
    and how to make it; a PNG of another size than its image names both sizes."""
    import numpy as np
    from PIL import Image

    from wsss_core.data.base import read_mask_png

    with pytest.raises(DataError, match=r"a\.png: no seed label for image 'a'; run the seeds stage"):
        read_mask_png(tmp_path, "a", (4, 5), "seed label", "run the seeds stage")
    Image.fromarray(np.ones((4, 6), np.uint8)).save(tmp_path / "b.png")
    with pytest.raises(DataError, match=r"pseudo-label size \(4, 6\) differs from the image's \(4, 5\)"):
        read_mask_png(tmp_path, "b", (4, 5), "pseudo-label", "")
    assert read_mask_png(tmp_path, "b", (4, 6), "pseudo-label", "").sum() == 24
