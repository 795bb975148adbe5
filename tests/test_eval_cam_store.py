"""CamStore: round trip, atomic writes, validation with errors that name the image."""

import json

import numpy as np
import pytest

from wsss_core.errors import CamStoreError
from wsss_core.evaluation import CamStore


def test_round_trip_with_and_without_background(tmp_path):
    store = CamStore.create(tmp_path / "s", 20, meta={"run": "abc"})
    rng = np.random.default_rng(0)
    cams = rng.random((3, 7, 9), dtype=np.float32)
    store.write("2007_000032", np.array([1, 4, 19]), cams)
    bg = rng.random((7, 9), dtype=np.float32)
    store.write("b", np.array([2]), cams[:1], bg=bg)
    store.write("empty", np.array([], np.int64), np.zeros((0, 7, 9), np.float32))
    keys, got = CamStore(tmp_path / "s").read("2007_000032")
    assert keys.tolist() == [1, 4, 19] and keys.dtype == np.int64
    np.testing.assert_array_equal(got, cams)
    rec = store.read_full("b")
    np.testing.assert_array_equal(rec.bg, bg)
    assert store.read_full("2007_000032").bg is None
    assert store.read("empty")[1].shape == (0, 7, 9)
    assert store.ids() == ["2007_000032", "b", "empty"]
    assert "b" in store and "nope" not in store
    assert store.num_classes == 20 and store.meta == {"run": "abc"}


def test_stray_temp_file_is_not_listed_and_truncated_file_is_an_error(tmp_path):
    store = CamStore.create(tmp_path / "s", 5)
    store.write("a", np.array([0]), np.ones((1, 4, 4), np.float32))
    data = (tmp_path / "s" / "a.cam").read_bytes()
    (tmp_path / "s" / ".b.cam.x1y2.tmp").write_bytes(data[:40])  # what a killed writer leaves
    assert store.ids() == ["a"] and "b" not in store
    (tmp_path / "s" / "c.cam").write_bytes(data[:40])  # a half file written without the store
    with pytest.raises(CamStoreError, match="'c'.*truncated"):
        store.read("c")
    assert not list((tmp_path / "s").glob(".a.cam*"))  # the writer's own temp file was renamed away


def test_create_and_open_errors(tmp_path):
    with pytest.raises(CamStoreError, match="not a CAM store.*meta.json"):
        CamStore(tmp_path / "missing")
    CamStore.create(tmp_path / "s", 20, class_names=[f"c{i}" for i in range(20)])
    assert CamStore.create(tmp_path / "s", 20).class_names[0] == "c0"  # reopening with the same C is fine
    with pytest.raises(CamStoreError, match="num_classes=20, asked for 80"):
        CamStore.create(tmp_path / "s", 80)
    assert json.loads((tmp_path / "s" / "meta.json").read_text())["num_classes"] == 20
    with pytest.raises(CamStoreError, match="no CAMs for image 'x'"):
        CamStore(tmp_path / "s").read("x")


@pytest.mark.parametrize("keys, cams, message", [
    ([20], np.ones((1, 2, 2)), r"'img': keys \[20\] outside the class range 0..19"),
    ([-1], np.ones((1, 2, 2)), "outside the class range"),
    ([3, 1], np.ones((2, 2, 2)), "sorted ascending"),
    ([1], np.full((1, 2, 2), np.nan), "'img'.*NaN"),
    ([1], -np.ones((1, 2, 2)), "'img'.*negative"),
    ([1], np.full((1, 2, 2), np.inf), "'img'.*infinite"),
    ([1, 2], np.ones((1, 2, 2)), r"shape \(len\(keys\)=2, H, W\)"),
])
def test_write_rejects_bad_maps_naming_the_image(tmp_path, keys, cams, message):
    store = CamStore.create(tmp_path / "s", 20)
    with pytest.raises(CamStoreError, match=message):
        store.write("img", np.array(keys), cams.astype(np.float32))
    assert store.ids() == []


def test_bad_image_ids(tmp_path):
    store = CamStore.create(tmp_path / "s", 3)
    for bad in ("", "../x", ".hidden"):
        with pytest.raises(CamStoreError, match="not valid"):
            store.write(bad, np.array([0]), np.ones((1, 2, 2), np.float32))
