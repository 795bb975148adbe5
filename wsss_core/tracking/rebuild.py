"""``wsss sync --rebuild``: log every finished stage of a work dir into a new or emptied tracking store.

The stage store is the truth and every stage folder keeps what its MLflow run held, so a lost store
(deleted, emptied, replaced) is refilled from the folders, through the same :class:`~.sink.StageSink` that
logs a running stage (one way of logging a stage, not two):

* which stages: the trial records ``sweeps/<sweep>/trials/*.json`` say which stage folders belong to which
  trial of which sweep; each sweep gets its experiment and a parent run, each of its finished stages with a
  sink (not ``data``, ``amn_seeds``) a child run. A stage shared by two trials of a sweep is logged once, as
  the trial named in its ``stage.json`` (the one that ran it); a stage shared by two sweeps once in each;
* tags: the trial record's (sweep, baseline, add-ons, axes, seed, index, trial id, launcher), the stage's
  (name, key, the host in ``stage.json``) and the commit the sink recorded in ``tracking.json`` when the
  stage ran (``unknown`` for a stage run without tracking);
* params: the trial config the sink recorded (``tracking_artifacts/config.yaml``) and ``params.json``;
* metrics: every step of ``metrics.jsonl``, or for an evaluation stage ``eval.json`` through ``log_eval``
  (the threshold curve, the summary, the eval files and the overlay grid already drawn);
* status FINISHED; each stage's ``tracking.json`` and its trial record then name the new run.

Stages that are not finished, or whose outputs fail the integrity check (a rerun recomputes them), are not
logged. Idempotent: a stage whose run under the sweep's parent run is in the store and FINISHED is skipped
(one search per sweep, not a lookup per stage); a run a killed rebuild left unfinished is completed (the sink
reopens it and logs only what is missing). Buffered entries of runs whose parent run is gone from the store
(``tracking_buffer.jsonl``) are superseded by the rebuilt run and marked done.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

from ..errors import ConfigError
from ..pipeline import integrity, layout
from ..pipeline.chains import find_stage
from .record import StageRecord
from .sink import TRACKING_ARTIFACTS, StageSink
from .store import (TrackingContext, TrackingError, client, find_run, finish_sweep_tracking, prepare_sweep_tracking,
                    search_runs_paged, sweep_params)

PROGRESS_EVERY_S = 5.0
DAMAGED_SHOWN = 20
REBUILD_LOCK = "rebuild.lock"  # per sweep: two rebuilds of one sweep never both log a stage
Progress = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass
class RebuildStats:
    """What a rebuild did (counts over stages with a tracking run: not ``data``, ``amn_seeds``)."""

    sweeps: int = 0
    logged: int = 0  # stage runs logged (created, or completed after a killed rebuild)
    present: int = 0  # already in the store and FINISHED: skipped
    not_finished: int = 0  # pending, running or failed: nothing to log yet
    damaged: list[str] = field(default_factory=list)  # finished, but outputs changed: a rerun recomputes them
    buffered: int = 0  # logged into the local record instead (the store went away): `wsss sync` uploads them
    superseded: int = 0  # buffered entries of runs whose parent run left the store: replaced by the rebuild
    unowned: int = 0  # finished stage folders no trial record names: in no sweep, not logged

    def add(self, other: "RebuildStats") -> None:
        for name in ("sweeps", "logged", "present", "not_finished", "buffered", "superseded", "unowned"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.damaged += other.damaged

    def counts(self) -> str:
        text = f"{self.logged} logged, {self.present} already there"
        if self.not_finished:
            text += f", {self.not_finished} not finished"
        if self.damaged:
            text += f", {len(self.damaged)} damaged (`wsss sweep run` recomputes them)"
        if self.buffered:
            text += f", {self.buffered} kept locally (store unreachable: `wsss sync` uploads them)"
        return text

    def summary(self) -> str:
        text = f"{self.sweeps} sweep(s); stage runs: {self.counts()}"
        if self.superseded:
            text += f"; {self.superseded} buffered entries of lost runs superseded"
        if self.unowned:
            text += f"; {self.unowned} finished stage folder(s) in no trial record, not logged"
        return text


@dataclass
class _StageJob:
    trial: dict[str, Any]  # the trial record
    record_path: Path  # its file
    stage: str
    key: str
    dir: Path
    finished: bool  # as its stage.json said when the job was made (checked again before logging)


# -- the work dir ----------------------------------------------------------------------------------------

def rebuild_workdir(workdir: str | Path, tracking_uri: str | None = None,
                    progress: Progress = _stderr) -> RebuildStats:
    """Log every finished stage of every sweep of ``workdir`` into the store (``tracking_uri``, default the
    work dir's SQLite store), each sweep under its experiment and parent run (see the module docstring)."""
    workdir = layout.resolve_workdir(workdir)
    sweeps = sweeps_with_records(workdir)
    if not sweeps:
        raise TrackingError(f"{workdir}: no trial records (sweeps/<sweep>/trials/*.json), so no stage to log; "
                            "pass the sweeps' --workdir (default $WSSS_WORKDIR or ./runs)")
    total = RebuildStats()
    owned: set[Path] = set()
    for sweep in sweeps:
        records = layout.list_trials(workdir, sweep)
        ctx = prepare_sweep_tracking(sweep, tracking_uri, workdir, params=_sweep_params(workdir, sweep, records),
                                     tags=_sweep_tags(records), rebuild_lost=False)
        jobs = _stage_jobs(workdir, records)
        owned.update(job.dir for job in jobs)
        total.add(rebuild_sweep(ctx, workdir, jobs, progress))
        _end_parent(ctx, records)
    total.unowned = sum(1 for path in _finished_tracked_stage_dirs(workdir) if path not in owned)
    return total


def rebuild_lost_sweep(ctx: TrackingContext, workdir: str | Path, why: str, progress: Progress | None = None) -> None:
    """The submitter found that the store lost this sweep (``why``): log the sweep's finished stages again.
    Tracking never fails a sweep: an error is reported with the command that finishes the job."""
    workdir = layout.resolve_workdir(workdir)
    progress = progress or _stderr
    try:
        jobs = _stage_jobs(workdir, layout.list_trials(workdir, ctx.sweep_name))
        if not any(job.finished for job in jobs):
            return  # nothing finished, nothing lost
        progress(f"[sweep] tracking: store {ctx.tracking_uri}: {why}. Logging the sweep's finished stages into "
                 f"it from the stage folders, under parent run {ctx.parent_run_id}")
        stats = rebuild_sweep(ctx, workdir, jobs, progress)
    except Exception as exc:  # noqa: BLE001 - the results are on disk; the store can be refilled later
        progress(f"[sweep] tracking: rebuilding failed ({type(exc).__name__}: {exc}); the sweep goes on. Run "
                 f"`wsss sync --rebuild --workdir {workdir}` later")
        return
    others = [s for s in sweeps_with_records(workdir) if s != ctx.sweep_name]
    line = f"[sweep] tracking: sweep {ctx.sweep_name} rebuilt: {stats.counts()}"
    if others:
        line += (f". The store may have lost the other sweeps of this work dir too ({', '.join(others[:5])}"
                 f"{', ...' if len(others) > 5 else ''}): `wsss sync --rebuild --workdir {workdir}` logs them")
    progress(line)


def sweeps_with_records(workdir: Path) -> list[str]:
    return sorted(p.parent.name for p in (Path(workdir) / "sweeps").glob("*/trials") if any(p.glob("*.json")))


# -- one sweep ---------------------------------------------------------------------------------------------

def rebuild_sweep(ctx: TrackingContext, workdir: Path, jobs: list[_StageJob],
                  progress: Progress = _stderr) -> RebuildStats:
    """Log ``jobs`` (the sweep's stages) under ``ctx``'s parent run; progress lines every few seconds."""
    stats = RebuildStats(sweeps=1)
    with layout.file_lock(layout.sweep_dir(workdir, ctx.sweep_name) / REBUILD_LOCK):
        finished_runs = _finished_child_runs(ctx)  # after the lock: what a concurrent rebuild logged counts
        parents = _ParentCheck(ctx)
        progress(f"[rebuild] sweep {ctx.sweep_name}: {len(jobs)} stage(s) to check")
        last = time.monotonic()
        for done, job in enumerate(jobs, 1):
            _rebuild_stage(ctx, job, finished_runs, parents, stats)
            if time.monotonic() - last >= PROGRESS_EVERY_S:
                progress(f"[rebuild] sweep {ctx.sweep_name}: {done}/{len(jobs)} stage(s): {stats.counts()}")
                last = time.monotonic()
        progress(f"[rebuild] sweep {ctx.sweep_name}: done: {stats.counts()}")
    for line in stats.damaged[:DAMAGED_SHOWN]:
        progress(f"[rebuild]   not logged: {line}")
    if len(stats.damaged) > DAMAGED_SHOWN:
        progress(f"[rebuild]   ... and {len(stats.damaged) - DAMAGED_SHOWN} more (`wsss sweep plan` lists them)")
    return stats


def _stage_jobs(workdir: Path, records: list[dict[str, Any]]) -> list[_StageJob]:
    """The sweep's stage folders that have a run (a sink), in trial and chain order, each once, with the
    trial that ran it. Folders are found by stage and key under ``workdir`` (a moved work dir's records still
    name the old paths until its next run refreshes them)."""
    jobs: dict[Path, _StageJob] = {}
    stage_records: dict[Path, dict[str, Any]] = {}
    for trial in records:
        stages = trial.get("stages")
        for name, entry in (stages.items() if isinstance(stages, dict) else ()):
            key = entry.get("key") if isinstance(entry, dict) else None
            try:
                defn = find_stage(str(name))
            except ConfigError:
                continue  # a stage this version does not have: the layout check refuses such work dirs
            if not isinstance(key, str) or defn.sink_stage is None:
                continue
            path = layout.stage_dir(workdir, defn.store_name, key)
            if path not in stage_records:
                stage_records[path] = layout.read_json(path / layout.STAGE_RECORD) or {}
            ran_it = stage_records[path].get("trial_id") == trial.get("trial_id")
            if path not in jobs or ran_it:
                record_path = layout.trial_path(workdir, str(trial.get("sweep")), str(trial.get("trial_id")))
                jobs[path] = _StageJob(trial, record_path, str(name), key, path,
                                       stage_records[path].get("state") == "finished")
    return list(jobs.values())


def _finished_child_runs(ctx: TrackingContext) -> set[str]:
    found = search_runs_paged(ctx.tracking_uri, [ctx.experiment_id],
                              f"tags.`mlflow.parentRunId` = '{ctx.parent_run_id}' and attributes.status = 'FINISHED'")
    return {run.info.run_id for run in found}


def _rebuild_stage(ctx: TrackingContext, job: _StageJob, finished_runs: set[str], parents: "_ParentCheck",
                   stats: RebuildStats) -> None:
    if not _finished(job, stats):
        return
    record = StageRecord(job.dir)
    if (record.run_entry(ctx.parent_run_id) or {}).get("run_id") in finished_runs:
        stats.present += 1
        return
    lock = layout.StageLock(job.dir)
    if not lock.acquire(blocking=False):
        print(f"[rebuild] {job.dir} is held by {lock.holder()}; waiting for it", file=sys.stderr, flush=True)
        lock.acquire(blocking=True)
    try:
        if not _finished(job, stats):  # recomputed meanwhile: its own run logs it
            return
        stats.superseded += parents.drop_orphaned(record)
        sink = _log_stage(ctx, job)
    finally:
        lock.release()
    if sink.offline:
        stats.buffered += 1
    else:
        stats.logged += 1
    if sink.run_id:
        _note_run(job, ctx.parent_run_id, sink.run_id)


def _finished(job: _StageJob, stats: RebuildStats) -> bool:
    stage_record, damaged = integrity.read_record(job.dir)
    if damaged is None and (stage_record or {}).get("state") != "finished":
        stats.not_finished += 1
        return False
    problem = damaged or integrity.stage_problem(job.dir)
    if problem:
        stats.damaged.append(f"{job.dir} ({job.trial.get('trial_id')}: {job.stage}): {problem}")
        return False
    return True


def _log_stage(ctx: TrackingContext, job: _StageJob) -> StageSink:
    """One finished stage through the stage sink, from its folder (see the module docstring)."""
    sdir = job.dir
    config_path = sdir / TRACKING_ARTIFACTS / "config.yaml"
    config = _read_yaml(config_path) if config_path.is_file() else None
    sink = StageSink(ctx, sdir, job.stage, tags=_stage_tags(job), params=config)
    try:
        params = layout.read_json(sdir / "params.json")
        if params:
            sink.log_params(params)
        result = layout.read_json(sdir / "eval.json") if find_stage(job.stage).sink_stage == "eval" else None
        if result is not None:
            sink.log_eval(result, sdir, drawn_overlays=True)
        else:
            sink.log_history(_jsonl(sdir / "metrics.jsonl"))
        sink.set_status("finished")
    finally:
        sink.close()
    return sink


def _stage_tags(job: _StageJob) -> dict[str, Any]:
    """The tags the runner gives a stage's run (``runner._make_sink``), from the trial and stage records."""
    trial = job.trial
    stage_record = layout.read_json(job.dir / layout.STAGE_RECORD) or {}
    commit = next((e.get("git_commit") for e in StageRecord(job.dir).runs().values() if e.get("git_commit")), None)
    return {"sweep": trial.get("sweep"), "baseline": trial.get("baseline"), "posterior": str(trial.get("posterior")),
            "seed": str(trial.get("seed")), "trial_index": str(trial.get("index")),
            "launcher": trial.get("launcher") or "unknown", "git_commit": commit or "unknown", "stage": job.stage,
            "stage_key": job.key, "host": stage_record.get("host") or "unknown", "trial_id": trial.get("trial_id"),
            "addons": list(trial.get("addons") or []), "axes": dict(trial.get("axes") or {}),
            "addons_label": str(trial.get("addons_label"))}


def _note_run(job: _StageJob, parent_run_id: str, run_id: str) -> None:
    """The trial record names the stage's new run (as the runner does for a stage it ran)."""
    with layout.update_trial(job.record_path) as record:
        tracking = record.get("tracking") if isinstance(record.get("tracking"), dict) else {}
        if tracking.get("parent_run_id") != parent_run_id:
            tracking = {"parent_run_id": parent_run_id, "run_ids": {}}
        tracking.setdefault("run_ids", {})[job.stage] = run_id
        record["tracking"] = tracking


def _end_parent(ctx: TrackingContext, records: list[dict[str, Any]]) -> None:
    """The parent run's status from the trial records: FINISHED when all finished, FAILED when one failed
    and none is pending or running; else it stays RUNNING (the sweep is still going)."""
    states = {r.get("state") for r in records}
    if states == {"finished"}:
        finish_sweep_tracking(ctx, "FINISHED")
    elif "failed" in states and not states & {"pending", "running"}:
        finish_sweep_tracking(ctx, "FAILED")


def _sweep_params(workdir: Path, sweep: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    """The parent run's params as the submitter logs them (``launchers.submit``), from ``sweep.json``."""
    info = layout.read_json(layout.sweep_dir(workdir, sweep) / "sweep.json") or {}
    axes = info.get("axes") if isinstance(info.get("axes"), dict) else {}
    return sweep_params(info.get("file"), len(records), info.get("thresholds"), axes)


def _sweep_tags(records: list[dict[str, Any]]) -> dict[str, Any]:
    launchers = sorted({str(r.get("launcher")) for r in records if r.get("launcher")})
    return {"wsss.rebuilt": "from the stage folders", **({"launcher": ",".join(launchers)} if launchers else {})}


def _finished_tracked_stage_dirs(workdir: Path) -> Iterator[Path]:
    """Finished stage folders of stages that have a run (for the count of those no trial names)."""
    for path in layout.stages_root(workdir).glob(f"*/*/{layout.STAGE_RECORD}"):
        try:
            tracked = find_stage(path.parent.parent.name).sink_stage is not None
        except ConfigError:
            continue
        if tracked and (layout.read_json(path) or {}).get("state") == "finished":
            yield path.parent


class _ParentCheck:
    """Which sweep parent runs of buffered entries the store still holds (one lookup per parent)."""

    def __init__(self, ctx: TrackingContext):
        self.ctx = ctx
        self.known: dict[str, bool] = {ctx.parent_run_id: True}
        self.client = client(ctx.tracking_uri)

    def held(self, entry: dict[str, Any]) -> bool:
        """Whether ``entry`` belongs to a run the store can still hold (an entry of another store: yes)."""
        if (entry.get("uri") or self.ctx.tracking_uri) != self.ctx.tracking_uri:
            return True
        parent = str(entry.get("parent"))
        if parent not in self.known:
            self.known[parent] = find_run(self.client, parent) is not None
        return self.known[parent]

    def drop_orphaned(self, record: StageRecord) -> int:
        """Mark done the leading pending entries of runs whose parent left the store (this rebuild logs the
        stage from its folder instead); returns how many."""
        pending = record.pending()
        dropped = 0
        for line_no, entry in pending:
            if self.held(entry):
                break
            dropped += 1
        if dropped:
            with record.lock():
                record.mark_synced(pending[dropped - 1][0] + 1)
        return dropped


def _read_yaml(path: Path) -> dict[str, Any] | None:
    try:
        value = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return value if isinstance(value, dict) else None


def _jsonl(path: Path) -> Iterator[dict[str, Any]]:
    try:
        lines = path.read_text().splitlines()
    except (FileNotFoundError, UnicodeDecodeError):
        return
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        if isinstance(row, dict):
            yield row
