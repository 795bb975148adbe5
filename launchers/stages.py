"""The pipeline stages of a trial and the one entry point every launcher calls: :func:`run_trial`.

A stage is a name, the config slice its output depends on, its upstream stages and a run function. Its
key (see ``launchers.plan``) hashes that slice with its inputs' keys and names its folder in the shared
stage store, ``<workdir>/stages/<stage>/<key>/``; a stage whose record there says finished is reused.

The default chain, in order (IRN style: one entry function per stage)::

    data   generate the synthetic benchmark (only when the sweep asks for it)   rank 0
    train  wsss_core.training.train: the classifier, DDP, resumable            all ranks
    cams   wsss_core.training.make_cams: multi-scale CAMs into a CamStore      all ranks
    eval   wsss_core.evaluation.evaluate_cams: every threshold, one pass       rank 0

A baseline with a longer chain (AMN: CAM training → seeds → AMN training → maps → eval) registers its
stages with :func:`register_stage` and its chain in ``PIPELINES`` (e.g. ``PIPELINES["amn"] = ("train",
"cams", "amn_seeds", "amn_train", "amn_maps", "eval")``). An input named ``PREVIOUS`` (and any stage whose
declared inputs are not in the chain) takes the stage before it: ``eval`` scores the CamStore at
``<dir of the stage before it>/cams``, here AMN's maps.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from wsss_core.config import to_dict
from wsss_core.errors import TrainingError, WsssError
from wsss_core.registry import Registry

from . import state

if TYPE_CHECKING:
    from wsss_core.training.config import RunConfig
    from wsss_core.training.distributed import DistEnv

    from .plan import StageSpec, TrialSpec


@dataclass
class StageRun:
    """What a stage's run function gets."""

    cfg: "RunConfig"
    stage_dir: Path
    inputs: dict[str, Path]  # upstream stage name -> its folder
    env: "DistEnv"
    sink: Any  # rank 0: a MetricsSink (tracking or JSON lines); other ranks: None
    trial: "TrialSpec"


@dataclass(frozen=True)
class StageDef:
    name: str
    inputs: tuple[str, ...]  # upstream stages whose keys enter this stage's key
    key_slice: Callable[["RunConfig", dict[str, Any]], dict[str, Any]]  # (cfg, extras) -> what the output depends on
    run: Callable[[StageRun], dict[str, Any]]
    distributed: bool = False  # True: every rank calls run (DDP); False: rank 0 only, the others wait
    evaluation_only: bool = False  # True: not part of the trial's identity (thresholds, scoring)
    sink_stage: str | None = None  # the MetricsSink stage name (None: no metrics)
    trains_model: bool = False  # counted as a training in plans (what sweeps are budgeted by)
    same_as: str | None = None  # keyed and stored as this stage: equal slices share one output (AMN's CAM training)

    @property
    def store_name(self) -> str:
        return self.same_as or self.name


STAGES: Registry = Registry("stage")
PREVIOUS = "<previous>"  # as a stage input: whatever stage comes before it in the chain
# Baseline -> its stage chain after the optional data stage; "*" is the default.
PIPELINES: dict[str, tuple[str, ...]] = {"*": ("train", "cams", "eval")}


def register_stage(defn: StageDef) -> StageDef:
    STAGES.register(defn.name)(defn)
    return defn


def pipeline(baseline: str, with_data: bool) -> tuple[str, ...]:
    chain = PIPELINES.get(baseline, PIPELINES["*"])
    return (("data",) if with_data else ()) + tuple(chain)


# -- the default stages -----------------------------------------------------------------------------------

def _data_slice(cfg: "RunConfig", extras: dict[str, Any]) -> dict[str, Any]:
    return {"synthetic": extras["synthetic"], "generator": "wsss_core.data.synth"}


def _run_data(run: StageRun) -> dict[str, Any]:
    from wsss_core.data.synth import generate_synthetic_voc

    settings = dict(run.trial.synthetic or {})
    root = generate_synthetic_voc(run.stage_dir / "voc", show_progress=False, **settings)
    return {"root": str(root)}


def _train_slice(cfg: "RunConfig", extras: dict[str, Any]) -> dict[str, Any]:
    from wsss_core.training.config import stage_slice

    out = stage_slice(cfg, "train")
    if extras.get("synthetic") is not None:
        out["data"] = {k: v for k, v in out["data"].items() if k != "root"}  # the data stage key stands for it
    # The global batch is batch_size × world size: a different DDP size is a different training.
    out["world_size"] = extras["world_size"]
    return out


