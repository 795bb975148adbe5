"""Following a submitted sweep from the scheduler's truth: ``wsss sweep status|wait|cancel|logs``.

Each command reads the trial records, asks the scheduler once about every Slurm job or Ray job that owns a
trial (:mod:`launchers.scheduler`), and reconciles the two: a trial whose job ended without recording an
outcome (out of memory, node failure, ``scancel``, time limit, a stopped Ray job) is recorded as failed with
the scheduler's state and reason, so ``wsss sweep run --retry-failed`` reruns it. Finished means finished in the stage store
(:func:`wsss_core.pipeline.runner.refresh_record`), not just in a record.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from wsss_core.errors import ConfigError
from wsss_core.pipeline import TrialSpec, layout
from wsss_core.pipeline.runner import refresh_record

from . import records
from .scheduler import JobState, cancel_slurm, ray_job_logs, stop_ray_job

ACTIVE = ("pending", "running")


@dataclass
class TrialView:
    """Where one trial is and why it stopped, as ``status`` prints it."""

    trial_id: str
    state: str            # pending, running, finished, failed
    active: bool          # an owner (process, Slurm job, Ray job) still answers for it
    where: str            # e.g. "slurm job 12_3 PENDING (reason Resources)", "local pid 812 on host"
    stage: str | None     # the stage it is in (running) or failed in
    note: str | None      # the error, or why it waits
    log: str | None

    def line(self, width: int) -> str:
        text = f"  {self.trial_id:<{width}}  {self.state:<8}  {self.where}"
        if self.stage:
            text += f"  stage {self.stage}"
        if self.note:
            text += f"\n  {'':<{width}}  {'':<8}  {self.note}"
        return text


def _stage_of(record: dict[str, Any]) -> str | None:
    stages = record.get("stages") or {}
    return next((n for n, s in stages.items() if (s or {}).get("state") != "finished"), None)


def _where(record: dict[str, Any], job: JobState | None, active: bool) -> str:
    owner = record.get("owner") or {}
    if job is not None:
        return job.describe()
    scheduler = record.get("scheduler") or {}
    if scheduler.get("job_id"):
        return f"{scheduler.get('scheduler', 'slurm')} job {scheduler['job_id']} {scheduler.get('state')}"
    if owner.get("launcher") == "slurm" and owner.get("job_id"):
        return f"slurm job {owner['job_id']}"
    if record.get("state") in ACTIVE and owner:
        alive = "" if active else " (gone)"
        return f"{owner.get('launcher')} pid {owner.get('pid')} on {owner.get('host')}{alive}"
    if record.get("job_id"):
        return f"{record.get('launcher')} job {record['job_id']}"
    return record.get("launcher") or "-"


def reconcile(trials: list[TrialSpec]) -> list[TrialView]:
    """Each trial's view, after recording every job that ended without its trial's outcome."""
    raw = [layout.read_trial(t.record_path) for t in trials]
    jobs = records.sweep_jobs(raw)
    views = []
    for trial, record in zip(trials, raw):
        if record is None:
            views.append(TrialView(trial.trial_id, "pending", False, "not submitted", None,
                                   "run `wsss sweep run` to submit it", None))
            continue
        if records.ended_job(record, jobs) is not None:
            with layout.update_trial(trial.record_path) as locked:
                ended = records.ended_job(locked, jobs)
                if ended is not None and refresh_record(trial, locked) != "finished":
                    records.fail_ended_job(locked, ended)
                record = dict(locked)
        job_id = records.owner_job(record)
        active = records.trial_is_active(record, jobs)
        state = record.get("state", "pending")
        note = record.get("error")
        if state == "pending" and not active:
            note = (note + "; " if note else "") + "not running: `wsss sweep run` resumes it"
        views.append(TrialView(trial.trial_id, state, active, _where(record, jobs.get(job_id) if job_id else None,
                                                                     active),
                               _stage_of(record) if state in ("running", "failed") else None, note,
                               record.get("log")))
    return views


def format_views(views: list[TrialView], sweep: str, show_finished: bool = False) -> str:
    counts = Counter(v.state for v in views)
    head = f"sweep {sweep}: {len(views)} trials: " + ", ".join(f"{counts[s]} {s}" for s in layout.STATES
                                                               if counts[s])
    shown = [v for v in views if show_finished or v.state != "finished"]
    width = max((len(v.trial_id) for v in shown), default=0)
    return "\n".join([head, *(v.line(width) for v in shown)])


def select(trials: list[TrialSpec], names: list[str] | None, what: str) -> list[TrialSpec]:
    """The trials named (an exact id or a unique prefix), all when ``names`` is empty."""
    if not names:
        return list(trials)
    chosen = []
    for name in names:
        exact = [t for t in trials if t.trial_id == name]
        matches = exact or [t for t in trials if t.trial_id.startswith(name)]
        if len(matches) != 1:
            valid = ", ".join(t.trial_id for t in (matches or trials)[:12])
            problem = "matches several trials" if matches else "is not a trial of this sweep"
            raise ConfigError(f"{what}: {name!r} {problem}; valid trial ids: {valid}"
                              + (" ..." if len(matches or trials) > 12 else ""))
        chosen.append(matches[0])
    return chosen


def close_tracking(trials: list[TrialSpec], ok: bool, stream: TextIO) -> None:
    """End the sweep's MLflow parent run once every trial has an outcome (the submitter may be long gone):
    its tracking context is in the trials' pickled specs."""
    ctx = _tracking_from_specs(trials)
    if ctx is not None:
        finish_tracking(ctx, ok, stream)


