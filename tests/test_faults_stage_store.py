"""Fault suite, the stage store is the truth: a trial recorded finished whose stage folder, stage.json or
outputs are deleted or damaged is recomputed (that stage and the stages after it, nothing before), `plan` and
`run` say which and why, and `report` names a trial it leaves out instead of averaging over fewer seeds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sweep_files import tiny_sweep, write_sweep
from wsss.cli import main
from wsss_core.pipeline import layout

pytestmark = pytest.mark.slow

SWEEP = "faults-store"


def _records(workdir):
    return {r["seed"]: r for r in layout.list_trials(workdir, SWEEP)}


def _attempts(record):
    return {name: layout.read_stage(Path(s["dir"])).get("attempts", 0) for name, s in record["stages"].items()}


def test_deleted_or_damaged_stages_are_recomputed_and_named(tmp_path, capsys):
    path = write_sweep(tmp_path / "s.yaml", tiny_sweep(SWEEP, axes={"seed": [0, 1]}))
    workdir = tmp_path / "work"
    run = ["sweep", "run", str(path), "--workdir", str(workdir), "--no-tracking"]
    plan = ["sweep", "plan", str(path), "--workdir", str(workdir)]
    assert main(run) == 0
    before = _records(workdir)
    ckpt0 = Path(before[0]["stages"]["train"]["dir"], "checkpoints", "last.pt").stat().st_mtime_ns
    capsys.readouterr()

    # An intact store: nothing to recompute (the outputs manifest matches what is on disk).
    assert main(plan) == 0
    assert "recompute" not in capsys.readouterr().out

    # Seed 1: its training folder deleted. Seed 0: its cams stage.json damaged and nothing else.
    shutil.rmtree(before[1]["stages"]["train"]["dir"])
    Path(before[0]["stages"]["cams"]["dir"], "stage.json").write_text('{"state": "finis')
    assert main(plan) == 0
    out = capsys.readouterr().out
    t0, t1 = before[0]["trial_id"], before[1]["trial_id"]
    assert f"{t1}: train: its folder is missing" in out
    assert f"{t1}: cams: its input stage train is to be recomputed" in out
    assert f"{t1}: eval: its input stage cams is to be recomputed" in out
    assert f"{t0}: cams: its stage.json is damaged (not valid JSON)" in out
    assert f"{t0}: eval: its input stage cams is to be recomputed" in out
    assert f"{t0}: train" not in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()[:1] in (["train"], ["cams"], ["eval"])}
    assert rows["train"][-1] == "1" and rows["cams"][-1] == "2" and rows["eval"][-1] == "2"  # to run

    assert main(run) == 0
    out = capsys.readouterr().out
    assert "recompute" in out and f"{t1}: train: its folder is missing" in out
    assert "2 finished (ran 2, reused 0)" in out
    after = _records(workdir)
    assert all(r["state"] == "finished" and not r.get("recompute") for r in after.values())
    # seed 0: training reused untouched, cams and eval rerun; seed 1: everything rerun (train from scratch)
    assert Path(after[0]["stages"]["train"]["dir"], "checkpoints", "last.pt").stat().st_mtime_ns == ckpt0
    assert _attempts(after[0])["train"] == 1
    assert layout.read_stage(Path(after[0]["stages"]["cams"]["dir"]))["recomputed"].startswith("its stage.json")
    assert _attempts(after[1])["train"] == 1  # a new folder: a first attempt
    for seed in (0, 1):
        for name in ("cams", "eval"):
            assert layout.read_stage(Path(after[seed]["stages"][name]["dir"]))["state"] == "finished"
        assert json.loads(Path(after[seed]["eval_json"]).read_text())["best"]["miou"] is not None

    # An output removed (eval.json) is seen by plan and recomputed alone; until then report names the trial.
    attempts = _attempts(after[1])
    Path(after[1]["eval_json"]).unlink()
    capsys.readouterr()
    assert main(["report", SWEEP, "--workdir", str(workdir), "--out", str(tmp_path / "r1")]) == 0
    captured = capsys.readouterr()
    assert "1 trials" in captured.out and f"{t1} (finished; its eval.json" in captured.err
    assert main(plan) == 0
    out = capsys.readouterr().out
    assert f"{t1}: eval: its output eval.json is missing" in out and f"{t1}: cams" not in out
    assert main(run) == 0
    assert "2 finished (ran 1, reused 1)" in capsys.readouterr().out
    assert _attempts(_records(workdir)[1]) == {**attempts, "eval": attempts["eval"] + 1}

    # A damaged eval.json is named by report (never skipped), and recomputed by the next run.
    eval1 = Path(_records(workdir)[1]["eval_json"])
    eval1.write_text(eval1.read_text()[:-40])
    assert main(["report", SWEEP, "--workdir", str(workdir), "--out", str(tmp_path / "r2")]) != 0
    assert f"{eval1}: not valid JSON" in capsys.readouterr().err
    assert main(run) == 0
    assert "eval: its output eval.json changed since it finished" in capsys.readouterr().out
    assert main(["report", SWEEP, "--workdir", str(workdir), "--out", str(tmp_path / "r3")]) == 0
    assert "2 trials" in capsys.readouterr().out

    # A trial record that is valid JSON of the wrong type: report says so and how to fix it; run rebuilds it
    # from the stage store without recomputing anything.
    record0 = layout.trial_path(workdir, SWEEP, t0)
    record0.write_text('["not", "a", "record"]')
    assert main(["report", SWEEP, "--workdir", str(workdir), "--out", str(tmp_path / "r4")]) == 2
    err = capsys.readouterr().err
    assert f"{record0}: trial record is a JSON list" in err and "wsss sweep run" in err and "Traceback" not in err
    assert main(run) == 0
    captured = capsys.readouterr()
    assert f"trial record {record0} is damaged" in captured.err and "2 finished (ran 0, reused 2)" in captured.out
    assert _records(workdir)[0]["eval_json"] == after[0]["eval_json"]

    # A trial record deleted: report names the combination it leaves out (it never averages over fewer seeds
    # silently); run rebuilds the record from the stage store.
    record0.unlink()
    assert main(["report", SWEEP, "--workdir", str(workdir), "--out", str(tmp_path / "r5")]) == 0
    captured = capsys.readouterr()
    assert "1 trials" in captured.out and "have no trial record" in captured.err
    assert "baseline=cam addons=none seed=0" in captured.err
    assert main(run) == 0
    assert "2 finished (ran 0, reused 2)" in capsys.readouterr().out
