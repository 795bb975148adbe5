"""Fault suite, tracking store lost or full: real tiny sweeps through the real local launcher and stage path,
a real SQLite MLflow store.

* `wsss sync --rebuild` refills an emptied store from the stage folders: the same runs (tags, params, every
  metric point, artifacts) and the same `wsss report --from mlflow` as `--from records`; twice logs nothing
  twice, and a run a killed rebuild left unfinished is completed without duplicate points.
* `wsss sweep run` on a store that lost the sweep (deleted, an older copy put back, a moved work dir) says
  so and logs the sweep's finished stages into it again.
* Artifact uploads the artifact store refuses (full, not a folder) are kept in the stage's
  tracking_buffer.jsonl, the stage does not fail, and `wsss sync` uploads them once the store has room.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from fake_sweep import initialised_sqlite_store
from sweep_files import tiny_sweep, write_sweep
from wsss.cli import main
from wsss_core.pipeline import layout
from wsss_core.tracking.record import StageRecord
from wsss_core.tracking.store import client, default_tracking_uri, experiment_name

pytestmark = pytest.mark.slow

TRACKED = ("train", "cams", "eval")  # the tiny chain's stages with a run (data has none)


def _runs(workdir: Path, sweep: str) -> dict:
    """(trial id, stage) -> what the store holds of that stage run; plus the parent runs under None."""
    mlflow_client = client(default_tracking_uri(workdir))
    experiment = mlflow_client.get_experiment_by_name(experiment_name(sweep))
    out = {}
    for run in mlflow_client.search_runs([experiment.experiment_id], max_results=1000):
        tags = run.data.tags
        run_id = run.info.run_id
        if tags.get("wsss.role") == "sweep":
            out.setdefault(None, []).append(run_id)
            continue
        key = (tags["trial_id"], tags["stage"])
        assert key not in out, f"{key} logged twice"
        out[key] = {"run_id": run_id, "status": run.info.status, "name": run.info.run_name,
                    "tags": {k: v for k, v in tags.items() if not k.startswith("mlflow.") and k != "wsss.stage_uid"},
                    "params": dict(run.data.params),
                    "history": {k: [(m.step, m.value) for m in mlflow_client.get_metric_history(run_id, k)]
                                for k in run.data.metrics},
                    "artifacts": _artifact_files(mlflow_client, run_id)}
    return out


def _artifact_files(mlflow_client, run_id: str, folder: str | None = None) -> list[str]:
    files = []
    for entry in mlflow_client.list_artifacts(run_id, folder):
        files += _artifact_files(mlflow_client, run_id, entry.path) if entry.is_dir else [entry.path]
    return sorted(files)


def _content(runs: dict) -> dict:
    return {k: {f: v for f, v in run.items() if f != "run_id"} for k, run in runs.items() if k is not None}


def _store_swapped() -> None:
    """The store file was swapped under this test process: forget MLflow's cached stores and engines, which
    the user's next command (a new process) would not have either."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from mlflow.tracking._tracking_service.registry import TrackingStoreRegistry

    for engine in SqlAlchemyStore._engine_map.values():
        engine.dispose()
    SqlAlchemyStore._engine_map.clear()
    TrackingStoreRegistry._get_store_with_resolved_uri.cache_clear()


def _report(workdir: Path, sweep: str, source: str, out: Path, capsys) -> str:
    capsys.readouterr()
    assert main(["report", sweep, "--workdir", str(workdir), "--from", source, "--out", str(out)]) == 0
    return capsys.readouterr().out.replace(f"from {source}", "")


