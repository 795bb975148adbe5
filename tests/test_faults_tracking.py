"""Fault suite, tracking: a real tiny sweep through the real local launcher and stage path with MLflow on.
Every stage's MLflow run (eval included) ends FINISHED (or FAILED), so `wsss report --from mlflow` reads
the same table as `--from records`; the store's creation is safe under concurrent submitters."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from sweep_files import tiny_sweep, write_sweep
from wsss.cli import main
from wsss_core.pipeline import layout

pytestmark = pytest.mark.slow

SWEEP = "faults-mlflow"


def _child_runs(workdir: Path, sweep: str):
    from wsss_core.tracking.store import client, default_tracking_uri, experiment_name

    mlflow_client = client(default_tracking_uri(workdir))
    experiment = mlflow_client.get_experiment_by_name(experiment_name(sweep))
    runs = mlflow_client.search_runs([experiment.experiment_id], max_results=1000)
    return [r for r in runs if r.data.tags.get("wsss.role") == "stage"], \
        [r for r in runs if r.data.tags.get("wsss.role") == "sweep"]


def test_every_stage_run_ends_and_report_from_mlflow_equals_records(tmp_path, capsys):
    sweep = tiny_sweep(SWEEP, axes={"seed": [0, 1]},
                       faults=[{"stage": "cams", "kind": "raise", "times": 1, "when": {"seed": 1}}])
    path = write_sweep(tmp_path / "s.yaml", sweep)
    workdir = tmp_path / "work"
    argv = ["sweep", "run", str(path), "--workdir", str(workdir)]
    assert main(argv) == 1  # seed 1's cams stage fails once (injected)
    stages, parents = _child_runs(workdir, SWEEP)
    by_status = {}
    for run in stages:
        by_status.setdefault(run.info.status, []).append((run.data.tags["trial_id"], run.data.tags["stage"]))
    assert "RUNNING" not in by_status, by_status
    assert sorted(s for _, s in by_status["FAILED"]) == ["cams"]
    assert [p.info.status for p in parents] == ["FAILED"]

    assert main(argv + ["--retry-failed"]) == 0
    stages, parents = _child_runs(workdir, SWEEP)
    assert {r.info.status for r in stages} == {"FINISHED"}
    assert [p.info.status for p in parents] == ["FINISHED"]
    finished = {(r.data.tags["trial_id"], r.data.tags["stage"]) for r in stages}
    records = layout.list_trials(workdir, SWEEP)
    assert len(records) == 2
    assert finished == {(rec["trial_id"], s) for rec in records for s in ("train", "cams", "eval")}

    capsys.readouterr()
    outs = {}
    for source in ("records", "mlflow"):
        assert main(["report", SWEEP, "--workdir", str(workdir), "--from", source,
                     "--out", str(tmp_path / source)]) == 0
        outs[source] = capsys.readouterr().out.replace(f"from {source}", "")
        assert "2 trials" in outs[source]
    assert outs["mlflow"] == outs["records"]
    assert (tmp_path / "mlflow" / "ablation.md").read_text() == (tmp_path / "records" / "ablation.md").read_text()

    # the sweep file with --set: exactly the file's trials as overridden (seed 0 only), the other one named
    assert main(["report", str(path), "--set", "axes.seed=[0]", "--workdir", str(workdir),
                 "--out", str(tmp_path / "seed0")]) == 0
    captured = capsys.readouterr()
    assert "1 trials" in captured.out
    assert "1 recorded trial(s) of sweep" in captured.err and "left out" in captured.err
    trials_csv = (tmp_path / "seed0" / "trials.csv").read_text()
    assert len(trials_csv.strip().splitlines()) == 2  # header + the seed-0 trial
    # --set with a sweep name (nothing to override) is one clear error
    assert main(["report", SWEEP, "--set", "axes.seed=[0]", "--workdir", str(workdir)]) == 2
    assert "--set needs a sweep file" in capsys.readouterr().err


CREATE = """
import sys
from wsss_core.tracking.store import prepare_sweep_tracking
ctx = prepare_sweep_tracking("race", None, sys.argv[1])
print(ctx.experiment_id, ctx.parent_run_id)
"""


def test_concurrent_submitters_create_one_usable_store(tmp_path):
    """Several submitters starting at once in a new work dir: the store is created once (under its lock),
    every one of them gets the same experiment and parent run, and the store stays usable."""
    import subprocess
    import sys

    workdir = tmp_path / "new-work"
    procs = [subprocess.Popen([sys.executable, "-c", CREATE, str(workdir)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    assert all(rc == 0 for rc, _, _ in results), [err[-2000:] for _, _, err in results]
    assert len({tuple(out.split()[-2:]) for _, out, _ in results}) == 1
    from wsss_core.tracking.store import client, default_tracking_uri

    experiments = client(default_tracking_uri(workdir)).search_experiments()
    assert sorted(e.name for e in experiments) == ["Default", "wsss/race"]


def test_damaged_store_gives_one_message_with_the_way_forward(tmp_path, capsys):
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "mlflow.db").write_bytes(b"not a database" * 500)
    path = write_sweep(tmp_path / "s.yaml", tiny_sweep("damaged-store"))
    assert main(["sweep", "run", str(path), "--workdir", str(workdir)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"mv {workdir / 'mlflow.db'}" in err and "--no-tracking" in err
    assert not layout.trials_dir(workdir, "damaged-store").exists()  # nothing claimed or started
    assert main(["report", "damaged-store", "--workdir", str(workdir), "--from", "mlflow"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "cannot read it" in err and "--from records" in err
