"""Run a per-image task over a list of ids, in this process or sharded over worker processes.

A task has ``new_state()``, ``add(state, image_id)``, ``run(ids) -> state`` and
``merge(total, part)``; partial states (histograms, counters) are summed in the parent.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

from ..errors import ConfigError
from ..progress import progress

CHUNK = 32  # images per task when sharded: small enough to balance, large enough to amortise pickling


class ShardTask:
    """A shard's work: a fresh state, one ``add`` per image (subclasses), mergeable across processes."""

    def run(self, ids: list[str]):
        state = self.new_state()
        for image_id in ids:
            self.add(state, image_id)
        return state


class CountingTask(ShardTask):
    """A task whose state is a dict of counters (images written, skipped, ...), summed across shards."""

    @staticmethod
    def merge(total: dict, part: dict) -> None:
        for key in total:
            total[key] += part[key]


def run_sharded(task, ids: list[str], workers: int, desc: str, chunk: int = CHUNK):
    """The merged state of ``task`` over ``ids`` (``chunk`` images per task sent to a worker)."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be a positive integer, got {workers!r}")
    state = task.new_state()
    if workers == 1 or len(ids) <= 1:
        for image_id in progress(ids, desc=desc, total=len(ids), unit="img"):
            task.add(state, image_id)
        return state
    chunk = max(1, min(chunk, -(-len(ids) // workers)))  # at least one chunk per worker
    chunks = [ids[i: i + chunk] for i in range(0, len(ids), chunk)]
    with ProcessPoolExecutor(max_workers=workers, mp_context=_mp_context()) as pool:
        for part in progress(pool.map(task.run, chunks), desc=desc, total=len(chunks), unit="chunk"):
            task.merge(state, part)
    return state


def _mp_context():
    # fork starts workers in milliseconds; platforms without it use their default start method
    if os.name == "posix" and "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context()
