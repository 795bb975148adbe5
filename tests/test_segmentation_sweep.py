"""A sweep with the final segmentation stage on, through the local launcher: the plan counts segmentation
trainings apart, each trial runs to val mIoU with a tracking child run per stage, and the report shows
"final val mIoU" (mean ± std over seeds, Δ against no add-on) and the pseudo-label vs final scatter."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd
import pytest

from analysis.final import final_grid, final_table
from analysis.report import build_report
from sweep_files import tiny_sweep, write_sweep
from wsss.cli import main
from wsss_core.pipeline import layout


FINAL = {"enabled": True, "threshold": "best", "arch": "deeplab_v2", "iterations": 3, "batch_size": 4, "crop": 32,
         "backbone_options": {"widths": [8, 16]}, "aspp_rates": [1, 2]}


def final_sweep(name: str) -> dict:
    sweep = tiny_sweep(name, axes={"addons": {"none": [], "fsl": [{"name": "feature_similarity"}]}, "seed": [0]})
    sweep["base"]["final"] = dict(FINAL)
    return sweep


@pytest.mark.slow
def test_local_sweep_with_the_final_stage_runs_to_val_miou_and_reports_it(tmp_path, capsys):
    path = write_sweep(tmp_path / "final.yaml", final_sweep("final"))
    workdir = tmp_path / "work"
    assert main(["sweep", "plan", str(path), "--workdir", str(workdir), "--brief"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^trainings: 2 ", out, re.M), out  # the classifiers, 2 settings
    assert re.search(r"^segmentation trainings: 2 \(2 to run", out, re.M), out

    assert main(["sweep", "run", str(path), "--workdir", str(workdir)]) == 0  # MLflow on: SQLite in the work dir
    records = layout.list_trials(workdir, "final")
    assert len(records) == 2
    for record in records:
        assert record["state"] == "finished", record["error"]
        assert list(record["stages"])[-3:] == ["pseudo_labels", "seg_train", "seg_eval"]
        assert record["eval_json"].endswith(f"{record['stages']['eval']['key']}/eval.json")
        summary = layout.read_stage(Path(record["stages"]["seg_eval"]["dir"]))["summary"]
        assert 0.0 <= summary["final_miou"] <= 1.0
        assert {"pseudo_labels", "seg_train", "seg_eval"} <= set(record["tracking"]["run_ids"])  # child runs
    capsys.readouterr()

    report = build_report("final", workdir, source="records", out_dir=tmp_path / "report")
    final = report["final"]
    assert list(final["addons"]) == ["none", "fsl"] and list(final["n_seeds"]) == [1, 1]
    trials = report["trials"]
    for setting, row in final.set_index("addons").iterrows():
        assert row["final_miou_mean"] == trials.loc[trials["addons"] == setting, "final_miou"].iloc[0]
    none, fsl = final.set_index("addons").loc["none"], final.set_index("addons").loc["fsl"]
    assert math.isnan(none["final_miou_delta"])
    assert fsl["final_miou_delta"] == pytest.approx(fsl["final_miou_mean"] - none["final_miou_mean"])
    # pseudo-label mIoU: the eval stage's row at the threshold the labels used (here: the best one)
    for _, trial in trials.iterrows():
        assert trial["pseudo_miou"] == pytest.approx(trial["best_miou"])
        assert trial["final_threshold"] == trial["best_threshold"]
    assert report["paths"]["pseudo_vs_final_png"].is_file()
    md = report["paths"]["final_md"].read_text()
    assert "final val mIoU" in md and "pseudo-label mIoU" in md
    assert "Final segmentation network (val)" in report["text"]
    records_md = (tmp_path / "report" / "trials.csv").read_text()
    assert "final_miou" in records_md.splitlines()[0]


def test_final_table_mean_std_over_seeds_and_delta_against_no_addon():
    trials = pd.DataFrame({"trial_id": list("abcdef"), "baseline": ["cam"] * 6,
                           "addons": ["none", "none", "fsl", "fsl", "is", "is"], "seed": [0, 1] * 3,
                           "addons_list": [(), (), ("fsl",), ("fsl",), ("is",), ("is",)],
                           "pseudo_miou": [0.40, 0.42, 0.45, 0.47, 0.39, 0.41],
                           "final_miou": [0.50, 0.54, 0.58, 0.60, 0.49, 0.51]})
    trials.attrs["axes"] = ["baseline", "addons", "seed"]
    table = final_table(trials).set_index("addons")
    assert table.loc["fsl", "final_miou_mean"] == pytest.approx(0.59)
    assert table.loc["fsl", "final_miou_std"] == pytest.approx(math.sqrt(((0.58 - 0.59) ** 2 + (0.60 - 0.59) ** 2) / 1))
    assert table.loc["fsl", "final_miou_delta"] == pytest.approx(0.59 - 0.52)
    assert table.loc["is", "final_miou_delta"] == pytest.approx(0.50 - 0.52)
    assert table.loc["fsl", "pseudo_miou_delta"] == pytest.approx(0.46 - 0.41)
    assert math.isnan(table.loc["none", "final_miou_delta"])
    header, rows = final_grid(final_table(trials))
    assert header[-2:] == ["pseudo-label mIoU", "final val mIoU"]
    assert rows[1][-1] == "59.0 ± 1.4 (+7.0)"
