"""Stage sinks against a real `mlflow server` (started with `wsss ui`): runs, tags, parent links, threshold
curves equal to eval.json, a resumed stage continuing its run, the server stopped mid-sweep (later stages
buffer locally without failing) and `wsss sync` after a restart (complete, no duplicates, idempotent)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fake_sweep import fake_sweep, initialised_sqlite_store
from wsss.cli import main as wsss
from wsss_core.data.synth import generate_synthetic_voc
from wsss_core.tracking import prepare_sweep_tracking, stage_sink
from wsss_core.tracking.cli import sweep_links
from wsss_core.tracking.store import client, server_reachable

REPO = Path(__file__).resolve().parents[1]
SWEEP = "server-sweep"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`wsss ui` on a work dir's store, as a user would start it."""

    def __init__(self, workdir: Path, port: int):
        self.workdir, self.port, self.process = workdir, port, None
        self.url = f"http://127.0.0.1:{port}"

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO), "WSSS_PROGRESS": "0"}
        self.process = subprocess.Popen([sys.executable, "-m", "wsss.cli", "ui", "--workdir", str(self.workdir),
                                         "--port", str(self.port)], env=env, stdout=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()  # printed once the server answers /health
        assert line.startswith(f"MLflow UI: {self.url}"), line
        assert server_reachable(self.url)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)  # wsss ui stops its mlflow server on the way out
        self.process.wait(timeout=30)
        deadline = time.monotonic() + 15
        while server_reachable(self.url, timeout=0.5):
            assert time.monotonic() < deadline, "mlflow server still answers after `wsss ui` was stopped"
            time.sleep(0.2)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    os.environ["WSSS_PROGRESS"] = "0"
    base = tmp_path_factory.mktemp("server")
    server_dir = base / "server"
    initialised_sqlite_store(server_dir / "mlflow.db")
    server = Server(server_dir, free_port())
    server.start()
    data = generate_synthetic_voc(base / "data", n_train=4, n_val=1, n_aug_extra=0, size=40, show_progress=False)
    workdir = base / "work"
    trials = fake_sweep(workdir, SWEEP, data, baselines=("cam",), seeds=(0, 1))
    yield server, workdir, trials
    if server.process.poll() is None:
        server.stop()


def trial_tags(trial) -> dict:
    record = trial.record
    return {"trial_id": trial.trial_id, "baseline": record["baseline"], "addons": record["addons"],
            "posterior": record["posterior"], "seed": record["seed"], "axes": record["axes"],
            "launcher": "local", "stage_key": "k-" + trial.trial_id}


def log_trial(ctx, trial, train_steps=range(5)):
    """A fake-trained train stage and the real evaluation of the trial's CAMs, as a trial process would."""
    with stage_sink(ctx, trial.stage_dirs["train"], "train", trial_tags(trial), {"train": {"lr": 0.1, "epochs": 1}}) as sink:
        sink.set_status("running")
        for step in train_steps:
            sink.log_metrics({"loss": 1.0 / (step + 1)}, step)
        sink.set_status("finished")
    with stage_sink(ctx, trial.stage_dirs["eval"], "eval", trial_tags(trial), {"eval": {"split": "train"}}) as sink:
        sink.set_status("running")
        sink.log_eval(trial.result, trial.eval_dir)
        sink.set_status("finished")
    return sink


def curve_of(result) -> dict[int, float]:
    return {round(r["threshold"] * 100): r["miou"] for r in result["per_threshold"]}