def _run_train(run: StageRun) -> dict[str, Any]:
    from wsss_core.training.trainer import train

    return train(run.cfg, run.stage_dir, sink=run.sink, resume="auto")


def _cams_slice(cfg: "RunConfig", extras: dict[str, Any]) -> dict[str, Any]:
    return {"cams": to_dict(cfg.cams)}


def _run_cams(run: StageRun) -> dict[str, Any]:
    from wsss_core.training.cams import make_cams

    return make_cams(run.cfg, run.stage_dir, sink=run.sink, weights_dir=run.inputs["train"], evaluate=False)


def _eval_slice(cfg: "RunConfig", extras: dict[str, Any]) -> dict[str, Any]:
    return {"eval": {"thresholds": to_dict(cfg.eval.thresholds), "pred_255": cfg.eval.pred_255}}


def _run_eval(run: StageRun) -> dict[str, Any]:
    from wsss_core.evaluation import evaluate_cams, write_eval_outputs
    from wsss_core.training.cams import CAM_DIR, summarise

    cfg = run.cfg
    (source,) = run.inputs.values()  # the stage that wrote <its dir>/cams: cams, or a refinement stage
    result = evaluate_cams(source / CAM_DIR, cfg.data.root, cfg.cams.split,
                           thresholds=list(cfg.eval.thresholds) if cfg.eval.thresholds else None,
                           pred_255=cfg.eval.pred_255, workers=cfg.eval.workers)
    paths = write_eval_outputs(result, run.stage_dir)
    if run.sink is not None:
        if hasattr(run.sink, "log_eval"):
            run.sink.log_eval(result, run.stage_dir)
        else:
            flat = {k: v for k, v in summarise(result).items() if isinstance(v, (int, float))
                    and not isinstance(v, bool)}
            run.sink.log_metrics(flat, 0)
    best = result.get("best", {})
    return {"eval_json": str(paths["json"]), "best_miou": best.get("miou"), "best_threshold": best.get("threshold")}


register_stage(StageDef("data", (), _data_slice, _run_data))
register_stage(StageDef("train", ("data",), _train_slice, _run_train, distributed=True, sink_stage="train",
                        trains_model=True))
register_stage(StageDef("cams", ("train",), _cams_slice, _run_cams, distributed=True, sink_stage="cams"))
register_stage(StageDef("eval", (PREVIOUS,), _eval_slice, _run_eval, evaluation_only=True, sink_stage="eval"))


def _register_amn_chain() -> None:
    """AMN: CAM training → CAMs → CRF seeds → AMN training → activation maps → eval, each stage cached under
    its own key, so a sweep over AMN or seed settings reuses one CAM training. The chain's extra scoring of
    the CAM stage (``amn_cam_eval``) is left out: the CAM rows of a sweep give that curve, and one
    evaluation per trial keeps tables and MLflow unambiguous."""
    from wsss_core.training.amn_stages import AMN_PIPELINE, planner_stage_definitions

    for definition in planner_stage_definitions():
        name = definition["name"]
        # AMN's CAM stage is the CAM baseline's training when their configs agree: one training serves both.
        register_stage(StageDef(**definition, trains_model=name in ("amn_cam_train", "amn_train"),
                                same_as="train" if name == "amn_cam_train" else None))
    PIPELINES["amn"] = tuple(s for s in AMN_PIPELINE if s != "amn_cam_eval")


_register_amn_chain()


# -- running a trial -------------------------------------------------------------------------------------

def _error_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    if isinstance(exc, TrainingError) and "crashed:" in line and len(text.splitlines()) > 1:
        line = text.splitlines()[-1]  # a rank's traceback: its last line names the error
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


class _DelaySink:
    """Test-only fault: sleeps on every logged step (makes a short training long enough to preempt)."""

    def __init__(self, inner: Any, seconds: float):
        self.inner, self.seconds = inner, seconds

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        time.sleep(self.seconds)
        self.inner.log_metrics(metrics, step)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _matching_faults(trial: "TrialSpec", stage: str) -> list[dict[str, Any]]:
    out = []
    for fault in trial.faults:
        if fault["stage"] != stage:
            continue
        if all(str(trial.axes.get(k)) == str(v) for k, v in fault.get("when", {}).items()):
            out.append(fault)
    return out