def test_rebuild_refills_an_emptied_store_from_the_stage_folders_once(tmp_path, capsys):
    sweep = "rebuild"
    path = write_sweep(tmp_path / "s.yaml", tiny_sweep(sweep, axes={"seed": [0, 1]}))
    workdir = tmp_path / "work"
    assert main(["sweep", "run", str(path), "--workdir", str(workdir)]) == 0
    before = _runs(workdir, sweep)
    assert len(before) == 7  # a parent run, 2 trials x 3 stage runs
    from_records = _report(workdir, sweep, "records", tmp_path / "records", capsys)

    # the store is emptied: a fresh one in its place (same path, no runs)
    (workdir / "mlflow.db").rename(tmp_path / "old.db")
    initialised_sqlite_store(workdir / "mlflow.db")
    _store_swapped()
    capsys.readouterr()
    assert main(["sync", "--rebuild", "--workdir", str(workdir)]) == 0
    captured = capsys.readouterr()
    assert "6 logged, 0 already there" in captured.out, captured.out
    assert f"[rebuild] sweep {sweep}: 6 stage(s) to check" in captured.err  # progress lines with counts
    assert f"[rebuild] sweep {sweep}: done: 6 logged" in captured.err

    after = _runs(workdir, sweep)
    # the same runs as the sweep logged: one way of logging a stage (the stage sink), from its folder
    assert _content(after) == _content(before)
    assert {run["status"] for run in _content(after).values()} == {"FINISHED"}
    assert len(after[None]) == 1
    parent = after[None][0]
    for record in layout.list_trials(workdir, sweep):  # every record and stage folder names its new run
        assert record["tracking"]["parent_run_id"] == parent
        for stage in TRACKED:
            run_id = after[(record["trial_id"], stage)]["run_id"]
            assert record["tracking"]["run_ids"][stage] == run_id
            assert StageRecord(record["stages"][stage]["dir"]).run_entry(parent)["run_id"] == run_id
    assert _report(workdir, sweep, "mlflow", tmp_path / "mlflow", capsys) == from_records
    assert (tmp_path / "mlflow" / "ablation.md").read_text() == (tmp_path / "records" / "ablation.md").read_text()

    # again: nothing is logged twice
    assert main(["sync", "--rebuild", "--workdir", str(workdir)]) == 0
    assert "0 logged, 6 already there" in capsys.readouterr().out
    assert _runs(workdir, sweep) == after

    # a rebuild killed half-way left a run unfinished: the next one completes it, without duplicate points
    unfinished = next(run["run_id"] for key, run in after.items() if key is not None and key[1] == "train")
    client(default_tracking_uri(workdir)).update_run(unfinished, status="RUNNING")
    assert main(["sync", "--rebuild", "--workdir", str(workdir)]) == 0
    assert "1 logged, 5 already there" in capsys.readouterr().out
    assert _runs(workdir, sweep) == after


def test_sweep_run_on_a_store_that_lost_the_sweep_logs_its_stages_again(tmp_path, capsys):
    sweep = "lost"
    path = write_sweep(tmp_path / "s.yaml", tiny_sweep(sweep, axes={"seed": [0, 1]}))
    workdir = tmp_path / "work"
    run = ["sweep", "run", str(path), "--workdir", str(workdir)]
    assert main(run + ["--set", "axes.seed=[0]"]) == 0
    shutil.copyfile(workdir / "mlflow.db", tmp_path / "seed0.db")  # a copy holding seed 0's runs only
    assert main(run) == 0
    from_records = _report(workdir, sweep, "records", tmp_path / "records", capsys)

    # that older copy put back: the parent run is there, the newer trial's stage runs are not (one lookup)
    shutil.copyfile(tmp_path / "seed0.db", workdir / "mlflow.db")
    _store_swapped()
    assert main(run) == 0
    err = capsys.readouterr().err
    assert "no longer holds the run" in err and "older copy put back" in err
    assert f"sweep {sweep} rebuilt: 3 logged, 3 already there" in err
    assert _report(workdir, sweep, "mlflow", tmp_path / "mlflow", capsys) == from_records

    # mlflow.db deleted: the recorded parent run is gone (one lookup); the sweep's stages are logged again
    (workdir / "mlflow.db").unlink()
    _store_swapped()
    assert main(run) == 0
    err = capsys.readouterr().err
    assert "no longer holds the sweep's parent run" in err and "Logging the sweep's finished stages" in err
    assert f"sweep {sweep} rebuilt: 6 logged, 0 already there" in err
    assert _report(workdir, sweep, "mlflow", tmp_path / "mlflow2", capsys) == from_records
    assert main(run) == 0  # and the next run finds everything there: no message, nothing logged twice
    assert "[sweep] tracking" not in capsys.readouterr().err
    assert len(_runs(workdir, sweep)) == 7

    # the work dir moved: its records name another store; the new one gets the sweep's stages
    moved = tmp_path / "moved"
    shutil.copytree(workdir, moved, ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts"))
    assert main(["sweep", "run", str(path), "--workdir", str(moved)]) == 0
    err = capsys.readouterr().err
    assert "holds no run of this sweep" in err and f"sweep {sweep} rebuilt: 6 logged" in err
    assert _report(moved, sweep, "mlflow", tmp_path / "mlflow3", capsys) == from_records


@pytest.fixture
def refusing_artifact_store(request, tmp_path):
    """The work dir's artifact root made to refuse writes: a full 256 KiB tmpfs, or a file in its place.
    Yields (work dir, a function that frees the store)."""
    workdir = tmp_path / "work"
    root = workdir / "mlartifacts"
    if request.param == "full":
        root.mkdir(parents=True)
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(root)],
                                 capture_output=True, text=True)
        if mounted.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
        try:
            fd = os.open(root / "filler", os.O_WRONLY | os.O_CREAT)
            try:  # fill it to the last byte
                while os.write(fd, b"\0" * 4096):
                    pass
            except OSError:
                pass
            finally:
                os.close(fd)
            yield workdir, lambda: (root / "filler").unlink()
        finally:
            subprocess.run(["umount", "-l", str(root)], check=False)
    else:
        workdir.mkdir(parents=True)
        root.write_text("not a folder")
        yield workdir, root.unlink


