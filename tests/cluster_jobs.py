"""Functions the cluster tests run as Slurm jobs and Ray trials.

They live in an importable module because submitit and Ray pickle functions by reference: a job imports
`cluster_jobs` from tests/ (on PYTHONPATH, see cluster_fixtures.py).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import submitit


def square(x: int) -> int:
    return x * x


def fail_with(message: str) -> None:
    raise ValueError(message)


class CountSteps(submitit.helpers.Checkpointable):
    """Sums i*i over n_steps slow steps; preempted, it is requeued and resumes from its last finished step.

    Each start appends "start <step>" to the progress file and each finished step "step <i>", so a test can
    see that the second run resumed instead of starting over.
    """

    def __init__(self) -> None:
        self.state = (0, 0)  # (next step, running total): one assignment, so a checkpoint never sees half

    def __call__(self, progress_file: str, n_steps: int, step_s: float) -> int:
        progress = Path(progress_file)
        first, _ = self.state
        with progress.open("a") as f:
            f.write(f"start {first}\n")
        for i in range(first, n_steps):
            time.sleep(step_s)
            self.state = (i + 1, self.state[1] + i * i)
            with progress.open("a") as f:
                f.write(f"step {i}\n")
        return self.state[1]


def gloo_all_reduce() -> dict:
    """One task of a multi-task job: joins the job's torch.distributed group and sums the ranks + 1."""
    import torch
    import torch.distributed as dist

    job_env = submitit.JobEnvironment()
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    dist.init_process_group(backend="gloo")
    try:
        value = torch.tensor([float(dist.get_rank() + 1)])
        dist.all_reduce(value)
        return {"global_rank": job_env.global_rank, "local_rank": job_env.local_rank,
                "num_tasks": job_env.num_tasks, "world_size": dist.get_world_size(),
                "sum": value.item(), "pid": os.getpid()}
    finally:
        dist.destroy_process_group()


# ----- Ray Tune trials -----

def tune_square(config: dict) -> None:
    from ray import tune

    tune.report({"y": config["x"] * config["x"]})


def crash_first_attempt(config: dict) -> None:
    """Crashes the first time it runs (a marker file remembers), succeeds on the retry."""
    from ray import tune

    attempts = Path(config["attempts_file"])
    with attempts.open("a") as f:
        f.write("attempt\n")
    if len(attempts.read_text().splitlines()) == 1:
        raise RuntimeError("simulated crash of the first attempt")
    tune.report({"ok": 1})


def _gloo_worker(config: dict) -> None:
    """One Ray Train worker: all_reduce of (rank + 1) * scale over the group TorchTrainer set up."""
    import ray.train
    import torch
    import torch.distributed as dist

    context = ray.train.get_context()
    value = torch.tensor([float(context.get_world_rank() + 1) * config["scale"]])
    dist.all_reduce(value)
    ray.train.report({"sum": value.item(), "world_size": dist.get_world_size(), "backend": dist.get_backend(),
                      "rank": context.get_world_rank()})


def torch_trainer_trial(config: dict) -> None:
    """A Tune trial driving a 2-worker TorchTrainer (Ray Train V2: the trial is the driver function)."""
    import ray.train
    from ray import tune
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    trainer = TorchTrainer(
        _gloo_worker,
        train_loop_config={"scale": config["scale"]},
        torch_config=TorchConfig(backend="gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=2, use_gpu=False, resources_per_worker={"CPU": 0.9}),
        run_config=ray.train.RunConfig(name=f"train-{tune.get_context().get_trial_id()}",
                                       storage_path=config["storage_path"], callbacks=[TuneReportCallback()]),
    )
    trainer.fit()
