"""Submitting a sweep: decide per trial (skip, re-attach, run), hand the rest to a launcher, wait, report.

Per trial, under the trial record's lock (so two submitters never both claim one trial):
finished stages everywhere → finished, skipped; pending/running with a live owner → re-attached (waited
for, not resubmitted); failed → skipped unless ``retry_failed``; a pending/running record whose owner is
dead → stale, rerun. Inside the trial, every stage is run by the holder of its stage lock only.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from wsss_core.config import to_dict
from wsss_core.errors import ConfigError

from . import state
from .plan import SweepPlan, TrialSpec, plan_sweep
from .spec import SweepSpec, load_sweep

LAUNCHER_MODULES = {"local": "launchers.local", "ray": "launchers.ray_launcher", "slurm": "launchers.slurm_launcher"}


@dataclass
class SubmitOptions:
    launcher: str = "local"
    retry_failed: bool = False
    tracking_uri: str | None = None
    tracking: bool = True
    address: str | None = None  # ray
    max_concurrent: int | None = None
    poll_s: float = 1.0


@dataclass
class SweepOutcome:
    plan: SweepPlan
    ran: list[str] = field(default_factory=list)
    reattached: list[str] = field(default_factory=list)
    skipped_finished: list[str] = field(default_factory=list)
    skipped_failed: list[str] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("state") == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failed and all(r.get("state") == "finished" for r in self.records)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _plan_fields(trial: TrialSpec) -> dict[str, Any]:
    stages = {}
    for s in trial.stages:
        stages[s.name] = {"key": s.key, "dir": s.dir, "state": state.stage_state(Path(s.dir))}
    return {"trial_id": trial.trial_id, "sweep": trial.sweep, "index": trial.index, "axes": trial.axes,
            "baseline": trial.baseline, "addons": trial.addons, "addons_label": trial.addons_label,
            "posterior": trial.posterior, "seed": trial.seed, "stages": stages, "resources": trial.resources}


def _eval_json(trial: TrialSpec) -> str | None:
    for s in reversed(trial.stages):
        candidate = Path(s.dir) / "eval.json"
        if candidate.is_file():
            return str(candidate)
    return None


def sync_record(trial: TrialSpec, record: dict[str, Any]) -> str:
    """Refresh a record's plan fields and stage states; 'finished' when every stage is."""
    record.update(_plan_fields(trial))
    record.setdefault("state", "pending")
    record.setdefault("attempts", 0)
    record.setdefault("error", None)
    record.setdefault("tracking", {"parent_run_id": None, "run_ids": {}})
    record.setdefault("eval_json", None)
    if all(s["state"] == "finished" for s in record["stages"].values()):
        if record["state"] != "finished":
            record.update({"state": "finished", "error": None})
        record["eval_json"] = _eval_json(trial)
    return record["state"]


def claim_trials(plan: SweepPlan, opts: SubmitOptions, parent_run_id: str | None) -> SweepOutcome:
    outcome = SweepOutcome(plan)
    me = state.owner_of_this_process(opts.launcher)
    for trial in plan.trials:
        with state.update_trial(trial.record_path) as record:
            was = record.get("state")
            current = sync_record(trial, record)
            if parent_run_id:
                record["tracking"]["parent_run_id"] = parent_run_id
            if current == "finished":
                outcome.skipped_finished.append(trial.trial_id)
                continue
            if state.trial_is_active(record):
                outcome.reattached.append(trial.trial_id)
                continue
            if current == "failed" and not opts.retry_failed:
                outcome.skipped_failed.append(trial.trial_id)
                continue
            if was in ("pending", "running") and record.get("owner"):
                owner = record["owner"]
                record["error"] = (f"stale: owner {owner.get('launcher')} {owner.get('job_id') or ''} pid "
                                   f"{owner.get('pid')} on {owner.get('host')} is gone; rerun").replace("  ", " ")
            record.update({"state": "pending", "owner": me, "launcher": opts.launcher, "job_id": None,
                           "submitted": state.now()})
            outcome.ran.append(trial.trial_id)
    return outcome


