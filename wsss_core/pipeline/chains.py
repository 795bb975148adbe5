"""The stages of each baseline, in order: the whole method in one screen (IRN's ``run_sample``).

A trial runs the chain of its baseline (``"*"`` for every baseline without its own), preceded by ``data``
when the sweep generates the synthetic benchmark. A stage's inputs name earlier stages of its chain;
``PREVIOUS`` takes the stage just before it (``eval`` scores whatever map the stage before it wrote).
Adding a stage: one module in ``stages/`` and one entry in a chain below (docs/architecture.md).
"""

from __future__ import annotations

from ..errors import ConfigError
from .stage import StageDef
from .stages import amn_maps, amn_seeds, amn_train, cams, data, evaluate, train

DATA = data.STAGE  # first, when the sweep file has synthetic_data

CHAINS: dict[str, tuple[StageDef, ...]] = {
    # CAM, SEAM: train the classifier → its multi-scale CAMs → every threshold scored in one pass
    "*": (train.STAGE,
          cams.STAGE,
          evaluate.STAGE),
    # AMN: its CAM classifier (the CAM trial's training when settings agree) → CAMs of the training split →
    # CRF-confident seeds → the AMN network trained on them → its activation maps → every threshold scored
    "amn": (train.AMN_CAM_STAGE,
            cams.AMN_CAM_STAGE,
            amn_seeds.STAGE,
            amn_train.STAGE,
            amn_maps.STAGE,
            evaluate.AMN_STAGE),
}


def chain_for(baseline: str, with_data: bool) -> tuple[StageDef, ...]:
    return ((DATA,) if with_data else ()) + CHAINS.get(baseline, CHAINS["*"])


def all_stages() -> dict[str, StageDef]:
    """Every stage of every chain, by name."""
    out = {DATA.name: DATA}
    for chain in CHAINS.values():
        out.update({stage.name: stage for stage in chain})
    return out


def find_stage(name: str, where: str = "") -> StageDef:
    stages = all_stages()
    if name not in stages:
        prefix = f"{where}: " if where else ""
        raise ConfigError(f"{prefix}unknown stage {name!r}; valid choices: {', '.join(sorted(stages))}")
    return stages[name]
