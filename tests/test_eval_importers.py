"""Importing reference CAM dicts (IRN, AMN, SEAM/HFPL) into a CamStore."""

import numpy as np
import pytest
import torch

from wsss_core.errors import CamStoreError, ConfigError
from wsss_core.evaluation import CamStore, import_cams


def test_irn_and_amn_dicts(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "irn"
    src.mkdir()
    irn_maps = rng.random((2, 6, 8), dtype=np.float32)
    np.save(src / "a.npy", {"keys": np.array([4, 11]), "cam": irn_maps[:, ::2, ::2], "high_res": irn_maps})
    amn_maps = rng.random((3, 6, 8), dtype=np.float32)  # background channel first, keys as a torch tensor
    np.save(src / "b.npy", {"keys": torch.tensor([0, 7]), "cam": torch.tensor(amn_maps[:, ::2, ::2]),
                            "high_res": amn_maps})
    store = import_cams(src, "irn", tmp_path / "store", num_classes=20)
    keys, cams = store.read("a")
    assert keys.tolist() == [4, 11]
    np.testing.assert_array_equal(cams, irn_maps)
    rec = CamStore(tmp_path / "store").read_full("b")
    assert rec.keys.tolist() == [0, 7]
    np.testing.assert_array_equal(rec.cams, amn_maps[1:])
    np.testing.assert_array_equal(rec.bg, amn_maps[0])


def test_seam_dicts_are_sorted_by_class(tmp_path):
    src = tmp_path / "seam"
    src.mkdir()
    maps = {14: np.full((5, 5), 0.2, np.float32), 2: np.full((5, 5), 0.9, np.float32)}
    np.save(src / "2007_000033.npy", maps)
    store = import_cams(src, "seam", tmp_path / "store", num_classes=20)
    keys, cams = store.read("2007_000033")
    assert keys.tolist() == [2, 14]
    assert cams[:, 0, 0].tolist() == pytest.approx([0.9, 0.2])


def test_import_errors_name_the_file(tmp_path):
    src = tmp_path / "bad"
    src.mkdir()
    np.save(src / "x.npy", {"keys": np.array([1, 2]), "high_res": np.ones((4, 3, 3), np.float32)})
    with pytest.raises(CamStoreError, match="'x'.*4 maps for 2 keys"):
        import_cams(src, "irn", tmp_path / "s1", num_classes=20)
    np.save(src / "x.npy", {1: np.ones((3, 3), np.float32)})
    with pytest.raises(CamStoreError, match="'x'.*no 'keys' entry.*'seam' format"):
        import_cams(src, "irn", tmp_path / "s2", num_classes=20)
    np.save(src / "x.npy", {25: np.ones((3, 3), np.float32)})
    with pytest.raises(CamStoreError, match="'x'.*outside the class range"):
        import_cams(src, "seam", tmp_path / "s3", num_classes=20)
    with pytest.raises(ConfigError, match="valid choices: irn, seam"):
        import_cams(src, "chainer", tmp_path / "s4", num_classes=20)


def test_seam_released_min_max_negatives_import_with_the_same_labels(tmp_path):
    """infer_SEAM.py's normalisation: s < min + 1e-5 -> 0, then (s - min - 1e-5) / (max - min + 1e-5), so each
    class's minimum pixels come out negative. The import keeps every label at every threshold t >= 0."""
    raw = np.array([[0.5, 2.0, 4.5], [0.5, 1.0, 3.0]], np.float32)
    low, high = raw.min(), raw.max()
    zeroed = np.where(raw < low + 1e-5, 0.0, raw)
    released = ((zeroed - low - 1e-5) / (high - low + 1e-5)).astype(np.float32)
    assert (released < 0).any()  # what SEAM writes
    src = tmp_path / "seam"
    src.mkdir()
    np.save(src / "img.npy", {3: released})
    keys, cams = import_cams(src, "seam", tmp_path / "store", num_classes=20).read("img")
    assert keys.tolist() == [3] and (cams >= 0).all()
    for t in (0.0, 0.01, 0.25, 0.5, 0.99):
        np.testing.assert_array_equal(cams[0] > np.float32(t), released > np.float32(t))
