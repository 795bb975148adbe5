"""`wsss sync` uploads what stage sinks recorded while the store was unreachable: complete, in order, and
idempotent (a sync that died before marking its entries, or a second sync, logs nothing twice)."""

from __future__ import annotations

import json
import os
import socket
from dataclasses import replace

from fake_sweep import fake_sweep, initialised_sqlite_store
from wsss.cli import main as wsss
from wsss_core.data.synth import generate_synthetic_voc
from wsss_core.tracking import prepare_sweep_tracking, stage_sink, sync_workdir
from wsss_core.tracking.record import StageRecord
from wsss_core.tracking.store import client


def closed_port_uri() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_sync_is_complete_and_idempotent(tmp_path):
    os.environ["WSSS_PROGRESS"] = "0"
    workdir = tmp_path / "work"
    initialised_sqlite_store(workdir / "mlflow.db")
    data = generate_synthetic_voc(tmp_path / "data", n_train=4, n_val=1, n_aug_extra=0, size=40, show_progress=False)
    trial = fake_sweep(workdir, "syncs", data, baselines=("cam",), addon_settings={"none": ([], None)}, seeds=(0,))[0]
    ctx = prepare_sweep_tracking("syncs", None, workdir)
    down = replace(ctx, tracking_uri=closed_port_uri())
    mlflow = client(ctx.tracking_uri)

    # train stage: starts online, the store goes away mid-training (same parent: the run id is known)
    train_dir = trial.stage_dirs["train"]
    online = stage_sink(ctx, train_dir, "train", {"trial_id": trial.trial_id}, {"train": {"lr": 0.1}})
    for step in range(3):
        online.log_metrics({"loss": float(step)}, step)
    offline = stage_sink(down, train_dir, "train", {"trial_id": trial.trial_id}, {"train": {"lr": 0.1}})
    assert offline.offline and offline.run_id == online.run_id
    for step in range(3, 6):
        offline.log_metrics({"loss": float(step)}, step)
    offline.set_status("finished")
    # eval stage: the store is unreachable from the start (the run is created by the sync)
    eval_sink = stage_sink(down, trial.stage_dirs["eval"], "eval", {"trial_id": trial.trial_id})
    eval_sink.log_eval(trial.result, trial.eval_dir)
    eval_sink.set_status("finished")

    # while the store is unreachable `wsss sync` fails softly and keeps everything pending
    assert wsss(["sync", "--workdir", str(workdir), "--tracking-uri", down.tracking_uri]) == 1
    assert StageRecord(train_dir).has_pending() and StageRecord(trial.stage_dirs["eval"]).has_pending()

    stats = sync_workdir(workdir, tracking_uri=ctx.tracking_uri)
    assert stats.runs_created == 1 and stats.stages == 2 and not stats.refused and not stats.unreachable
    runs = mlflow.search_runs([ctx.experiment_id])
    assert len(runs) == 3  # parent, train, eval
    assert [(m.step, m.value) for m in mlflow.get_metric_history(online.run_id, "loss")] == \
        [(s, float(s)) for s in range(6)]
    assert mlflow.get_run(online.run_id).info.status == "FINISHED"
    eval_run_id = StageRecord(trial.stage_dirs["eval"]).run_entry(ctx.parent_run_id)["run_id"]
    eval_run = mlflow.get_run(eval_run_id)
    assert eval_run.data.tags["mlflow.parentRunId"] == ctx.parent_run_id and eval_run.info.status == "FINISHED"
    curve = {m.step: m.value for m in mlflow.get_metric_history(eval_run_id, "miou_by_threshold")}
    assert curve == {round(r["threshold"] * 100): r["miou"] for r in trial.result["per_threshold"]}
    assert "eval/eval.json" in {a.path for a in mlflow.list_artifacts(eval_run_id, "eval")}

    # a sync that died after uploading but before marking (and lost the eval run id) redoes nothing
    for stage_dir in trial.stage_dirs.values():
        StageRecord(stage_dir).mark_synced(0)
    tracking = json.loads((trial.stage_dirs["eval"] / "tracking.json").read_text())
    tracking["runs"][ctx.parent_run_id]["run_id"] = None
    (trial.stage_dirs["eval"] / "tracking.json").write_text(json.dumps(tracking))
    again = sync_workdir(workdir, tracking_uri=ctx.tracking_uri)
    assert again.runs_created == 0 and again.metric_points == 0 and again.metric_points_present > 0
    assert len(mlflow.search_runs([ctx.experiment_id])) == 3
    assert StageRecord(trial.stage_dirs["eval"]).run_entry(ctx.parent_run_id)["run_id"] == eval_run_id
    assert len(mlflow.get_metric_history(eval_run_id, "miou_by_threshold")) == len(trial.result["per_threshold"])

    # and a further sync has nothing left to do
    assert sync_workdir(workdir, tracking_uri=ctx.tracking_uri).entries == 0


def test_entries_of_a_parent_run_the_store_lacks_stay_pending(tmp_path, capsys):
    """A store that does not hold an entry's sweep parent run (emptied, replaced, or another --tracking-uri):
    nothing is logged there (the run would land in whatever experiment now has that id), the entries stay
    for a later sync, and the message names `wsss sync --rebuild`."""
    os.environ["WSSS_PROGRESS"] = "0"
    workdir = tmp_path / "work"
    initialised_sqlite_store(workdir / "mlflow.db")
    other = initialised_sqlite_store(tmp_path / "other" / "mlflow.db")
    data = generate_synthetic_voc(tmp_path / "data", n_train=4, n_val=1, n_aug_extra=0, size=40, show_progress=False)
    trial = fake_sweep(workdir, "lacks", data, baselines=("cam",), addon_settings={"none": ([], None)}, seeds=(0,))[0]
    ctx = prepare_sweep_tracking("lacks", None, workdir)
    offline = stage_sink(replace(ctx, tracking_uri=closed_port_uri()), trial.stage_dirs["eval"], "eval",
                         {"trial_id": trial.trial_id})
    offline.log_eval(trial.result, trial.eval_dir)
    offline.set_status("finished")
    record = StageRecord(trial.stage_dirs["eval"])
    pending = len(record.pending())

    assert wsss(["sync", "--workdir", str(workdir), "--tracking-uri", other]) == 1
    captured = capsys.readouterr()
    assert "their sweep's parent run is not in the store" in captured.out
    assert ctx.parent_run_id in captured.err and "wsss sync --rebuild" in captured.err
    assert len(record.pending()) == pending
    elsewhere = client(other)
    assert elsewhere.search_runs([e.experiment_id for e in elsewhere.search_experiments()]) == []

    stats = sync_workdir(workdir, tracking_uri=ctx.tracking_uri)
    assert stats.runs_created == 1 and not stats.left and not record.pending()
