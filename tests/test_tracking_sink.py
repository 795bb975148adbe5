"""A stage sink on a SQLite store: the evaluation as threshold curves and summary metrics equal to eval.json,
MLflow's limits, a resumed stage continuing its run, an unreachable store never failing the trial."""

from __future__ import annotations

import json
import os
import socket
from dataclasses import replace

import pytest

from fake_sweep import fake_sweep, initialised_sqlite_store
from wsss_core.data.synth import generate_synthetic_voc
from wsss_core.tracking import eval_metrics, prepare_sweep_tracking, stage_sink
from wsss_core.tracking.store import MAX_PARAM_VALUE, client


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    os.environ["WSSS_PROGRESS"] = "0"
    base = tmp_path_factory.mktemp("sink")
    initialised_sqlite_store(base / "work" / "mlflow.db")
    data = generate_synthetic_voc(base / "data", n_train=4, n_val=1, n_aug_extra=0, size=40, show_progress=False)
    trials = fake_sweep(base / "work", "sinks", data, baselines=("cam",), seeds=(0,))
    ctx = prepare_sweep_tracking("sinks", None, base / "work")
    return ctx, trials


def closed_port_uri() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_log_eval_gives_the_threshold_curve_of_eval_json(sweep):
    ctx, trials = sweep
    trial = trials[0]
    sink = stage_sink(ctx, trial.stage_dirs["eval"], "eval", {"trial_id": trial.trial_id, "addons": []},
                      {"eval": {"split": "train", "note": "x" * (MAX_PARAM_VALUE + 50)}})
    sink.log_eval(trial.result, trial.eval_dir)
    sink.set_status("finished")
    mlflow = client(ctx.tracking_uri)
    run = mlflow.get_run(sink.run_id)
    rows = trial.result["per_threshold"]
    for key, field in (("miou_by_threshold", "miou"), ("precision_by_threshold", "mean_precision"),
                       ("recall_by_threshold", "mean_recall")):
        history = mlflow.get_metric_history(sink.run_id, key)
        assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == \
            [(round(r["threshold"] * 100), r[field]) for r in rows]
    best = trial.result["best"]
    assert run.data.metrics["best_miou"] == best["miou"] and run.data.metrics["best_threshold"] == best["threshold"]
    assert run.data.metrics["robust_mean_miou"] == trial.result["robustness"]["mean_miou_near_best"]
    at_best = [b for b in trial.result["boundary"] if b["threshold"] == best["threshold"]][0]
    assert run.data.metrics["contour_f_best"] == at_best["f"]
    assert run.data.metrics["contour_recall_best"] == at_best["recall"]
    assert run.data.tags["addons"] == "none" and run.data.tags["threshold_step_scale"] == "100"
    assert run.info.status == "FINISHED"
    assert len(run.data.params["eval.note"]) == MAX_PARAM_VALUE  # clipped to MLflow's limit, not refused
    artifacts = {a.path for a in mlflow.list_artifacts(sink.run_id)} | \
        {a.path for a in mlflow.list_artifacts(sink.run_id, "eval")}
    assert {"config.yaml", "eval/eval.json", "eval/overlays.png"} <= artifacts


def test_finer_threshold_grids_get_a_finer_step_scale():
    result = {"per_threshold": [{"threshold": t, "miou": t, "mean_precision": t, "mean_recall": t}
                                for t in (0.1, 0.105, 0.11)], "best": {"threshold": 0.11, "miou": 0.11}}
    series, summary, scale = eval_metrics(result)
    assert scale == 1000 and [s for s, _ in series["miou_by_threshold"]] == [100, 105, 110]


def test_resumed_stage_continues_its_run_without_duplicate_points(sweep):
    ctx, trials = sweep
    stage_dir = trials[1].stage_dirs["train"]
    first = stage_sink(ctx, stage_dir, "train", {"trial_id": trials[1].trial_id})
    for step in range(4):
        first.log_metrics({"loss": 1.0 / (step + 1)}, step)
    first.set_status("failed", "RuntimeError: preempted")
    assert client(ctx.tracking_uri).get_run(first.run_id).data.tags["error"] == "RuntimeError: preempted"
    second = stage_sink(ctx, stage_dir, "train", {"trial_id": trials[1].trial_id})
    assert second.run_id == first.run_id and second.resumed
    for step in range(2, 6):
        second.log_metrics({"loss": 1.0 / (step + 1)}, step)
    second.set_status("finished")
    mlflow = client(ctx.tracking_uri)
    assert [m.step for m in mlflow.get_metric_history(first.run_id, "loss")] == list(range(6))
    assert mlflow.get_run(first.run_id).info.status == "FINISHED"
    runs = mlflow.search_runs([ctx.experiment_id], filter_string=f"tags.trial_id = '{trials[1].trial_id}'")
    assert len(runs) == 1


def test_unreachable_store_is_recorded_locally_and_never_raises(sweep, tmp_path):
    ctx, trials = sweep
    down = replace(ctx, tracking_uri=closed_port_uri())
    sink = stage_sink(down, tmp_path / "stage", "eval", {"trial_id": "offline"}, {"eval": {"split": "train"}})
    sink.log_metrics({"loss": 0.5}, 0)
    sink.log_eval(trials[0].result, trials[0].eval_dir)
    sink.set_status("finished")
    sink.close()
    assert sink.offline and sink.run_id is None
    entries = [json.loads(line) for line in (tmp_path / "stage" / "tracking_buffer.jsonl").read_text().splitlines()]
    kinds = [e["kind"] for e in entries]
    assert kinds[0] == "open" and kinds[-1] == "status" and "artifacts" in kinds and "params" in kinds
    assert entries[0]["tags"]["mlflow.parentRunId"] == ctx.parent_run_id
