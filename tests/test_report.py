"""`wsss report`: the ablation, robustness and contour tables reproduce the trials' eval.json numbers exactly,
from trial records and from MLflow (paged), as Markdown, LaTeX and CSV, with the plots."""

from __future__ import annotations

import json
import os
import statistics

import pandas as pd
import pytest

from analysis.collect import trials_from_mlflow
from analysis.report import build_report, format_ablation_markdown
from fake_sweep import fake_sweep, initialised_sqlite_store
from wsss.cli import main as wsss
from wsss_core.data.synth import generate_synthetic_voc
from wsss_core.tracking import prepare_sweep_tracking, stage_sink

SWEEP = "ablation"
SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    os.environ["WSSS_PROGRESS"] = "0"
    base = tmp_path_factory.mktemp("report")
    workdir = base / "work"
    initialised_sqlite_store(workdir / "mlflow.db")
    data = generate_synthetic_voc(base / "data", n_train=4, n_val=1, n_aug_extra=0, size=40, show_progress=False)
    trials = fake_sweep(workdir, SWEEP, data, baselines=("cam", "seam"), seeds=SEEDS)
    ctx = prepare_sweep_tracking(SWEEP, None, workdir)
    for trial in trials:
        record = trial.record
        tags = {k: record[k] for k in ("baseline", "addons", "posterior", "seed")}
        with stage_sink(ctx, trial.stage_dirs["eval"], "eval", {**tags, "trial_id": trial.trial_id,
                                                                 "axes": record["axes"]}) as sink:
            sink.log_eval(trial.result, trial.eval_dir, overlays=False)
            sink.set_status("finished")
    return workdir, trials


def expected(trials, fixed=0.25):
    """Per (baseline, setting): mean and std over seeds of best and fixed-threshold mIoU, from eval.json."""
    groups: dict[tuple, dict[str, list]] = {}
    for trial in trials:
        result = json.loads((trial.eval_dir / "eval.json").read_text())
        row = [r for r in result["per_threshold"] if r["threshold"] == fixed][0]
        key = (trial.record["baseline"], trial.record["axes"]["addons"])
        groups.setdefault(key, {"best": [], "fixed": []})
        groups[key]["best"].append(result["best"]["miou"])
        groups[key]["fixed"].append(row["miou"])
    return groups


def check_ablation(report, trials):
    groups = expected(trials)
    table = report["ablation"].set_index(["baseline", "addons"])
    assert len(table) == len(groups) == 4
    for (baseline, setting), values in groups.items():
        row = table.loc[(baseline, setting)]
        assert row["n_seeds"] == len(SEEDS)
        assert row["best_miou_mean"] == pytest.approx(statistics.mean(values["best"]), abs=1e-12)
        assert row["best_miou_std"] == pytest.approx(statistics.stdev(values["best"]), abs=1e-12)
        assert row["fixed_miou_mean"] == pytest.approx(statistics.mean(values["fixed"]), abs=1e-12)
        assert row["fixed_miou_std"] == pytest.approx(statistics.stdev(values["fixed"]), abs=1e-12)
        if setting == "none":
            assert pd.isna(row["best_miou_delta"])
        else:
            reference = statistics.mean(groups[(baseline, "none")]["best"])
            assert row["best_miou_delta"] == pytest.approx(statistics.mean(values["best"]) - reference, abs=1e-12)
    per_trial = report["trials"].set_index("trial_id")
    for trial in trials:
        assert per_trial.loc[trial.trial_id, "best_miou"] == trial.result["best"]["miou"]  # exactly
        assert per_trial.loc[trial.trial_id, "robust_width"] == trial.result["robustness"]["plateau_width"]


def test_report_from_records(sweep, tmp_path):
    workdir, trials = sweep
    report = build_report(SWEEP, workdir, source="records", out_dir=tmp_path / "out")
    check_ablation(report, trials)
    assert report["ablation"].attrs["reference"] == "none"
    for name in ("ablation", "robustness", "contour"):
        for kind in ("md", "tex", "csv"):
            assert report["paths"][f"{name}_{kind}"].stat().st_size > 0
        tex = report["paths"][f"{name}_tex"].read_text()
        assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex
    for png in ("threshold_curves_png", "addon_delta_png"):
        assert report["paths"][png].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = format_ablation_markdown(report)
    assert markdown.splitlines()[0].startswith("| baseline | none (best t) | none (t=0.25) | is_binomial (best t)")
    cam = statistics.mean(expected(trials)[("cam", "none")]["best"])
    assert f"| cam | {100 * cam:.1f} ± " in markdown
    csv = pd.read_csv(report["paths"]["ablation_csv"])
    assert set(csv["addons"]) == {"none", "is_binomial"} and len(csv) == 4


def test_report_from_mlflow_matches_records(sweep, tmp_path):
    workdir, trials = sweep
    from_mlflow = build_report(SWEEP, workdir, source="mlflow", out_dir=tmp_path / "mlflow")
    check_ablation(from_mlflow, trials)
    from_records = build_report(SWEEP, workdir, source="records", out_dir=tmp_path / "records")
    assert from_mlflow["markdown"] == from_records["markdown"]
    for name in ("robustness", "contour"):
        pd.testing.assert_frame_equal(from_mlflow[name], from_records[name], check_exact=False, rtol=0, atol=1e-12)
    paged = trials_from_mlflow(SWEEP, f"sqlite:///{workdir.resolve() / 'mlflow.db'}", page_size=5)
    assert len(paged) == len(trials)  # three pages


def test_wsss_report_cli_by_sweep_name(sweep, tmp_path, capsys):
    workdir, trials = sweep
    out = tmp_path / "cli"
    assert wsss(["report", SWEEP, "--workdir", str(workdir), "--from", "mlflow", "--out", str(out),
                 "--fixed-threshold", "0.3"]) == 0
    printed = capsys.readouterr().out
    assert f"{len(trials)} trials" in printed and "mIoU t=0.3" in printed
    # the terminal gets one row per baseline x add-on setting, readable in 120 columns; the file keeps the
    # paper layout (settings as columns); both name the protocol and carry the calibration rows
    assert max(len(line) for line in printed.splitlines()) <= 120
    for baseline, setting in {(t.record["baseline"], t.record["axes"]["addons"]) for t in trials}:
        assert any(line.split()[:2] == [baseline, setting] for line in printed.splitlines()), (baseline, setting)
    md = (out / "ablation.md").read_text()
    assert "none (t=0.3)" in md and md.startswith("Evaluation protocol: irn")
    for name in ("ablation", "robustness", "contour"):  # the LaTeX captions name the protocol too
        assert "Scored with protocol irn" in (out / f"{name}.tex").read_text(), name
    for text in (printed, md):
        assert "all background" in text and "ground-truth boxes" in text
    assert wsss(["report", "no-such-sweep", "--workdir", str(workdir)]) == 2
    assert "no trial records" in capsys.readouterr().err
