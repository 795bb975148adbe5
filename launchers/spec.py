"""Sweep files: one YAML that names a grid of runs, loaded into dataclasses and validated before anything runs.

A sweep file has a ``name``, a ``base`` run config (RunConfig's schema, or ``base_config: path``), ``axes``
(``baseline``, named ``addons`` settings, ``seed``, the evaluation-only ``thresholds`` grid, and any dotted
RunConfig or ``resources.*`` key with a list of values), ``resources`` per trial and ``launcher`` settings.
Every expanded trial config goes through :func:`run_config_from_dict`, so a bad combination fails here,
naming the file, the axis values and the key, not hours later on a cluster.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from wsss_core.addons import ADDONS
from wsss_core.baselines import BASELINES
from wsss_core.config import apply_overrides, from_dict, load_yaml, to_dict
from wsss_core.errors import ConfigError
from wsss_core.pipeline import find_stage
from wsss_core.training.config import AddonConfig, RunConfig, run_config_from_dict

LAUNCHERS = ("local", "ray", "slurm")
MAX_TRIALS = 10_000  # a larger grid needs --allow-large (planning alone then takes minutes)
PROGRESS_FROM = 500  # grids from this many trials show validation progress on stderr
# Axes with a meaning of their own; every other axis is a dotted RunConfig (or resources.*) key.
NAMED_AXES = ("baseline", "addons", "seed", "thresholds")
# Dotted keys that a named axis owns (using them directly would bypass its labels).
OWNED_KEYS = {"model.baseline": "baseline", "addons": "addons", "train.seed": "seed",
              "eval.thresholds": "thresholds"}


@dataclass
class Resources:
    """What one trial asks for. A trial is one DDP group of ``world_size`` processes."""

    nodes: int = 1
    gpus_per_node: int = 0  # > 0: one process per GPU
    procs_per_node: int = 1  # processes per node when gpus_per_node is 0 (CPU DDP over gloo)
    cpus_per_task: int = 1  # cores per process
    mem_gb: float = 4.0  # per node
    time_min: int = 60  # wall-clock limit of one attempt (Slurm --time; the plan's cost estimate)

    def validate(self, where: str) -> None:
        for name in ("nodes", "procs_per_node", "cpus_per_task", "time_min"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{where}.{name}: must be at least 1, got {getattr(self, name)}")
        if self.gpus_per_node < 0:
            raise ConfigError(f"{where}.gpus_per_node: must be >= 0, got {self.gpus_per_node}")
        if self.mem_gb <= 0:
            raise ConfigError(f"{where}.mem_gb: must be positive, got {self.mem_gb}")

    @property
    def tasks_per_node(self) -> int:
        return self.gpus_per_node if self.gpus_per_node > 0 else self.procs_per_node

    @property
    def world_size(self) -> int:
        return self.nodes * self.tasks_per_node


@dataclass
class LocalSettings:
    max_concurrent: int | None = None  # null: as many trials as cores × oversubscribe and memory allow
    oversubscribe: float = 1.0  # processes per core the local launcher may run


@dataclass
class RaySettings:
    address: str | None = None  # an existing cluster ("auto", "ray://host:10001"); null starts a local one
    max_concurrent: int | None = None  # null: from the cluster's CPUs (and GPUs)
    max_failures: int = 1  # retries of a failed trial
    cpus_per_worker: float | None = None  # CPU request of each DDP worker (null: resources.cpus_per_task)
    trial_cpus: float = 0.2  # CPU request of a multi-worker trial's driver (it only waits)


@dataclass
class SlurmSettings:
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    array_parallelism: int = 64  # trials of one array running at once
    signal_delay_s: int = 90  # USR2 this long before the time limit: checkpoint and requeue
    max_requeues: int = 3  # timeouts a trial may requeue after
    sbatch: dict[str, Any] = field(default_factory=dict)  # other #SBATCH options, passed through
    setup: list[str] = field(default_factory=list)  # shell lines run before the trial (module load …)


@dataclass
class LauncherSettings:
    default: Literal["local", "ray", "slurm"] = "local"
    local: LocalSettings = field(default_factory=LocalSettings)
    ray: RaySettings = field(default_factory=RaySettings)
    slurm: SlurmSettings = field(default_factory=SlurmSettings)


@dataclass
class SyntheticData:
    """Generate the synthetic benchmark (``wsss_core.data.synth``) as a cached ``data`` stage."""

    seed: int = 0
    n_train: int = 200
    n_val: int = 100
    n_aug_extra: int = 100
    size: int = 128
    num_classes: int = 6

    def validate(self, where: str) -> None:
        for name, least in (("n_train", 1), ("n_val", 1), ("n_aug_extra", 0), ("size", 8), ("num_classes", 1),
                            ("seed", 0)):
            if getattr(self, name) < least:
                raise ConfigError(f"{where}.{name}: must be at least {least}, got {getattr(self, name)}")

    def split_size(self, split: str) -> int | None:
        """Images in a split of the generated data (``wsss_core.data.synth``); None for another split name."""
        return {"train": self.n_train, "train_aug": self.n_train + self.n_aug_extra, "val": self.n_val}.get(split)


@dataclass
class Fault:
    """Test-only fault injection: make ``stage`` of the matching trials fail or slow down."""

    stage: str
    when: dict[str, Any] = field(default_factory=dict)  # axis name -> value label; {} = every trial
    kind: Literal["raise", "delay"] = "raise"
    times: int | None = 1  # raise: on the first N attempts (null: always)
    seconds: float = 0.0  # delay: seconds added to each logged training step


@dataclass
class TrackingSettings:
    enabled: bool = True
    uri: str | None = None  # null: SQLite at <workdir>/mlflow.db


@dataclass
class ThresholdRange:
    start: float
    stop: float  # inclusive
    step: float


@dataclass
class AxisValue:
    label: Any  # what tables and trial records show: "cam", "is_binomial", 0, 0.01
    value: Any  # what goes into the config


@dataclass
class Axis:
    name: str  # "baseline", "addons", "seed" or a dotted key
    values: list[AxisValue]


ValidTrial = tuple[dict[str, AxisValue], RunConfig, Resources]  # (combination, its run config, its resources)


@dataclass
class SweepSpec:
    name: str
    path: str  # the sweep file (for messages)
    base: dict[str, Any]  # run config mapping the axes are applied to
    axes: list[Axis]  # trial axes, in order (thresholds is not one of them)
    thresholds: tuple[float, ...] | None
    resources: Resources
    launcher: LauncherSettings
    synthetic_data: SyntheticData | None = None
    tracking: TrackingSettings = field(default_factory=TrackingSettings)
    faults: list[Fault] = field(default_factory=list)
    # What validate_trials made of the grid, kept by load_sweep so that plan_sweep does not validate every trial a
    # second time (that second pass was 40% of planning a 5,000-trial grid).
    trials: list[ValidTrial] | None = field(default=None, repr=False, compare=False)

    def axis(self, name: str) -> Axis | None:
        return next((a for a in self.axes if a.name == name), None)


@dataclass
class _SweepFile:
    """The top level of a sweep file (axes are checked by hand: their keys are open)."""

    name: str
    base: dict[str, Any] = field(default_factory=dict)
    base_config: str | None = None
    axes: dict[str, Any] = field(default_factory=dict)
    resources: Resources = field(default_factory=Resources)
    launcher: LauncherSettings = field(default_factory=LauncherSettings)
    synthetic_data: SyntheticData | None = None
    tracking: TrackingSettings = field(default_factory=TrackingSettings)
    faults: list[Fault] = field(default_factory=list)


def threshold_grid(value: Any, where: str) -> tuple[float, ...]:
    """``{start, stop, step}`` (stop inclusive) or a list of numbers: the sweep file's spellings of the
    evaluator's grid, parsed by the evaluator's one parser (``parse_thresholds`` / ``validate_thresholds``)."""
    from wsss_core.evaluation.threshold_sweep import parse_thresholds, validate_thresholds

    if isinstance(value, dict):
        rng = from_dict(ThresholdRange, value, where)
        if rng.step <= 0:
            raise ConfigError(f"{where}.step: must be positive, got {rng.step}")
        if rng.stop < rng.start:
            raise ConfigError(f"{where}: stop {rng.stop} is below start {rng.start}")
        return tuple(parse_thresholds(f"{rng.start!r}:{rng.stop!r}:{rng.step!r}", where))
    if isinstance(value, (list, tuple)) and value:
        for i, v in enumerate(value):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ConfigError(f"{where}[{i}]: expected a number, got {v!r}")
        return tuple(validate_thresholds(value, where))
    raise ConfigError(f"{where}: expected {{start, stop, step}} or a non-empty list of numbers, got {value!r}")


def _valid_dotted_keys() -> list[str]:
    keys = []
    for section in dataclasses.fields(RunConfig):
        if section.name == "addons":
            continue
        for f in dataclasses.fields(section.default_factory()):  # type: ignore[misc]
            keys.append(f"{section.name}.{f.name}")
    keys += [f"resources.{f.name}" for f in dataclasses.fields(Resources)]
    return [k for k in keys if k not in OWNED_KEYS]


def _check_dotted_key(key: str, where: str) -> None:
    if key in OWNED_KEYS:
        raise ConfigError(f"{where}: {key!r} is set by the {OWNED_KEYS[key]!r} axis; use that instead")
    valid = _valid_dotted_keys()
    parts = key.split(".")
    head = ".".join(parts[:2])
    # A dict-valued field (model.options, model.backbone_options) accepts any sub-key.
    dict_fields = ("model.options", "model.backbone_options")
    if head in valid and (len(parts) == 2 or head in dict_fields):
        return
    raise ConfigError(f"{where}: {key!r} is not a run config key; valid axis names: "
                      f"{', '.join(NAMED_AXES)} or one of {', '.join(valid)}")


def _list_axis(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: expected a non-empty list of values, got {value!r}")
    return value


def _parse_addons(value: Any, where: str) -> list[AxisValue]:
    if isinstance(value, list):  # a bare list of settings: label them by position
        value = {f"setting{i}": v for i, v in enumerate(value)}
    if not isinstance(value, dict) or not value:
        raise ConfigError(f"{where}: expected a mapping label -> list of add-on entries "
                          f"{{name, posterior, params}}, e.g. none: [], got {value!r}")
    out = []
    for label, entries in value.items():
        at = f"{where}.{label}"
        if entries is None:
            entries = []
        if not isinstance(entries, list):
            raise ConfigError(f"{at}: expected a list of add-on entries {{name, posterior, params}}, got {entries!r}")
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise ConfigError(f"{at}[{i}]: expected {{name, posterior, params}}, got {entry!r}")
            if "name" in entry:
                ADDONS.get(entry["name"], f"{at}[{i}].name")
            from_dict(AddonConfig, entry, f"{at}[{i}]")
        out.append(AxisValue(str(label), [dict(e) for e in entries]))
    return out


def _parse_baselines(value: Any, where: str) -> list[AxisValue]:
    """A list of baseline names, or a mapping name → run-config overrides for that baseline only (its own
    learning rate, ``model.options``, …), merged into ``base`` before the other axes are applied."""
    items = list(value.items()) if isinstance(value, dict) else [(n, None) for n in _list_axis(value, where)]
    out = []
    for i, (n, overrides) in enumerate(items):
        at = f"{where}.{n}" if isinstance(value, dict) else f"{where}[{i}]"
        if not isinstance(n, str):
            raise ConfigError(f"{at}: expected a baseline name, got {n!r}; valid choices: "
                              f"{', '.join(BASELINES.names())}")
        BASELINES.get(n, at)
        if overrides is not None and not isinstance(overrides, dict):
            raise ConfigError(f"{at}: expected a mapping of run config overrides for this baseline "
                              f"(e.g. {{optim: {{lr: 0.01}}}}) or nothing, got {overrides!r}")
        out.append(AxisValue(n, {"name": n, "overrides": overrides or {}}))
    return out


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` merged in, mappings recursively (lists and scalars are replaced)."""
    out = dict(base)
    for key, value in overrides.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _parse_axes(raw: dict[str, Any], where: str) -> tuple[list[Axis], tuple[float, ...] | None]:
    axes: list[Axis] = []
    thresholds = None
    for name, value in raw.items():
        at = f"{where}.{name}"
        if name == "thresholds":
            thresholds = threshold_grid(value, at)
        elif name == "baseline":
            axes.append(Axis(name, _parse_baselines(value, at)))
        elif name == "addons":
            axes.append(Axis(name, _parse_addons(value, at)))
        elif name == "seed":
            seeds = _list_axis(value, at)
            for i, s in enumerate(seeds):
                if isinstance(s, bool) or not isinstance(s, int):
                    raise ConfigError(f"{at}[{i}]: expected an integer seed, got {s!r}")
            axes.append(Axis(name, [AxisValue(s, s) for s in seeds]))
        else:
            _check_dotted_key(str(name), at)
            values = _list_axis(value, at)
            axes.append(Axis(str(name), [AxisValue(v if isinstance(v, (int, float, str, bool)) or v is None
                                                   else str(v), v) for v in values]))
    # Fixed order of the named axes first (tables read baseline × add-ons × seed), then the rest.
    order = {n: i for i, n in enumerate(("baseline", "addons", "seed"))}
    axes.sort(key=lambda a: order.get(a.name, len(order)))
    for axis in axes:
        labels = [repr(v.label) for v in axis.values]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"{where}.{axis.name}: a value is listed more than once")
    return axes, thresholds