def _tracking(plan: SweepPlan, opts: SubmitOptions, stream) -> Any:
    settings = plan.spec.tracking
    if not (opts.tracking and settings.enabled):
        return None
    try:
        from wsss_core.tracking import prepare_sweep_tracking
    except ImportError:
        print("[sweep] tracking: wsss_core.tracking not available; metrics go to JSON lines in each stage dir",
              file=stream)
        return None
    spec = plan.spec
    params = {"sweep_file": spec.path, "trials": len(plan.trials),
              "thresholds": len(spec.thresholds) if spec.thresholds else None,
              **{f"axis.{a.name}": ",".join(str(v.label) for v in a.values) for a in spec.axes}}
    tags = {"sweep": spec.name, "launcher": opts.launcher, "git_commit": _git_commit() or "unknown",
            "host": state.hostname()}
    return prepare_sweep_tracking(spec.name, opts.tracking_uri or settings.uri, plan.workdir, params, tags)


def write_trial_spec(trial: TrialSpec) -> Path:
    path = state.sweep_dir(Path(trial.workdir), trial.sweep) / "specs" / f"{trial.trial_id}.pkl"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(pickle.dumps(trial))
    tmp.replace(path)
    return path


def load_trial_spec(path: str | Path) -> TrialSpec:
    return pickle.loads(Path(path).read_bytes())


def mark_unrecorded_failure(trial: TrialSpec, error: str) -> None:
    """A trial that died without recording its outcome (killed, out of memory, launcher error)."""
    with state.update_trial(trial.record_path) as record:
        if sync_record(trial, record) == "finished":
            return
        if record.get("state") in ("pending", "running"):
            record.update({"state": "failed", "error": error, "finished": state.now()})


def wait_for(trials: list[TrialSpec], poll_s: float, stream) -> None:
    """Re-attach: wait while another submitter's (or job's) trials are alive."""
    pending = list(trials)
    if pending:
        print(f"[sweep] re-attached to {len(pending)} trial(s) run by another submission; waiting", file=stream)
    while pending:
        time.sleep(poll_s)
        pending = [t for t in pending if state.trial_is_active(state.read_trial(t.record_path))]


def launcher_module(name: str):
    import importlib

    if name not in LAUNCHER_MODULES:
        raise ConfigError(f"--launcher: {name!r} is not valid; valid choices: {', '.join(LAUNCHER_MODULES)}")
    return importlib.import_module(LAUNCHER_MODULES[name])


def run_sweep(spec: SweepSpec | str | Path, workdir: str | Path | None = None, opts: SubmitOptions | None = None,
              stream=None, overrides: list[str] | tuple[str, ...] = ()) -> SweepOutcome:
    """Validate, plan, claim and launch a sweep; returns when every trial of it has an outcome."""
    stream = stream or sys.stdout
    opts = opts or SubmitOptions()
    if not isinstance(spec, SweepSpec):
        spec = load_sweep(spec, overrides)
    module = launcher_module(opts.launcher)
    plan = plan_sweep(spec, workdir)
    module.check_resources(spec, plan, opts)  # before anything is written or submitted
    try:
        return _run_planned(spec, plan, module, opts, stream)
    finally:
        release = getattr(module, "release", None)  # e.g. the Ray connection check_resources opened
        if release is not None:
            release()


