"""`wsss eval` and `wsss refine` end to end on a tiny generated tree."""

import csv
import json

import numpy as np

from wsss.cli import main
from wsss_core.evaluation.synthetic import write_synthetic_voc


def test_eval_prints_table_and_writes_outputs(tmp_path, capsys):
    write_synthetic_voc(tmp_path / "voc", 6, num_classes=5, size=(24, 32), store_path=tmp_path / "cams")
    rc = main(["eval", "--cams", str(tmp_path / "cams"), "--data", str(tmp_path / "voc"), "--split", "train",
               "--thresholds", "0:0.5:0.05", "--boundary-at", "0.25,best", "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "<- best" in out and "best mIoU" in out and "boundary F (t=0.25)" in out
    result = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert len(result["per_threshold"]) == 11 and result["num_images"] == 6
    rows = list(csv.DictReader(open(tmp_path / "out" / "eval.csv")))
    assert len(rows) == 11 and sum(int(r["best"]) for r in rows) == 1
    assert (tmp_path / "out" / "threshold_curve.png").stat().st_size > 1000


def test_import_then_eval_and_refine_then_eval_labels(tmp_path, capsys):
    ids = write_synthetic_voc(tmp_path / "voc", 3, num_classes=5, size=(24, 32))
    (tmp_path / "seam").mkdir()
    for i in ids:
        np.save(tmp_path / "seam" / f"{i}.npy", {1: np.linspace(0, 1, 24 * 32, dtype=np.float32).reshape(24, 32)})
    rc = main(["eval", "--cams", str(tmp_path / "store"), "--import-format", "seam", "--import-dir",
               str(tmp_path / "seam"), "--data", str(tmp_path / "voc"), "--split", "train", "--boundary-at", "none"])
    assert rc == 0 and (tmp_path / "store" / "eval" / "eval.json").is_file()
    rc = main(["refine", "--cams", str(tmp_path / "store"), "--data", str(tmp_path / "voc"), "--split", "train",
               "--out", str(tmp_path / "labels"), "--mode", "confident", "--bilateral-sxy", "30", "--eval"])
    out = capsys.readouterr().out
    assert rc == 0 and "3 written" in out and "labels" in out
    assert json.loads((tmp_path / "labels" / "refine.json").read_text())["config"]["confident_crf"]["bilateral_sxy"] == 30


def test_user_errors_are_one_line_exit_2(tmp_path, capsys):
    write_synthetic_voc(tmp_path / "voc", 2, num_classes=5, size=(8, 8), jpeg=False)
    rc = main(["eval", "--cams", str(tmp_path / "nope"), "--data", str(tmp_path / "voc"), "--split", "train"])
    err = capsys.readouterr().err
    assert rc == 2 and "not a CAM store" in err and err.count("\n") == 1
    rc = main(["eval", "--labels", str(tmp_path), "--data", str(tmp_path / "voc"), "--split", "val"])
    assert rc == 2 and "available splits: train" in capsys.readouterr().err
