"""Ray launcher: a ``ray.tune.Tuner`` over the planned trials (our planner owns the combinations: the
param space is a grid over trial ids), on an existing cluster (``--address``) or a local one.

A trial of one process runs :func:`~wsss_core.pipeline.run_trial` in the Tune trial's own process; a trial
of G > 1 processes is a driver function that builds a Ray Train ``TorchTrainer`` (Train V2) with G workers,
each of which calls the same ``run_trial`` inside the process group Ray Train set up (the trainer joins an
initialised group instead of making one). Tune retries a failed trial ``max_failures`` times; finished
stages are skipped on the retry, training resumes from its checkpoint.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from wsss_core.errors import ConfigError

from wsss_core.pipeline import TrialSpec, layout

from .plan import SweepPlan
from .spec import Resources, SweepSpec
from .submit import SubmitOptions, load_trial_spec, write_trial_spec


def _need(trial: TrialSpec, spec: SweepSpec) -> dict[str, float]:
    """What one trial asks of the cluster in all (driver + workers)."""
    res, settings = Resources(**trial.resources), spec.launcher.ray
    gpus = 1.0 if res.gpus_per_node > 0 else 0.0
    if res.world_size == 1:
        return {"CPU": float(res.cpus_per_task), "GPU": gpus}
    per_worker = settings.cpus_per_worker if settings.cpus_per_worker is not None else float(res.cpus_per_task)
    return {"CPU": settings.trial_cpus + res.world_size * per_worker, "GPU": gpus * res.world_size}


_CONNECTED_HERE = False  # whether this module called ray.init (and so owns the connection)


def connect(address: str | None) -> None:
    global _CONNECTED_HERE
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(include_dashboard=False, log_to_driver=False)
    _CONNECTED_HERE = True


def release() -> None:
    """Disconnect from Ray (stopping a local instance we started) if this module connected; a connection
    the caller made stays open."""
    global _CONNECTED_HERE
    if _CONNECTED_HERE:
        import ray

        ray.shutdown()
        _CONNECTED_HERE = False


def check_resources(spec: SweepSpec, plan: SweepPlan, opts: SubmitOptions | None = None) -> None:
    """Connect (or start a local cluster) and check every trial fits the cluster's CPUs and GPUs."""
    connect((opts.address if opts else None) or spec.launcher.ray.address)
    import ray

    total = ray.cluster_resources()
    for trial in plan.trials:
        need = _need(trial, spec)
        for kind in ("CPU", "GPU"):
            if need[kind] > total.get(kind, 0.0) + 1e-9:
                raise ConfigError(f"{spec.path}: resources: a trial of {trial.world_size} process(es) needs "
                                  f"{need[kind]:g} {kind} (launcher.ray trial_cpus/cpus_per_worker, resources), "
                                  f"the Ray cluster has {total.get(kind, 0.0):g}")


def _set_threads(trial: TrialSpec) -> None:
    import torch

    torch.set_num_threads(max(1, int(trial.resources.get("cpus_per_task", 1))))


