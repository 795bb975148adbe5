"""A trial: one run config, its chain of keyed stages, and where it keeps its record.

:func:`plan_trial` turns a validated run config into a :class:`TrialSpec` (nothing is written). The sweep
planner (``launchers.plan``) calls it once per combination of a sweep's axes and adds the sweep's labels;
tests and benchmarks call it directly and hand the trial to :func:`wsss_core.pipeline.run_trial`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import stable_hash, to_dict
from ..errors import ConfigError
from . import layout
from .chains import chain_for, find_stage
from .keys import stage_keys
from .stages.data import DATA_DIR

if TYPE_CHECKING:
    from ..training.config import RunConfig


@dataclass
class StageSpec:
    name: str
    key: str
    dir: str
    inputs: dict[str, str]  # upstream stage name -> key
    distributed: bool


@dataclass
class TrialSpec:
    """Everything a trial process needs (picklable): its config, stages, where to record."""

    trial_id: str
    sweep: str
    workdir: str
    baseline: str
    seed: int
    config: dict[str, Any]  # plain run config, data root resolved
    stages: list[StageSpec]
    world_size: int = 1
    index: int = 0
    axes: dict[str, Any] = field(default_factory=dict)  # axis name -> value label
    addons_label: str | None = None
    addons: list[str] = field(default_factory=list)
    posterior: str | None = None
    resources: dict[str, Any] = field(default_factory=dict)  # the launcher's request (launchers.spec.Resources)
    synthetic: dict[str, Any] | None = None
    faults: list[dict[str, Any]] = field(default_factory=list)  # test-only hooks (pipeline.faults)
    launcher: str = "local"
    job_id: str | None = None
    tracking: Any = None  # wsss_core.tracking TrackingContext, or None
    tags: dict[str, str] = field(default_factory=dict)
    owner: dict[str, Any] | None = None  # who answers for the trial while it runs (None: its rank-0 process)

    @property
    def record_path(self) -> Path:
        return layout.trial_path(Path(self.workdir), self.sweep, self.trial_id)

    def has_stage(self, name: str) -> bool:
        return any(s.name == name for s in self.stages)

    def stage(self, name: str) -> StageSpec:
        return next(s for s in self.stages if s.name == name)


def plan_trial(cfg: "RunConfig", workdir: str | Path | None = None, *, sweep: str = "trials",
               synthetic: dict[str, Any] | None = None, world_size: int = 1, until: str | None = None,
               label: str | None = None, where: str = "config") -> TrialSpec:
    """The trial of run config ``cfg``: its baseline's chain keyed under ``workdir`` (resolved like
    ``--workdir``), with the ``data`` stage first when ``synthetic`` (SyntheticData settings) is given.
    ``until``: stop the chain after this stage (e.g. ``amn_seeds``). The trial id is readable
    (baseline, ``label`` or the add-on names, seed) plus a hash of its non-evaluation stage keys."""
    from ..training.config import run_config_from_dict

    workdir = layout.resolve_workdir(workdir)
    chain = chain_for(cfg.model.baseline, synthetic is not None, final=cfg.final.enabled)
    if until is not None:
        names = [s.name for s in chain]
        if until not in names:
            raise ConfigError(f"until: {until!r} is not a stage of the {cfg.model.baseline} chain; valid choices: "
                              f"{', '.join(names)}")
        chain = chain[: names.index(until) + 1]
    keyed = stage_keys(cfg, chain, {"synthetic": synthetic, "world_size": world_size})
    stages = [StageSpec(k.stage.name, k.key, str(layout.stage_dir(workdir, k.stage.store_name, k.key)), k.inputs,
                        k.stage.distributed) for k in keyed]
    plain = to_dict(cfg)
    if synthetic is not None:
        plain["data"]["root"] = str(Path(stages[0].dir) / DATA_DIR)
    else:
        plain["data"]["root"] = str(Path(plain["data"]["root"]).expanduser().resolve())
    run_config_from_dict(plain, where)  # still valid once resolved
    identity = [s.key for s in stages if not find_stage(s.name).evaluation_only]
    addons = [a.name for a in cfg.addons]
    readable = "-".join([cfg.model.baseline, label or "+".join(addons) or "plain", f"s{cfg.train.seed}"])
    return TrialSpec(trial_id=f"{readable}-{stable_hash(identity, 10)}", sweep=sweep, workdir=str(workdir),
                     baseline=cfg.model.baseline, seed=cfg.train.seed, config=plain, stages=stages,
                     world_size=world_size, addons=addons, synthetic=synthetic)
