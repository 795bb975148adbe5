"""Typed config loading: unknown keys, wrong types and bad choices fail with a precise message."""

from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from wsss_core.config import apply_overrides, from_dict, stable_hash, to_dict
from wsss_core.errors import ConfigError
from wsss_core.registry import Registry


@dataclass
class Inner:
    lr: float = 0.1
    mode: Literal["binomial", "multinomial"] = "binomial"


@dataclass
class Outer:
    name: str
    steps: int = 10
    inner: Inner = field(default_factory=Inner)
    scales: tuple[float, ...] = (1.0, 0.5)
    weights: Optional[str] = None
    flip: bool = True


def test_valid_config_converts_and_defaults():
    cfg = from_dict(Outer, {"name": "a", "inner": {"lr": 1}, "scales": [1, 2]})
    assert cfg.inner.lr == 1.0 and isinstance(cfg.inner.lr, float)
    assert cfg.scales == (1.0, 2.0) and cfg.steps == 10 and cfg.inner.mode == "binomial"


@pytest.mark.parametrize(
    "data, message",
    [
        ({"name": "a", "stpes": 3}, "run.yaml: unknown key 'stpes'; valid keys: name, steps, inner"),
        ({"name": "a", "steps": "3"}, "run.yaml.steps: expected an integer, got '3'"),
        ({"name": "a", "steps": True}, "run.yaml.steps: expected an integer"),
        ({"name": "a", "flip": 1}, "run.yaml.flip: expected true or false"),
        ({"name": "a", "inner": {"mode": "softmax"}}, "run.yaml.inner.mode: 'softmax' is not valid; valid choices: 'binomial', 'multinomial'"),
        ({"name": "a", "inner": {"lr": 0.1, "momentum": 0.9}}, "run.yaml.inner: unknown key 'momentum'"),
        ({"name": "a", "scales": "1.0"}, "run.yaml.scales: expected a list of float"),
        ({}, "run.yaml: missing required key 'name'"),
    ],
)
def test_bad_config_names_the_key_and_valid_choices(data, message):
    with pytest.raises(ConfigError) as err:
        from_dict(Outer, data, "run.yaml")
    assert message in str(err.value)


def test_stable_hash_depends_on_content_only():
    a = from_dict(Outer, {"name": "a", "inner": {"lr": 0.5}})
    b = from_dict(Outer, {"inner": {"lr": 0.5}, "name": "a"})
    c = from_dict(Outer, {"name": "a", "inner": {"lr": 0.25}})
    assert stable_hash(a) == stable_hash(b) == stable_hash(to_dict(b))
    assert stable_hash(a) != stable_hash(c)


def test_overrides_are_parsed_as_yaml():
    out = apply_overrides({"train": {"lr": 0.1}}, ["train.lr=0.01", "train.addons=[fsl, isl]", "seed=3"])
    assert out == {"train": {"lr": 0.01, "addons": ["fsl", "isl"]}, "seed": 3}
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_overrides({}, ["train.lr"])


def test_registry_lists_valid_names():
    reg = Registry("baseline")
    reg.register("cam")(object)
    reg.register("seam")(object)
    with pytest.raises(ConfigError, match=r"sweep.yaml: unknown baseline 'amm'; valid choices: cam, seam"):
        reg.get("amm", "sweep.yaml")


def test_yaml_reads_exponent_floats(tmp_path):
    from wsss_core.config import load_yaml

    path = tmp_path / "c.yaml"
    path.write_text("lr: 1e-4\nwd: 5E-4\nbig: 1e30\nname: 1e4x\nsteps: 10\nplain: 0.5\n")
    data = load_yaml(path)
    assert data == {"lr": 1e-4, "wd": 5e-4, "big": 1e30, "name": "1e4x", "steps": 10, "plain": 0.5}
    assert apply_overrides({}, ["optim.weight_decay=1e-4"]) == {"optim": {"weight_decay": 1e-4}}


def test_a_section_left_out_keys_like_its_defaults_written_in():
    """A config without `model:` is validated like one with the defaults spelled out (backbone and baseline
    options written in), so both give the same stage keys and share their stages."""
    from wsss_core.config import to_dict
    from wsss_core.training.config import load_run_config, run_config_from_dict, stage_key

    bare = load_run_config(None, [])
    written = run_config_from_dict(to_dict(bare))
    assert bare.model.backbone_options == written.model.backbone_options != {}
    assert stage_key(bare, "eval") == stage_key(written, "eval")
    assert stage_key(bare) == stage_key(load_run_config(None, ["model.baseline=cam"]))
