"""Local launcher end to end: two trials (one a 2-process DDP group), records, status, a rerun trains nothing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from sweep_files import tiny_sweep, write_sweep
from wsss.cli import main
from wsss_core.pipeline import layout

pytestmark = pytest.mark.slow

RECORD_KEYS = {"trial_id", "sweep", "index", "axes", "baseline", "addons", "posterior", "seed", "stages", "state",
               "attempts", "error", "tracking", "eval_json"}


def test_local_sweep_end_to_end_with_ddp_trial(tmp_path, capsys):
    sweep = tiny_sweep("local2", axes={"addons": {"none": [], "is_binomial": [{"name": "importance_sampling"}]}})
    sweep["axes"]["resources.procs_per_node"] = [1, 2]
    sweep["axes"]["addons"] = {"none": []}
    sweep["axes"]["thresholds"] = {"start": 0.0, "stop": 0.95, "step": 0.05}
    path = write_sweep(tmp_path / "local2.yaml", sweep)
    workdir = tmp_path / "work"
    argv = ["sweep", "run", str(path), "--workdir", str(workdir)]  # MLflow on: SQLite in the work dir
    assert main(argv) == 0
    records = layout.list_trials(workdir, "local2")
    assert len(records) == 2
    for record in records:
        assert RECORD_KEYS <= set(record)
        assert record["state"] == "finished" and record["attempts"] == 1 and record["error"] is None
        assert record["axes"]["baseline"] == "cam" and record["axes"]["addons"] == "none"
        assert record["posterior"] is None and record["addons"] == []
        result = json.loads(Path(record["eval_json"]).read_text())
        assert len(result["thresholds"]) == 20 and result["best"]["miou"] is not None
        assert set(record["stages"]) == {"data", "train", "cams", "eval"}
        assert record["tracking"]["parent_run_id"] and set(record["tracking"]["run_ids"]) == {"train", "cams", "eval"}
    assert (workdir / "mlflow.db").is_file()
    by_size = {r["axes"]["resources.procs_per_node"]: r for r in records}
    ddp_train = layout.read_stage(Path(by_size[2]["stages"]["train"]["dir"]))
    assert ddp_train["summary"]["world_size"] == 2
    assert layout.read_stage(Path(by_size[1]["stages"]["train"]["dir"]))["summary"]["world_size"] == 1
    # The two trials shared the one data stage (generated once).
    assert by_size[1]["stages"]["data"]["key"] == by_size[2]["stages"]["data"]["key"]
    assert layout.read_stage(Path(by_size[1]["stages"]["data"]["dir"]))["attempts"] == 1
    capsys.readouterr()

    # Second run of the same command: no training, nothing started.
    mtimes = {r["trial_id"]: Path(r["stages"]["train"]["dir"], "checkpoints", "last.pt").stat().st_mtime_ns
              for r in records}
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "0 to run, 2 finished" in out and "[local] started" not in out
    for record in layout.list_trials(workdir, "local2"):
        assert record["attempts"] == 1
        assert all(layout.read_stage(Path(s["dir"]))["attempts"] == 1 for s in record["stages"].values())
        assert Path(record["stages"]["train"]["dir"], "checkpoints", "last.pt").stat().st_mtime_ns == \
            mtimes[record["trial_id"]]

    assert main(["sweep", "status", str(path), "--workdir", str(workdir)]) == 0
    assert "2 trials: 2 finished" in capsys.readouterr().out
    assert main(["sweep", "plan", str(path), "--workdir", str(workdir), "--brief"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^train\s+2\s+2\s+0\s+0\s+0$", out, re.M), out  # 2 trainings, both done


def test_failing_trial_is_reported_with_its_error(tmp_path, capsys):
    sweep = tiny_sweep("broken", faults=[{"stage": "cams", "times": None}])
    path = write_sweep(tmp_path / "broken.yaml", sweep)
    workdir = tmp_path / "work"
    assert main(["sweep", "run", str(path), "--workdir", str(workdir), "--no-tracking"]) == 1
    err = capsys.readouterr().err
    assert "1 failed" in err and "stage cams" in err and "injected fault" in err
    (record,) = layout.list_trials(workdir, "broken")
    assert record["stages"]["train"]["state"] == "finished" and record["stages"]["cams"]["state"] == "failed"
    assert main(["sweep", "status", str(path), "--workdir", str(workdir)]) == 0
    out = capsys.readouterr().out
    assert re.search(re.escape(record["trial_id"]) + r"\s+failed\s+local\s+stage cams\n.*injected fault", out), out


def test_no_wait_is_refused_where_the_submitter_must_stay(tmp_path, capsys):
    """Local trials are the submitter's children, and a Ray instance it starts ends with it: --no-wait is one
    message before anything is written."""
    path = write_sweep(tmp_path / "s.yaml", tiny_sweep("nowait"))
    workdir = tmp_path / "work"
    for launcher, why in (("local", "the local launcher's trials are its child processes"),
                          ("ray", "without --address (or launcher.ray.address)")):
        assert main(["sweep", "run", str(path), "--workdir", str(workdir), "--launcher", launcher, "--no-wait"]) == 2
        err = capsys.readouterr().err
        assert f"--no-wait: {why}" in err and "valid: --launcher slurm" in err and "Traceback" not in err
    assert not workdir.exists()
