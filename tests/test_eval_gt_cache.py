"""Ground-truth cache: built once, reused, keyed by the masks' files, and never trusted when damaged."""

import os
import warnings

import numpy as np
import pytest
from PIL import Image

from wsss_core.evaluation import evaluate_cams
from wsss_core.evaluation.ground_truth import read_gt_mask, read_split_ids
from wsss_core.evaluation.gt_cache import SUFFIX, encode, ground_truth
from wsss_core.evaluation.synthetic import write_synthetic_voc


@pytest.fixture
def tree(tmp_path, monkeypatch):
    monkeypatch.setenv("WSSS_GT_CACHE", str(tmp_path / "cache"))
    ids = write_synthetic_voc(tmp_path / "voc", 8, num_classes=5, size=(30, 40), store_path=tmp_path / "cams",
                              jpeg=False)
    return tmp_path, ids


def _files(tmp_path):
    return sorted((tmp_path / "cache").glob(f"*{SUFFIX}"))


def test_run_length_encoding_round_trip():
    rng = np.random.default_rng(0)
    for mask in (rng.integers(0, 3, (7, 9)).astype(np.uint8), np.full((4, 5), 255, np.uint8),
                 np.zeros((0, 3), np.uint8)):
        values, lengths = encode(mask)
        assert int(lengths.sum()) == mask.size
        np.testing.assert_array_equal(np.repeat(values, lengths).reshape(mask.shape), mask)


def test_built_once_reused_and_equal_to_the_pngs(tree):
    tmp_path, ids = tree
    gt = ground_truth(tmp_path / "voc", "train", ids)
    (path,) = _files(tmp_path)
    for i in ids:
        np.testing.assert_array_equal(gt.read(i), read_gt_mask(tmp_path / "voc", i))
    stamp = path.stat().st_mtime_ns
    again = ground_truth(tmp_path / "voc", "train", ids)
    assert again.cache_file == str(path) and path.stat().st_mtime_ns == stamp  # reused, not rewritten
    assert all(np.array_equal(again.read(i), read_gt_mask(tmp_path / "voc", i)) for i in ids)


def test_a_changed_mask_gives_a_new_cache_and_the_old_one_goes(tree):
    tmp_path, ids = tree
    ground_truth(tmp_path / "voc", "train", ids)
    (old,) = _files(tmp_path)
    mask_file = tmp_path / "voc" / "SegmentationClass" / f"{ids[3]}.png"
    changed = read_gt_mask(tmp_path / "voc", ids[3]).copy()
    changed[:5] = 2
    Image.fromarray(changed).save(mask_file)
    os.utime(mask_file, ns=(1, 1))  # a new mtime (and likely size): a new key
    gt = ground_truth(tmp_path / "voc", "train", ids)
    (new,) = _files(tmp_path)
    assert new != old and not old.exists()
    np.testing.assert_array_equal(gt.read(ids[3]), changed)


def test_caches_of_removed_dataset_roots_are_pruned(tree):
    import shutil

    tmp_path, ids = tree
    other = write_synthetic_voc(tmp_path / "gone", 3, num_classes=5, size=(10, 12), jpeg=False)
    ground_truth(tmp_path / "gone", "train", other)
    assert len(_files(tmp_path)) == 1
    shutil.rmtree(tmp_path / "gone")
    ground_truth(tmp_path / "voc", "train", ids)  # a build prunes the cache of the removed tree
    (kept,) = _files(tmp_path)
    assert oct(kept.stat().st_mode & 0o777) == "0o644"


def test_damaged_cache_is_reported_removed_and_bypassed(tree):
    tmp_path, ids = tree
    reference = evaluate_cams(tmp_path / "cams", tmp_path / "voc", "train", boundary_thresholds=[0.25],
                              gt_cache=False)
    ground_truth(tmp_path / "voc", "train", ids)
    (path,) = _files(tmp_path)
    data = bytearray(path.read_bytes())
    data[20] ^= 0x01  # one bit of the first image's runs
    path.write_bytes(bytes(data))
    os.utime(path)
    with pytest.warns(RuntimeWarning, match="fail their CRC-32 check.*removed"):
        result = evaluate_cams(tmp_path / "cams", tmp_path / "voc", "train", boundary_thresholds=[0.25])
    assert result["per_threshold"] == reference["per_threshold"] and result["boundary"] == reference["boundary"]
    assert not path.exists()
    ground_truth(tmp_path / "voc", "train", ids)  # the next evaluation rebuilds it
    assert len(_files(tmp_path)) == 1


def test_truncated_or_foreign_cache_is_rebuilt(tree):
    tmp_path, ids = tree
    ground_truth(tmp_path / "voc", "train", ids)
    (path,) = _files(tmp_path)
    path.write_bytes(path.read_bytes()[:-30])  # a footer cut short
    with pytest.warns(RuntimeWarning, match="rebuilt"):
        gt = ground_truth(tmp_path / "voc", "train", ids)
    np.testing.assert_array_equal(gt.read(ids[0]), read_gt_mask(tmp_path / "voc", ids[0]))
    assert path.stat().st_size > 100


def test_cache_off_or_unwritable_falls_back_to_the_pngs(tree, monkeypatch):
    tmp_path, ids = tree
    monkeypatch.setenv("WSSS_GT_CACHE", "off")
    assert ground_truth(tmp_path / "voc", "train", ids).cache_file is None
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    monkeypatch.setenv("WSSS_GT_CACHE", str(blocker / "cache"))
    with pytest.warns(RuntimeWarning, match="ground-truth cache off: cannot write"):
        gt = ground_truth(tmp_path / "voc", "train", ids)
    assert gt.cache_file is None
    np.testing.assert_array_equal(gt.read(ids[1]), read_gt_mask(tmp_path / "voc", ids[1]))


def test_evaluation_is_identical_with_and_without_cache_and_kernels(tree):
    tmp_path, ids = tree
    runs = [evaluate_cams(tmp_path / "cams", tmp_path / "voc", "train", boundary_thresholds=["best", 0.25],
                          kernel=kernel, gt_cache=cache, workers=workers)
            for kernel, cache, workers in (("numpy", False, 1), ("compiled", True, 1), ("compiled", True, 2))]
    for other in runs[1:]:
        assert other["per_threshold"] == runs[0]["per_threshold"]
        assert other["boundary"] == runs[0]["boundary"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a valid cache gives no warning
        ground_truth(tmp_path / "voc", "train", read_split_ids(tmp_path / "voc", "train"))
