"""The MLflow store of a sweep: where it is, creating it once, and what MLflow accepts as params and tags.

Default store: a SQLite file ``<workdir>/mlflow.db`` (tracking URI ``sqlite:///<abs path>``) with
artifacts under ``<workdir>/mlartifacts``. Creating a SQLite schema or an experiment from several
processes at once races (measured: 7 of 8 concurrent schema creations fail; losers of a
``set_experiment`` race log into Default), so the submitter does both once, in
:func:`prepare_sweep_tracking`, and trials only ever open runs in an experiment id they are given.

Nothing here imports mlflow at module import time: ``wsss --help`` stays fast.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from ..atomic import write_json_atomic  # noqa: F401 - re-exported for the tracking modules
from ..config import flatten  # noqa: F401 - re-exported for the tracking modules
from ..errors import WsssError
from ..pipeline import layout

DB_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
SWEEP_TRACKING_FILE = "tracking.json"
EXPERIMENT_PREFIX = "wsss/"
# MLflow's limits (mlflow.utils.validation), copied so that importing this module stays cheap.
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
MAX_KEY = 250
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000
# A trial must not sit minutes in MLflow's default HTTP retry loop (7 retries, backoff 2) when the
# server is down: it buffers locally instead. Users can still override these in the environment.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


class TrackingError(WsssError):
    """The tracking store cannot be reached or refuses what was asked."""


@dataclass(frozen=True)
class TrackingContext:
    """What a trial needs to log into its sweep: picklable, passed from the submitter to every trial."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    sweep_name: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


# -- locations ----------------------------------------------------------------------------------------

def default_tracking_uri(workdir: str | Path) -> str:
    return f"sqlite:///{(Path(workdir).resolve() / DB_FILE)}"


def resolve_tracking_uri(tracking_uri: str | None, workdir: str | Path) -> str:
    """``tracking_uri`` as given (an MLflow server, the cluster setting), else the work dir's SQLite file."""
    return tracking_uri if tracking_uri else default_tracking_uri(workdir)


def is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def sweep_params(sweep_file: Any, trials: int, thresholds: Any, axes: Mapping[str, Any]) -> dict[str, Any]:
    """The params of a sweep's parent run: what the submitter logs, and ``wsss sync --rebuild`` again from
    ``sweep.json`` (``axes``: axis name -> the values' labels)."""
    return {"sweep_file": sweep_file, "trials": trials,
            "thresholds": len(thresholds) if isinstance(thresholds, (list, tuple)) and thresholds else None,
            **{f"axis.{name}": ",".join(str(v) for v in values) for name, values in axes.items()
               if isinstance(values, (list, tuple))}}


def experiment_name(sweep_name: str) -> str:
    return f"{EXPERIMENT_PREFIX}{sweep_name}"


# -- the client ---------------------------------------------------------------------------------------

def limit_http_retries() -> None:
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)


