"""Test-only fault injection, driven by a sweep file's ``faults:`` list (``launchers.spec.Fault``).

Two hooks, both read by the trial runner and nothing else:

* ``kind: raise``: the matching stage fails on its first ``times`` attempts (counted in marker files
  ``<workdir>/sweeps/<sweep>/faults/<trial>.<stage>``, so a retry by another process sees the count);
* ``kind: delay``: every metrics call of the stage sleeps ``seconds`` (a short training made long enough
  to preempt).

A fault matches a trial when every ``when`` axis value equals the trial's label.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import layout

if TYPE_CHECKING:
    from .trial import TrialSpec


def matching(trial: "TrialSpec", stage: str) -> list[dict[str, Any]]:
    return [fault for fault in trial.faults if fault["stage"] == stage
            and all(str(trial.axes.get(k)) == str(v) for k, v in fault.get("when", {}).items())]


def injected_failure(trial: "TrialSpec", stage: str) -> str | None:
    """The message if this attempt of ``stage`` must fail (and count it)."""
    for fault in matching(trial, stage):
        if fault.get("kind", "raise") != "raise":
            continue
        marker = layout.sweep_dir(Path(trial.workdir), trial.sweep) / "faults" / f"{trial.trial_id}.{stage}"
        marker.parent.mkdir(parents=True, exist_ok=True)
        done = len(marker.read_text().split()) if marker.exists() else 0
        times = fault.get("times", 1)
        if times is None or done < times:
            with open(marker, "a") as handle:
                handle.write(f"{os.getpid()}\n")
            return f"injected fault in stage {stage} (attempt {done + 1}; faults in the sweep file)"
    return None


class DelaySink:
    """Sleeps on every logged step, then passes the call on."""

    def __init__(self, inner: Any, seconds: float):
        self.inner, self.seconds = inner, seconds

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        time.sleep(self.seconds)
        self.inner.log_metrics(metrics, step)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def delayed(trial: "TrialSpec", stage: str, sink: Any) -> Any:
    for fault in matching(trial, stage):
        if fault.get("kind") == "delay":
            sink = DelaySink(sink, float(fault.get("seconds", 0.0)))
    return sink
