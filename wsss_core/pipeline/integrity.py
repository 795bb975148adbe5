"""The stage store is the truth: a stage counts as finished only if its record is valid and its outputs are
still there, and only if no input of it was recomputed after it ran.

When a stage finishes, the runner records an ``outputs`` manifest in its ``stage.json`` (per top-level entry
of the stage folder: file count and bytes; bookkeeping files excluded). :func:`stage_problem` compares the
folder with it; :func:`trial_stage_states` walks a trial's chain and says, per stage, its state and, for a
stage to recompute that was finished, why. The planner, the submitter (trial records) and the runner (before
reusing a stage) all ask here, so a deleted or damaged stage is recomputed together with every stage after
it, and the user is told which and why.

A stage record written before manifests (no ``outputs``) is checked for its folder and record only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import layout

if TYPE_CHECKING:
    from .trial import StageSpec, TrialSpec

# Written after a stage finishes (tracking status, buffers, sync state) or bookkeeping: not outputs.
BOOKKEEPING = {layout.STAGE_RECORD, layout.LOCK_FILE, "status.json", "tracking.json", "tracking_buffer.jsonl",
               "tracking_artifacts"}
CHECK_JSON = ("eval.json",)  # small result files whose content is read back: parsed, not only sized


def output_manifest(stage_dir: Path) -> dict[str, dict[str, int]]:
    """Per top-level entry of ``stage_dir`` (bookkeeping and hidden files left out): files and bytes."""
    out: dict[str, dict[str, int]] = {}
    try:
        entries = list(os.scandir(stage_dir))
    except FileNotFoundError:
        return out
    for entry in entries:
        if entry.name in BOOKKEEPING or entry.name.startswith("."):
            continue
        if entry.is_dir(follow_symlinks=False):
            files = size = 0
            for root, _, names in os.walk(entry.path):
                for name in names:
                    try:
                        size += os.stat(os.path.join(root, name)).st_size
                        files += 1
                    except FileNotFoundError:
                        pass
            out[entry.name] = {"files": files, "bytes": size}
        else:
            out[entry.name] = {"files": 1, "bytes": entry.stat(follow_symlinks=False).st_size}
    return out


def read_record(stage_dir: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(the stage record, None), (None, None) when there is none, or (None, why it is unreadable)."""
    path = Path(stage_dir) / layout.STAGE_RECORD
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None, None
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"its {layout.STAGE_RECORD} cannot be read ({type(exc).__name__})"
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        return None, f"its {layout.STAGE_RECORD} is damaged (not valid JSON)"
    if not isinstance(record, dict):
        return None, f"its {layout.STAGE_RECORD} is damaged (a JSON {type(record).__name__}, not an object)"
    return record, None


def stage_problem(stage_dir: Path) -> str | None:
    """Why a stage's record or recorded outputs cannot be trusted, or None (a stage never run is fine)."""
    record, damaged = read_record(stage_dir)
    if damaged:
        return damaged
    if record is None or record.get("state") != "finished":
        return None
    manifest = record.get("outputs")
    if not isinstance(manifest, dict):
        return None  # written before manifests
    found = output_manifest(Path(stage_dir))
    for name, want in manifest.items():
        got = found.get(name)
        if got is None:
            return f"its output {name} is missing"
        if got != want:
            return (f"its output {name} changed since it finished ({got['files']} file(s), {got['bytes']} bytes; "
                    f"recorded {want.get('files')} file(s), {want.get('bytes')} bytes)")
    for name in CHECK_JSON:
        if name in manifest:
            try:
                json.loads((Path(stage_dir) / name).read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                return f"its {name} is damaged (not valid JSON)"
    return None


def _finished_at(stage_dir: Path) -> float | None:
    record, _ = read_record(stage_dir)
    value = (record or {}).get("finished")
    return float(value) if isinstance(value, (int, float)) else None


def input_problem(trial: "TrialSpec", stage: "StageSpec", states: dict[str, tuple[str, str | None]] | None = None
                  ) -> str | None:
    """Why ``stage``'s finished output is stale because of an input: an input is to be recomputed
    (``states``), or an input finished after this stage started (it was recomputed since)."""
    record, _ = read_record(Path(stage.dir))
    started = (record or {}).get("started")
    for name in stage.inputs:
        if not trial.has_stage(name):
            continue
        if states is not None and name in states and states[name][0] != "finished":
            return f"its input stage {name} is to be recomputed"
        done = _finished_at(Path(trial.stage(name).dir))
        if isinstance(started, (int, float)) and done is not None and done > started:
            return f"its input stage {name} was recomputed after it ran"
    return None


def trial_stage_states(trial: "TrialSpec", record: dict[str, Any] | None = None,
                       checked: dict[str, str | None] | None = None) -> dict[str, tuple[str, str | None]]:
    """Per stage of ``trial``, in chain order: (state, why it is to be recomputed or None). ``record``: the
    trial's record as it was (read from disk when None); a stage it says finished whose folder or record is
    gone is to be recomputed. ``checked``: stage dir -> :func:`stage_problem`, shared by the trials of a plan
    (a stage shared by many trials is walked once)."""
    checked = {} if checked is None else checked
    if record is None:
        record = layout.read_trial(trial.record_path)
    recorded = record.get("stages") if isinstance(record, dict) else None
    recorded = recorded if isinstance(recorded, dict) else {}
    out: dict[str, tuple[str, str | None]] = {}
    for stage in trial.stages:
        sdir = Path(stage.dir)
        was = recorded.get(stage.name)
        was_finished = isinstance(was, dict) and was.get("state") == "finished"
        state = layout.stage_state(sdir)
        if stage.dir not in checked:
            checked[stage.dir] = stage_problem(sdir)
        reason = checked[stage.dir]
        if reason is None and was_finished and state != "finished":
            if not sdir.is_dir():
                reason = "its folder is missing"
            elif not (sdir / layout.STAGE_RECORD).is_file():
                reason = f"its {layout.STAGE_RECORD} is missing"
        if reason is None and state == "finished":
            reason = input_problem(trial, stage, out)
        if reason is not None:
            state = "pending" if state in ("finished", "pending") else state
        out[stage.name] = (state, reason)
    return out


def recompute_reasons(states: dict[str, tuple[str, str | None]]) -> dict[str, str]:
    return {name: reason for name, (_, reason) in states.items() if reason}
