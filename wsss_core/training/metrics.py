"""Where training metrics and the run status go: one small protocol, a JSON-lines default.

The default sink prints a line every ``print_every`` steps and appends every record to
``<run_dir>/metrics.jsonl``; ``status.json`` says running / finished / failed (with the error line).
An MLflow layer implements the same protocol. Only rank 0 gets a real sink (others get NullSink).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Protocol

from ..atomic import write_json_atomic


class MetricsSink(Protocol):
    def log_params(self, params: dict[str, Any]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def set_status(self, status: str, error: str | None = None) -> None: ...


class NullSink:
    """For ranks other than 0."""

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def set_status(self, status: str, error: str | None = None) -> None:
        pass


def read_status(run_dir: str | Path) -> dict[str, Any] | None:
    path = Path(run_dir) / "status.json"
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def drop_steps_from(path: Path, step: int) -> None:
    """Keep only the lines of ``path`` logged before ``step`` (and no line cut short by a kill)."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return
    kept = []
    for line in lines:
        try:
            logged = json.loads(line).get("step")
        except (json.JSONDecodeError, AttributeError):
            continue
        if isinstance(logged, (int, float)) and logged < step:
            kept.append(line)
    if len(kept) != len(lines):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(path)


class JsonlSink:
    """Appends ``{"step": s, "time": t, **metrics}`` lines to metrics.jsonl and keeps status.json."""

    def __init__(self, run_dir: str | Path, print_every: int = 10, stream=sys.stdout, stage: str = "train"):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.print_every = print_every
        self.stream = stream
        self.stage = stage
        self._trimmed = False

    def log_params(self, params: dict[str, Any]) -> None:
        write_json_atomic(self.run_dir / "params.json", params)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if not self._trimmed:  # a resumed run re-logs the steps after its checkpoint: drop their old lines once
            self._trimmed = True
            drop_steps_from(self.run_dir / "metrics.jsonl", step)
        record = {"step": step, "time": round(time.time(), 3), **{k: float(v) for k, v in metrics.items()}}
        with open(self.run_dir / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.stream is not None and step % self.print_every == 0:
            shown = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items())
            print(f"[{self.stage}] step {step}  {shown}", file=self.stream, flush=True)

    def set_status(self, status: str, error: str | None = None) -> None:
        previous = read_status(self.run_dir) or {}
        # Top level: the latest stage's state; "stages" keeps each stage's (train, cams) own line.
        stages = {**previous.get("stages", {}), self.stage: {"status": status, "error": error}}
        record = {"stage": self.stage, "status": status, "error": error, "updated": time.time(), "stages": stages}
        write_json_atomic(self.run_dir / "status.json", record)
