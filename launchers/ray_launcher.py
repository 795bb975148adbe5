"""Ray launcher: a ``ray.tune.Tuner`` over the planned trials (our planner owns the combinations: the
param space is a grid over trial ids), on an existing cluster (``--address``) or a local one.

On a cluster given by address, ``wsss sweep run`` (without ``--wait``) submits the Tuner as a Ray job
(``python -m launchers.ray_launcher MANIFEST`` on the head, through the cluster's job server) and returns:
the sweep runs on without the submitter, each trial's record names the job as its owner, and
``wsss sweep status|wait|cancel|logs`` follow it through the job server. The project must be importable by
the cluster's Python at the same path (as for Slurm).

A trial of one process runs :func:`~wsss_core.pipeline.run_trial` in the Tune trial's own process; a trial
of G > 1 processes is a driver function that builds a Ray Train ``TorchTrainer`` (Train V2) with G workers,
each of which calls the same ``run_trial`` inside the process group Ray Train set up (the trainer joins an
initialised group instead of making one). Tune retries a failed trial ``max_failures`` times; finished
stages are skipped on the retry, training resumes from its checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from wsss_core.atomic import write_json_atomic
from wsss_core.config import to_dict
from wsss_core.errors import ConfigError

from wsss_core.pipeline import TrialSpec, layout

from .plan import SweepPlan
from .spec import RaySettings, Resources, SweepSpec
from .submit import SubmitOptions, load_trial_spec, write_trial_spec


def _need(trial: TrialSpec, settings: RaySettings) -> dict[str, float]:
    """What one trial asks of the cluster in all (driver + workers)."""
    res = Resources(**trial.resources)
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
        need = _need(trial, spec.launcher.ray)
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
    """Run ``trials`` with Tune here (``opts.wait``), or submit them as one Ray job and return."""
    storage = layout.sweep_dir(plan.workdir, spec.name) / "ray"
    storage.mkdir(parents=True, exist_ok=True)
    address = opts.address or spec.launcher.ray.address
    if opts.wait is False:
        submit_job(spec, trials, opts, address, storage, stream)
        return {}
    connect(address)
    driver = layout.owner_of_this_process("ray")
    for trial in trials:
        trial.owner = driver  # the trial lives as long as this Tune driver does
    return run_tune(trials, spec.launcher.ray, storage, opts.max_concurrent, float(spec.resources.cpus_per_task),
                    f"{spec.name}-{os.getpid()}-{int(layout.now())}", stream)


def submit_job(spec: SweepSpec, trials: list[TrialSpec], opts: SubmitOptions, address: str, storage: Path,
               stream: Any) -> str:
    """Submit the trials as one Ray job running :func:`main` on the cluster; each record names the job."""
    from .scheduler import ray_client

    sid = f"wsss-{spec.name}-{int(layout.now() * 1000)}-{os.getpid()}"
    client = ray_client(address)
    # The job server's URL: status/wait/cancel/logs ask it over HTTP (a cluster address would make each of
    # them hold a GCS connection, which aborts its process once the cluster is gone).
    server = client.get_address()
    owner = {"launcher": "ray", "ray_job": sid, "address": server, "job_id": sid, "host": None, "pid": None}
    paths = []
    for trial in trials:
        trial.owner = owner
        paths.append(str(write_trial_spec(trial)))
    manifest = storage / f"{sid}.json"
    write_json_atomic(manifest, {"sweep": spec.name, "specs": paths, "settings": to_dict(spec.launcher.ray),
                                 "max_concurrent": opts.max_concurrent,
                                 "cpus_per_task": float(spec.resources.cpus_per_task), "storage": str(storage)})
    env = {k: os.environ[k] for k in ("PYTHONPATH", "WSSS_GT_CACHE") if os.environ.get(k)}
    for trial in trials:  # recorded before the job can start: it then finds its own owner in place
        with layout.update_trial(trial.record_path) as record:
            record.update({"owner": owner, "launcher": "ray", "job_id": sid,
                           "ray_job": {"id": sid, "address": server}})
    client.submit_job(entrypoint=f"{json.dumps(sys.executable)} -m launchers.ray_launcher {json.dumps(str(manifest))}",
                      submission_id=sid, runtime_env={"env_vars": env} if env else None,
                      metadata={"wsss_sweep": spec.name})
    print(f"[ray] submitted {len(trials)} trial(s) as Ray job {sid} on {address} (job server {server})",
          file=stream, flush=True)
    return sid


def run_tune(trials: list[TrialSpec], settings: RaySettings, storage: Path, max_concurrent: int | None,
             default_cpus: float, run_name: str, stream: Any) -> dict[str, str | None]:
    """Run ``trials`` as one Tuner on the connected cluster; returns trial id -> error for trials that died
    without recording one."""
    import ray
    from ray import tune

    paths = {t.trial_id: str(write_trial_spec(t)) for t in trials}
    total = ray.cluster_resources()
    needs = [_need(t, settings) for t in trials]
    fit = min(math.floor(total.get("CPU", 0) / max(n["CPU"], 1e-9) + 1e-9) for n in needs)
    if any(n["GPU"] for n in needs):
        fit = min(fit, min(math.floor(total.get("GPU", 0) / n["GPU"]) for n in needs if n["GPU"]))
    limit = max(1, min(fit, max_concurrent or settings.max_concurrent or len(trials)))
    by_path = {paths[t.trial_id]: t for t in trials}

    def resources_for(config: dict[str, Any]) -> Any:
        from ray.tune import PlacementGroupFactory

        trial = by_path[config["spec"]]
        if Resources(**trial.resources).world_size == 1:
            return PlacementGroupFactory([{k: v for k, v in _need(trial, settings).items() if v}])
        # The driver's bundle only; the TorchTrainer asks for its workers itself.
        return PlacementGroupFactory([{"CPU": settings.trial_cpus}])

    per_worker = settings.cpus_per_worker if settings.cpus_per_worker is not None else default_cpus
    trainable = tune.with_resources(_tune_trial, resources_for)
    param_space = {"spec": tune.grid_search(list(paths.values())), "storage": str(storage),
                   "cpus_per_worker": per_worker}
    print(f"[ray] {len(trials)} trial(s), at most {limit} at once, cluster {total.get('CPU', 0):g} CPU "
          f"{total.get('GPU', 0):g} GPU", file=stream, flush=True)
    tuner = tune.Tuner(trainable, param_space=param_space,
                       tune_config=tune.TuneConfig(max_concurrent_trials=limit),
                       run_config=tune.RunConfig(name=run_name, storage_path=str(storage), verbose=0,
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


def main(argv: list[str] | None = None) -> int:
    """The Ray job's entrypoint: run a submitted sweep's trials with Tune on this cluster, record the trials
    that died without an outcome."""
    import ray

    from . import records

    argv = sys.argv[1:] if argv is None else argv
    manifest = json.loads(Path(argv[0]).read_text())
    trials = [load_trial_spec(p) for p in manifest["specs"]]
    settings = RaySettings(**manifest["settings"])
    ray.init(log_to_driver=True)  # the job's cluster (RAY_ADDRESS, set by the job server)
    try:
        errors = run_tune(trials, settings, Path(manifest["storage"]), manifest.get("max_concurrent"),
                          manifest["cpus_per_task"], f"{manifest['sweep']}-{Path(argv[0]).stem}", sys.stdout)
    finally:
        ray.shutdown()
    for trial in trials:
        if errors.get(trial.trial_id):
            records.mark_unrecorded_failure(trial, errors[trial.trial_id])
    failed = [t.trial_id for t in trials if (layout.read_trial(t.record_path) or {}).get("state") != "finished"]
    print(f"[ray] job done: {len(trials) - len(failed)} finished, {len(failed)} not" +
          (f": {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
