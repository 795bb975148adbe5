"""Where a sweep stands, on disk: one JSON record per stage and per trial, written atomically.

* ``<workdir>/stages/<stage>/<key>/stage.json``: a stage's state (pending, running, finished, failed),
  attempts, error line, owner (launcher, job id, pid, host), timestamps, duration, tracking run id.
  The stage store is content-addressed and shared by every sweep in the work dir.
* ``<workdir>/sweeps/<sweep>/trials/<trial_id>.json``: a trial's record (format read by ``analysis``).

Writes go to a temp file then ``os.replace``, so a reader never sees half a record and a killed writer
leaves the previous one. Read-modify-write updates of a record hold an ``fcntl.flock`` on a lock file
beside it; a stage is run only by the process holding its stage lock (``<stage dir>/.lock``).
Limit: flock is exclusive between processes of one host and, on a shared filesystem, only as far as
that filesystem implements it (NFSv4 and Lustre do, with ``flock`` mount options; some do not).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

from wsss_core.atomic import write_json_atomic

STATES = ("pending", "running", "finished", "failed")
STAGE_RECORD = "stage.json"
LOCK_FILE = ".lock"


def hostname() -> str:
    return socket.gethostname()


def now() -> float:
    return round(time.time(), 3)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


@contextlib.contextmanager
def file_lock(path: Path, blocking: bool = True) -> Iterator[bool]:
    """Exclusive flock on ``path`` (created if needed); yields False when not blocking and taken."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


class StageLock:
    """The lock a process holds while it runs a stage; records who holds it, for the waiting side."""

    def __init__(self, stage_dir: Path):
        self.path = Path(stage_dir) / LOCK_FILE
        self.fd: int | None = None

    def acquire(self, blocking: bool = True) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        self.fd = fd
        os.ftruncate(fd, 0)
        os.write(fd, f"{hostname()} {os.getpid()}\n".encode())
        return True

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def holder(self) -> str:
        try:
            return self.path.read_text().strip()
        except FileNotFoundError:
            return ""

    def is_held(self) -> bool:
        """True if some process holds the lock now (checked by trying to take it)."""
        if not self.path.exists():
            return False
        fd = os.open(self.path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False


# -- stage records ------------------------------------------------------------------------------------

def stage_dir(workdir: Path, stage: str, key: str) -> Path:
    return Path(workdir) / "stages" / stage / key


def read_stage(stage_path: Path) -> dict[str, Any]:
    return read_json(Path(stage_path) / STAGE_RECORD) or {"state": "pending", "attempts": 0, "error": None}


def write_stage(stage_path: Path, record: dict[str, Any]) -> None:
    write_json_atomic(Path(stage_path) / STAGE_RECORD, {**record, "updated": now()})


def stage_state(stage_path: Path) -> str:
    """pending, running, finished or failed; a running record nobody holds the lock of is failed (stale)."""
    record = read_stage(stage_path)
    state = record.get("state", "pending")
    if state == "running" and not StageLock(stage_path).is_held() and record.get("host") == hostname():
        return "failed"
    return state


# -- trial records ------------------------------------------------------------------------------------

def sweep_dir(workdir: Path, sweep: str) -> Path:
    return Path(workdir) / "sweeps" / sweep


def trial_path(workdir: Path, sweep: str, trial_id: str) -> Path:
    return sweep_dir(workdir, sweep) / "trials" / f"{trial_id}.json"


def read_trial(path: Path) -> dict[str, Any] | None:
    return read_json(path)


@contextlib.contextmanager
def update_trial(path: Path) -> Iterator[dict[str, Any]]:
    """Read-modify-write a trial record under its lock; the yielded dict is written back."""
    with file_lock(path.with_suffix(".lock")):
        record = read_json(path) or {}
        yield record
        record["updated"] = now()
        write_json_atomic(path, record)


def list_trials(workdir: Path, sweep: str) -> list[dict[str, Any]]:
    folder = sweep_dir(workdir, sweep) / "trials"
    records = [read_json(p) for p in sorted(folder.glob("*.json"))]
    return sorted((r for r in records if r), key=lambda r: r.get("index", 0))


# -- is the owner of a running record alive? ----------------------------------------------------------

def process_start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (tells a live owner from a reused pid); None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def owner_of_this_process(launcher: str, job_id: str | None = None) -> dict[str, Any]:
    pid = os.getpid()
    return {"launcher": launcher, "job_id": job_id, "host": hostname(), "pid": pid,
            "pid_start": process_start_time(pid)}


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
