"""Evaluation protocols (irn, seam, hfpl, project) on hand-written 2-image cases, values worked out by hand."""

import json
import typing

import numpy as np
import pytest
from PIL import Image

from wsss.cli import main
from wsss_core.config import from_dict
from wsss_core.errors import ConfigError
from wsss_core.evaluation import CamStore, evaluate_cams, evaluate_label_dir, format_table
from wsss_core.evaluation.boundary import BoundaryScore
from wsss_core.evaluation.protocols import DEFAULT_PROTOCOL, PROTOCOLS, resolve_protocol
from wsss_core.training.config import EvalConfig

C = 3  # foreground classes 1..3; class 3 appears in no ground truth and no prediction


def write_tree(root, gts: dict) -> None:
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    for image_id, gt in gts.items():
        Image.fromarray(np.asarray(gt, np.uint8)).save(root / "SegmentationClass" / f"{image_id}.png")
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(gts) + "\n")


def write_labels(folder, preds: dict) -> None:
    folder.mkdir()
    for image_id, pred in preds.items():
        Image.fromarray(np.asarray(pred, np.uint8)).save(folder / f"{image_id}.png")


GTS = {"a": [[0, 0, 1, 1],
             [0, 255, 1, 2]],
       "b": [[0, 2, 2],
             [0, 0, 2]]}
PREDS = {"a": [[0, 1, 1, 1],
               [255, 0, 1, 0]],  # a predicted 255 on gt 0; the gt-255 pixel is left out whatever it predicts
         "b": [[0, 2, 0],
               [255, 0, 2]]}
# Pixels (gt, pred) without gt 255: a: (0,0) (0,1) (1,1) (1,1) (0,255) (1,1) (2,0); b: (0,0) (2,2) (2,0)
# (0,255) (0,0) (2,2). Confusion without the 255s: gt0 -> [3, 1, 0, 0], gt1 -> [0, 3, 0, 0],
# gt2 -> [2, 0, 2, 0], gt3 -> nothing; two predicted 255s on gt 0.
EXPECTED = {
    # 255 -> background: TP0 = 5, GT0 = 6, P0 = 7; IoU = 5/8, 3/4, 2/4, 0/0 (left out of the mean)
    "irn": {"iou": [5 / 8, 3 / 4, 2 / 4, None], "miou": (5 / 8 + 3 / 4 + 2 / 4) / 3,
            "precision": [5 / 7, 3 / 4, 2 / 2, None], "recall": [5 / 6, 3 / 3, 2 / 4, None]},
    # 255 wrong: TP0 = 3, T0 = 6 (the 255s included), P0 = 5; IoU = 3/8, 3/4, 2/4, 0/(0 + 1e-10) = 0, mean over 4
    "seam": {"iou": [3 / 8, 3 / 4, 2 / 4, 0.0], "miou": (3 / 8 + 3 / 4 + 2 / 4 + 0) / 4,
             "precision": [3 / 5, 3 / 4, 2 / 2, 0.0], "recall": [3 / 6, 3 / 3, 2 / 4, 0.0]},
    # 255 wrong, nanmean: the same IoUs as seam, class 3 left out
    ("project", "wrong"): {"iou": [3 / 8, 3 / 4, 2 / 4, None], "miou": (3 / 8 + 3 / 4 + 2 / 4) / 3,
                           "precision": [3 / 5, 3 / 4, 2 / 2, None], "recall": [3 / 6, 3 / 3, 2 / 4, None]},
    # 255 left out: GT0 = 4, P0 = 5, TP0 = 3
    ("project", "ignore"): {"iou": [3 / 6, 3 / 4, 2 / 4, None], "miou": (3 / 6 + 3 / 4 + 2 / 4) / 3,
                            "precision": [3 / 5, 3 / 4, 2 / 2, None], "recall": [3 / 4, 3 / 3, 2 / 4, None]},
}
EXPECTED["hfpl"] = EXPECTED["seam"]


def _approx(values):
    return pytest.approx([np.nan if v is None else v for v in values], nan_ok=True, rel=1e-9)


def _nan(values):
    return [np.nan if v is None else v for v in values]


