"""``wsss ui`` (the MLflow UI on a sweep store) and ``wsss sync`` (upload local tracking records)."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..errors import WsssError

STARTUP_TIMEOUT_S = 120


def register(subparsers) -> None:
    ui = subparsers.add_parser("ui", help="start the MLflow UI on a sweep store and print its URL",
                               description="Start `mlflow server --workers 1` on the work dir's SQLite store "
                                           "(or --tracking-uri) and print its URL; Ctrl-C stops it.")
    _store_args(ui)
    ui.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    ui.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    ui.set_defaults(func=run_ui)

    sync = subparsers.add_parser("sync", help="upload tracking records buffered while MLflow was unreachable "
                                              "(--rebuild: refill a new or emptied store from the stage folders)",
                                 description="Upload every stage's tracking_buffer.jsonl under the work dir into "
                                             "MLflow (metrics and params kept while the store was unreachable, "
                                             "artifacts the artifact store refused). Idempotent: runs, params and "
                                             "metric points (key, step) already there are not logged again.")
    _store_args(sync)
    sync.add_argument("--rebuild", action="store_true",
                      help="first log every finished stage of every sweep in the work dir from its stage folder "
                           "(params, metrics, evaluation, artifacts), each sweep under its experiment and parent "
                           "run: for a new, emptied or replaced store. Stages already there are skipped")
    sync.set_defaults(func=run_sync)


def _store_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", type=Path, default=None,
                        help="sweep work dir (default $WSSS_WORKDIR or ./runs); its store is <workdir>/mlflow.db")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI instead of the work dir's SQLite store (e.g. http://host:5000)")


def run_ui(args: argparse.Namespace) -> int:
    from ..pipeline.layout import resolve_workdir
    from .store import ARTIFACTS_DIR, is_http, resolve_tracking_uri, server_reachable, sqlite_path

    workdir = resolve_workdir(args.workdir)
    uri = resolve_tracking_uri(args.tracking_uri, workdir)
    if is_http(uri):
        if not server_reachable(uri):
            raise WsssError(f"tracking server {uri} does not answer; start it there, or pass --workdir to serve "
                            "a local store")
        print(f"MLflow UI: {uri} (already served)")
        return 0
    path = sqlite_path(uri)
    if path is not None and not path.is_file():
        raise WsssError(f"{path}: no MLflow store yet; run a sweep into {workdir} first (or pass --workdir / "
                        "--tracking-uri)")
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", args.host,
               "--port", str(args.port), "--workers", "1",
               "--artifacts-destination", str(Path(workdir).resolve() / ARTIFACTS_DIR)]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    url = f"http://{args.host}:{args.port}"
    # the server's own chatter goes to stderr: stdout carries only the URL line, for scripts
    process = subprocess.Popen(command, env=env, start_new_session=True, stdout=sys.stderr)
    signal.signal(signal.SIGTERM, _interrupt)  # so that `kill` stops the server too (see finally)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not server_reachable(url, timeout=1.0):
            if process.poll() is not None:
                raise WsssError(f"mlflow server exited with status {process.returncode} (port {args.port} in use? "
                                "try --port)")
            if time.monotonic() > deadline:
                raise WsssError(f"mlflow server did not answer on {url} within {STARTUP_TIMEOUT_S} s")
            time.sleep(0.3)
        print(f"MLflow UI: {url}  (store {uri}; Ctrl-C stops it)", flush=True)
        for name, link in sweep_links(url):
            print(f"  {name}: {link}", flush=True)
        return process.wait()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def sweep_links(url: str) -> list[tuple[str, str]]:
    """(experiment name, link) for each sweep's experiment: its runs table (parent and child runs) in the
    UI's model-training view, which MLflow 3 does not open by default."""
    from .store import client

    try:
        experiments = client(url).search_experiments(filter_string="name LIKE 'wsss/%'")
    except Exception:  # noqa: BLE001 - links are a convenience; the URL line above is what matters
        return []
    return [(e.name, f"{url}/#/experiments/{e.experiment_id}/runs?workflowType=machine_learning")
            for e in experiments]


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def run_sync(args: argparse.Namespace) -> int:
    from ..pipeline.layout import resolve_workdir
    from .sync import sync_workdir

    workdir = resolve_workdir(args.workdir)
    if args.rebuild:
        from .rebuild import rebuild_workdir

        rebuilt = rebuild_workdir(workdir, tracking_uri=args.tracking_uri)
        print(f"wsss sync --rebuild: {rebuilt.summary()}", flush=True)
    stats = sync_workdir(workdir, tracking_uri=args.tracking_uri)
    print(f"wsss sync: {stats.summary()}")
    for line in stats.unreachable:
        print(f"  not synced (store unreachable): {line}", file=sys.stderr)
    for line in stats.deferred + stats.orphaned:
        print(f"  not synced: {line}", file=sys.stderr)
    return 1 if stats.left or (args.rebuild and rebuilt.buffered) else 0
