"""Slurm launcher on the real single-node cluster: a trial preempted mid-training is requeued and resumes
from its checkpoint (final weights equal an uninterrupted run); a failing trial is reported with its error."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch

from cluster_fixtures import slurm_cluster  # noqa: F401
from launchers.follow import format_views, reconcile
from launchers.spec import load_sweep
from launchers.submit import SubmitOptions, run_sweep
from sweep_files import tiny_sweep, write_sweep
from wsss_core.pipeline import layout
from wsss_core.training.checkpoint import checkpoint_path, load_checkpoint
from wsss_core.training.config import run_config_from_dict
from wsss_core.training.trainer import train

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def _preempt_when_training(workdir: Path, sweep: str, seed: int, min_steps: int, done: threading.Event,
                           log: list) -> None:
    """Wait until the trial's training logged ``min_steps`` steps, then preempt its job as Slurm does
    (SIGTERM, then USR2: what submitit's own test helper sends)."""
    deadline = time.time() + 240
    while time.time() < deadline and not done.is_set():
        record = next((r for r in layout.list_trials(workdir, sweep) if r.get("seed") == seed), None)
        if record and record.get("job_id") and record.get("state") == "running":
            metrics = Path(record["stages"]["train"]["dir"], "metrics.jsonl")
            if metrics.is_file() and len(metrics.read_text().splitlines()) >= min_steps:
                for sig in ("SIGTERM", "USR2"):
                    subprocess.run(["scancel", record["job_id"], "--signal", sig], check=True)
                log.append(record["job_id"])
                return
        time.sleep(0.3)


def test_slurm_sweep_preemption_resume_and_failure(tmp_path, slurm_cluster):  # noqa: F811
    sweep = tiny_sweep("slurmsweep", axes={"seed": [0, 1]},
                       launcher={"slurm": {"partition": slurm_cluster.partition, "array_parallelism": 2,
                                           "signal_delay_s": 30}},
                       faults=[{"stage": "train", "when": {"seed": 0}, "kind": "delay", "seconds": 0.4},
                               {"stage": "train", "when": {"seed": 1}, "times": None}])
    sweep["base"]["train"].update({"max_steps": 16, "epochs": 10, "checkpoint_every": 2})
    spec = load_sweep(write_sweep(tmp_path / "slurm.yaml", sweep))
    workdir = tmp_path / "work"
    done, preempted = threading.Event(), []
    watcher = threading.Thread(target=_preempt_when_training, args=(workdir, "slurmsweep", 0, 4, done, preempted))
    watcher.start()
    try:
        outcome = run_sweep(spec, workdir, SubmitOptions(launcher="slurm", tracking=False, wait=True))
    finally:
        done.set()
        watcher.join()
    assert preempted, "the trial finished training before it could be preempted"
    by_seed = {r["seed"]: r for r in outcome.records}

    resumed = by_seed[0]
    assert resumed["state"] == "finished", format_views(reconcile(outcome.plan.trials), "slurmsweep")
    assert resumed["attempts"] == 2 and resumed["launcher"] == "slurm"
    train_record = layout.read_stage(Path(resumed["stages"]["train"]["dir"]))
    assert train_record["attempts"] == 2 and train_record["summary"]["resumed_from_step"] > 0
    assert layout.read_stage(Path(resumed["stages"]["data"]["dir"]))["attempts"] == 1
    assert Path(resumed["eval_json"]).is_file()

    # The requeued run's final weights equal an uninterrupted run of the same config.
    cfg = run_config_from_dict(_trial_config(workdir, resumed["trial_id"]))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(cfg, tmp_path / "reference")
    finally:
        torch.set_num_threads(threads)
    ours = load_checkpoint(checkpoint_path(resumed["stages"]["train"]["dir"]))["model"]
    reference = load_checkpoint(checkpoint_path(tmp_path / "reference"))["model"]
    assert ours.keys() == reference.keys()
    assert all(torch.equal(ours[k], reference[k]) for k in ours)

    failed = by_seed[1]
    assert failed["state"] == "failed" and "injected fault" in failed["error"] and "stage train" in failed["error"]
    assert not outcome.ok
    assert "injected fault" in format_views(reconcile(outcome.plan.trials), "slurmsweep")


def _trial_config(workdir: Path, trial_id: str) -> dict:
    from launchers.submit import load_trial_spec

    return load_trial_spec(layout.sweep_dir(workdir, "slurmsweep") / "specs" / f"{trial_id}.pkl").config


def test_slurm_rejects_resources_no_node_has_before_submitting(tmp_path, slurm_cluster):  # noqa: F811
    from wsss_core.errors import ConfigError

    sweep = tiny_sweep("toobig", resources={"cpus_per_task": 1, "mem_gb": 100000, "time_min": 5},
                       launcher={"slurm": {"partition": slurm_cluster.partition}})
    spec = load_sweep(write_sweep(tmp_path / "big.yaml", sweep))
    with pytest.raises(ConfigError, match=f"no node of partition {slurm_cluster.partition} has that"):
        run_sweep(spec, tmp_path / "work", SubmitOptions(launcher="slurm", tracking=False))
    assert not (tmp_path / "work").exists()
    sweep["launcher"]["slurm"]["partition"] = "gpu"
    spec = load_sweep(write_sweep(tmp_path / "gpu.yaml", sweep))
    with pytest.raises(ConfigError, match=f"unknown partition 'gpu'; valid choices: {slurm_cluster.partition}"):
        run_sweep(spec, tmp_path / "work", SubmitOptions(launcher="slurm", tracking=False))
