"""The trial runner: run a trial's stages in order, each at most once in the whole work dir.

Every launcher (local processes, Ray, Slurm), test and benchmark calls :func:`run_trial` on every rank of
the trial's process group. For each stage, rank 0 *claims* it (finished → reuse; else take its stage
lock, waiting if another process holds it, and record it running), every rank (or rank 0 alone, for a
non-distributed stage) *runs* it in its folder, rank 0 *records* the outcome in ``stage.json`` and the
trial's record. A rerun *resumes*: finished stages are skipped, a training continues from its checkpoint.
"""

from __future__ import annotations

import errno
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import TrainingError, WsssError
from . import faults, integrity, layout
from .chains import find_stage
from .stage import StageDef, StageRun

if TYPE_CHECKING:
    from ..training.config import RunConfig
    from ..training.distributed import DistEnv
    from .trial import StageSpec, TrialSpec


def run_trial(trial: "TrialSpec") -> dict[str, Any]:
    """Run every not-yet-finished stage of ``trial`` in order, in the distributed environment the launcher
    set up (RANK/WORLD_SIZE/… or an initialised process group); rank 0 keeps the records. Returns the
    per-stage outcomes on every rank; a failure raises :class:`TrainingError` naming the stage."""
    from ..training.config import run_config_from_dict
    from ..training.distributed import cleanup_distributed

    cfg = run_config_from_dict(trial.config, f"trial {trial.trial_id}")
    env, made_group = _join_process_group(cfg.train.device)
    if env.world_size != trial.world_size:
        raise TrainingError(f"trial {trial.trial_id}: planned for {trial.world_size} process(es), the launcher "
                            f"started {env.world_size}")
    if env.is_main:
        layout.prepare_workdir(Path(trial.workdir))
        owner = trial.owner or layout.owner_of_this_process(trial.launcher, trial.job_id)
        with layout.update_trial(trial.record_path) as record:
            refresh_record(trial, record)
            record.update({"state": "running", "attempts": int(record.get("attempts", 0)) + 1, "error": None,
                           "owner": owner, "host": owner["host"], "job_id": trial.job_id,
                           "launcher": trial.launcher, "started": layout.now()})
    outcomes: dict[str, Any] = {}
    try:
        for stage in trial.stages:
            outcomes[stage.name] = run_stage(trial, stage, cfg, env)
            if env.is_main:
                run_id = layout.read_stage(Path(stage.dir)).get("tracking_run_id")
                _update_record(trial, stage_states={stage.name: "finished"},
                               run_ids={stage.name: run_id} if run_id else None)
    except Exception as exc:
        if env.is_main:
            failed = next((s.name for s in trial.stages if s.name not in outcomes), None)
            _update_record(trial, state="failed", error=_error_line(exc) if not isinstance(exc, TrainingError)
                           else str(exc), finished=layout.now(),
                           stage_states={failed: "failed"} if failed else None)
        raise
    finally:
        if made_group:
            cleanup_distributed()
    if env.is_main:
        _update_record(trial, state="finished", error=None, finished=layout.now(), eval_json=eval_json(trial),
                       recompute=None)
    return outcomes


def run_stage(trial: "TrialSpec", stage: "StageSpec", cfg: "RunConfig", env: "DistEnv") -> dict[str, Any]:
    """Run one stage unless it is finished (here or by any earlier trial or sweep); record its outcome."""
    from ..training.distributed import barrier, broadcast_object

    defn = find_stage(stage.name)
    sdir = Path(stage.dir)
    lock = layout.StageLock(sdir)
    decision = _claim_stage(trial, stage, lock) if env.is_main else None
    decision = broadcast_object(env, decision)
    if decision == "done":
        return {"state": "finished", "reused": True, **(layout.read_stage(sdir).get("summary") or {})}
    started = time.time()
    error: str | None = None
    summary: dict[str, Any] = {}
    sink = None
    try:
        sink = _make_sink(trial, stage, defn, cfg) if env.is_main else None
        if decision.startswith("fault:"):  # after the sink opens: an injected failure ends its run like a real one
            raise TrainingError(decision[len("fault:"):])
        if defn.distributed or env.is_main:
            summary = defn.run(_stage_run(trial, stage, defn, cfg, env, sink)) or {}
    except Exception as exc:
        error = _stage_error(exc, sdir)
        if env.is_main and not isinstance(exc, WsssError):
            try:
                traceback.print_exc()
            except OSError:  # the log on a full disk: the error still reaches the records
                pass
    if not defn.distributed:
        error = broadcast_object(env, error)  # rank 0's outcome is everyone's
    if env.is_main:
        record = layout.read_stage(sdir)
        record.update({"state": "failed" if error else "finished", "error": error, "finished": layout.now(),
                       "duration_s": round(time.time() - started, 3),
                       "summary": {k: v for k, v in summary.items() if isinstance(v, (int, float, str, bool))
                                   or v is None}})
        run_id = getattr(sink, "run_id", None)
        if run_id:
            record["tracking_run_id"] = run_id
        if not error and env.world_size == 1:
            record["outputs"] = integrity.output_manifest(sdir)  # what a later reuse checks is still there
        _end_sink(sink, error)  # every stage's run ends FINISHED or FAILED, whatever its own code set
        try:
            layout.write_stage(sdir, record)
        except OSError as exc:  # e.g. a full disk: the stage's own error must still reach the trial record
            error = (f"{error}; " if error else "") + f"its {layout.STAGE_RECORD} could not be written " \
                                                      f"({_stage_error(exc, sdir)})"
        lock.release()
        _close_sink(sink)
    if error:
        raise TrainingError(f"stage {stage.name}: {error}")
    barrier(env)
    if env.is_main and env.world_size > 1:  # every rank has written its share: now the outputs are complete
        record = layout.read_stage(sdir)
        record["outputs"] = integrity.output_manifest(sdir)
        layout.write_stage(sdir, record)
    return {"state": "finished", "reused": False, **summary}


