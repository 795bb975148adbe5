"""A stage as data: its name, its inputs, the config slice its output depends on, and its run function.

A stage's module (``wsss_core/pipeline/stages/<name>.py``) builds one :class:`StageDef`; ``chains.py`` lists
the stages of each baseline in order; ``keys.py`` turns a chain and a run config into stage keys; the
runner (``runner.py``) calls ``run`` with a :class:`StageRun` in ``<workdir>/stages/<store name>/<key>/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from ..training.config import RunConfig
    from ..training.distributed import DistEnv
    from .trial import TrialSpec

PREVIOUS = "<previous>"  # as a stage input: whatever stage comes before it in the chain


@dataclass
class StageRun:
    """What a stage's run function gets."""

    cfg: "RunConfig"  # the trial's run config, seen through the stage's config_view
    stage_dir: Path
    inputs: dict[str, Path]  # upstream stage name -> its folder
    cam_stores: dict[str, Path]  # upstream stage name -> the CAM store it wrote (stages that write one)
    env: "DistEnv"
    sink: Any  # rank 0: a MetricsSink (tracking or JSON lines); other ranks: None
    trial: "TrialSpec"

    def only_input(self) -> Path:
        (path,) = self.inputs.values()
        return path

    def only_cam_store(self) -> Path:
        (path,) = self.cam_stores.values()
        return path


@dataclass(frozen=True)
class StageDef:
    name: str
    inputs: tuple[str, ...]  # upstream stages whose keys enter this stage's key ("data" may be absent)
    key_slice: Callable[["RunConfig", dict[str, Any]], dict[str, Any]]  # (cfg, extras) -> what the output depends on
    run: Callable[[StageRun], dict[str, Any]]
    distributed: bool = False  # True: every rank calls run (DDP); False: rank 0 only, the others wait
    evaluation_only: bool = False  # True: not part of the trial's identity (thresholds, scoring)
    sink_stage: str | None = None  # the MetricsSink stage name (None: no metrics)
    trains_model: bool = False  # counted as a training in plans (what sweeps are budgeted by)
    same_as: str | None = None  # keyed and stored as this stage: equal slices share one output (AMN's CAM training)
    config_view: Callable[["RunConfig"], "RunConfig"] | None = None  # the config the stage sees (None: the trial's)
    cam_store: str | None = None  # where in its folder the stage writes a CamStore ("" = the folder itself)

    @property
    def store_name(self) -> str:
        return self.same_as or self.name

    def view(self, cfg: "RunConfig") -> "RunConfig":
        return self.config_view(cfg) if self.config_view is not None else cfg
