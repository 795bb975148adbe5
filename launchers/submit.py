"""Submitting a sweep: plan it, claim its trials (skip, re-attach, run), hand the rest to a backend, wait.

Per trial, under the trial record's lock (so two submitters never both claim one trial):
finished stages everywhere → finished, skipped; pending/running with a live owner → re-attached (waited
for, not resubmitted); failed → skipped unless ``retry_failed``; a pending/running record whose owner is
dead → stale, rerun (:mod:`launchers.records`). Inside the trial, every stage is run by the holder of its
stage lock only (:mod:`wsss_core.pipeline.runner`).
"""

from __future__ import annotations

import os

import pickle
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from wsss_core.atomic import write_json_atomic
from wsss_core.config import to_dict

from wsss_core.pipeline import TrialSpec, layout

from wsss_core.errors import ConfigError

from . import follow, records
from .backend import Backend, get_backend
from .plan import SweepPlan, plan_sweep
from .spec import SweepSpec, load_sweep


@dataclass
class SubmitOptions:
    launcher: str = "local"
    retry_failed: bool = False
    tracking_uri: str | None = None
    tracking: bool = True
    address: str | None = None  # ray
    max_concurrent: int | None = None
    poll_s: float = 1.0
    wait: bool | None = None  # block until every trial has an outcome; None: the launcher's default


def resolve_wait(launcher: str, wait: bool | None, ray_address: str | None) -> bool:
    """Whether ``wsss sweep run`` blocks until every trial has an outcome. Local trials are its children,
    and a Ray instance it started itself ends with it: it waits. A Slurm submission, or a Ray job on a
    cluster given by address, returns once every trial is submitted and recorded, unless ``--wait``."""
    if launcher == "local" or (launcher == "ray" and not ray_address):
        if wait is False:
            need = ("the local launcher's trials are its child processes" if launcher == "local" else
                    "without --address (or launcher.ray.address) the sweep runs on a Ray instance this command "
                    "starts and stops")
            raise ConfigError(f"--no-wait: {need}; valid: --launcher slurm, or --launcher ray --address ADDRESS "
                              "(or run the submitter inside tmux, screen or nohup)")
        return True
    return bool(wait)


@dataclass
class SweepOutcome:
    plan: SweepPlan
    ran: list[str] = field(default_factory=list)
    reattached: list[str] = field(default_factory=list)
    skipped_finished: list[str] = field(default_factory=list)
    skipped_failed: list[str] = field(default_factory=list)
    recompute: list[str] = field(default_factory=list)  # "trial: stage: why" for stages found missing or damaged
    records: list[dict[str, Any]] = field(default_factory=list)
    waited: bool = True  # False: submitted and returned (the trials run on without the submitter)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("state") == "failed"]

    @property
    def ok(self) -> bool:
        """Every trial finished (waited), or every trial finished or submitted without a failure (not waited)."""
        if not self.waited:
            return not self.failed
        return not self.failed and all(r.get("state") == "finished" for r in self.records)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def claim_trials(plan: SweepPlan, opts: SubmitOptions, parent_run_id: str | None) -> SweepOutcome:
    claimed = records.claim(plan.trials, opts.launcher, parent_run_id, opts.retry_failed)
    return SweepOutcome(plan, ran=claimed["run"], reattached=claimed["reattached"],
                        skipped_finished=claimed["finished"], skipped_failed=claimed["failed"],
                        recompute=claimed["recompute"])


def _tracking(plan: SweepPlan, opts: SubmitOptions, stream) -> Any:
    settings = plan.spec.tracking
    if not (opts.tracking and settings.enabled):
        return None
    from wsss_core.tracking import prepare_sweep_tracking, sweep_params

    spec = plan.spec
    params = sweep_params(spec.path, len(plan.trials), spec.thresholds,
                          {a.name: [v.label for v in a.values] for a in spec.axes})
    tags = {"sweep": spec.name, "launcher": opts.launcher, "git_commit": _git_commit() or "unknown",
            "host": layout.hostname()}
    return prepare_sweep_tracking(spec.name, opts.tracking_uri or settings.uri, plan.workdir, params, tags)


def trial_spec_path(trial: TrialSpec) -> Path:
    """Where a trial's pickled spec lives (written for its processes, read back by `wsss sweep wait`)."""
    return layout.sweep_dir(Path(trial.workdir), trial.sweep) / "specs" / f"{trial.trial_id}.pkl"


def write_trial_spec(trial: TrialSpec) -> Path:
    path = trial_spec_path(trial)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(pickle.dumps(trial))
    tmp.replace(path)
    return path


def load_trial_spec(path: str | Path) -> TrialSpec:
    return pickle.loads(Path(path).read_bytes())


def run_sweep(spec: SweepSpec | str | Path, workdir: str | Path | None = None, opts: SubmitOptions | None = None,
              stream=None, overrides: list[str] | tuple[str, ...] = ()) -> SweepOutcome:
    """Validate, plan, claim and launch a sweep; returns when every trial of it has an outcome."""
    stream = stream or sys.stdout
    opts = opts or SubmitOptions()
    if not isinstance(spec, SweepSpec):
        spec = load_sweep(spec, overrides)
    opts = replace(opts, wait=resolve_wait(opts.launcher, opts.wait, opts.address or spec.launcher.ray.address))
    backend = get_backend(opts.launcher)
    plan = plan_sweep(spec, workdir)
    backend.check_resources(spec, plan, opts)  # before anything is written or submitted
    try:
        return _run_planned(spec, plan, backend, opts, stream)
    finally:
        backend.release()  # e.g. the Ray connection check_resources opened