@pytest.mark.parametrize("case", ["irn", "seam", "hfpl", ("project", "wrong"), ("project", "ignore")],
                         ids=["irn", "seam", "hfpl", "project-wrong", "project-ignore"])
def test_each_protocol_on_a_two_image_label_confusion(tmp_path, case):
    protocol, pred_255 = (case, None) if isinstance(case, str) else case
    write_tree(tmp_path / "voc", GTS)
    write_labels(tmp_path / "labels", PREDS)
    result = evaluate_label_dir(tmp_path / "labels", tmp_path / "voc", "train", num_classes=C, boundary=False,
                                protocol=protocol, pred_255=pred_255)
    row, want = result["per_threshold"][0], EXPECTED[case]
    assert _nan(row["iou"]) == _approx(want["iou"])
    assert row["miou"] == pytest.approx(want["miou"], rel=1e-9)
    assert _nan(row["precision"]) == _approx(want["precision"])
    assert _nan(row["recall"]) == _approx(want["recall"])
    assert result["protocol"]["name"] == protocol
    assert result["pred_255"] == result["protocol"]["pred_255"] == (pred_255 or PROTOCOLS[protocol].pred_255)
    assert result["void_predictions"] == [2, 0, 0, 0]


def test_seam_epsilon_is_in_every_denominator(tmp_path):
    write_tree(tmp_path / "voc", GTS)
    write_labels(tmp_path / "labels", PREDS)
    result = evaluate_label_dir(tmp_path / "labels", tmp_path / "voc", "train", num_classes=C, boundary=False,
                                protocol="seam")
    # SEAM: TP / (T + P - TP + 1e-10) in float64, exactly
    assert result["per_threshold"][0]["iou"][0] == 3 / (6 + 5 - 3 + 1e-10)
    assert result["per_threshold"][0]["iou"][3] == 0.0


def test_each_protocol_on_two_cam_images(tmp_path):
    write_tree(tmp_path / "voc", {"a": [[0, 1, 1], [0, 0, 255]], "b": [[2, 2], [0, 0]]})
    store = CamStore.create(tmp_path / "cams", C)
    store.write("a", np.array([0]), np.array([[[0.2, 0.9, 0.4], [0.6, 0.1, 0.7]]], np.float32))
    store.write("b", np.array([0, 1]), np.array([[[0.3, 0.8], [0.1, 0.2]],
                                                 [[0.7, 0.8], [0.2, 0.6]]], np.float32))
    # t = 0.5: a predicts [[0, 1, 0], [1, 0, 1]]; b predicts [[2, 1], [0, 2]] (0.8 = 0.8: the lower class wins).
    # Confusion: gt0 -> [3, 1, 1, 0], gt1 -> [1, 1, 0, 0], gt2 -> [0, 1, 1, 0]; IoU = 3/6, 1/4, 1/3, 0/0.
    ious = [3 / 6, 1 / 4, 1 / 3]
    for protocol, miou in (("irn", sum(ious) / 3), ("project", sum(ious) / 3), ("seam", sum(ious) / 4),
                           ("hfpl", sum(ious) / 4)):
        result = evaluate_cams(tmp_path / "cams", tmp_path / "voc", "train", thresholds=[0.5],
                               boundary_thresholds=[], protocol=protocol)
        assert result["best"]["miou"] == pytest.approx(miou, rel=1e-9), protocol
        assert result["protocol"]["name"] == protocol


def test_hfpl_boundary_convention_for_a_class_without_boundaries():
    gt = np.zeros((8, 8), np.uint8)
    gt[1:4, 1:4] = 1
    gt[5:7, 5:7] = 2
    pred = np.where(gt == 1, 1, 0).astype(np.uint8)  # class 1 exact, class 2 missed, class 3 nowhere
    score = BoundaryScore(num_classes=3)
    score.add(pred, gt)
    # class 1: P = R = F = 1; class 2: no predicted boundary -> P = 1, R = 0, F = 0 (DAVIS); class 3: none
    drop = score.summary("drop")
    assert (drop["precision"], drop["recall"], drop["f"]) == (1.0, 0.5, 0.5)
    assert np.isnan(drop["per_class_f"][2])
    hfpl = score.summary("perfect")  # class 3 scores P = R = F = 1 and the means divide by 3
    assert hfpl["per_class_f"] == [1.0, 0.0, 1.0]
    assert hfpl["precision"] == pytest.approx(1.0)
    assert hfpl["recall"] == pytest.approx(2 / 3) and hfpl["f"] == pytest.approx(2 / 3)


