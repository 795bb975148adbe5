"""COCO 2014: rasterising instances (polygons, RLE, id mapping, overwrite order) and the loader."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss.cli import main as wsss_main
from wsss_core.data import build_dataset
from wsss_core.data.coco import (
    COCOSegmentation, decode_rle_string, encode_rle_string, mask_to_rle, rle_to_mask, write_coco_masks,
)
from wsss_core.errors import DataError

H, W = 24, 32
FIRST, SECOND, EMPTY = "COCO_train2014_000000000007", "COCO_train2014_000000000042", "COCO_train2014_000000000099"


def _write_coco_tree(root: Path) -> Path:
    """Three images: one with a polygon (person) under an RLE (toothbrush), one with a compressed RLE
    (stop sign, id 13), one without annotations."""
    images_dir = root / "train2014"
    images_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for stem in (FIRST, SECOND, EMPTY):
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(images_dir / f"{stem}.jpg")
    toothbrush = np.zeros((H, W), bool)
    toothbrush[8:16, 12:28] = True  # overlaps the right half of the person polygon
    stop_sign = np.zeros((H, W), bool)
    stop_sign[2:6, 3:9] = True
    stop_sign[20:23, 25:31] = True
    annotations = {
        "images": [{"id": 7, "file_name": f"{FIRST}.jpg", "height": H, "width": W},
                   {"id": 42, "file_name": f"{SECOND}.jpg", "height": H, "width": W},
                   {"id": 99, "file_name": f"{EMPTY}.jpg", "height": H, "width": W}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 1, "iscrowd": 0,
             "segmentation": [[4, 4, 20, 4, 20, 20, 4, 20]]},
            {"id": 2, "image_id": 7, "category_id": 90, "iscrowd": 1,
             "segmentation": {"counts": mask_to_rle(toothbrush), "size": [H, W]}},
            {"id": 3, "image_id": 42, "category_id": 13, "iscrowd": 1,
             "segmentation": {"counts": encode_rle_string(mask_to_rle(stop_sign)), "size": [H, W]}},
        ],
        "categories": [{"id": 1, "name": "person"}, {"id": 13, "name": "stop sign"},
                       {"id": 90, "name": "toothbrush"}],
    }
    (root / "annotations").mkdir()
    (root / "annotations/instances_train2014.json").write_text(json.dumps(annotations))
    return root


@pytest.fixture
def coco_root(tmp_path) -> Path:
    root = _write_coco_tree(tmp_path / "coco")
    assert wsss_main(["data", "coco-masks", "--root", str(root), "--split", "train"]) == 0
    return root


def test_rasterised_masks_map_ids_and_later_instances_win(coco_root):
    first = np.asarray(Image.open(coco_root / "mask/train2014" / f"{FIRST}.png"))
    assert first.shape == (H, W)
    assert first[10, 6] == 1  # person (category 1 -> class 1), left of the toothbrush
    assert first[12, 16] == 80  # toothbrush (category 90 -> class 80) drawn over the person
    assert first[18, 26] == 0 and first[0, 0] == 0
    assert first[4:21, 4:12].min() == 1  # polygon filled inclusive of its outline
    second = np.asarray(Image.open(coco_root / "mask/train2014" / f"{SECOND}.png"))
    assert set(np.unique(second)) == {0, 12}  # stop sign: category 13 -> class 12 (id 12 is unused)
    assert (second == 12).sum() == 4 * 6 + 3 * 6
    empty = np.asarray(Image.open(coco_root / "mask/train2014" / f"{EMPTY}.png"))
    assert not empty.any()


def test_split_and_labels_list_only_annotated_images(coco_root):
    assert (coco_root / "ImageSets/train.txt").read_text().split() == [FIRST, SECOND]
    labels = np.load(coco_root / "cls_labels_train.npy", allow_pickle=True).item()
    assert np.flatnonzero(labels[FIRST]).tolist() == [0, 79]
    assert np.flatnonzero(labels[SECOND]).tolist() == [11]


def test_loader_sample_dict_and_label_sources(coco_root):
    dataset = build_dataset("coco", coco_root, "train")
    assert isinstance(dataset, COCOSegmentation)
    assert dataset.num_classes == 80 and dataset.class_names[0] == "person"
    assert dataset.class_names[79] == "toothbrush" and dataset.ids == [FIRST, SECOND]
    sample = dataset[0]
    assert sample["id"] == FIRST and sample["image"].shape == (H, W, 3) and sample["mask"].shape == (H, W)
    assert np.flatnonzero(sample["label"]).tolist() == [0, 79]
    dataset.validate()
    # Labels keyed by COCO's numeric image id are found too.
    np.save(coco_root / "cls_labels_train.npy", {7: np.eye(80, dtype=np.float32)[5], 42: np.zeros(80, np.float32)})
    assert np.flatnonzero(COCOSegmentation(coco_root, "train")[0]["label"]).tolist() == [5]
    # Without a labels file they come from the masks.
    (coco_root / "cls_labels_train.npy").unlink()
    assert np.flatnonzero(COCOSegmentation(coco_root, "train2014")[1]["label"]).tolist() == [11]


def test_without_masks_or_labels_it_says_to_run_coco_masks(tmp_path):
    root = _write_coco_tree(tmp_path / "raw")
    with pytest.raises(DataError, match=r"run `wsss data coco-masks --root .*raw --split train`"):
        COCOSegmentation(root, "train")
    with pytest.raises(DataError, match="COCO split 'test' is not valid; valid choices: train, val"):
        COCOSegmentation(root, "test")


def test_rle_codec_round_trips_and_matches_pycocotools_format():
    assert decode_rle_string("2342") == [2, 3, 4, 5]  # third run on is stored as a difference
    rng = np.random.default_rng(3)
    for _ in range(20):
        mask = rng.random((13, 17)) < rng.uniform(0.1, 0.9)
        counts = mask_to_rle(mask)
        assert sum(counts) == mask.size
        assert decode_rle_string(encode_rle_string(counts)) == counts
        np.testing.assert_array_equal(rle_to_mask(counts, 13, 17), mask)
    big_runs = [5000, 1, 70000, 2, 3]  # multi-chunk values and negative differences
    assert decode_rle_string(encode_rle_string(big_runs)) == big_runs


def test_unknown_category_names_the_file(tmp_path):
    root = _write_coco_tree(tmp_path / "bad")
    path = root / "annotations/instances_train2014.json"
    data = json.loads(path.read_text())
    data["annotations"][0]["category_id"] = 12  # a gap in COCO's ids
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=rf"instances_train2014.json: image {FIRST}.jpg: unknown category id 12"):
        write_coco_masks(root, "train", show_progress=False)
