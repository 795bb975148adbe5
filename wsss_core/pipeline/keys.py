"""Stage keys: the one function that decides what a stage's output depends on.

A stage's key hashes its store name, its config slice (``StageDef.key_slice`` on the config it sees) and
the keys of its inputs, so equal settings share one folder ``<workdir>/stages/<store name>/<key>/`` across
trials and sweeps, and a change anywhere upstream changes every key downstream. Changing what a key
hashes means bumping ``layout.LAYOUT_VERSION`` (old work dirs are then refused with an explanation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..config import stable_hash
from ..errors import ConfigError
from .stage import PREVIOUS, StageDef

if TYPE_CHECKING:
    from ..training.config import RunConfig

OPTIONAL_INPUTS = ("data",)  # present only when the sweep generates its data


@dataclass(frozen=True)
class KeyedStage:
    stage: StageDef
    key: str
    inputs: dict[str, str]  # upstream stage name -> key


def stage_keys(cfg: "RunConfig", chain: tuple[StageDef, ...], extras: dict[str, Any]) -> list[KeyedStage]:
    """The key of every stage of ``chain`` for run config ``cfg``; ``extras``: ``synthetic`` (the data
    stage's settings or None) and ``world_size`` (processes per trial)."""
    keys: dict[str, str] = {}
    out = []
    for position, stage in enumerate(chain):
        inputs = {}
        for name in stage.inputs:
            if name == PREVIOUS:
                if position == 0:
                    raise ConfigError(f"stage {stage.name}: takes the stage before it, but is first in its chain")
                name = chain[position - 1].name
            if name in keys:
                inputs[name] = keys[name]
            elif name not in OPTIONAL_INPUTS:
                raise ConfigError(f"stage {stage.name}: needs stage {name!r} before it in its chain; the chain is "
                                  f"{' → '.join(s.name for s in chain)}")
        key = stable_hash({"stage": stage.store_name, "config": stage.key_slice(stage.view(cfg), extras),
                           "inputs": inputs})
        keys[stage.name] = key
        out.append(KeyedStage(stage, key, inputs))
    return out
