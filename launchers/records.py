"""A sweep's trial records: where each trial stands, who owns a running one, and which a submission runs.

The runner (``wsss_core.pipeline.runner``) updates a record while its trial runs; here the submitter
refreshes the plan fields, claims trials (finished → skipped, live owner → re-attached, failed → skipped
unless retried, dead owner → stale, rerun) and reports. Paths, locks and the record format are the work
dir's layout (:mod:`wsss_core.pipeline.layout`).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

from wsss_core.pipeline import TrialSpec, layout
from wsss_core.pipeline.layout import hostname, process_start_time
from wsss_core.pipeline.runner import refresh_record

SLURM_ALIVE = ("PENDING", "RUNNING", "REQUEUED", "RESIZING", "SUSPENDED", "CONFIGURING", "COMPLETING",
               "REQUEUE_HOLD", "REQUEUE_FED", "PREEMPTED", "STAGE_OUT", "SIGNALING")


def slurm_job_state(job_id: str) -> str | None:
    """squeue first (live jobs), then sacct (finished ones); None when Slurm does not know the job."""
    if shutil.which("squeue"):
        out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.split()[0].upper()
    if shutil.which("sacct"):
        out = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State"],
                             capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.split()[0].split()[0].upper()
    return None


def owner_alive(owner: dict[str, Any] | None) -> bool:
    """Local pid on this host (same start time), a Slurm job still queued or running. An owner on another
    host that is not a Slurm job cannot be checked: it counts as alive (never run a trial twice)."""
    if not owner:
        return False
    if owner.get("launcher") == "slurm" and owner.get("job_id"):
        state = slurm_job_state(str(owner["job_id"]))
        return state is not None and state in SLURM_ALIVE
    if owner.get("host") != hostname():
        return True
    pid = owner.get("pid")
    if not pid:
        return False
    start = process_start_time(int(pid))
    return start is not None and (owner.get("pid_start") in (None, start))


def trial_is_active(record: dict[str, Any] | None) -> bool:
    return bool(record) and record.get("state") in ("pending", "running") and owner_alive(record.get("owner"))


# -- the records of a submission ---------------------------------------------------------------------

def claim(trials: list[TrialSpec], launcher: str, parent_run_id: str | None, retry_failed: bool = False
                 ) -> dict[str, list[str]]:
    """Per trial, under its record's lock: finished → ``finished``; pending/running with a live owner →
    ``reattached``; failed → ``failed`` unless ``retry_failed``; else claimed for this submitter → ``run``
    (a pending/running record whose owner is gone is stale: noted in its error, rerun)."""
    outcome: dict[str, list[str]] = {"run": [], "reattached": [], "finished": [], "failed": [], "recompute": []}
    me = layout.owner_of_this_process(launcher)
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
            if trial_is_active(record):
                outcome["reattached"].append(trial.trial_id)
                continue
            if current == "failed" and not retry_failed:
                outcome["failed"].append(trial.trial_id)
                continue
            if was in ("pending", "running") and record.get("owner"):
                owner = record["owner"]
                record["error"] = (f"stale: owner {owner.get('launcher')} {owner.get('job_id') or ''} pid "
                                   f"{owner.get('pid')} on {owner.get('host')} is gone; rerun").replace("  ", " ")
            record.update({"state": "pending", "owner": me, "launcher": launcher, "job_id": None,
                           "submitted": layout.now()})
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


def wait_for(trials: list[TrialSpec], poll_s: float, stream) -> None:
    """Re-attach: wait while another submitter's (or job's) trials are alive."""
    pending = list(trials)
    if pending:
        print(f"[sweep] re-attached to {len(pending)} trial(s) run by another submission; waiting", file=stream)
    while pending:
        time.sleep(poll_s)
        pending = [t for t in pending if trial_is_active(layout.read_trial(t.record_path))]


def format_status(records: list[dict[str, Any]], sweep: str) -> str:
    counts = Counter(r.get("state", "pending") for r in records)
    lines = [f"sweep {sweep}: {len(records)} trials: " + ", ".join(f"{counts[s]} {s}" for s in layout.STATES
                                                                   if counts[s])]
    running = [r for r in records if r.get("state") == "running"]
    for r in running:
        owner = r.get("owner") or {}
        stage = next((n for n, s in r.get("stages", {}).items() if s.get("state") != "finished"), "?")
        alive = "alive" if owner_alive(owner) else "owner gone (stale)"
        lines.append(f"  running  {r['trial_id']}  stage {stage}  {owner.get('launcher')} "
                     f"{owner.get('job_id') or 'pid ' + str(owner.get('pid'))} on {owner.get('host')} ({alive})")
    for r in records:
        if r.get("state") == "failed":
            lines.append(f"  failed   {r['trial_id']}  attempts {r.get('attempts', 0)}: {r.get('error')}")
    return "\n".join(lines)