@pytest.mark.parametrize("refusing_artifact_store", ["full", "not a folder"], indirect=True)
def test_refused_artifact_uploads_are_kept_and_synced(refusing_artifact_store, tmp_path, capsys):
    workdir, free = refusing_artifact_store
    sweep = "full-artifacts"
    path = write_sweep(tmp_path / "s.yaml", tiny_sweep(sweep))
    assert main(["sweep", "run", str(path), "--workdir", str(workdir)]) == 0  # tracking never fails a stage
    (record,) = layout.list_trials(workdir, sweep)
    assert record["state"] == "finished"
    log = next(layout.sweep_dir(workdir, sweep).glob("logs/*.log")).read_text()
    assert "uploading artifacts failed" in log and "kept in tracking_buffer.jsonl" in log
    runs = _runs(workdir, sweep)
    assert all(not runs[(record["trial_id"], s)]["artifacts"] for s in TRACKED)
    assert {runs[(record["trial_id"], s)]["status"] for s in TRACKED} == {"FINISHED"}
    buffers = [StageRecord(record["stages"][s]["dir"]) for s in TRACKED]
    assert all(b.has_pending() for b in buffers)

    # still refused: `wsss sync` keeps them (exit 1, says why), nothing marked done
    capsys.readouterr()
    assert main(["sync", "--workdir", str(workdir)]) == 1
    captured = capsys.readouterr()
    assert "3 stage(s) left for later: artifact upload failed" in captured.out
    assert "Traceback" not in captured.err and all(b.has_pending() for b in buffers)

    free()
    assert main(["sync", "--workdir", str(workdir)]) == 0
    assert "0 run(s) created" in capsys.readouterr().out
    assert not any(b.has_pending() for b in buffers)
    runs = _runs(workdir, sweep)
    assert runs[(record["trial_id"], "train")]["artifacts"] == ["config.yaml"]
    assert runs[(record["trial_id"], "eval")]["artifacts"] == [
        "config.yaml", "eval/eval.csv", "eval/eval.json", "eval/overlays.png", "eval/threshold_curve.png"]
    eval_dir = Path(record["stages"]["eval"]["dir"])
    uploaded = client(default_tracking_uri(workdir)).download_artifacts(runs[(record["trial_id"], "eval")]["run_id"],
                                                                        "eval/eval.json", str(tmp_path / "dl"))
    assert Path(uploaded).read_bytes() == (eval_dir / "eval.json").read_bytes()
    assert main(["sync", "--workdir", str(workdir)]) == 0  # idempotent: nothing left