def combinations(spec: SweepSpec) -> list[dict[str, AxisValue]]:
    """Every combination of the trial axes, in the order of the file (last axis fastest)."""
    if not spec.axes:
        return [{}]
    return [dict(zip([a.name for a in spec.axes], combo))
            for combo in itertools.product(*[a.values for a in spec.axes])]


def trial_config(spec: SweepSpec, combo: dict[str, AxisValue]) -> tuple[dict[str, Any], Resources]:
    """The run config mapping and resources of one combination (not yet validated)."""
    data = apply_overrides(spec.base, [])
    resources = dict(to_dict(spec.resources))
    for name, value in combo.items():
        if name == "baseline":
            data = _merge(data, value.value["overrides"])
            data.setdefault("model", {})["baseline"] = value.value["name"]
        elif name == "addons":
            data["addons"] = [dict(e) for e in value.value]
        elif name == "seed":
            data.setdefault("train", {})["seed"] = value.value
        elif name.startswith("resources."):
            resources[name.split(".", 1)[1]] = value.value
        else:
            node = data
            parts = name.split(".")
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = value.value
    if spec.thresholds is not None:
        data.setdefault("eval", {})["thresholds"] = list(spec.thresholds)
    return data, resources


def describe(combo: dict[str, AxisValue]) -> str:
    return " ".join(f"{name}={value.label}" for name, value in combo.items())