def test_boundary_convention_follows_the_protocol(tmp_path):
    gt = np.zeros((8, 8), np.uint8)
    gt[1:4, 1:4] = 1
    gt[5:7, 5:7] = 2
    write_tree(tmp_path / "voc", {"a": gt})
    write_labels(tmp_path / "labels", {"a": np.where(gt == 1, 1, 0)})
    f = {p: evaluate_label_dir(tmp_path / "labels", tmp_path / "voc", "train", num_classes=3,
                               protocol=p)["boundary"][0]["f"] for p in PROTOCOLS}
    assert f["hfpl"] == f["seam"] == pytest.approx(2 / 3)
    assert f["irn"] == f["project"] == pytest.approx(1 / 2)


def test_protocol_errors_list_the_valid_choices():
    with pytest.raises(ConfigError, match="protocol: 'chainer' is not valid; valid choices: 'irn'.*'seam'.*'hfpl'"
                                          ".*'project'"):
        resolve_protocol("chainer")
    with pytest.raises(ConfigError, match="'ignore' conflicts with protocol 'irn'.*background.*use protocol 'project'"):
        resolve_protocol("irn", "ignore")
    with pytest.raises(ConfigError, match="'wrong' conflicts with protocol 'irn'.*'seam' or 'hfpl' or 'project'"):
        resolve_protocol("irn", "wrong")
    with pytest.raises(ConfigError, match="'background' conflicts with protocol 'hfpl'.*use protocol 'irn'"):
        resolve_protocol("hfpl", "background")
    with pytest.raises(ConfigError, match="pred_255: 'maybe' is not valid"):
        resolve_protocol("project", "maybe")
    assert resolve_protocol("seam", "wrong").pred_255 == "wrong"
    assert resolve_protocol().name == DEFAULT_PROTOCOL == "irn"
    with pytest.raises(ConfigError, match="eval.protocol: 'x' is not valid; valid choices: 'irn', 'seam', 'hfpl', "
                                          "'project'"):
        from_dict(EvalConfig, {"protocol": "x"}, "eval")
    # the config's choices are the presets
    assert typing.get_args(typing.get_type_hints(EvalConfig)["protocol"]) == tuple(PROTOCOLS)


def test_cli_protocol_recorded_and_named_in_the_table(tmp_path, capsys):
    write_tree(tmp_path / "voc", GTS)
    write_labels(tmp_path / "labels", PREDS)
    rc = main(["eval", "--labels", str(tmp_path / "labels"), "--data", str(tmp_path / "voc"), "--split", "train",
               "--num-classes", "3", "--protocol", "seam", "--boundary-at", "none", "--out", str(tmp_path / "o")])
    out = capsys.readouterr().out
    assert rc == 0 and "(protocol seam)" in out.splitlines()[0]
    saved = json.loads((tmp_path / "o" / "eval.json").read_text())
    assert saved["protocol"] == {"name": "seam", "reference": PROTOCOLS["seam"].reference, "pred_255": "wrong",
                                 "class_mean": "all", "iou_epsilon": 1e-10, "boundary_empty_class": "perfect",
                                 "gt_255": "ignored for mIoU; background for boundary F"}
    assert saved["per_threshold"][0]["miou"] == pytest.approx(EXPECTED["seam"]["miou"])
    assert "(protocol project, pred 255 ignore)" in format_table({**saved, "protocol": resolve_protocol(
        "project", "ignore").describe()})
    rc = main(["eval", "--labels", str(tmp_path / "labels"), "--data", str(tmp_path / "voc"), "--split", "train",
               "--num-classes", "3", "--protocol", "irn", "--pred-255", "ignore"])
    err = capsys.readouterr().err
    assert rc == 2 and "conflicts with protocol 'irn'" in err
