"""The synthetic benchmark: VOC layout, labels that agree with masks, void bands, determinism."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss.cli import main as wsss_main
from wsss_core.data.palette import voc_palette
from wsss_core.data.synth import class_designs, generate_synthetic_voc
from wsss_core.data.voc import VOCSegmentation

SMALL = dict(n_train=10, n_aug_extra=4, n_val=6, size=64, num_classes=6)


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    return generate_synthetic_voc(tmp_path_factory.mktemp("synth") / "voc", seed=3, show_progress=False, **SMALL)


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_writes_the_voc_layout(synth_root):
    splits = synth_root / "ImageSets/Segmentation"
    train = splits.joinpath("train.txt").read_text().split()
    train_aug = splits.joinpath("train_aug.txt").read_text().split()
    val = splits.joinpath("val.txt").read_text().split()
    assert (len(train), len(train_aug), len(val)) == (10, 14, 6)
    assert set(train) < set(train_aug) and not set(train_aug) & set(val)
    assert train[0] == "2007_000001"
    for image_id in train_aug + val:
        assert (synth_root / "JPEGImages" / f"{image_id}.jpg").is_file()
        mask = Image.open(synth_root / "SegmentationClass" / f"{image_id}.png")
        assert mask.mode == "P" and mask.getpalette()[:768] == voc_palette()
    labels = np.load(synth_root / "cls_labels.npy", allow_pickle=True).item()
    assert set(labels) == set(train_aug + val)
    assert all(isinstance(k, str) and v.dtype == np.float32 and v.shape == (6,) for k, v in labels.items())
    assert synth_root.joinpath("classes.txt").read_text().split() == [d.name for d in class_designs(6)]


def test_labels_agree_with_masks_and_borders_are_void(synth_root):
    dataset = VOCSegmentation(synth_root, "train_aug")
    for index in range(len(dataset)):
        sample = dataset[index]
        image, mask, label = sample["image"], sample["mask"], sample["label"]
        assert image.shape[:2] == mask.shape and max(image.shape[:2]) == 64
        present = sorted(int(v) - 1 for v in np.unique(mask) if 0 < v < 255)
        assert np.flatnonzero(label).tolist() == present
        assert 1 <= len(present) <= 3  # 1 to 3 objects (of distinct or repeated classes)
        assert (mask == 255).any()
        # Every change of class between neighbours goes through the void band.
        for a, b in ((mask[:, 1:], mask[:, :-1]), (mask[1:], mask[:-1])):
            both_valid = (a != 255) & (b != 255)
            assert (a[both_valid] == b[both_valid]).all(), sample["id"]


def test_void_band_is_a_few_pixels_wide(synth_root):
    mask = np.asarray(Image.open(synth_root / "SegmentationClass/2007_000001.png"))
    void_fraction = (mask == 255).mean()
    assert 0.005 < void_fraction < 0.2


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    first = _tree_bytes(generate_synthetic_voc(tmp_path / "a", seed=7, show_progress=False, **SMALL))
    second = _tree_bytes(generate_synthetic_voc(tmp_path / "b", seed=7, show_progress=False, **SMALL))
    other = _tree_bytes(generate_synthetic_voc(tmp_path / "c", seed=8, show_progress=False, **SMALL))
    assert first == second
    assert first.keys() == other.keys()
    jpegs = [k for k in first if k.endswith(".jpg")]
    assert all(first[k] != other[k] for k in jpegs)


def test_partner_classes_co_occur(tmp_path):
    root = generate_synthetic_voc(tmp_path / "cooc", seed=0, n_train=80, n_aug_extra=0, n_val=1, size=48,
                                  show_progress=False)
    labels = np.stack(list(np.load(root / "cls_labels.npy", allow_pickle=True).item().values()))
    designs = class_designs(6)
    beetle, leaf = [d.name for d in designs].index("beetle"), [d.name for d in designs].index("leaf")
    with_beetle = labels[labels[:, beetle] == 1]
    assert len(with_beetle) >= 5
    assert with_beetle[:, leaf].mean() > 0.6  # context shortcut: beetles come with leaves
    assert labels[labels[:, beetle] == 0][:, leaf].mean() < 0.6


def test_part_cue_classes_exist_and_extra_classes_get_distinct_names():
    designs = class_designs(14)
    assert [d.part_cue for d in designs[:6]] == [False, False, True, True, False, False]
    assert len({d.name for d in designs}) == 14
    assert all(d.partner is None or designs[d.partner].partner == i for i, d in enumerate(designs))


def test_cli_synth_matches_the_function(tmp_path, capsys):
    code = wsss_main(["data", "synth", "--out", str(tmp_path / "cli"), "--seed", "3", "--n-train", "10",
                      "--n-aug-extra", "4", "--n-val", "6", "--size", "64", "--classes", "6"])
    assert code == 0 and "wrote 20 images" in capsys.readouterr().out
    reference = generate_synthetic_voc(tmp_path / "fn", seed=3, show_progress=False, **SMALL)
    assert _tree_bytes(tmp_path / "cli") == _tree_bytes(reference)


def test_cli_rejects_bad_sizes(tmp_path, capsys):
    assert wsss_main(["data", "synth", "--out", str(tmp_path / "x"), "--classes", "0"]) == 2
    assert "num_classes must be in 1..254" in capsys.readouterr().err