def _inject_raise(trial: "TrialSpec", stage: str) -> str | None:
    """Count injected failures in a marker file; the message if this attempt must fail."""
    for fault in _matching_faults(trial, stage):
        if fault.get("kind", "raise") != "raise":
            continue
        marker = state.sweep_dir(Path(trial.workdir), trial.sweep) / "faults" / f"{trial.trial_id}.{stage}"
        marker.parent.mkdir(parents=True, exist_ok=True)
        done = len(marker.read_text().split()) if marker.exists() else 0
        times = fault.get("times", 1)
        if times is None or done < times:
            with open(marker, "a") as handle:
                handle.write(f"{os.getpid()}\n")
            return f"injected fault in stage {stage} (attempt {done + 1}; faults in the sweep file)"
    return None


def _make_sink(trial: "TrialSpec", stage: "StageSpec", defn: StageDef, cfg: "RunConfig") -> Any:
    if defn.sink_stage is None and defn.name != "eval":
        return None
    from wsss_core.training.metrics import JsonlSink

    sink = JsonlSink(stage.dir, print_every=cfg.train.log_every, stage=defn.sink_stage or stage.name)
    if trial.tracking is not None:
        try:
            from wsss_core.tracking import stage_sink
        except ImportError:
            stage_sink = None
        if stage_sink is not None:
            tags = {**trial.tags, "stage": stage.name, "stage_key": stage.key, "host": state.hostname(),
                    "trial_id": trial.trial_id, "addons": list(trial.addons), "axes": dict(trial.axes),
                    "addons_label": str(trial.addons_label)}
            # The JSON lines sink also sees every call, so the stage dir keeps its own metrics.
            sink = stage_sink(trial.tracking, Path(stage.dir), stage.name, tags, trial.config, local=sink)
    for fault in _matching_faults(trial, stage.name):
        if fault.get("kind") == "delay":
            sink = _DelaySink(sink, float(fault.get("seconds", 0.0)))
    return sink


def _close_sink(sink: Any) -> None:
    close = getattr(sink, "close", None)
    if callable(close):
        try:
            close()
        except Exception as exc:  # tracking must never fail a finished stage
            print(f"[sweep] warning: closing the tracking run failed: {exc}", file=sys.stderr)


def _claim_stage(trial: "TrialSpec", stage: "StageSpec", lock: state.StageLock) -> str:
    """Rank 0: 'done' if the stage is finished, else take its lock (waiting for another holder) and
    record it running; returns 'run', 'done' or 'fault:<message>'."""
    sdir = Path(stage.dir)
    if state.read_stage(sdir).get("state") == "finished":
        return "done"
    if not lock.acquire(blocking=False):
        print(f"[sweep] {trial.trial_id}: stage {stage.name} {stage.key} is being run by {lock.holder()}; "
              f"waiting for it", file=sys.stderr, flush=True)
        lock.acquire(blocking=True)
    record = state.read_stage(sdir)
    if record.get("state") == "finished":  # finished by the holder we waited for
        lock.release()
        return "done"
    record.update({"stage": stage.name, "key": stage.key, "state": "running",
                   "attempts": int(record.get("attempts", 0)) + 1, "error": None, "started": state.now(),
                   "finished": None, "trial_id": trial.trial_id, "sweep": trial.sweep,
                   "owner": state.owner_of_this_process(trial.launcher, trial.job_id), "host": state.hostname()})
    state.write_stage(sdir, record)
    fault = _inject_raise(trial, stage.name)
    return f"fault:{fault}" if fault else "run"


def run_stage(trial: "TrialSpec", stage: "StageSpec", cfg: "RunConfig", env: "DistEnv") -> dict[str, Any]:
    """Run one stage unless it is finished (here or by any earlier sweep); record its outcome."""
    from wsss_core.training.distributed import barrier, broadcast_object

    defn: StageDef = STAGES.get(stage.name)
    sdir = Path(stage.dir)
    lock = state.StageLock(sdir)
    decision = _claim_stage(trial, stage, lock) if env.is_main else None
    decision = broadcast_object(env, decision)
    if decision == "done":
        return {"state": "finished", "reused": True, **(state.read_stage(sdir).get("summary") or {})}
    started = time.time()
    error: str | None = None
    summary: dict[str, Any] = {}
    sink = None
    try:
        if decision.startswith("fault:"):
            raise TrainingError(decision[len("fault:"):])
        if defn.distributed or env.is_main:
            sink = _make_sink(trial, stage, defn, cfg) if env.is_main else None
            inputs = {name: Path(trial.stage(name).dir) for name in stage.inputs}
            summary = defn.run(StageRun(cfg, sdir, inputs, env, sink, trial)) or {}
    except Exception as exc:
        error = _error_line(exc)
        if env.is_main and not isinstance(exc, WsssError):
            traceback.print_exc()
    if not defn.distributed:
        error = broadcast_object(env, error)  # rank 0's outcome is everyone's
    if env.is_main:
        record = state.read_stage(sdir)
        record.update({"state": "failed" if error else "finished", "error": error, "finished": state.now(),
                       "duration_s": round(time.time() - started, 3),
                       "summary": {k: v for k, v in summary.items() if isinstance(v, (int, float, str, bool))
                                   or v is None}})
        run_id = getattr(sink, "run_id", None)
        if run_id:
            record["tracking_run_id"] = run_id
        state.write_stage(sdir, record)
        lock.release()
        _close_sink(sink)
    if error:
        raise TrainingError(f"stage {stage.name}: {error}")
    barrier(env)
    return {"state": "finished", "reused": False, **summary}


