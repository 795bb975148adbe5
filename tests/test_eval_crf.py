"""Dense-CRF pseudo-labels with the real pydensecrf: both reference forms, and refine_cams end to end."""

import numpy as np
import pytest
from PIL import Image

from wsss_core.errors import ConfigError
from wsss_core.evaluation import evaluate_label_dir
from wsss_core.evaluation.crf import RefineConfig, crf_confident_labels, crf_probability_labels, refine_cams
from wsss_core.evaluation.synthetic import write_synthetic_voc


def scene():
    """A red object (CAM 0.9) and a blue region (CAM 0.15, between t_bg and t_fg) on a dark background."""
    h, w = 48, 64
    image = np.full((h, w, 3), 30, np.uint8)
    cam = np.full((h, w), 0.01, np.float32)
    image[8:24, 8:28] = (220, 60, 60)
    cam[8:24, 8:28] = 0.9
    image[28:44, 36:60] = (40, 60, 220)
    cam[28:44, 36:60] = 0.15
    return image, np.array([6]), cam[None]


def test_confident_labels_have_fg_bg_and_uncertain_regions():
    image, keys, cams = scene()
    label = crf_confident_labels(image, keys, cams, RefineConfig())
    assert label.shape == (48, 64) and label.dtype == np.uint8
    assert set(np.unique(label)) == {0, 7, 255}
    assert (label[8:24, 8:28] == 7).all()  # CAM 0.9 > t_fg: confident foreground
    assert (label[28:44, 36:60] == 255).all()  # t_bg < CAM 0.15 < t_fg: uncertain
    assert (label[:4] == 0).all()  # CAM 0.01 < t_bg: confident background
    # with t_fg below 0.15 the blue region becomes confident foreground too
    low = crf_confident_labels(image, keys, cams, RefineConfig(fg_threshold=0.1))
    assert (low[28:44, 36:60] == 7).all()


def test_probability_labels_follow_the_object():
    image, keys, cams = scene()
    label = crf_probability_labels(image, keys, cams, RefineConfig(mode="probability"))
    assert label.shape == (48, 64) and set(np.unique(label)) == {0, 7}
    assert (label[8:24, 8:28] == 7).all() and (label[28:44, 36:60] == 0).all() and (label[:4] == 0).all()
    # alpha 24 shrinks the background score (1 - max)^24 (0.85^24 = 0.02 < 0.15): the blue region flips
    wide = crf_probability_labels(image, keys, cams, RefineConfig(mode="probability", alpha=24.0))
    assert (wide[28:44, 36:60] == 7).all()


def test_no_keys_is_all_background():
    image, _, _ = scene()
    empty = np.zeros((0, 48, 64), np.float32)
    assert not crf_confident_labels(image, np.array([], np.int64), empty, RefineConfig()).any()


def test_refine_cams_writes_palette_pngs_that_evaluate(tmp_path):
    write_synthetic_voc(tmp_path / "voc", 4, num_classes=5, size=(24, 32), store_path=tmp_path / "cams")
    summary = refine_cams(tmp_path / "cams", tmp_path / "voc", "train", tmp_path / "labels",
                          {"mode": "probability"}, workers=1)
    assert summary["written"] == 4
    png = sorted((tmp_path / "labels").glob("*.png"))
    assert len(png) == 4 and Image.open(png[0]).mode == "P"
    result = evaluate_label_dir(tmp_path / "labels", tmp_path / "voc", "train", num_classes=5)
    assert result["per_threshold"][0]["miou"] > 0.3
    again = refine_cams(tmp_path / "cams", tmp_path / "voc", "train", tmp_path / "labels", {"mode": "probability"})
    assert (again["written"], again["skipped"]) == (0, 4)  # resumable: finished images are kept
    with pytest.raises(ConfigError, match="another refine config"):
        refine_cams(tmp_path / "cams", tmp_path / "voc", "train", tmp_path / "labels", {"mode": "confident"})


def test_refine_config_validation():
    with pytest.raises(ConfigError, match="bg_threshold <= fg_threshold"):
        RefineConfig(fg_threshold=0.1, bg_threshold=0.5).validate("refine")
    with pytest.raises(ConfigError, match="'sideways'"):
        from wsss_core.config import from_dict
        from_dict(RefineConfig, {"mode": "sideways"}, "refine")