def client(uri: str):
    """An ``MlflowClient`` bound to ``uri`` (never the process-global fluent state)."""
    if is_http(uri):
        limit_http_retries()
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def server_reachable(uri: str, timeout: float = 2.0) -> bool:
    """True for a SQLite/other URI; for a server, whether ``GET /health`` answers within ``timeout``."""
    if not is_http(uri):
        return True
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def is_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` means "the store is not there right now" (buffer and retry later) rather than
    "the store refused this" (a bug or a bad value, which retrying would not fix)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        name = type(exc).__name__
        text = str(exc)
        if isinstance(exc, (ConnectionError, TimeoutError, socket.timeout)):
            return True
        if name in ("ConnectionError", "Timeout", "ReadTimeout", "ConnectTimeout", "MaxRetryError",
                    "NewConnectionError", "ProtocolError", "OperationalError"):
            return True
        if "API request to" in text and "failed with" in text:
            return True
        code = getattr(exc, "error_code", None)
        if code in ("TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"):
            return True
        if "database is locked" in text or "Response code 50" in text:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


# -- params and tags as MLflow accepts them -----------------------------------------------------------

def param_value(value: Any) -> str:
    """Params are strings of at most MLflow's limit; lists read as YAML/JSON would write them."""
    if isinstance(value, (list, tuple, dict)):
        text = json.dumps(value, default=str)
    elif value is None:
        text = "null"
    else:
        text = str(value)
    return _clip(text, MAX_PARAM_VALUE)


def tag_value(value: Any) -> str:
    """Tags are strings; a list of add-ons reads ``is,fs``, an empty one ``none``."""
    if isinstance(value, (list, tuple)):
        text = ",".join(str(v) for v in value) if value else "none"
    elif isinstance(value, dict):
        text = json.dumps(value, sort_keys=True, default=str)
    elif value is None:
        text = "none"
    else:
        text = str(value)
    return _clip(text, MAX_TAG_VALUE)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def clean_key(key: str) -> str:
    """MLflow keys: letters, digits, ``_ - . / :`` and spaces, at most 250 characters."""
    out = "".join(ch if (ch.isalnum() or ch in "_-./: ") else "_" for ch in str(key))
    return out[:MAX_KEY]


@functools.lru_cache(maxsize=8)
def git_commit(cwd: str | Path | None = None) -> str | None:
    """The commit of the code that runs (``git rev-parse HEAD`` next to this package), or None."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd or Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


# -- the sweep's store, experiment and parent run, created once by the submitter ------------------------

def init_store(uri: str) -> None:
    """Create the SQLite schema (or check that a server answers), once, before any trial starts."""
    path = sqlite_path(uri)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    elif is_http(uri) and not server_reachable(uri, timeout=5.0):
        raise TrackingError(f"tracking server {uri} does not answer GET /health; start it (e.g. `wsss ui "
                            f"--port ...` or `mlflow server ...`) or leave out --tracking-uri to use the "
                            f"work dir's SQLite store")
    try:
        client(uri).search_experiments(max_results=1)  # opening a SQLAlchemy store runs its migrations
    except Exception as exc:  # noqa: BLE001 - report which store failed, whatever the cause
        raise TrackingError(f"tracking store {uri}: cannot open it: {type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}. {way_forward(uri)}") from None


def way_forward(uri: str) -> str:
    """What to do about a tracking store that cannot be opened (said with every such error)."""
    path = sqlite_path(uri)
    where = (f"If {path} is damaged, move it away (`mv {path} {path}.damaged`) and run again: a new store is "
             f"created and the sweep's finished stages are logged into it from the stage folders (`wsss sync "
             f"--rebuild --workdir {path.parent}` logs every sweep's). " if path is not None
             else "Check the server (its logs, its backend store). ")
    return (where + "Every result stays in the stage folders and trial records: `wsss report --from records` needs "
            "no tracking store, and `wsss sweep run --no-tracking` runs without one.")


EXPERIMENT_KIND_TAG = "mlflow.experimentKind"


def ensure_experiment(uri: str, name: str, artifact_location: str | None = None) -> str:
    """The id of experiment ``name``, created if missing (a concurrent creation is tolerated)."""
    mlflow_client = client(uri)
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            raise TrackingError(f"tracking store {uri}: experiment {name!r} is deleted; restore it "
                                f"(`mlflow experiments restore --experiment-id {experiment.experiment_id}`) "
                                "or use another sweep name")
        return experiment.experiment_id
    try:
        # MLflow 3's UI opens an experiment of unknown kind on its GenAI (traces) page; ours are training runs.
        return mlflow_client.create_experiment(name, artifact_location=artifact_location,
                                               tags={EXPERIMENT_KIND_TAG: "custom_model_development"})
    except Exception as exc:  # noqa: BLE001
        experiment = mlflow_client.get_experiment_by_name(name)
        if experiment is None:
            raise TrackingError(f"tracking store {uri}: cannot create experiment {name!r}: {exc}") from exc
        return experiment.experiment_id