def eval_json(trial: "TrialSpec") -> str | None:
    """The trial's scores: the eval.json of its last stage that wrote one."""
    for stage in reversed(trial.stages):
        candidate = Path(stage.dir) / "eval.json"
        if candidate.is_file():
            return str(candidate)
    return None


def _plan_fields(trial: "TrialSpec", states: dict[str, tuple[str, str | None]]) -> dict[str, Any]:
    stages = {}
    for s in trial.stages:
        stages[s.name] = {"key": s.key, "dir": s.dir, "state": states[s.name][0]}
    return {"trial_id": trial.trial_id, "sweep": trial.sweep, "index": trial.index, "axes": trial.axes,
            "baseline": trial.baseline, "addons": trial.addons, "addons_label": trial.addons_label,
            "posterior": trial.posterior, "seed": trial.seed, "stages": stages, "resources": trial.resources}


def refresh_record(trial: "TrialSpec", record: dict[str, Any]) -> str:
    """Refresh a trial record's plan fields and stage states from the stage store; its state ('finished' when
    every stage is; a trial recorded finished whose stages are not is 'pending', ``recompute`` says why)."""
    states = integrity.trial_stage_states(trial, record)
    record.update(_plan_fields(trial, states))
    reasons = integrity.recompute_reasons(states)
    if reasons:
        record["recompute"] = reasons
    else:
        record.pop("recompute", None)
    record.setdefault("state", "pending")
    record.setdefault("attempts", 0)
    record.setdefault("error", None)
    record.setdefault("tracking", {"parent_run_id": None, "run_ids": {}})
    record.setdefault("eval_json", None)
    if all(s["state"] == "finished" for s in record["stages"].values()):
        if record["state"] != "finished":
            record.update({"state": "finished", "error": None})
        record["eval_json"] = eval_json(trial)
    elif record["state"] == "finished":  # the stage store says otherwise: recompute what is missing or damaged
        record.update({"state": "pending", "eval_json": None})
    return record["state"]


# -- claim, run, record ------------------------------------------------------------------------------------

def _claim_stage(trial: "TrialSpec", stage: "StageSpec", lock: layout.StageLock) -> str:
    """Rank 0: 'done' if the stage is finished, else take its lock (waiting for another holder) and
    record it running; returns 'run', 'done' or 'fault:<message>'."""
    sdir = Path(stage.dir)
    if layout.read_stage(sdir).get("state") == "finished" and _reusable(trial, stage):
        return "done"
    if not lock.acquire(blocking=False):
        print(f"[sweep] {trial.trial_id}: stage {stage.name} {stage.key} is being run by {lock.holder()}; "
              f"waiting for it", file=sys.stderr, flush=True)
        lock.acquire(blocking=True)
    record = layout.read_stage(sdir)
    if record.get("state") == "finished":
        if _reusable(trial, stage):  # finished by the holder we waited for
            lock.release()
            return "done"
    why = integrity.stage_problem(sdir) or (integrity.input_problem(trial, stage)
                                            if record.get("state") == "finished" else None)
    if why:  # a finished stage that cannot be trusted: start it afresh, so no damaged file is resumed from
        print(f"[sweep] {trial.trial_id}: recomputing stage {stage.name} {stage.key}: {why}", file=sys.stderr,
              flush=True)
        _clear_stage_dir(sdir)
        record = {"attempts": record.get("attempts", 0), "recomputed": why}
    record.update({"stage": stage.name, "key": stage.key, "state": "running",
                   "attempts": int(record.get("attempts", 0)) + 1, "error": None, "started": layout.now(),
                   "finished": None, "trial_id": trial.trial_id, "sweep": trial.sweep,
                   "owner": layout.owner_of_this_process(trial.launcher, trial.job_id), "host": layout.hostname()})
    layout.write_stage(sdir, record)
    fault = faults.injected_failure(trial, stage.name)
    return f"fault:{fault}" if fault else "run"