def finish_tracking(ctx: Any, ok: bool, stream: TextIO) -> None:
    try:
        from wsss_core.tracking import finish_sweep_tracking

        finish_sweep_tracking(ctx, "FINISHED" if ok else "FAILED")
    except Exception as exc:  # noqa: BLE001 - tracking never fails a sweep whose results are on disk
        print(f"[sweep] tracking: could not close the sweep's parent run: {exc}", file=stream)


def _tracking_from_specs(trials: list[TrialSpec]) -> Any:
    from .submit import load_trial_spec, trial_spec_path

    for trial in trials:
        path = trial_spec_path(trial)
        if path.is_file():
            try:
                tracking = load_trial_spec(path).tracking
            except Exception:  # noqa: BLE001 - a damaged spec: try the next
                continue
            if tracking is not None:
                return tracking
    return None


def wait(trials: list[TrialSpec], sweep: str, stream: TextIO, poll_s: float = 10.0, report_s: float = 60.0,
         timeout_s: float | None = None) -> list[TrialView]:
    """Block while any of ``trials`` has a live owner; a progress line when the counts change (at least
    every ``report_s``). Returns the final views; raises TimeoutError after ``timeout_s``."""
    start = last_report = time.time()
    last_counts: Counter | None = None
    while True:
        views = reconcile(trials)
        active = [v for v in views if v.active]
        counts = Counter(v.state for v in views)
        now = time.time()
        if not active or counts != last_counts or now - last_report >= report_s:
            done = counts["finished"] + counts["failed"]
            rate = done / max((now - start) / 60, 1e-9)
            print(f"[wait] {sweep}: {counts['finished']}/{len(views)} finished, {counts['failed']} failed, "
                  f"{counts['running']} running, {counts['pending']} pending; {_elapsed(now - start)} elapsed"
                  + (f", {rate:.2f} trials/min" if done and now - start > 1 else ""), file=stream, flush=True)
            last_counts, last_report = counts, now
        if not active:
            return views
        if timeout_s is not None and now - start > timeout_s:
            raise TimeoutError(f"{len(active)} trial(s) of sweep {sweep} still active after {_elapsed(timeout_s)}")
        time.sleep(poll_s)


