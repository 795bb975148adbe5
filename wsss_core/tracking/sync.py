"""Upload the stages' local tracking records into MLflow, idempotently (``wsss sync``).

Replays each stage's unsynced buffer entries in order. Nothing is logged twice: a run is created only when
no run id is known for the stage (and none carries its ``wsss.stage_uid`` tag), params already present are
skipped, metric points whose (key, step) the run already has are skipped, and the entries done are marked
in ``tracking_buffer.synced``. A sync that dies half-way (or a server that drops again) leaves a state the
next sync completes.

Three things stop a stage's replay at the entry concerned and leave it (and the entries after it) for the
next sync, since retrying later can succeed: the store is unreachable; an artifact upload fails (the
artifact store is full or refuses the write: the files stay, nothing is lost); the entry's sweep parent run
is not in the store (the store was emptied or replaced, or ``--tracking-uri`` names another store: logging
there would put the run in whatever experiment now has its id; ``wsss sync --rebuild`` logs the stage from
its folder instead). What the store refuses for good (a bad value) is reported and skipped.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .record import StageRecord, find_stage_records
from .store import TrackingError, client, find_run, is_unreachable, log_params_once, server_reachable
from .sink import STATUS, log_points, upload_artifacts


@dataclass
class SyncStats:
    """What a sync did (counts over all stages)."""

    stages: int = 0
    entries: int = 0
    runs_created: int = 0
    metric_points: int = 0
    metric_points_present: int = 0
    artifacts: int = 0
    refused: list[str] = field(default_factory=list)
    unreachable: list[str] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)  # artifact uploads that failed again: kept for later
    orphaned: list[str] = field(default_factory=list)  # entries whose sweep parent run is not in the store

    def add(self, other: "SyncStats") -> None:
        for name in ("stages", "entries", "runs_created", "metric_points", "metric_points_present", "artifacts"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("refused", "unreachable", "deferred", "orphaned"):
            getattr(self, name).extend(getattr(other, name))

    @property
    def left(self) -> bool:
        """Whether something is still to upload (or was refused): `wsss sync` then exits 1."""
        return bool(self.refused or self.unreachable or self.deferred or self.orphaned)

    def summary(self) -> str:
        text = (f"{self.stages} stage(s) with pending entries, {self.entries} entries uploaded: "
                f"{self.runs_created} run(s) created, {self.metric_points} metric point(s) logged "
                f"({self.metric_points_present} already present), {self.artifacts} artifact upload(s)")
        if self.refused:
            text += f"; {len(self.refused)} refused"
        if self.unreachable:
            text += f"; {len(self.unreachable)} stage(s) left for later: store unreachable"
        if self.deferred:
            text += f"; {len(self.deferred)} stage(s) left for later: artifact upload failed"
        if self.orphaned:
            text += f"; {len(self.orphaned)} stage(s) left: their sweep's parent run is not in the store"
        return text


class _Unreachable(Exception):
    pass


class _LeftForLater(Exception):
    """Stop this stage's replay here; the entry stays pending (``kind``: the SyncStats list it goes to)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class _Replay:
    """Replays one stage's pending entries; one MLflow client per tracking URI."""

    def __init__(self, record: StageRecord, tracking_uri: str | None, stats: SyncStats, quiet: bool):
        self.record, self.override, self.stats, self.quiet = record, tracking_uri, stats, quiet
        self.clients: dict[str, Any] = {}
        self.present: dict[str, dict[str, set[int]]] = {}  # run id -> key -> steps in MLflow
        self.params: dict[str, dict[str, str]] = {}
        self.parents: set[tuple[str, str]] = set()  # (uri, parent run id) found in the store

    def client_for(self, entry: dict) -> tuple[str, Any]:
        uri = self.override or entry.get("uri") or (entry.get("ctx") or {}).get("tracking_uri")
        if not uri:
            raise TrackingError(f"{self.record.buffer_path}: entry {entry.get('seq')} names no tracking URI; "
                                "pass --tracking-uri")
        if uri not in self.clients:
            if not server_reachable(uri):
                raise _Unreachable(uri)
            self.clients[uri] = client(uri)
        return uri, self.clients[uri]

    def run_id(self, entry: dict, mlflow_client) -> str | None:
        known = self.record.run_entry(entry["parent"]) or {}
        if known.get("run_id"):
            return known["run_id"]
        if entry["kind"] != "open":
            return None
        ctx = entry["ctx"]
        found = mlflow_client.search_runs([ctx["experiment_id"]],
                                          filter_string=f"tags.`wsss.stage_uid` = '{entry['uid']}'", max_results=1)
        if found:
            run_id = found[0].info.run_id
        else:
            run = mlflow_client.create_run(ctx["experiment_id"], start_time=entry.get("start_time"),
                                           tags=entry.get("tags") or {}, run_name=entry.get("run_name"))
            run_id = run.info.run_id
            self.stats.runs_created += 1
        self.record.save_run_entry(entry["parent"], {"run_id": run_id, "uid": entry["uid"]})
        return run_id

    def steps_present(self, mlflow_client, run_id: str, key: str) -> set[int]:
        per_run = self.present.setdefault(run_id, {})
        if key not in per_run:
            per_run[key] = {m.step for m in mlflow_client.get_metric_history(run_id, key)}
        return per_run[key]

    def check_parent(self, uri: str, entry: dict, mlflow_client) -> None:
        parent = entry.get("parent")
        if not parent or (uri, parent) in self.parents:
            return
        if find_run(mlflow_client, parent) is None:
            raise _LeftForLater("orphaned", f"{self.record.dir}: entry {entry.get('seq')} belongs to sweep parent run "
                                            f"{parent}, which store {uri} does not hold (emptied or replaced, or "
                                            "another --tracking-uri?); `wsss sync --rebuild` logs the stage from "
                                            "its folder")
        self.parents.add((uri, parent))

    def apply(self, entry: dict) -> None:
        uri, mlflow_client = self.client_for(entry)
        self.check_parent(uri, entry, mlflow_client)
        run_id = self.run_id(entry, mlflow_client)
        kind = entry["kind"]
        if run_id is None:
            raise TrackingError(f"{self.record.buffer_path}: entry {entry.get('seq')} ({kind}) belongs to no run: "
                                f"no run id in {self.record.dir / 'tracking.json'} and no 'open' entry before it")
        if kind == "open":
            from mlflow.entities import RunTag

            mlflow_client.log_batch(run_id, tags=[RunTag(k, v) for k, v in (entry.get("tags") or {}).items()])
        elif kind == "tags":
            from mlflow.entities import RunTag

            items = [RunTag(k, v) for k, v in entry["tags"].items()]
            for start in range(0, len(items), 100):
                mlflow_client.log_batch(run_id, tags=items[start: start + 100])
        elif kind == "params":
            if run_id not in self.params:
                self.params[run_id] = dict(mlflow_client.get_run(run_id).data.params)
            log_params_once(mlflow_client, run_id, entry["params"], self.params[run_id])
            self.params[run_id].update({k: v for k, v in entry["params"].items() if k not in self.params[run_id]})
        elif kind == "metrics":
            points = {}
            for key, values in entry["points"].items():
                present = self.steps_present(mlflow_client, run_id, key)
                fresh, seen = [], set(present)
                for step, value in values:
                    if int(step) not in seen:  # the first value of a (key, step) wins, as in the run
                        seen.add(int(step))
                        fresh.append((int(step), float(value)))
                self.stats.metric_points_present += len(values) - len(fresh)
                if fresh:
                    points[key] = fresh
            if points:
                log_points(mlflow_client, run_id, points, entry.get("timestamp") or entry["time"])
                for key, values in points.items():
                    self.present[run_id][key].update(s for s, _ in values)
                    self.stats.metric_points += len(values)
        elif kind == "status":
            status = STATUS[entry["status"]]
            if entry.get("error"):
                mlflow_client.set_tag(run_id, "error", entry["error"])
            if status == "RUNNING":
                mlflow_client.update_run(run_id, status="RUNNING")
            else:
                mlflow_client.set_terminated(run_id, status=status, end_time=entry["time"])
        elif kind == "artifacts":
            paths = [p for p in entry["paths"] if Path(p).exists()]
            gone = sorted(set(entry["paths"]) - set(paths))
            if gone:
                self.refuse(entry, f"artifact files no longer exist: {', '.join(gone)}")
            try:
                upload_artifacts(mlflow_client, run_id, paths, entry.get("artifact_path"))
            except Exception as exc:  # noqa: BLE001 - the artifact store is full or fails: retry later
                if is_unreachable(exc):
                    raise
                raise _LeftForLater("deferred", f"{self.record.dir}: entry {entry.get('seq')}: uploading "
                                                f"{len(paths)} artifact(s) failed: {type(exc).__name__}: "
                                                f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
            self.stats.artifacts += len(paths)
        else:
            raise TrackingError(f"{self.record.buffer_path}: entry {entry.get('seq')} has unknown kind {kind!r}; "
                                "valid: open, params, tags, metrics, status, artifacts")

    def refuse(self, entry: dict, reason: str) -> None:
        line = f"{self.record.buffer_path}: entry {entry.get('seq')} ({entry.get('kind')}): {reason}"
        self.stats.refused.append(line)
        if not self.quiet:
            print(f"wsss sync: {line}", file=sys.stderr)


def sync_stage(record: StageRecord | str | Path, tracking_uri: str | None = None, quiet: bool = False,
               raise_unreachable: bool = False) -> SyncStats:
    """Upload one stage's pending entries. With ``raise_unreachable`` an unreachable store raises
    :class:`TrackingError`; otherwise the stage is listed in ``stats.unreachable`` and left for later."""
    record = record if isinstance(record, StageRecord) else StageRecord(record)
    stats = SyncStats()
    with record.lock():
        pending = record.pending()
        if not pending:
            return stats
        stats.stages = 1
        replay = _Replay(record, tracking_uri, stats, quiet)
        for line_no, entry, count in _merge_metrics(pending):
            try:
                replay.apply(entry)
            except _Unreachable as exc:
                stats.unreachable.append(str(record.dir))
                if raise_unreachable:
                    raise TrackingError(f"{record.dir}: tracking store {exc} is unreachable") from None
                return stats
            except _LeftForLater as exc:
                getattr(stats, exc.kind).append(str(exc))
                if not quiet:
                    print(f"wsss sync: {exc}", file=sys.stderr)
                return stats
            except Exception as exc:  # noqa: BLE001
                if is_unreachable(exc):
                    stats.unreachable.append(str(record.dir))
                    if raise_unreachable:
                        raise TrackingError(f"{record.dir}: tracking store unreachable: {exc}") from exc
                    return stats
                replay.refuse(entry, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            record.mark_synced(line_no + 1)
            stats.entries += count
    return stats


def _merge_metrics(pending: list[tuple[int, dict]], limit: int = 1000):
    """(last line number, entry, entries merged): runs of consecutive metrics entries of one run become
    one entry (one request instead of one per training step)."""
    group: list[tuple[int, dict]] = []

    def flush():
        if not group:
            return []
        merged = dict(group[0][1])
        points: dict[str, list] = {}
        for _, entry in group:
            for key, values in entry["points"].items():
                points.setdefault(key, []).extend(values)
        merged["points"] = points
        out = [(group[-1][0], merged, len(group))]
        group.clear()
        return out

    size = 0
    for line_no, entry in pending:
        same = group and entry["kind"] == "metrics" and (entry["parent"], entry.get("uri")) == \
            (group[0][1]["parent"], group[0][1].get("uri"))
        if group and (not same or size >= limit):
            yield from flush()
            size = 0
        if entry["kind"] == "metrics":
            group.append((line_no, entry))
            size += sum(len(v) for v in entry["points"].values())
        else:
            yield line_no, entry, 1
    yield from flush()


def sync_workdir(workdir: str | Path, tracking_uri: str | None = None, quiet: bool = False) -> SyncStats:
    """Upload every stage record under ``workdir`` (stage dirs with a ``tracking_buffer.jsonl``)."""
    workdir = Path(workdir)
    if not workdir.is_dir():
        raise TrackingError(f"{workdir}: work dir not found; pass --workdir (default $WSSS_WORKDIR or ./runs)")
    total = SyncStats()
    for record in find_stage_records(workdir):
        total.add(sync_stage(record, tracking_uri=tracking_uri, quiet=quiet))
    return total