def _reusable(trial: "TrialSpec", stage: "StageSpec") -> bool:
    """A finished stage is reused only if its outputs are intact and no input was recomputed after it."""
    return integrity.stage_problem(Path(stage.dir)) is None and integrity.input_problem(trial, stage) is None


def _clear_stage_dir(sdir: Path) -> None:
    import shutil

    for entry in sdir.iterdir() if sdir.is_dir() else ():
        if entry.name == layout.LOCK_FILE:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _stage_run(trial: "TrialSpec", stage: "StageSpec", defn: StageDef, cfg: "RunConfig", env: "DistEnv",
               sink: Any) -> StageRun:
    inputs = {name: Path(trial.stage(name).dir) for name in stage.inputs}
    stores = {}
    for name, path in inputs.items():
        where = find_stage(name).cam_store
        if where is not None:
            stores[name] = path / where if where else path
    return StageRun(defn.view(cfg), Path(stage.dir), inputs, stores, env, sink, trial)


def _make_sink(trial: "TrialSpec", stage: "StageSpec", defn: StageDef, cfg: "RunConfig") -> Any:
    if defn.sink_stage is None:
        return None
    from ..training.metrics import JsonlSink

    sink = JsonlSink(stage.dir, print_every=cfg.train.log_every, stage=defn.sink_stage)
    if trial.tracking is not None:
        from ..tracking import stage_sink

        tags = {**trial.tags, "stage": stage.name, "stage_key": stage.key, "host": layout.hostname(),
                "trial_id": trial.trial_id, "addons": list(trial.addons), "axes": dict(trial.axes),
                "addons_label": str(trial.addons_label)}
        # The JSON lines sink also sees every call, so the stage dir keeps its own metrics.
        sink = stage_sink(trial.tracking, Path(stage.dir), stage.name, tags, trial.config, local=sink)
    return faults.delayed(trial, stage.name, sink)


def _end_sink(sink: Any, error: str | None) -> None:
    """The stage's outcome as its tracking run's final status (the eval stage sets none of its own)."""
    set_status = getattr(sink, "set_status", None)
    if not callable(set_status):
        return
    try:
        set_status("failed" if error else "finished", error)
    except Exception as exc:  # tracking must never fail a finished stage
        print(f"[sweep] warning: ending the tracking run failed: {exc}", file=sys.stderr)


def _close_sink(sink: Any) -> None:
    close = getattr(sink, "close", None)
    if callable(close):
        try:
            close()
        except Exception as exc:  # tracking must never fail a finished stage
            print(f"[sweep] warning: closing the tracking run failed: {exc}", file=sys.stderr)


def _stage_error(exc: BaseException, sdir: Path) -> str:
    """The error line of a stage; a full disk that names no file (reported when a write is flushed, not at open)
    gets the stage folder it was writing in and what to do."""
    line = _error_line(exc)
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        line += f" (writing in {sdir}; free space there and run again)" if exc.filename is None \
            else " (free space there and run again)"
    return line


def _error_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    if isinstance(exc, TrainingError) and "crashed:" in line and len(text.splitlines()) > 1:
        line = text.splitlines()[-1]  # a rank's traceback: its last line names the error
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def _join_process_group(device: str) -> tuple["DistEnv", bool]:
    """The DDP group the launcher described (env vars) or made (Ray Train); True if we made it here."""
    import torch.distributed as dist

    from ..training.distributed import setup_distributed

    initialised = dist.is_available() and dist.is_initialized()
    return setup_distributed(device), not initialised and dist.is_initialized()


def _update_record(trial: "TrialSpec", **changes: Any) -> None:
    with layout.update_trial(trial.record_path) as record:
        stages = changes.pop("stage_states", None)
        run_ids = changes.pop("run_ids", None)
        record.update(changes)
        if stages:
            for name, value in stages.items():
                record.setdefault("stages", {}).setdefault(name, {}).update({"state": value})
        if run_ids:
            record.setdefault("tracking", {}).setdefault("run_ids", {}).update(run_ids)
