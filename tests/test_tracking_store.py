"""The sweep store is initialised once by the submitter; then 8 trial processes log at once and every run
lands in the sweep's experiment under its parent (none misfiled into Default)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from wsss_core.tracking import TrackingContext, prepare_sweep_tracking
from wsss_core.tracking.store import client, default_tracking_uri

REPO = Path(__file__).resolve().parents[1]
WRITER = """
import json, sys
from wsss_core.tracking import TrackingContext, stage_sink
ctx = TrackingContext(**json.loads(sys.argv[1]))
i = int(sys.argv[2])
sink = stage_sink(ctx, sys.argv[3], "train", {"trial_id": f"t{i}", "seed": i, "baseline": "cam", "addons": []},
                  {"train": {"lr": 0.1, "seed": i}})
for step in range(3):
    sink.log_metrics({"loss": i + step / 10}, step)
sink.set_status("finished")
sink.close()
assert not sink.offline, "the sink lost the store"
"""


def test_store_initialised_once_then_eight_concurrent_writers(tmp_path):
    workdir = tmp_path / "work"
    ctx = prepare_sweep_tracking("concurrent", None, workdir, {"sweep": {"seeds": 8}}, {"launcher": "local"})
    assert ctx.tracking_uri == default_tracking_uri(workdir) and (workdir / "mlflow.db").is_file()
    record = json.loads((workdir / "sweeps" / "concurrent" / "tracking.json").read_text())
    assert record["stores"][ctx.tracking_uri]["parent_run_id"] == ctx.parent_run_id
    # a resubmission reuses the experiment and the parent run
    assert prepare_sweep_tracking("concurrent", None, workdir) == ctx
    assert TrackingContext(**json.loads(json.dumps(ctx.to_dict()))) == ctx  # travels to trials as plain data

    env = {**os.environ, "PYTHONPATH": str(REPO), "WSSS_PROGRESS": "0"}
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, json.dumps(ctx.to_dict()), str(i),
                                 str(workdir / "stages" / f"t{i}")], env=env, stderr=subprocess.PIPE, text=True)
               for i in range(8)]
    for writer in writers:
        _, err = writer.communicate(timeout=240)
        assert writer.returncode == 0, err[-2000:]

    mlflow = client(ctx.tracking_uri)
    runs = mlflow.search_runs([ctx.experiment_id], max_results=100)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == ctx.parent_run_id]
    assert len(runs) == 9 and len(children) == 8
    assert sorted(r.data.tags["trial_id"] for r in children) == [f"t{i}" for i in range(8)]
    assert all(r.info.status == "FINISHED" for r in children)
    assert not mlflow.search_runs(["0"])  # Default experiment: nothing misfiled
    for run in children:
        i = int(run.data.tags["seed"])
        assert [m.value for m in mlflow.get_metric_history(run.info.run_id, "loss")] == [i, i + 0.1, i + 0.2]
        assert run.data.params["train.seed"] == str(i)
    experiment = mlflow.get_experiment(ctx.experiment_id)
    assert experiment.name == "wsss/concurrent"
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on its runs
    assert experiment.artifact_location == (workdir.resolve() / "mlartifacts").as_uri()
