"""A sweep's trial records: where each trial stands, who owns a running one, and which a submission runs.

The runner (``wsss_core.pipeline.runner``) updates a record while its trial runs; here the submitter
refreshes the plan fields, claims trials (finished → skipped, live owner → re-attached, failed → skipped
unless retried, dead owner → stale, rerun); `wsss sweep status` shows them (:mod:`launchers.follow`). Paths, locks and the record format are the work
dir's layout (:mod:`wsss_core.pipeline.layout`).
"""

from __future__ import annotations

from typing import Any

from wsss_core.pipeline import TrialSpec, layout
from wsss_core.pipeline.layout import hostname, process_start_time
from wsss_core.pipeline.runner import refresh_record

from .scheduler import JobState, ray_jobs, slurm_jobs


def slurm_owner_job(record: dict[str, Any] | None) -> str | None:
    """The Slurm job (array task) id that owns a pending/running trial, else None."""
    owner = (record or {}).get("owner") or {}
    if (record or {}).get("state") in ("pending", "running") and owner.get("launcher") == "slurm":
        return str(owner["job_id"]) if owner.get("job_id") else None
    return None


def ray_owner_job(record: dict[str, Any] | None) -> tuple[str, str] | None:
    """(submission id, cluster address) of the Ray job that owns a pending/running trial, else None."""
    owner = (record or {}).get("owner") or {}
    if (record or {}).get("state") in ("pending", "running") and owner.get("ray_job"):
        return str(owner["ray_job"]), str(owner["address"])
    return None


def owner_job(record: dict[str, Any] | None) -> str | None:
    """The id of the scheduler job (Slurm or Ray) that owns a pending/running trial, else None."""
    ray = ray_owner_job(record)
    return ray[0] if ray else slurm_owner_job(record)


def sweep_jobs(records_: list[dict[str, Any] | None]) -> dict[str, JobState]:
    """The scheduler's state of every Slurm or Ray job owning one of ``records_``, in one query each."""
    ray = dict(r for r in map(ray_owner_job, records_) if r)
    return {**slurm_jobs({j for j in map(slurm_owner_job, records_) if j}), **(ray_jobs(ray) if ray else {})}


def owner_alive(owner: dict[str, Any] | None, jobs: dict[str, JobState] | None = None) -> bool:
    """Local pid on this host (same start time), a Slurm job still queued or running (``jobs``: states
    already queried for the sweep). An owner on another host that is not a Slurm job cannot be checked: it
    counts as alive (never run a trial twice)."""
    if not owner:
        return False
    if owner.get("ray_job"):
        sid = str(owner["ray_job"])
        return ((jobs or {}).get(sid) or ray_jobs({sid: str(owner["address"])})[sid]).alive
    if owner.get("launcher") == "slurm" and owner.get("job_id"):
        job_id = str(owner["job_id"])
        state = (jobs or {}).get(job_id) or slurm_jobs([job_id])[job_id]
        return state.alive
    if owner.get("host") != hostname():
        return True
    pid = owner.get("pid")
    if not pid:
        return False
    start = process_start_time(int(pid))
    return start is not None and (owner.get("pid_start") in (None, start))


def ended_job(record: dict[str, Any] | None, jobs: dict[str, JobState]) -> JobState | None:
    """The scheduler's state of the Slurm job that owned a pending/running trial, when that job has ended
    (the trial's own process never recorded an outcome: OOM, node failure, scancel, time limit)."""
    ray = ray_owner_job(record)
    job_id = ray[0] if ray else slurm_owner_job(record)
    if job_id is None:
        return None
    state = jobs.get(job_id) or (ray_jobs({ray[0]: ray[1]})[ray[0]] if ray else slurm_jobs([job_id])[job_id])
    return None if state.alive else state