def prepare_sweep_tracking(sweep_name: str, tracking_uri: str | None, workdir: str | Path,
                           params: Mapping[str, Any] | None = None,
                           tags: Mapping[str, Any] | None = None, rebuild_lost: bool = True,
                           progress: Callable[[str], None] | None = None) -> TrackingContext:
    """Initialise the store, the sweep's experiment ``wsss/<sweep_name>`` and its parent run, once.

    Called by the submitter before any trial starts. The parent run id is kept in
    ``<workdir>/sweeps/<sweep_name>/tracking.json`` (per tracking URI), so a resubmission reuses it.
    ``params`` (flattened to dotted keys) and ``tags`` go on the parent run.

    A store that lost the sweep (emptied or replaced: the recorded parent run, or a recorded stage run, is not
    in it; one lookup each), or one the sweep never logged into although it has trial records (a new store,
    a moved work dir), would otherwise get a new parent run while the finished stages, never run again, were
    never logged into it. With ``rebuild_lost`` the sweep's finished stages are logged into it from the stage
    folders (:mod:`.rebuild`), with a message on stderr; the other sweeps of the work dir are named with the
    command that rebuilds them (``wsss sync --rebuild``). ``progress``: where those lines go (default stderr).
    """
    workdir = Path(workdir)
    uri = resolve_tracking_uri(tracking_uri, workdir)
    # Concurrent submitters: one at a time creates or migrates the store, the experiment and the parent run.
    with layout.file_lock(store_lock_path(uri, workdir, sweep_name)):
        ctx, lost = _prepare_sweep_tracking(sweep_name, uri, workdir, params, tags)
    if lost and rebuild_lost:
        from .rebuild import rebuild_lost_sweep  # outside the store lock: other sweeps' submitters go on

        rebuild_lost_sweep(ctx, workdir, lost, progress)
    return ctx


def store_lock_path(uri: str, workdir: Path, sweep_name: str) -> Path:
    """``<mlflow.db>.lock`` beside a SQLite store; for a server, the sweep's own lock (one parent run)."""
    path = sqlite_path(uri)
    return path.with_name(path.name + ".lock") if path is not None else \
        layout.sweep_dir(workdir, sweep_name) / "tracking.lock"


def _prepare_sweep_tracking(sweep_name: str, uri: str, workdir: Path, params: Mapping[str, Any] | None,
                            tags: Mapping[str, Any] | None) -> tuple[TrackingContext, str | None]:
    """(the context, why the store lost this sweep's runs or None)."""
    init_store(uri)
    artifact_location = None
    if sqlite_path(uri) is not None:
        # Not MLflow's default ./mlruns, which depends on the cwd of whoever creates the experiment.
        artifact_location = (workdir.resolve() / ARTIFACTS_DIR).as_uri()
    experiment_id = ensure_experiment(uri, experiment_name(sweep_name), artifact_location)
    record_path = layout.sweep_dir(workdir, sweep_name) / SWEEP_TRACKING_FILE
    record = read_json(record_path) or {}
    stores = record.get("stores", {})
    known = stores.get(uri, {})
    mlflow_client = client(uri)
    parent_run_id, lost = known.get("parent_run_id"), None
    if parent_run_id is not None:
        try:
            run = find_run(mlflow_client, parent_run_id)
        except Exception as exc:  # noqa: BLE001
            if is_unreachable(exc):
                raise TrackingError(f"tracking store {uri} is unreachable: {exc}") from exc
            run = None
        if run is None:
            lost = f"it no longer holds the sweep's parent run {parent_run_id} (emptied or replaced?)"
            parent_run_id = None
        elif run.info.lifecycle_stage == "deleted" or run.info.experiment_id != experiment_id:
            parent_run_id = None  # deleted (or moved) in MLflow on purpose: a new parent run, nothing re-logged
        else:
            lost = _lost_stage_run(mlflow_client, workdir, sweep_name, parent_run_id)
    elif any(layout.trials_dir(workdir, sweep_name).glob("*.json")):
        lost = ("it holds no run of this sweep, which has trial records (a new store, another --tracking-uri, a "
                "moved work dir, or runs with --no-tracking)")
    all_tags = {"sweep": sweep_name, "wsss.role": "sweep", "host": socket.gethostname(),
                **({"git_commit": git_commit()} if git_commit() else {}), **dict(tags or {})}
    all_tags["wsss.workdir"] = str(workdir.resolve())
    if parent_run_id is None:
        run = mlflow_client.create_run(experiment_id, run_name=sweep_name,
                                       tags={clean_key(k): tag_value(v) for k, v in all_tags.items()})
        parent_run_id = run.info.run_id
        log_params_once(mlflow_client, parent_run_id, flatten(dict(params or {})))
    else:
        for key, value in all_tags.items():
            mlflow_client.set_tag(parent_run_id, clean_key(key), tag_value(value))
        if run.info.status != "RUNNING":
            mlflow_client.update_run(parent_run_id, status="RUNNING")
    stores[uri] = {"experiment_id": experiment_id, "experiment_name": experiment_name(sweep_name),
                   "parent_run_id": parent_run_id}
    record_path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(record_path, {"sweep": sweep_name, "stores": stores})
    return TrackingContext(tracking_uri=uri, experiment_id=experiment_id, parent_run_id=parent_run_id,
                           sweep_name=sweep_name), lost


