"""What the scheduler says about a sweep's jobs: Slurm's squeue (live jobs) and sacct (ended ones), and the
Ray job server (a Ray sweep submitted without ``--wait`` is one Ray job).

A trial's record says who owns it (a Slurm array task ``123_4``, a local pid); when that owner is a Slurm
job, its state comes from here, queried once per command for every job of the sweep (one squeue and one
sacct call, by array id), never once per trial. States are Slurm's own words (PENDING, RUNNING, COMPLETED,
FAILED, TIMEOUT, PREEMPTED, OUT_OF_MEMORY, CANCELLED, NODE_FAIL, ...); a job Slurm no longer knows is
``UNKNOWN``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from typing import Any

# A job in one of these states may still run (or run again: a preempted or requeued job keeps its id).
SLURM_ALIVE = frozenset({"PENDING", "RUNNING", "REQUEUED", "RESIZING", "SUSPENDED", "CONFIGURING", "COMPLETING",
                         "REQUEUE_HOLD", "REQUEUE_FED", "PREEMPTED", "STAGE_OUT", "SIGNALING", "STOPPED"})
QUERY_TIMEOUT_S = 60


RAY_ALIVE = frozenset({"PENDING", "RUNNING", "UNREACHABLE"})  # unreachable: cannot tell, so never rerun it


@dataclass(frozen=True)
class JobState:
    """One Slurm job (array task) or Ray job as its scheduler sees it."""

    job_id: str
    state: str                 # Slurm's state word, e.g. RUNNING, OUT_OF_MEMORY; UNKNOWN when Slurm has no row
    reason: str | None = None  # squeue/sacct's reason (e.g. Resources, JobArrayTaskLimit), None when "None"
    node: str | None = None
    exit_code: str | None = None  # sacct's "code:signal"
    scheduler: str = "slurm"      # or "ray"

    @property
    def alive(self) -> bool:
        return self.state in (SLURM_ALIVE if self.scheduler == "slurm" else RAY_ALIVE)

    def describe(self) -> str:
        """``slurm job 12_3 OUT_OF_MEMORY (exit 0:125, reason ...)``: what a status line shows."""
        extra = [f"exit {self.exit_code}" if self.exit_code and self.exit_code != "0:0" else None,
                 f"reason {self.reason}" if self.reason else None, f"on {self.node}" if self.node else None]
        extra = [e for e in extra if e]
        return f"{self.scheduler} job {self.job_id} {self.state}" + (f" ({', '.join(extra)})" if extra else "")


def slurm_available() -> bool:
    return shutil.which("squeue") is not None and shutil.which("sacct") is not None


def _array_id(job_id: str) -> str:
    return job_id.split("_")[0]


def _expand(job_field: str) -> list[str]:
    """``12_3`` → [12_3]; ``12_[1-3,7%2]`` (sacct's row for array tasks that never started) → 12_1 .. 12_7."""
    match = re.fullmatch(r"(\d+)_\[([^\]]+)\]", job_field)
    if not match:
        return [job_field]
    array, spec = match.group(1), match.group(2).split("%")[0]
    ids = []
    for part in spec.split(","):
        low, _, high = part.partition("-")
        ids.extend(f"{array}_{i}" for i in range(int(low), int(high or low) + 1))
    return ids


def _clean(value: str) -> str | None:
    value = value.strip()
    return None if value in ("", "None", "None assigned", "(null)") else value


def _run(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=QUERY_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout if out.returncode == 0 else ""


def slurm_jobs(job_ids: list[str] | set[str], retry_unknown_s: float = 2.0) -> dict[str, JobState]:
    """The state of each job id (array task ids like ``12_3`` or plain ids): squeue (slurmctld's view, ended
    jobs included while it keeps them) first, then sacct; ``UNKNOWN`` for ids neither knows (or when Slurm's
    commands are not reachable). Ids unknown to both are asked again once after ``retry_unknown_s``: a job
    that just ended can be gone from squeue before sacct has its row."""
    wanted = {str(j) for j in job_ids if j}
    if not wanted:
        return {}
    found = _query_slurm(wanted) if slurm_available() else {}
    missing = wanted - set(found)
    if missing and slurm_available() and retry_unknown_s > 0:
        time.sleep(retry_unknown_s)
        found.update(_query_slurm(missing))
    return {j: found.get(j, JobState(j, "UNKNOWN")) for j in wanted}


def _query_slurm(wanted: set[str]) -> dict[str, JobState]:
    arrays = ",".join(sorted({_array_id(j) for j in wanted}, key=lambda a: (len(a), a)))
    found: dict[str, JobState] = {}
    for line in _run(["squeue", "-r", "-h", "-t", "all", "-j", arrays, "-o", "%i|%T|%r|%N"]).splitlines():
        parts = line.split("|")
        if len(parts) == 4:
            for job in _expand(parts[0].strip()):
                found[job] = JobState(job, parts[1].strip().upper(), _clean(parts[2]), _clean(parts[3]))
    for line in _run(["sacct", "-n", "-X", "-P", "-j", arrays, "-o", "JobID,State,ExitCode,Reason,NodeList"
                      ]).splitlines():
        parts = line.split("|")
        if len(parts) != 5:
            continue
        state = parts[1].split()[0].upper() if parts[1].strip() else "UNKNOWN"  # "CANCELLED by 0"
        for job in _expand(parts[0].strip()):
            if job not in found:  # squeue is fresher (sacct lags a few seconds)
                found[job] = JobState(job, state, _clean(parts[3]), _clean(parts[4]), _clean(parts[2]))
            elif found[job].exit_code is None and not found[job].alive:  # squeue has no exit code: add sacct's
                found[job] = JobState(job, found[job].state, found[job].reason, found[job].node, _clean(parts[2]))
    return {j: v for j, v in found.items() if j in wanted}


def cancel_slurm(job_ids: list[str]) -> str | None:
    """``scancel`` the jobs; the error text when scancel refused, else None."""
    if not job_ids:
        return None
    if shutil.which("scancel") is None:
        return "scancel is not on PATH (run this where Slurm's client commands are)"
    out = subprocess.run(["scancel", *job_ids], capture_output=True, text=True, timeout=QUERY_TIMEOUT_S)
    return None if out.returncode == 0 else (out.stderr.strip() or f"scancel exited with {out.returncode}")


def ray_client(address: str):
    """A Ray job client for a cluster address (``host:port`` of the GCS, ``http://host:8265``, ``auto``)."""
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address)


def ray_jobs(jobs: dict[str, str]) -> dict[str, JobState]:
    """``{submission id: cluster address}`` → each Ray job's state; UNREACHABLE (counted alive: it cannot be
    checked) when the cluster does not answer."""
    found: dict[str, JobState] = {}
    clients: dict[str, Any] = {}
    for sid, address in jobs.items():
        try:
            client = clients.get(address) or clients.setdefault(address, ray_client(address))
            info = client.get_job_info(sid)
            state = str(getattr(info.status, "value", info.status)).upper()
            found[sid] = JobState(sid, state, _clean(info.message or ""), scheduler="ray")
        except Exception as exc:  # noqa: BLE001 - unreachable cluster, unknown job: say so, never crash status
            text = str(exc).strip().splitlines()
            unknown = "does not exist" in str(exc) or "not found" in str(exc).lower()
            found[sid] = JobState(sid, "UNKNOWN" if unknown else "UNREACHABLE",
                                  (text[-1] if text else type(exc).__name__)[:200], scheduler="ray")
    return found


def stop_ray_job(sid: str, address: str) -> str | None:
    try:
        ray_client(address).stop_job(sid)
    except Exception as exc:  # noqa: BLE001
        return str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    return None


def ray_job_logs(sid: str, address: str) -> str:
    return ray_client(address).get_job_logs(sid)
