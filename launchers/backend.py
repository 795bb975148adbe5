"""Where trials run: the interface every backend implements, and the registry of backends.

A backend is a module (or any object) with three functions:

* ``check_resources(spec, plan, opts)``: raise ``ConfigError`` before anything is written or submitted if
  a trial cannot fit (the sweep file's ``resources`` against this machine, the Ray cluster, Slurm nodes);
* ``launch(spec, plan, trials, opts, stream) -> {trial_id: error or None}``: run ``trials`` to an outcome.
  Each trial is one process group of ``trial.world_size`` ranks, each of which calls
  :func:`wsss_core.pipeline.run_trial` with the standard torch.distributed environment (or inside an
  initialised group); the runner keeps the records. Return an error only for a trial that died without
  recording one (killed, out of memory);
* ``release()``: let go of what ``check_resources`` opened (a Ray connection); usually nothing.

A fourth backend: a module beside these three, one line in ``BACKENDS``, one choice in ``wsss sweep run
--launcher`` (``launchers/cli.py``) and in ``spec.LAUNCHERS``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Protocol

from wsss_core.errors import ConfigError

if TYPE_CHECKING:
    from wsss_core.pipeline import TrialSpec

    from .plan import SweepPlan
    from .spec import SweepSpec
    from .submit import SubmitOptions

BACKENDS = {"local": "launchers.local", "ray": "launchers.ray_launcher", "slurm": "launchers.slurm_launcher"}


class Backend(Protocol):
    def check_resources(self, spec: "SweepSpec", plan: "SweepPlan", opts: "SubmitOptions | None") -> None: ...

    def launch(self, spec: "SweepSpec", plan: "SweepPlan", trials: list["TrialSpec"], opts: "SubmitOptions",
               stream: Any) -> dict[str, str | None]: ...

    def release(self) -> None: ...


def get_backend(name: str) -> Backend:
    """The backend called ``name`` (imported on first use: Ray and submitit are heavy)."""
    if name not in BACKENDS:
        raise ConfigError(f"--launcher: {name!r} is not valid; valid choices: {', '.join(BACKENDS)}")
    return importlib.import_module(BACKENDS[name])  # type: ignore[return-value]