def _run_planned(spec: SweepSpec, plan: Any, module: Any, opts: SubmitOptions, stream) -> SweepOutcome:
    plan.workdir.mkdir(parents=True, exist_ok=True)
    sweep_folder = state.sweep_dir(plan.workdir, spec.name)
    sweep_folder.mkdir(parents=True, exist_ok=True)
    state.write_json_atomic(sweep_folder / "sweep.json", {"name": spec.name, "file": spec.path,
                                                          "base": spec.base, "thresholds": spec.thresholds,
                                                          "axes": {a.name: [v.label for v in a.values]
                                                                   for a in spec.axes},
                                                          "resources": to_dict(spec.resources)})
    ctx = _tracking(plan, opts, stream)
    outcome = claim_trials(plan, opts, getattr(ctx, "parent_run_id", None))
    print(f"[sweep] {spec.name}: {len(plan.trials)} trials: {len(outcome.ran)} to run, "
          f"{len(outcome.skipped_finished)} finished, {len(outcome.reattached)} running elsewhere, "
          f"{len(outcome.skipped_failed)} failed (rerun with --retry-failed); launcher {opts.launcher}",
          file=stream, flush=True)
    by_id = {t.trial_id: t for t in plan.trials}
    to_run = [by_id[i] for i in outcome.ran]
    commit = _git_commit()
    for trial in to_run:
        trial.launcher = opts.launcher
        trial.tracking = ctx
        trial.tags.update({"launcher": opts.launcher, "git_commit": commit or "unknown"})
    if to_run:
        try:
            errors = module.launch(spec, plan, to_run, opts, stream)
        except KeyboardInterrupt:
            # Not a failure: records whose owner is gone are stale and rerun next time; Slurm jobs keep running
            # and are re-attached to.
            raise
        except BaseException as exc:
            for trial in to_run:
                mark_unrecorded_failure(trial, f"launcher {opts.launcher} stopped: {type(exc).__name__}: {exc}")
            raise
        for trial in to_run:
            if errors.get(trial.trial_id):
                mark_unrecorded_failure(trial, errors[trial.trial_id])
    wait_for([by_id[i] for i in outcome.reattached], opts.poll_s, stream)
    outcome.records = [state.read_trial(t.record_path) or {} for t in plan.trials]
    if ctx is not None:
        _finish_tracking(ctx, outcome, stream)
    return outcome


def _finish_tracking(ctx: Any, outcome: SweepOutcome, stream) -> None:
    try:
        from wsss_core.tracking import finish_sweep_tracking

        finish_sweep_tracking(ctx, "FINISHED" if outcome.ok else "FAILED")
    except Exception as exc:  # tracking never fails a sweep whose results are on disk
        print(f"[sweep] tracking: could not close the sweep's parent run: {exc}", file=stream)


def format_status(records: list[dict[str, Any]], sweep: str) -> str:
    counts = Counter(r.get("state", "pending") for r in records)
    lines = [f"sweep {sweep}: {len(records)} trials: " + ", ".join(f"{counts[s]} {s}" for s in state.STATES
                                                                   if counts[s])]
    running = [r for r in records if r.get("state") == "running"]
    for r in running:
        owner = r.get("owner") or {}
        stage = next((n for n, s in r.get("stages", {}).items() if s.get("state") != "finished"), "?")
        alive = "alive" if state.owner_alive(owner) else "owner gone (stale)"
        lines.append(f"  running  {r['trial_id']}  stage {stage}  {owner.get('launcher')} "
                     f"{owner.get('job_id') or 'pid ' + str(owner.get('pid'))} on {owner.get('host')} ({alive})")
    for r in records:
        if r.get("state") == "failed":
            lines.append(f"  failed   {r['trial_id']}  attempts {r.get('attempts', 0)}: {r.get('error')}")
    return "\n".join(lines)


def summary_line(outcome: SweepOutcome) -> str:
    counts = Counter(r.get("state", "pending") for r in outcome.records)
    return (f"[sweep] {outcome.plan.spec.name}: " + ", ".join(f"{counts[s]} {s}" for s in state.STATES if counts[s])
            + f" (ran {len(outcome.ran)}, reused {len(outcome.skipped_finished)})")


LaunchFn = Callable[[SweepSpec, SweepPlan, list[TrialSpec], SubmitOptions, Any], dict[str, str | None]]