def _run_planned(spec: SweepSpec, plan: SweepPlan, backend: Backend, opts: SubmitOptions, stream) -> SweepOutcome:
    layout.prepare_workdir(plan.workdir)
    sweep_folder = layout.sweep_dir(plan.workdir, spec.name)
    if sweep_folder.is_dir():  # folders another user made (trials/, specs/, ...): refused before anything is written
        layout.check_writable(f"sweep folder {sweep_folder}", [sweep_folder, *sweep_folder.iterdir()])
    try:
        sweep_folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(sweep_folder / "sweep.json", {"name": spec.name, "file": spec.path, "base": spec.base,
                                                        "thresholds": spec.thresholds,
                                                        "axes": {a.name: [v.label for v in a.values]
                                                                 for a in spec.axes},
                                                        "resources": to_dict(spec.resources)})
    except OSError as exc:
        raise ConfigError(f"sweep folder {sweep_folder}: cannot write there ({type(exc).__name__}: "
                          f"{exc.strerror or exc}); {layout.WRITABLE_FIX}") from None

    ctx = _tracking(plan, opts, stream)
    outcome = claim_trials(plan, opts, getattr(ctx, "parent_run_id", None))
    print(f"[sweep] {spec.name}: {len(plan.trials)} trials: {len(outcome.ran)} to run, "
          f"{len(outcome.skipped_finished)} finished, {len(outcome.reattached)} running elsewhere, "
          f"{len(outcome.skipped_failed)} failed (rerun with --retry-failed); launcher {opts.launcher}",
          file=stream, flush=True)
    if outcome.recompute:
        print("[sweep] recompute (a stage found missing or damaged in the stage store, and the stages after it):\n"
              + "\n".join(f"  {line}" for line in outcome.recompute), file=stream, flush=True)
    by_id = {t.trial_id: t for t in plan.trials}
    to_run = [by_id[i] for i in outcome.ran]
    commit = _git_commit()
    for trial in to_run:
        trial.launcher = opts.launcher
        trial.tracking = ctx
        trial.tags.update({"launcher": opts.launcher, "git_commit": commit or "unknown"})
    if to_run:
        try:
            errors = backend.launch(spec, plan, to_run, opts, stream)
        except KeyboardInterrupt as exc:
            # Not a failure. The local launcher has stopped its workers: their trials are recorded as
            # interrupted and a rerun resumes them. Slurm jobs and Ray trials keep running and are re-attached to.
            if opts.launcher == "local":
                why = str(exc) or "Ctrl-C"
                for trial in to_run:
                    records.mark_interrupted(trial, f"interrupted ({why} by the submitter, pid {os.getpid()}); "
                                                    "a rerun resumes it from its last checkpoint")
            raise
        except BaseException as exc:
            for trial in to_run:
                records.mark_unrecorded_failure(trial, f"launcher {opts.launcher} stopped: {type(exc).__name__}: {exc}")
            raise
        for trial in to_run:
            if errors.get(trial.trial_id):
                records.mark_unrecorded_failure(trial, errors[trial.trial_id])
    wait = bool(opts.wait)
    follow_up = [by_id[i] for i in outcome.reattached] + (to_run if opts.launcher == "slurm" or not wait else [])
    if wait and follow_up:
        follow.wait(follow_up, spec.name, stream, poll_s=max(opts.poll_s, 0.5), report_s=60.0)
    outcome.records = [layout.read_trial(t.record_path) or {} for t in plan.trials]
    outcome.waited = wait
    if not wait and follow_up:
        print(follow_hint(plan), file=stream, flush=True)
    elif ctx is not None:
        follow.finish_tracking(ctx, outcome.ok, stream)
    return outcome


def follow_hint(plan: SweepPlan) -> str:
    """How to follow a sweep the submitter no longer watches."""
    spec = plan.spec
    where = f"--workdir {plan.workdir}"
    return (f"[sweep] submitted; the trials run without this process. Follow them with\n"
            f"  wsss sweep status {spec.path} {where}              where each trial is (the scheduler's view)\n"
            f"  wsss sweep wait {spec.path} {where}                block until every trial has an outcome\n"
            f"  wsss sweep logs {spec.path} TRIAL {where}          the tail of a trial's job log\n"
            f"  wsss sweep cancel {spec.path} [TRIAL ...] {where}  cancel (all, or the trials named)")


def summary_line(outcome: SweepOutcome) -> str:
    counts = Counter(r.get("state", "pending") for r in outcome.records)
    return (f"[sweep] {outcome.plan.spec.name}: " + ", ".join(f"{counts[s]} {s}" for s in layout.STATES if counts[s])
            + f" ({'ran' if outcome.waited else 'submitted'} {len(outcome.ran)}, "
              f"reused {len(outcome.skipped_finished)})")