def validated_trials(spec: SweepSpec) -> list[ValidTrial]:
    """The expanded, validated trials of ``spec``: those :func:`load_sweep` kept, else validated now (once)."""
    if spec.trials is None:
        spec.trials = validate_trials(spec)
    return spec.trials


def validate_trials(spec: SweepSpec, check_data: bool = False) -> list[ValidTrial]:
    """Expand and validate every trial; a bad combination is named by its axis values. ``check_data``: decode
    every image and mask of each split the trials read (else only their presence is checked)."""
    import sys

    out = []
    datasets: dict[tuple[str, str, str], int | str] = {}
    combos = combinations(spec)
    step = max(1, len(combos) // 10)
    for i, combo in enumerate(combos):
        if len(combos) >= PROGRESS_FROM and i % step == 0:
            print(f"[sweep] {spec.path}: validating trial {i + 1}/{len(combos)}", file=sys.stderr, flush=True)
        data, resources = trial_config(spec, combo)
        where = f"{spec.path}: trial {describe(combo)}" if combo else spec.path
        cfg = run_config_from_dict(data, where)
        res = from_dict(Resources, resources, f"{where}: resources")
        check_trial_values(spec, cfg, res, where, datasets, check_data)
        out.append((combo, cfg, res))
    return out


def trial_splits(cfg: RunConfig, res: Resources) -> list[tuple[str, str, str | None, int]]:
    """Each split a trial reads: (its key, the split, the key of the batch drawn from it or None, images per
    step). The final stage's splits count only when it is enabled (``final.split`` null = data.train_split)."""
    world = res.world_size
    out: list[tuple[str, str, str | None, int]] = [
        ("data.train_split", cfg.data.train_split, "train.batch_size", cfg.train.batch_size * world),
        ("cams.split", cfg.cams.split, None, 0)]
    if cfg.final.enabled:
        out += [("final.split", cfg.final.split or cfg.data.train_split, "final.batch_size",
                 cfg.final.batch_size * world), ("final.val_split", cfg.final.val_split, None, 0)]
    return out


def check_trial_values(spec: SweepSpec, cfg: RunConfig, res: Resources, where: str,
                       datasets: dict[tuple[str, str, str], int | str], check_data: bool = False) -> None:
    """What the trial itself would reject only after work started: a negative seed, a non-finite number, a
    split that is not there or lists a missing file (an undecodable one with ``check_data``), a batch larger
    than its split, a final-stage split AMN makes no seeds for. Datasets are checked where this host can
    read them; ``datasets`` caches what was read, per (dataset, root, split)."""
    import math

    from wsss_core.config import flatten

    if cfg.train.seed < 0 or cfg.train.seed >= 2**32:
        raise ConfigError(f"{where}: train.seed: must be in 0..2**32-1 (it seeds torch and NumPy), got "
                          f"{cfg.train.seed}")
    for key, value in flatten(to_dict(cfg)).items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{where}: {key}: must be a finite number, got {value}")
    local = spec.launcher.default == "local"
    for key, split, batch_key, per_step in trial_splits(cfg, res):
        if spec.synthetic_data is not None:
            size: int | str | None = spec.synthetic_data.split_size(split)
            if size is None:
                raise ConfigError(f"{where}: {key}: {split!r} is not a split of the generated synthetic data; valid "
                                  "choices: train, train_aug, val")
        else:
            size = _dataset_size(cfg.data.dataset, cfg.data.root, split, where, key, datasets, local=local,
                                 decode=check_data)
        if batch_key is not None and isinstance(size, int) and per_step > size:
            batch = per_step // res.world_size
            raise ConfigError(f"{where}: {batch_key}: {batch} × {res.world_size} process(es) = {per_step} images per "
                              f"step, but split {split!r} has only {size}; valid: batch_size × processes at most "
                              f"{size}")
    weights = [("model.pretrained", cfg.model.pretrained)]
    if cfg.final.enabled:
        weights.append(("final.pretrained", cfg.final.pretrained))
    for key, value in weights:
        if value is not None and not Path(value).expanduser().is_file():
            _absent_here(f"{where}: {key}: weights file {value} not found on this host (weights are never downloaded; "
                         "give a local path or null for random init)", value, local)
    if cfg.final.enabled and cfg.model.baseline == "amn":
        from wsss_core.training.amn import amn_chain, seed_splits

        made = seed_splits(amn_chain(cfg, where))
        split = cfg.final.split or cfg.data.train_split
        if split not in made:
            raise ConfigError(f"{where}: final.split: {split!r} has no AMN seed labels to make pseudo-labels from; "
                              f"valid: {', '.join(made)} (the splits AMN makes seeds for), or null (data.train_split)")


_NOTED_PATHS: set[str] = set()  # paths this process already said it cannot read


def _absent_here(message: str, path: str, local: bool) -> None:
    """A path the trial needs that this host lacks: an error for the local launcher; for ray or slurm it may exist
    on the cluster's nodes only, so a note (once per path, on stderr)."""
    import sys

    if local:
        raise ConfigError(message)
    if path not in _NOTED_PATHS:
        _NOTED_PATHS.add(path)
        print(f"note: {message.split('; ')[0]}; it is checked on the cluster's nodes only", file=sys.stderr)


def _dataset_size(dataset: str, root: str, split: str, where: str, key: str,
                  cache: dict[tuple[str, str, str], int | str], local: bool = True, decode: bool = False) -> int | str:
    """Images in a split, read the way the trial reads it (its errors, e.g. a missing split file, raised here),
    every listed image and mask present (and, with ``decode``, decodable with valid class ids: the check of
    ``wsss data check --read``); 'unreadable' when this host cannot see the root and the sweep runs elsewhere
    (launcher.default ray or slurm: the root may exist on the cluster's nodes only; said once on stderr)."""
    from wsss_core.data import build_dataset
    from wsss_core.data.base import check_split
    from wsss_core.errors import DataError

    ident = (dataset, str(Path(root).expanduser()), split)
    if ident not in cache:
        if not Path(ident[1]).exists():
            cache[ident] = "unreadable"
            _absent_here(f"{where}: data.root: {root} does not exist on this host; give the dataset's root (a {dataset} "
                         "layout), or generate one (`synthetic_data:` in the sweep file)", ident[1], local)
            return cache[ident]
        try:
            data = build_dataset(dataset, ident[1], split)
            check_split(data, decode=decode, desc=f"[sweep] decoding split {split} of {root}")
            cache[ident] = len(data)
        except DataError as exc:
            raise ConfigError(f"{where}: {key}: {split!r}: {exc}") from None
    return cache[ident]


def load_sweep(path: str | Path, overrides: list[str] | tuple[str, ...] = (), allow_large: bool = False,
               check_data: bool = False) -> SweepSpec:
    """Read, expand and validate a sweep file; raises one ConfigError naming the file and the key. A grid of
    more than ``MAX_TRIALS`` trials is refused unless ``allow_large``. The dataset's listed files are checked
    for presence; ``check_data`` (``--check-data``) also decodes every image and mask. The validated trials are
    kept on the spec (``plan_sweep`` uses them)."""
    path = Path(path)
    raw = apply_overrides(load_yaml(path), list(overrides))
    where = str(path)
    top = from_dict(_SweepFile, raw, where)
    if not top.name or any(c in top.name for c in "/\\ ") or top.name.startswith("."):
        raise ConfigError(f"{where}: name: {top.name!r} must be a non-empty word without '/', '\\' or spaces")
    if top.base and top.base_config:
        raise ConfigError(f"{where}: give either base (a run config mapping) or base_config (a file), not both")
    base = dict(top.base)
    if top.base_config:
        base_path = Path(top.base_config)
        if not base_path.is_absolute():
            base_path = path.parent / base_path
        base = load_yaml(base_path)
    # The base alone must already be a valid run config (errors then name base.<key>).
    run_config_from_dict(base, f"{where}: base")
    axes, thresholds = _parse_axes(top.axes, f"{where}: axes")
    for i, fault in enumerate(top.faults):
        find_stage(fault.stage, f"{where}: faults[{i}].stage")
        for name in fault.when:
            if not any(a.name == name for a in axes):
                raise ConfigError(f"{where}: faults[{i}].when: {name!r} is not an axis of this sweep; valid "
                                  f"choices: {', '.join(a.name for a in axes)}")
    spec = SweepSpec(name=top.name, path=where, base=base, axes=axes, thresholds=thresholds,
                     resources=top.resources, launcher=top.launcher, synthetic_data=top.synthetic_data,
                     tracking=top.tracking, faults=top.faults)
    count = 1
    for axis in axes:
        count *= len(axis.values)
    if count > MAX_TRIALS and not allow_large:
        sizes = " × ".join(f"{a.name} {len(a.values)}" for a in axes)
        raise ConfigError(f"{where}: axes: {sizes} = {count} trials, more than {MAX_TRIALS}; pass --allow-large "
                          "to plan or run a grid this large (validating and planning it takes a while)")
    if check_data and spec.synthetic_data is not None:
        import sys

        print(f"note: {where}: --check-data: the sweep generates its dataset (synthetic_data), there is nothing to "
              "decode before it runs", file=sys.stderr)
    spec.trials = validate_trials(spec, check_data=check_data)
    return spec


# -- resources some node can satisfy --------------------------------------------------------------------

def machine_memory_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return float("inf")


def machine_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def check_local_resources(spec: SweepSpec, trials: list[Resources]) -> None:
    """Every trial must fit this machine: processes ≤ cores × oversubscribe, memory ≤ RAM, no GPU asked
    that is not there."""
    cores, memory = machine_cores(), machine_memory_gb()
    over = spec.launcher.local.oversubscribe
    for res in trials:
        where = f"{spec.path}: resources"
        if res.nodes != 1:
            raise ConfigError(f"{where}.nodes: the local launcher runs on one node, got {res.nodes}; "
                              f"use --launcher slurm or ray for multi-node trials")
        if res.gpus_per_node > 0:
            import torch

            have = torch.cuda.device_count()
            if res.gpus_per_node > have:
                raise ConfigError(f"{where}.gpus_per_node: {res.gpus_per_node} GPUs per trial, this machine "
                                  f"has {have}")
        procs = res.world_size * res.cpus_per_task
        if procs > cores * over:
            raise ConfigError(f"{where}: {res.world_size} process(es) × {res.cpus_per_task} cpus_per_task = "
                              f"{procs} cores, this machine has {cores} (× launcher.local.oversubscribe {over:g}); "
                              f"lower resources.procs_per_node / cpus_per_task or raise oversubscribe")
        if res.mem_gb > memory:
            raise ConfigError(f"{where}.mem_gb: {res.mem_gb:g} GB per trial, this machine has {memory:.1f} GB")


def check_slurm_resources(spec: SweepSpec, trials: list[Resources], nodes: list[dict[str, Any]]) -> None:
    """``nodes``: sinfo's view (cpus, mem_gb, gpus, partition) of the partition's nodes."""
    part = spec.launcher.slurm.partition
    pool = [n for n in nodes if part is None or n["partition"].rstrip("*") == part]
    where = f"{spec.path}: resources"
    if part is not None and not pool:
        names = sorted({n["partition"].rstrip("*") for n in nodes})
        raise ConfigError(f"{spec.path}: launcher.slurm.partition: unknown partition {part!r}; valid choices: "
                          f"{', '.join(names)}")
    if not pool:
        return
    for res in trials:
        fits = [n for n in pool if n["cpus"] >= res.tasks_per_node * res.cpus_per_task
                and n["mem_gb"] >= res.mem_gb and n["gpus"] >= res.gpus_per_node]
        if not fits:
            best = max(pool, key=lambda n: (n["cpus"], n["mem_gb"], n["gpus"]))
            raise ConfigError(f"{where}: {res.tasks_per_node} task(s) × {res.cpus_per_task} cpus_per_task, "
                              f"{res.mem_gb:g} GB, {res.gpus_per_node} GPU(s) per node: no node of partition "
                              f"{part or '(default)'} has that (largest: {best['cpus']} CPUs, "
                              f"{best['mem_gb']:.0f} GB, {best['gpus']} GPUs)")
        if res.nodes > len(pool):
            raise ConfigError(f"{where}.nodes: {res.nodes} nodes per trial, partition {part or '(default)'} has "
                              f"{len(pool)}")