def test_sweep_with_server_outage_then_sync(setup):
    server, workdir, trials = setup
    ctx = prepare_sweep_tracking(SWEEP, server.url, workdir, {"grid": {"seed": [0, 1]}}, {"launcher": "local"})
    assert prepare_sweep_tracking(SWEEP, server.url, workdir).parent_run_id == ctx.parent_run_id  # resubmission
    mlflow = client(server.url)
    # what `wsss ui` prints under its URL: the sweep's runs table in the model-training view
    assert sweep_links(server.url) == [(f"wsss/{SWEEP}", f"{server.url}/#/experiments/{ctx.experiment_id}/runs"
                                                          "?workflowType=machine_learning")]

    for trial in trials[:2]:
        log_trial(ctx, trial)
    # a requeued train stage of trial 0 continues its own run; the steps it re-logs are not duplicated
    first_run = json.loads((trials[0].stage_dirs["train"] / "tracking.json").read_text())["runs"][ctx.parent_run_id]
    resumed = log_trial(ctx, trials[0], train_steps=range(3, 8))
    again = json.loads((trials[0].stage_dirs["train"] / "tracking.json").read_text())["runs"][ctx.parent_run_id]
    assert again["run_id"] == first_run["run_id"] and not resumed.offline
    assert sorted(m.step for m in mlflow.get_metric_history(first_run["run_id"], "loss")) == list(range(8))

    server.stop()
    for trial in trials[2:]:
        start = time.monotonic()
        sink = log_trial(ctx, trial)  # must not raise
        assert sink.offline and time.monotonic() - start < 20
        assert (trial.stage_dirs["eval"] / "tracking_buffer.jsonl").is_file()
    server.start()

    assert wsss(["sync", "--workdir", str(workdir)]) == 0
    runs = mlflow.search_runs([ctx.experiment_id], max_results=1000)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == ctx.parent_run_id]
    assert len(runs) == 1 + len(children) and len(children) == 2 * len(trials)  # parent + train/eval per trial
    assert not mlflow.search_runs(["0"])  # nothing misfiled into Default
    for trial in trials:
        for stage in ("train", "eval"):
            run = [r for r in children if r.data.tags["trial_id"] == trial.trial_id and r.data.tags["stage"] == stage]
            assert len(run) == 1, (trial.trial_id, stage)
            run = run[0]
            tags = run.data.tags
            assert run.info.status == "FINISHED"
            assert tags["sweep"] == SWEEP and tags["baseline"] == "cam" and tags["seed"] == str(trial.record["seed"])
            assert tags["addons"] == (",".join(trial.record["addons"]) or "none")
            assert tags["axis.addons"] == trial.record["axes"]["addons"] and tags["git_commit"] and tags["host"]
            assert run.data.params["train.lr" if stage == "train" else "eval.split"] in ("0.1", "train")
            if stage == "train":
                steps = [m.step for m in mlflow.get_metric_history(run.info.run_id, "loss")]
                assert sorted(steps) == sorted(set(steps))
                continue
            history = mlflow.get_metric_history(run.info.run_id, "miou_by_threshold")
            assert {m.step: m.value for m in history} == curve_of(trial.result)
            assert len(history) == len(trial.result["per_threshold"])
            assert run.data.metrics["best_miou"] == trial.result["best"]["miou"]
            assert run.data.metrics["robust_width"] == trial.result["robustness"]["plateau_width"]
            fixed = [b for b in trial.result["boundary"] if b["threshold"] == 0.25][0]
            assert run.data.metrics["contour_f_t0.25"] == fixed["f"]
            artifacts = {a.path for a in mlflow.list_artifacts(run.info.run_id, "eval")}
            assert {"eval/eval.json", "eval/eval.csv", "eval/threshold_curve.png", "eval/overlays.png"} <= artifacts

    # a second sync finds nothing to do and changes nothing
    points = {r.info.run_id: len(mlflow.get_metric_history(r.info.run_id, "miou_by_threshold")) for r in children}
    assert wsss(["sync", "--workdir", str(workdir)]) == 0
    runs_after = mlflow.search_runs([ctx.experiment_id], max_results=1000)
    assert len(runs_after) == len(runs)
    assert points == {r.info.run_id: len(mlflow.get_metric_history(r.info.run_id, "miou_by_threshold"))
                      for r in children}