def _lost_stage_run(mlflow_client, workdir: Path, sweep_name: str, parent_run_id: str) -> str | None:
    """Whether the store lost a stage run of the sweep although its parent run is there (an older copy of
    the store put back): one lookup, of a stage run named by the trial record written last (the runs an
    older copy lacks are the newest)."""
    paths = list(layout.trials_dir(workdir, sweep_name).glob("*.json"))
    newest = max(paths, key=_mtime, default=None)
    tracking = (layout.read_trial(newest) or {}).get("tracking") if newest is not None else None
    if not isinstance(tracking, dict) or tracking.get("parent_run_id") != parent_run_id:
        return None
    run_ids = tracking.get("run_ids")
    for stage, run_id in (run_ids.items() if isinstance(run_ids, dict) else ()):
        if isinstance(run_id, str) and run_id:
            try:
                found = find_run(mlflow_client, run_id)
            except Exception:  # noqa: BLE001 - a probe: the sweep's own calls report a store that fails
                return None
            return None if found is not None else \
                f"it no longer holds the run {run_id} of stage {stage} of trial {newest.stem} (an older copy put back?)"
    return None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def find_run(mlflow_client, run_id: str):
    """The run ``run_id``, or None when the store has no such run (emptied or replaced); other errors raise."""
    try:
        return mlflow_client.get_run(run_id)
    except Exception as exc:  # noqa: BLE001 - MlflowException / RestException, by error code
        if getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def finish_sweep_tracking(ctx: TrackingContext, status: str = "FINISHED") -> None:
    """Mark the sweep's parent run FINISHED or FAILED (optional; the submitter calls it at the end)."""
    client(ctx.tracking_uri).set_terminated(ctx.parent_run_id, status=status)


def log_params_once(mlflow_client, run_id: str, params: Mapping[str, Any],
                    existing: Mapping[str, str] | None = None) -> list[str]:
    """Log the params not on the run yet, in batches of 100; returns the keys whose value differs from the
    one already logged (MLflow params are immutable: those are left as they were)."""
    from mlflow.entities import Param

    existing = dict(existing or {})
    new, conflicts = [], []
    for key, value in params.items():
        key, text = clean_key(key), param_value(value)
        if key in existing:
            if existing[key] != text:
                conflicts.append(key)
            continue
        existing[key] = text
        new.append(Param(key, text))
    for start in range(0, len(new), PARAMS_PER_BATCH):
        mlflow_client.log_batch(run_id, params=new[start: start + PARAMS_PER_BATCH])
    return conflicts


def search_runs_paged(uri: str, experiment_ids: list[str], filter_string: str = "",
                      page_size: int = 1000) -> Iterator[Any]:
    """Every run matching ``filter_string``, page by page (``MlflowClient.search_runs`` alone stops at one
    page: 1000 runs)."""
    mlflow_client = client(uri)
    token = None
    while True:
        page = mlflow_client.search_runs(experiment_ids, filter_string=filter_string, max_results=page_size,
                                         page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def read_json(path: str | Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as exc:
        raise TrackingError(f"{path}: not valid JSON ({exc}); delete it to start its tracking afresh") from None