def _elapsed(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def cancel(trials: list[TrialSpec], stream: TextIO, every: list[TrialSpec] | None = None) -> int:
    """Stop each selected trial that is still active (scancel its Slurm job, stop its Ray job, SIGTERM its
    local process) and record it as failed "cancelled"; ``wsss sweep run --retry-failed`` runs it again.
    A Ray job runs several trials: it is stopped only when every active trial of it is selected (``every``:
    all the sweep's trials, to check). Returns how many were cancelled."""
    raw = [layout.read_trial(t.record_path) for t in trials]
    jobs = records.sweep_jobs(raw)
    to_scancel: list[tuple[TrialSpec, str]] = []
    ray_jobs: dict[tuple[str, str], list[TrialSpec]] = {}
    cancelled = 0
    for trial, record in zip(trials, raw):
        if not records.trial_is_active(record, jobs):
            continue
        owner = record.get("owner") or {}
        job_id = records.slurm_owner_job(record)
        ray = records.ray_owner_job(record)
        if ray:
            ray_jobs.setdefault(ray, []).append(trial)
        elif job_id:
            to_scancel.append((trial, job_id))
        elif owner.get("launcher") == "local" and owner.get("host") == layout.hostname() and owner.get("pid"):
            try:
                os.kill(int(owner["pid"]), signal.SIGTERM)
            except ProcessLookupError:
                pass
            _mark_cancelled(trial, f"local pid {owner['pid']}")
            cancelled += 1
        else:
            print(f"[cancel] {trial.trial_id}: owned by {owner.get('launcher')} pid {owner.get('pid')} on "
                  f"{owner.get('host')}; cancel it there (stop its submitter)", file=stream)
    for (sid, address), members in ray_jobs.items():
        chosen = {t.trial_id for t in members}
        others = [t.trial_id for t in (every or trials) if t.trial_id not in chosen
                  and records.ray_owner_job(layout.read_trial(t.record_path)) == (sid, address)]
        if others:
            raise ConfigError(f"wsss sweep cancel: trials {', '.join(sorted(chosen))} run in Ray job {sid} with "
                              f"{', '.join(others)}; a Ray job is stopped whole: name all of them, or none (all)")
        error = stop_ray_job(sid, address)
        if error:
            raise ConfigError(f"ray job stop {sid} (cluster {address}): {error}")
        for trial in members:
            _mark_cancelled(trial, f"ray job {sid}")
            print(f"[cancel] {trial.trial_id}: cancelled (ray job {sid} stopped)", file=stream)
            cancelled += 1
    error = cancel_slurm([job for _, job in to_scancel])
    if error:
        raise ConfigError(f"scancel {' '.join(job for _, job in to_scancel)}: {error}")
    for trial, job_id in to_scancel:
        _mark_cancelled(trial, f"slurm job {job_id}")
        print(f"[cancel] {trial.trial_id}: cancelled", file=stream)
        cancelled += 1
    return cancelled


def _mark_cancelled(trial: TrialSpec, what: str) -> None:
    with layout.update_trial(trial.record_path) as record:
        if record.get("state") in ACTIVE and refresh_record(trial, record) != "finished":
            record.update({"state": "failed", "finished": layout.now(),
                           "error": f"cancelled ({what}) by `wsss sweep cancel`; rerun it with --retry-failed"})


def log_paths(trial: TrialSpec) -> list[Path]:
    """Where the trial's output is: its Slurm job log, or the local ranks' logs."""
    record = layout.read_trial(trial.record_path) or {}
    paths = [Path(record["log"])] if record.get("log") else []
    log_dir = layout.sweep_dir(Path(trial.workdir), trial.sweep) / "logs"
    paths += sorted(log_dir.glob(f"{trial.trial_id}.rank*.log")) if not paths else []
    return paths


def tail(path: Path, lines: int) -> str:
    """The last ``lines`` lines of a (possibly large) log, read from its end."""
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        block, data = 65536, b""
        while size > 0 and data.count(b"\n") <= lines:
            step = min(block, size)
            size -= step
            handle.seek(size)
            data = handle.read(step) + data
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


def show_logs(trial: TrialSpec, lines: int, stream: TextIO = sys.stdout) -> int:
    record = layout.read_trial(trial.record_path) or {}
    ray = (record.get("owner") or {}).get("ray_job") or (record.get("ray_job") or {}).get("id")
    if ray:  # the Ray job's driver output (Tune and its trials)
        address = (record.get("owner") or {}).get("address") or record["ray_job"]["address"]
        print(f"==> ray job {ray} (cluster {address}) <==", file=stream)
        try:
            print("\n".join(ray_job_logs(ray, address).splitlines()[-lines:]), file=stream)
        except Exception as exc:  # noqa: BLE001 - the cluster is gone or the job unknown: say so
            print(f"{trial.trial_id}: the logs of ray job {ray} are not available: {exc}", file=stream)
            return 1
        return 0
    paths = [p for p in log_paths(trial) if p.is_file()]
    if not paths:
        print(f"{trial.trial_id}: no log yet (state {record.get('state', 'not submitted')}"
              + (f", expected at {record['log']}" if record.get("log") else "") + ")", file=stream)
        return 1
    for path in paths:
        print(f"==> {path} <==", file=stream)
        print(tail(path, lines), file=stream)
    return 0