def _join_process_group(device: str) -> tuple["DistEnv", bool]:
    """The DDP group the launcher described (env vars) or made (Ray Train); True if we made it here."""
    import torch.distributed as dist

    from wsss_core.training.distributed import setup_distributed

    initialised = dist.is_available() and dist.is_initialized()
    return setup_distributed(device), not initialised and dist.is_initialized()


def _update_record(trial: "TrialSpec", **changes: Any) -> None:
    with state.update_trial(trial.record_path) as record:
        stages = changes.pop("stage_states", None)
        run_ids = changes.pop("run_ids", None)
        record.update(changes)
        if stages:
            for name, value in stages.items():
                record.setdefault("stages", {}).setdefault(name, {}).update({"state": value})
        if run_ids:
            record.setdefault("tracking", {}).setdefault("run_ids", {}).update(run_ids)


def run_trial(trial: "TrialSpec") -> dict[str, Any]:
    """Run every not-yet-finished stage of ``trial`` in order, in the distributed environment the launcher
    set up (RANK/WORLD_SIZE/… or an initialised process group); rank 0 keeps the records. Returns the
    per-stage outcomes on every rank; a failure raises :class:`TrainingError` naming the stage."""
    from wsss_core.training.config import run_config_from_dict
    from wsss_core.training.distributed import cleanup_distributed

    cfg = run_config_from_dict(trial.config, f"trial {trial.trial_id}")
    env, made_group = _join_process_group(cfg.train.device)
    if env.world_size != trial.world_size:
        raise TrainingError(f"trial {trial.trial_id}: planned for {trial.world_size} process(es), the launcher "
                            f"started {env.world_size}")
    if env.is_main:
        owner = trial.owner or state.owner_of_this_process(trial.launcher, trial.job_id)
        with state.update_trial(trial.record_path) as record:
            record.update({"state": "running", "attempts": int(record.get("attempts", 0)) + 1, "error": None,
                           "owner": owner, "host": owner["host"], "job_id": trial.job_id,
                           "launcher": trial.launcher, "started": state.now()})
    outcomes: dict[str, Any] = {}
    try:
        for stage in trial.stages:
            outcomes[stage.name] = run_stage(trial, stage, cfg, env)
            if env.is_main:
                run_id = state.read_stage(Path(stage.dir)).get("tracking_run_id")
                _update_record(trial, stage_states={stage.name: "finished"},
                               run_ids={stage.name: run_id} if run_id else None)
    except Exception as exc:
        if env.is_main:
            failed = next((s.name for s in trial.stages if s.name not in outcomes), None)
            _update_record(trial, state="failed", error=_error_line(exc) if not isinstance(exc, TrainingError)
                           else str(exc), finished=state.now(),
                           stage_states={failed: "failed"} if failed else None)
        raise
    finally:
        if made_group:
            cleanup_distributed()
    if env.is_main:
        eval_json = next((o.get("eval_json") for o in reversed(list(outcomes.values())) if o.get("eval_json")),
                         None)
        if eval_json is None:
            last = trial.stages[-1]
            candidate = Path(last.dir) / "eval.json"
            eval_json = str(candidate) if candidate.is_file() else None
        _update_record(trial, state="finished", error=None, finished=state.now(), eval_json=eval_json)
    return outcomes


__all__ = ["STAGES", "PIPELINES", "PREVIOUS", "StageDef", "StageRun", "register_stage", "pipeline", "run_stage", "run_trial"]
