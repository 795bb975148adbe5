"""The stages of each baseline, in order: the whole method in one screen (IRN's ``run_sample``).

A trial runs the chain of its baseline (``"*"`` for every baseline without its own), preceded by ``data``
when the sweep generates the synthetic benchmark. A stage's inputs name earlier stages of its chain;
``PREVIOUS`` takes the stage just before it (``eval`` scores whatever map the stage before it wrote).
Adding a stage: one module in ``stages/`` and one entry in a chain below (docs/architecture.md).
"""

from __future__ import annotations

from ..errors import ConfigError
from .stage import StageDef
from .stages import amn_maps, amn_seeds, amn_train, cams, data, evaluate, pseudo_labels, seg_eval, seg_train, train

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


# The final segmentation stage, appended when the run config's ``final.enabled`` is set: pseudo-labels from the
# chain's last maps (at the threshold rule) → a DeepLab network trained on them → scored on val.
FINAL: dict[str, tuple[StageDef, ...]] = {
    "*": (pseudo_labels.STAGE, seg_train.STAGE, seg_eval.STAGE),
    "amn": (pseudo_labels.AMN_STAGE, seg_train.STAGE, seg_eval.STAGE),
}


def chain_for(baseline: str, with_data: bool, final: bool = False) -> tuple[StageDef, ...]:
    chain = ((DATA,) if with_data else ()) + CHAINS.get(baseline, CHAINS["*"])
    return chain + (FINAL.get(baseline, FINAL["*"]) if final else ())


def all_stages() -> dict[str, StageDef]:
    """Every stage of every chain, by name."""
    out = {DATA.name: DATA}
    for chain in (*CHAINS.values(), *FINAL.values()):
        out.update({stage.name: stage for stage in chain})
    return out


def find_stage(name: str, where: str = "") -> StageDef:
    stages = all_stages()
    if name not in stages:
        prefix = f"{where}: " if where else ""
        raise ConfigError(f"{prefix}unknown stage {name!r}; valid choices: {', '.join(sorted(stages))}")
    return stages[name]
