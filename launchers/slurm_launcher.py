"""Slurm launcher: submitit job arrays, one array task per trial, one Slurm task per DDP rank.

Each array task runs ``tasks_per_node`` tasks per node (GPUs per node, or ``procs_per_node`` on CPU); every
task exports the torch.distributed variables from ``submitit.helpers.TorchDistributedEnvironment`` and
calls :func:`~wsss_core.pipeline.run_trial`. The callable is a ``submitit.helpers.Checkpointable``: on
preemption or timeout (USR2, ``signal_delay_s`` before the limit) submitit requeues the same job, and the
trial resumes: finished stages are skipped and training continues from its last checkpoint.
The job runs ``<this python> -m submitit.core._submit <folder>`` in the submit directory with the submit
environment, so the project must be importable there (installed editable, or on PYTHONPATH).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import submitit

from wsss_core.errors import ConfigError

from wsss_core.pipeline import TrialSpec, layout

from .plan import SweepPlan
from .spec import Resources, SweepSpec, check_slurm_resources
from .submit import SubmitOptions, load_trial_spec, write_trial_spec


def sinfo_nodes() -> list[dict[str, Any]] | None:
    """Nodes as sinfo sees them (cpus, mem_gb, gpus, partition); None when sinfo is not reachable."""
    if shutil.which("sinfo") is None:
        return None
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N|%P|%c|%m|%G"], capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        return None
    nodes = []
    for line in out.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 5:
            continue
        name, partition, cpus, mem, gres = parts
        gpus = 0
        for item in gres.split(","):
            fields = item.split("(")[0].split(":")
            if fields[0] == "gpu" and fields[-1].isdigit():
                gpus += int(fields[-1])
        try:
            nodes.append({"name": name, "partition": partition, "cpus": int(cpus.rstrip("+")),
                          "mem_gb": int(mem.rstrip("+")) / 1024, "gpus": gpus})
        except ValueError:
            continue
    return nodes


def check_resources(spec: SweepSpec, plan: SweepPlan, opts: SubmitOptions | None = None) -> None:
    if shutil.which("sbatch") is None:
        raise ConfigError("--launcher slurm: sbatch is not on PATH (no Slurm client here); valid choices on this "
                          "machine: local, ray")
    nodes = sinfo_nodes()
    if nodes:
        check_slurm_resources(spec, [Resources(**t.resources) for t in plan.trials], nodes)


class SlurmTrial(submitit.helpers.Checkpointable):
    """One array task: join the DDP group of the job's tasks, run the trial (requeued on preemption)."""

    def __call__(self, spec_path: str) -> dict[str, Any]:
        import torch

        from wsss_core.pipeline import run_trial

        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        trial = load_trial_spec(spec_path)
        trial.job_id = str(env.job_id)
        torch.set_num_threads(max(1, int(trial.resources.get("cpus_per_task", 1))))
        outcomes = run_trial(trial)
        return {name: outcome.get("state") for name, outcome in outcomes.items()}


def _executor(folder: Path, spec: SweepSpec, res: Resources) -> submitit.SlurmExecutor:
    settings = spec.launcher.slurm
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=settings.max_requeues)
    params: dict[str, Any] = dict(
        job_name=f"wsss-{spec.name}", time=res.time_min, nodes=res.nodes, ntasks_per_node=res.tasks_per_node,
        cpus_per_task=res.cpus_per_task, mem=f"{int(res.mem_gb * 1024)}M", signal_delay_s=settings.signal_delay_s,
        array_parallelism=settings.array_parallelism, stderr_to_stdout=True,
        additional_parameters=dict(settings.sbatch))
    for name in ("partition", "account", "qos", "constraint"):
        if getattr(settings, name) is not None:
            params[name] = getattr(settings, name)
    if res.gpus_per_node > 0:
        params["gpus_per_node"] = res.gpus_per_node
    if settings.setup:
        params["setup"] = list(settings.setup)
    executor.update_parameters(**params)
    return executor


def launch(spec: SweepSpec, plan: SweepPlan, trials: list[TrialSpec], opts: SubmitOptions,
           stream: Any) -> dict[str, str | None]:
    """Submit one array per distinct resource shape and record each trial's job id and log; returns at once.
    The jobs need nothing from this process: following them (``--wait``, ``wsss sweep wait``) reads the
    records and the scheduler (:mod:`launchers.follow`)."""
    folder = layout.sweep_dir(plan.workdir, spec.name) / "slurm" / f"{int(time.time())}-{os.getpid()}"
    groups: dict[tuple, list[TrialSpec]] = {}
    for trial in trials:
        groups.setdefault(tuple(sorted(trial.resources.items())), []).append(trial)
    for shape, members in groups.items():
        res = Resources(**dict(shape))
        executor = _executor(folder, spec, res)
        paths = [str(write_trial_spec(t)) for t in members]
        submitted = executor.map_array(SlurmTrial(), paths)
        for trial, job in zip(members, submitted):
            with layout.update_trial(trial.record_path) as record:
                record.update({"job_id": str(job.job_id), "launcher": "slurm", "log": str(job.paths.stdout)})
                if (record.get("owner") or {}).get("job_id") != str(job.job_id):  # the job has not started yet
                    record["owner"] = {"launcher": "slurm", "job_id": str(job.job_id), "host": None, "pid": None}
        print(f"[slurm] submitted {len(members)} trial(s) as array {submitted[0].job_id.split('_')[0]} "
              f"({res.nodes} node(s) × {res.tasks_per_node} task(s)); submitit folder {folder}",
              file=stream, flush=True)
    return {}


def release() -> None:
    """Nothing to let go of (the backend interface, launchers.backend)."""
