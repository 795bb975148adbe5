"""Training and CAM generation: ``train(cfg, run_dir)``, ``make_cams(cfg, run_dir)``, the run config.

Both entry points run inside an already-set distributed environment (RANK, WORLD_SIZE, …) or as a
single process; ``launch_local`` spawns N local processes for them.
"""

from __future__ import annotations

from typing import Any

from ..lazy import lazy_exports

# Loaded on first use: the config imports every baseline and add-on (torch); `wsss --help` needs none of it.
__getattr__ = lazy_exports(globals(), {
    "RunConfig": ".config", "load_run_config": ".config", "stage_key": ".config",
    "launch_local": ".launch", "train": ".trainer",
})


def make_cams(cfg: Any, run_dir: Any, **kwargs: Any) -> dict:
    from .cams import make_cams as _make_cams  # imports the evaluation package only when needed

    return _make_cams(cfg, run_dir, **kwargs)


__all__ = ["RunConfig", "load_run_config", "stage_key", "train", "make_cams", "launch_local"]
