"""MLflow tracking of sweeps: one experiment per sweep, a parent run per sweep, a child run per trial stage.

* :func:`prepare_sweep_tracking` — the submitter, once: store, experiment, parent run → :class:`TrackingContext`.
* :func:`stage_sink` — rank 0 of a trial stage: a :class:`StageSink` (the trainers' ``MetricsSink``) with
  ``log_eval`` for the threshold curve and artifacts; buffers locally when the store is unreachable.
* :func:`sync_workdir` — ``wsss sync``: upload the local buffers, idempotently.
* :func:`rebuild_workdir` — ``wsss sync --rebuild``: log every finished stage into a new or emptied store
  from the stage folders (the submitter does it for its sweep when the store lost it).
* ``wsss ui`` — the MLflow UI on the sweep store.

Importing this package does not import mlflow (``wsss --help`` stays fast); the functions do.
"""

from ..lazy import lazy_exports

# Loaded on first use (the sink imports numpy; `wsss --help` reaches this package through wsss ui/sync).
__getattr__ = lazy_exports(globals(), {
    **dict.fromkeys(("TrackingContext", "TrackingError", "default_tracking_uri", "finish_sweep_tracking",
                     "prepare_sweep_tracking", "search_runs_paged", "sweep_params"), ".store"),
    **dict.fromkeys(("StageSink", "eval_metrics", "stage_sink"), ".sink"),
    **dict.fromkeys(("SyncStats", "sync_stage", "sync_workdir"), ".sync"),
    **dict.fromkeys(("RebuildStats", "rebuild_workdir"), ".rebuild"),
})


def overlay_grid(*args, **kwargs):
    """See :func:`wsss_core.tracking.overlays.overlay_grid` (imported lazily: it pulls in matplotlib)."""
    from .overlays import overlay_grid as _overlay_grid

    return _overlay_grid(*args, **kwargs)


__all__ = ["TrackingContext", "TrackingError", "RebuildStats", "StageSink", "SyncStats", "default_tracking_uri",
           "eval_metrics", "finish_sweep_tracking", "overlay_grid", "prepare_sweep_tracking", "rebuild_workdir",
           "search_runs_paged", "stage_sink", "sweep_params", "sync_stage", "sync_workdir"]
