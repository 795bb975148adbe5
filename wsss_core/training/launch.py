"""Run ``train`` or ``make_cams`` on N local processes with the standard DDP environment (gloo on CPU).

Any other launcher (torchrun, Ray Train, submitit) sets the same variables and calls the same entry
points directly; this is the one the ``wsss`` CLI uses.
"""

from __future__ import annotations

import importlib
import multiprocessing as mp
import os
import queue
import socket
import traceback
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError, TrainingError, WsssError
from .config import RunConfig

# Entry point name -> "module:function" (imported in each process only when used).
ENTRY_POINTS = {
    "train": "wsss_core.training.trainer:train",
    "make_cams": "wsss_core.training.cams:make_cams",
}


def _entry(fn_name: str) -> Callable[..., dict]:
    if fn_name not in ENTRY_POINTS:
        raise ConfigError(f"launch_local: unknown entry point {fn_name!r}; valid choices: {', '.join(ENTRY_POINTS)}")
    module, _, name = ENTRY_POINTS[fn_name].partition(":")
    return getattr(importlib.import_module(module), name)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, nproc: int, port: int, fn_name: str, args: tuple, kwargs: dict, results: Any) -> None:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(nproc),
                       "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    import torch

    from .distributed import cleanup_distributed

    # N processes share the machine's cores instead of each starting one thread per core.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // nproc))
    try:
        out = _entry(fn_name)(*args, **kwargs)
        results.put((rank, "ok", out))
    except WsssError as exc:
        results.put((rank, "error", (type(exc).__name__, str(exc))))
    except BaseException:
        results.put((rank, "crash", traceback.format_exc()))
    finally:
        cleanup_distributed()


def _raise_for(rank: int, kind: str, detail: Any) -> None:
    if kind == "error":
        name, message = detail
        import wsss_core.errors as errors

        raise getattr(errors, name, WsssError)(message)
    raise TrainingError(f"rank {rank} crashed:\n{detail}")


def launch_local(fn_name: str, cfg: RunConfig, run_dir: str | Path, nproc: int = 1, **kwargs: Any) -> dict:
    """Run entry point ``fn_name`` ('train' or 'make_cams') as ``fn(cfg, run_dir, **kwargs)`` on ``nproc``
    processes; rank 0's result. ``nproc=1`` runs in this process. A rank that fails stops the others; a user
    error on a rank (e.g. a non-finite loss) is raised here as the same error type and message."""
    return launch_entry(fn_name, nproc, (cfg, str(run_dir)), kwargs)


def launch_entry(fn_name: str, nproc: int, args: tuple, kwargs: dict | None = None) -> dict:
    """Run any entry point of ``ENTRY_POINTS`` as ``fn(*args, **kwargs)`` on ``nproc`` local processes with the
    standard DDP environment; rank 0's result."""
    fn = _entry(fn_name)
    kwargs = kwargs or {}
    if nproc < 1:
        raise ConfigError(f"--nproc: must be at least 1, got {nproc}")
    if nproc == 1:
        return fn(*args, **kwargs)
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(rank, nproc, port, fn_name, args, kwargs, results))
             for rank in range(nproc)]
    for proc in procs:
        proc.start()
    outcomes: dict[int, tuple[str, Any]] = {}
    try:
        while len(outcomes) < nproc:
            try:
                rank, kind, detail = results.get(timeout=1.0)
                outcomes[rank] = (kind, detail)
                if kind != "ok":
                    break
            except queue.Empty:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    rank = procs.index(dead[0])
                    outcomes.setdefault(rank, ("crash", f"exit code {dead[0].exitcode}"))
                    break
    finally:
        for proc in procs:
            proc.join(timeout=5.0 if all(k == "ok" for k, _ in outcomes.values()) else 0.5)
            if proc.is_alive():
                proc.terminate()  # a rank blocked in a collective after another rank failed
                proc.join(timeout=5.0)
    for rank in sorted(outcomes):
        kind, detail = outcomes[rank]
        if kind != "ok":
            _raise_for(rank, kind, detail)
    if 0 not in outcomes:
        raise TrainingError(f"{fn_name}: rank 0 returned no result")
    return outcomes[0][1]