def job_ended_error(state: JobState, log: str | None) -> str:
    why = {"UNKNOWN": f"{state.scheduler.capitalize()} no longer knows the job"}.get(state.state, "the job ended")
    return (f"{state.describe()}: {why} without recording the trial's outcome"
            + (f"; log {log}" if log else "") + "; rerun it with --retry-failed")


def trial_is_active(record: dict[str, Any] | None, jobs: dict[str, JobState] | None = None) -> bool:
    return bool(record) and record.get("state") in ("pending", "running") and owner_alive(record.get("owner"), jobs)


def fail_ended_job(record: dict[str, Any], state: JobState) -> None:
    """Record (in the locked ``record``) that its scheduler job ended without the trial recording an outcome."""
    record.update({"state": "failed", "error": job_ended_error(state, record.get("log")), "finished": layout.now(),
                   "scheduler": {"scheduler": state.scheduler, "job_id": state.job_id, "state": state.state,
                                 "reason": state.reason,
                                 "exit_code": state.exit_code}})


# -- the records of a submission ---------------------------------------------------------------------

def claim(trials: list[TrialSpec], launcher: str, parent_run_id: str | None, retry_failed: bool = False
                 ) -> dict[str, list[str]]:
    """Per trial, under its record's lock: finished → ``finished``; pending/running with a live owner →
    ``reattached``; failed → ``failed`` unless ``retry_failed`` (a trial whose Slurm job ended without
    recording an outcome is failed first, with the scheduler's reason); else claimed for this submitter →
    ``run`` (a pending/running record whose local owner is gone is stale: noted in its error, rerun)."""
    outcome: dict[str, list[str]] = {"run": [], "reattached": [], "finished": [], "failed": [], "recompute": []}
    me = layout.owner_of_this_process(launcher)
    jobs = sweep_jobs([layout.read_trial(t.record_path) for t in trials])
    for trial in trials:
        with layout.update_trial(trial.record_path) as record:
            was = record.get("state")
            current = refresh_record(trial, record)
            outcome["recompute"].extend(f"{trial.trial_id}: {name}: {why}"
                                        for name, why in (record.get("recompute") or {}).items())
            if parent_run_id:
                record["tracking"]["parent_run_id"] = parent_run_id
            if current == "finished":
                outcome["finished"].append(trial.trial_id)
                continue
            if trial_is_active(record, jobs):
                outcome["reattached"].append(trial.trial_id)
                continue
            ended = ended_job(record, jobs)
            if ended is not None:
                fail_ended_job(record, ended)
                current = was = "failed"
            if current == "failed" and not retry_failed:
                outcome["failed"].append(trial.trial_id)
                continue
            if was in ("pending", "running") and record.get("owner"):
                owner = record["owner"]
                record["error"] = (f"stale: owner {owner.get('launcher')} {owner.get('job_id') or ''} pid "
                                   f"{owner.get('pid')} on {owner.get('host')} is gone; rerun").replace("  ", " ")
            record.update({"state": "pending", "owner": me, "launcher": launcher, "job_id": None, "log": None,
                           "scheduler": None, "submitted": layout.now()})
            outcome["run"].append(trial.trial_id)
    return outcome


def mark_unrecorded_failure(trial: TrialSpec, error: str) -> None:
    """A trial that died without recording its outcome (killed, out of memory, launcher error)."""
    with layout.update_trial(trial.record_path) as record:
        if refresh_record(trial, record) == "finished":
            return
        if record.get("state") in ("pending", "running"):
            record.update({"state": "failed", "error": error, "finished": layout.now()})


def mark_interrupted(trial: TrialSpec, note: str) -> None:
    """A trial whose workers this submitter stopped (SIGTERM, SIGHUP, Ctrl-C): pending again, with no owner
    and the note, so the next `wsss sweep run` claims it at once and its stages resume from their checkpoints."""
    with layout.update_trial(trial.record_path) as record:
        if refresh_record(trial, record) == "finished":
            return
        if record.get("state") in ("pending", "running"):
            record.update({"state": "pending", "owner": None, "error": note, "interrupted": layout.now()})