def _train_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker = one DDP rank; Ray Train made the process group already."""
    import ray.train

    from wsss_core.pipeline import run_trial

    ctx = ray.train.get_context()
    os.environ.update({"RANK": str(ctx.get_world_rank()), "WORLD_SIZE": str(ctx.get_world_size()),
                       "LOCAL_RANK": str(ctx.get_local_rank()),
                       "LOCAL_WORLD_SIZE": str(ctx.get_local_world_size())})
    trial = load_trial_spec(config["spec"])
    trial.job_id = config.get("job_id")
    _set_threads(trial)
    run_trial(trial)


def _tune_trial(config: dict[str, Any]) -> dict[str, Any]:
    """The Tune trial: run the trial here (one process) or drive a TorchTrainer (G processes)."""
    from ray import tune

    from wsss_core.pipeline import run_trial

    trial = load_trial_spec(config["spec"])
    trial.job_id = tune.get_context().get_trial_id()
    if trial.world_size == 1:
        _set_threads(trial)
        run_trial(trial)
        return {"finished": 1}
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    res = Resources(**trial.resources)
    per_worker = config["cpus_per_worker"]
    resources = {"CPU": per_worker, **({"GPU": 1} if res.gpus_per_node else {})}
    attempt = len(list(Path(config["storage"]).glob(f"{trial.trial_id}-*")))
    trainer = TorchTrainer(
        _train_worker, train_loop_config={"spec": config["spec"], "job_id": trial.job_id},
        scaling_config=ScalingConfig(num_workers=trial.world_size, use_gpu=res.gpus_per_node > 0,
                                     resources_per_worker=resources),
        run_config=RunConfig(name=f"{trial.trial_id}-{attempt}", storage_path=config["storage"]))
    trainer.fit()
    return {"finished": 1}


def launch(spec: SweepSpec, plan: SweepPlan, trials: list[TrialSpec], opts: SubmitOptions,
           stream: Any) -> dict[str, str | None]:
    import ray
    from ray import tune

    connect(opts.address or spec.launcher.ray.address)
    settings = spec.launcher.ray
    driver = layout.owner_of_this_process("ray")
    paths = {}
    for trial in trials:
        trial.owner = driver  # the trial lives as long as this Tune driver does
        paths[trial.trial_id] = str(write_trial_spec(trial))
    total = ray.cluster_resources()
    needs = [_need(t, spec) for t in trials]
    fit = min(math.floor(total.get("CPU", 0) / max(n["CPU"], 1e-9) + 1e-9) for n in needs)
    if any(n["GPU"] for n in needs):
        fit = min(fit, min(math.floor(total.get("GPU", 0) / n["GPU"]) for n in needs if n["GPU"]))
    limit = max(1, min(fit, opts.max_concurrent or settings.max_concurrent or len(trials)))
    storage = layout.sweep_dir(plan.workdir, spec.name) / "ray"
    storage.mkdir(parents=True, exist_ok=True)

    by_path = {paths[t.trial_id]: t for t in trials}

    def resources_for(config: dict[str, Any]) -> Any:
        from ray.tune import PlacementGroupFactory

        trial = by_path[config["spec"]]
        res = Resources(**trial.resources)
        if res.world_size == 1:
            need = _need(trial, spec)
            return PlacementGroupFactory([{k: v for k, v in need.items() if v}])
        # The driver's bundle only; the TorchTrainer asks for its workers itself.
        return PlacementGroupFactory([{"CPU": settings.trial_cpus}])

    per_worker = settings.cpus_per_worker if settings.cpus_per_worker is not None else \
        float(spec.resources.cpus_per_task)
    trainable = tune.with_resources(_tune_trial, resources_for)
    param_space = {"spec": tune.grid_search([paths[t.trial_id] for t in trials]), "storage": str(storage),
                   "cpus_per_worker": per_worker}
    print(f"[ray] {len(trials)} trial(s), at most {limit} at once, cluster {total.get('CPU', 0):g} CPU "
          f"{total.get('GPU', 0):g} GPU", file=stream, flush=True)
    tuner = tune.Tuner(trainable, param_space=param_space,
                       tune_config=tune.TuneConfig(max_concurrent_trials=limit),
                       run_config=tune.RunConfig(name=f"{spec.name}-{os.getpid()}-{int(layout.now())}",
                                                 storage_path=str(storage), verbose=0,
                                                 failure_config=tune.FailureConfig(max_failures=settings.max_failures)))
    results = tuner.fit()
    errors: dict[str, str | None] = {}
    for result in results:
        trial = by_path.get((result.config or {}).get("spec"))
        if trial is None:
            continue
        if result.error is not None:
            text = str(result.error).strip().splitlines()
            errors[trial.trial_id] = f"ray: {text[-1] if text else type(result.error).__name__}"
    return errors
