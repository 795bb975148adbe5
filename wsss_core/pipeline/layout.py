"""The work dir on disk: where stages and trials keep their outputs, records and locks.

::

    <workdir>/
      layout.json                              the layout version this work dir was written with
      stages/<stage>/<key>/                    one stage's output, shared by every trial and sweep
      stages/<stage>/<key>/stage.json          its record: state, attempts, error, owner, duration, summary
      stages/<stage>/<key>/.lock               held (flock) by the one process running the stage
      sweeps/<sweep>/trials/<trial_id>.json    a trial's record (read by ``analysis`` and ``wsss sweep status``)
      sweeps/<sweep>/trials/<trial_id>.lock    held while a record is read-modified-written
      sweeps/<sweep>/{specs,logs,faults,...}   the launchers' own files
      mlflow.db, mlartifacts/                  the default MLflow store (``wsss_core.tracking``)

A stage's ``<key>`` is the hash computed by :func:`wsss_core.pipeline.keys.stage_keys`. What a key hashes
and how the folders are laid out is versioned by :data:`LAYOUT_VERSION`: every stage record and the work
dir's ``layout.json`` carry it, and a work dir written under another version is refused with an
explanation (:class:`LayoutVersionError`) instead of being silently recomputed beside, or reused.

Records are written atomically (temp file, then ``os.replace``). Limit: ``flock`` is exclusive between
processes of one host and, on a shared filesystem, only as far as that filesystem implements it (NFSv4
and Lustre do, with ``flock`` mount options; some do not).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..atomic import write_json_atomic
from ..errors import ConfigError

WORKDIR_ENV = "WSSS_WORKDIR"
DEFAULT_WORKDIR = "runs"
LAYOUT_FILE = "layout.json"
STAGE_RECORD = "stage.json"
LOCK_FILE = ".lock"
STATES = ("pending", "running", "finished", "failed")

# Bump when what a stage key hashes, or where outputs live, changes; say what changed in LAYOUT_HISTORY.
LAYOUT_VERSION = 2
LAYOUT_HISTORY = {
    1: "stages/<stage>/<key>/ with key = hash(stage store name, the stage's config slice, its inputs' keys)",
    2: "as 1, and the eval stages' keys also hash the evaluation protocol (eval.protocol)",
}
UNVERSIONED = 1  # records and work dirs written before versioning use layout 1


class LayoutVersionError(ConfigError):
    """A work dir or stage record written under another layout version."""


def resolve_workdir(workdir: str | Path | None = None) -> Path:
    """--workdir, else $WSSS_WORKDIR, else ./runs, made absolute (trial processes must agree on it)."""
    chosen = workdir or os.environ.get(WORKDIR_ENV) or DEFAULT_WORKDIR
    return Path(chosen).expanduser().resolve()


def hostname() -> str:
    return socket.gethostname()


def now() -> float:
    return round(time.time(), 3)


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object file; None when it is missing, unreadable, not JSON or not an object (a damaged record
    counts as none: the stage store is checked and the record rebuilt from it)."""
    try:
        value = json.loads(Path(path).read_text())
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


# -- the layout version ------------------------------------------------------------------------------

def _refuse(what: str, found: int) -> LayoutVersionError:
    then = LAYOUT_HISTORY.get(found, "an unknown layout (written by a newer wsss?)")
    return LayoutVersionError(
        f"{what} was written under layout version {found} ({then}); this wsss uses layout version "
        f"{LAYOUT_VERSION} ({LAYOUT_HISTORY[LAYOUT_VERSION]}). Its stage keys do not match this version's, so "
        f"its finished stages would be neither found nor safely reused. Run with a new --workdir (or move this "
        f"one away); its trial records and eval.json files stay readable by `wsss report --workdir`.")


def check_workdir(workdir: Path) -> None:
    """Refuse a work dir written under another layout version (reads only; a missing dir is fine)."""
    marker = read_json(Path(workdir) / LAYOUT_FILE)
    if marker is None:
        return  # new, or written before versioning (layout 1)
    found = int(marker.get("layout_version", UNVERSIONED))
    if found != LAYOUT_VERSION:
        raise _refuse(f"work dir {workdir} ({Path(workdir) / LAYOUT_FILE})", found)


