"""A stage's local tracking record: its run ids and what could not reach MLflow yet.

In ``<stage_dir>``:

* ``tracking.json`` — ``{"runs": {parent_run_id: {"run_id", "uid", "experiment_id", "tracking_uri",
  "stage"}}}``: the stage's MLflow run per sweep (a cached stage can belong to several sweeps). A
  requeued or resumed stage finds its run here and continues it. ``uid`` is also the run's
  ``wsss.stage_uid`` tag, so a run created by a sync that died before writing this file is found again.
* ``tracking_buffer.jsonl`` — one JSON entry per line, appended while the store is unreachable:
  ``{"seq", "parent", "kind", "time", ...}`` with kind ``open`` (the run to create: ctx, uid, run name,
  tags, start time), ``params``, ``tags``, ``metrics`` (step, values), ``status`` (status, error) or
  ``artifacts`` (paths, artifact_path). Entries are never rewritten.
* ``tracking_buffer.synced`` — ``{"lines": N}``: the first N lines are in MLflow (written by the sync).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .store import read_json, write_json_atomic

RUNS_FILE = "tracking.json"
BUFFER_FILE = "tracking_buffer.jsonl"
SYNCED_FILE = "tracking_buffer.synced"
LOCK_FILE = "tracking_buffer.lock"


def now_ms() -> int:
    return int(time.time() * 1000)


class StageRecord:
    """The tracking files of one stage dir."""

    def __init__(self, stage_dir: str | Path):
        self.dir = Path(stage_dir)

    # -- run ids ---------------------------------------------------------------------------------------
    def runs(self) -> dict[str, dict[str, Any]]:
        return (read_json(self.dir / RUNS_FILE) or {}).get("runs", {})

    def run_entry(self, parent_run_id: str) -> dict[str, Any] | None:
        return self.runs().get(parent_run_id)

    def save_run_entry(self, parent_run_id: str, entry: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        runs = self.runs()
        runs[parent_run_id] = {**runs.get(parent_run_id, {}), **entry}
        write_json_atomic(self.dir / RUNS_FILE, {"runs": runs})

    # -- the buffer ------------------------------------------------------------------------------------
    @property
    def buffer_path(self) -> Path:
        return self.dir / BUFFER_FILE

    def append(self, parent_run_id: str, kind: str, **payload: Any) -> None:
        """Append one entry (one ``write`` of one line in append mode: whole lines, even if killed)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        entry = {"seq": self._next_seq(), "parent": parent_run_id, "kind": kind, "time": now_ms(), **payload}
        line = json.dumps(entry, default=str, allow_nan=True) + "\n"
        with open(self.buffer_path, "a") as handle:
            handle.write(line)
            handle.flush()
        self._seq = entry["seq"] + 1

    def _next_seq(self) -> int:
        if getattr(self, "_seq", None) is None:
            self._seq = len(self.lines())
        return self._seq

    def lines(self) -> list[str]:
        """Complete lines of the buffer (a line a killed writer left without its newline is ignored)."""
        try:
            text = self.buffer_path.read_text()
        except FileNotFoundError:
            return []
        complete = text.split("\n")[:-1]
        return complete

    def synced_lines(self) -> int:
        return int((read_json(self.dir / SYNCED_FILE) or {}).get("lines", 0))

    def mark_synced(self, lines: int) -> None:
        write_json_atomic(self.dir / SYNCED_FILE, {"lines": lines, "updated": time.time()})

    def pending(self) -> list[tuple[int, dict[str, Any]]]:
        """(line number, entry) of every entry not synced yet, in order."""
        done = self.synced_lines()
        return [(i, json.loads(line)) for i, line in enumerate(self.lines()) if i >= done and line.strip()]

    def has_pending(self, parent_run_id: str | None = None) -> bool:
        return any(parent_run_id is None or e.get("parent") == parent_run_id for _, e in self.pending())

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive lock for a sync of this stage (a sink's flush and `wsss sync` never interleave)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / LOCK_FILE, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def find_stage_records(workdir: str | Path) -> list[StageRecord]:
    """Every stage dir under ``workdir`` with a tracking buffer."""
    found = []
    for root, dirs, files in os.walk(workdir):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d != "mlartifacts"]
        if BUFFER_FILE in files:
            found.append(StageRecord(root))
    return sorted(found, key=lambda r: str(r.dir))