def prepare_workdir(workdir: Path) -> None:
    """Create the work dir (checked first) and record its layout version."""
    check_workdir(workdir)
    try:
        Path(workdir).mkdir(parents=True, exist_ok=True)
        if not (Path(workdir) / LAYOUT_FILE).is_file():
            write_json_atomic(Path(workdir) / LAYOUT_FILE, {"layout_version": LAYOUT_VERSION,
                                                             "layout": LAYOUT_HISTORY[LAYOUT_VERSION]})
    except OSError as exc:  # read-only, not a folder, full: before any trial is claimed or started
        raise ConfigError(f"work dir {workdir}: cannot write there ({type(exc).__name__}: {exc.strerror or exc}); "
                          f"{WRITABLE_FIX}") from None
    # A work dir made by another user: layout.json is there already, so nothing above wrote; its folders must be
    # writable too, or the submitter fails half-way.
    check_writable(f"work dir {workdir}", (Path(workdir), Path(workdir) / "sweeps", stages_root(workdir)))


WRITABLE_FIX = "give a writable folder with --workdir (or $WSSS_WORKDIR)"


def check_writable(label: str, folders: Iterable[Path]) -> None:
    """One ConfigError naming the first existing folder of ``folders`` this user cannot write in (e.g. made by
    another user), before anything is claimed or written there."""
    for folder in folders:
        if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
            raise ConfigError(f"{label}: cannot write in {folder} (PermissionError: Permission denied); {WRITABLE_FIX}")


# -- locks ----------------------------------------------------------------------------------------------

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


# -- stage folders and records ---------------------------------------------------------------------------

def stages_root(workdir: Path) -> Path:
    return Path(workdir) / "stages"


def stage_dir(workdir: Path, stage: str, key: str) -> Path:
    return stages_root(workdir) / stage / key


def read_stage(stage_path: Path) -> dict[str, Any]:
    """A stage's record (``pending`` when there is none); a record of another layout version is refused."""
    record = read_json(Path(stage_path) / STAGE_RECORD)
    if record is None:
        return {"state": "pending", "attempts": 0, "error": None}
    found = int(record.get("layout_version", UNVERSIONED))
    if found != LAYOUT_VERSION:
        raise _refuse(f"stage record {Path(stage_path) / STAGE_RECORD}", found)
    return record


def write_stage(stage_path: Path, record: dict[str, Any]) -> None:
    write_json_atomic(Path(stage_path) / STAGE_RECORD,
                      {**record, "layout_version": LAYOUT_VERSION, "updated": now()})


def stage_state(stage_path: Path) -> str:
    """pending, running, finished or failed; a running record nobody holds the lock of is failed (stale)."""
    record = read_stage(stage_path)
    state = record.get("state", "pending")
    if state == "running" and not StageLock(stage_path).is_held() and record.get("host") == hostname():
        return "failed"
    return state


def finished_stage_records(workdir: Path, stage: str) -> list[dict[str, Any]]:
    """The records of every finished ``stage`` in the work dir (any key)."""
    out = []
    for path in (stages_root(workdir) / stage).glob(f"*/{STAGE_RECORD}"):
        record = read_json(path) or {}
        if record.get("state") == "finished":
            out.append(record)
    return out


# -- trial records -------------------------------------------------------------------------------------

def sweep_dir(workdir: Path, sweep: str) -> Path:
    return Path(workdir) / "sweeps" / sweep


def trials_dir(workdir: Path, sweep: str) -> Path:
    return sweep_dir(workdir, sweep) / "trials"


def trial_path(workdir: Path, sweep: str, trial_id: str) -> Path:
    return trials_dir(workdir, sweep) / f"{trial_id}.json"


def read_trial(path: Path) -> dict[str, Any] | None:
    return read_json(path)


def write_trial(path: Path, record: dict[str, Any]) -> None:
    write_json_atomic(path, record)


@contextlib.contextmanager
def update_trial(path: Path) -> Iterator[dict[str, Any]]:
    """Read-modify-write a trial record under its lock; the yielded dict is written back."""
    with file_lock(path.with_suffix(".lock")):
        record = read_json(path)
        if record is None and path.exists():
            print(f"wsss: trial record {path} is damaged (not a JSON object); rebuilding it from the stage store",
                  file=sys.stderr, flush=True)
        record = record or {}
        yield record
        record["updated"] = now()
        write_json_atomic(path, record)


def list_trials(workdir: Path, sweep: str) -> list[dict[str, Any]]:
    records = [read_json(p) for p in sorted(trials_dir(workdir, sweep).glob("*.json"))]
    return sorted((r for r in records if r), key=lambda r: r.get("index", 0))


# -- who runs a stage or trial ----------------------------------------------------------------------------

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
