"""A sweep → trials → keyed stages, and what is already done.

One trial per combination of the trial axes (baseline × add-on setting × seed × other keys), each planned
by :func:`wsss_core.pipeline.plan_trial` (its baseline's chain, keyed). The threshold grid is an
evaluation setting, so it never multiplies trainings: B × A × S trials make B × A × S trainings,
B × A × S CAM stages and one one-pass evaluation each. Equal settings share one stage folder across
trials and sweeps, and a finished one is reused.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wsss_core.config import to_dict
from wsss_core.errors import ConfigError
from wsss_core.pipeline import TrialSpec, find_stage, integrity, layout, plan_trial
from wsss_core.pipeline.stages.seg_train import STAGE as SEG_TRAIN_STAGE

from .spec import Resources, SweepSpec, describe, validated_trials


SEGMENTATION_TRAINING = SEG_TRAIN_STAGE.name


@dataclass
class SweepPlan:
    spec: SweepSpec
    workdir: Path
    trials: list[TrialSpec]
    duplicates: list[tuple[str, str]]  # (combination, trial id it shares)

    def trial_states(self) -> dict[str, dict[str, tuple[str, str | None]]]:
        """Per trial id, per stage: (state, why a stage that was finished is recomputed, or None), from the stage
        store (``wsss_core.pipeline.integrity``)."""
        checked: dict[str, str | None] = {}
        return {t.trial_id: integrity.trial_stage_states(t, checked=checked) for t in self.trials}

    def stage_status(self, trial_states: dict[str, dict[str, tuple[str, str | None]]] | None = None
                     ) -> dict[str, dict[str, int]]:
        """Per stage name: unique stages, finished, to run (a key shared by trials counts once)."""
        trial_states = self.trial_states() if trial_states is None else trial_states
        seen: dict[str, dict[str, str]] = {}
        for trial in self.trials:
            for stage in trial.stages:
                state = trial_states[trial.trial_id][stage.name][0]
                keys = seen.setdefault(find_stage(stage.name).store_name, {})
                if keys.get(stage.key) in (None, "finished"):  # shared: to run if any trial must recompute it
                    keys[stage.key] = state
        out = {}
        for name, keys in seen.items():
            states = Counter(keys.values())
            out[name] = {"unique": len(keys), "finished": states["finished"], "running": states["running"],
                         "failed": states["failed"], "to_run": len(keys) - states["finished"] - states["running"]}
        return out

    def segmentation_trainings(self) -> int:
        """Distinct segmentation trainings of the final stage (0 when the sweep leaves it off)."""
        return self.stage_status().get(SEGMENTATION_TRAINING, {}).get("unique", 0)


def _posterior(entries: list[dict[str, Any]]) -> str | None:
    if not entries:
        return None
    kinds = {e.get("posterior", "binomial") for e in entries}
    return kinds.pop() if len(kinds) == 1 else "mixed"


def plan_sweep(spec: SweepSpec, workdir: str | Path | None = None) -> SweepPlan:
    """Expand ``spec`` into trials and keyed stages under ``workdir`` (nothing is written)."""
    workdir = layout.resolve_workdir(workdir)
    layout.check_workdir(workdir)
    synthetic = to_dict(spec.synthetic_data) if spec.synthetic_data is not None else None
    faults = [to_dict(f) for f in spec.faults]
    trials: list[TrialSpec] = []
    by_id: dict[str, TrialSpec] = {}
    duplicates = []
    for combo, cfg, resources in validated_trials(spec):
        addons_label = combo["addons"].label if "addons" in combo else None
        trial = plan_trial(cfg, workdir, sweep=spec.name, synthetic=synthetic, world_size=resources.world_size,
                           label=str(addons_label or "plain"), where=f"{spec.path}: trial {describe(combo)}")
        if trial.trial_id in by_id:
            duplicates.append((describe(combo), trial.trial_id))
            continue
        posterior = _posterior([to_dict(a) for a in cfg.addons])
        trial.index = len(trials)
        trial.axes = {name: value.label for name, value in combo.items()}
        trial.addons_label = addons_label
        trial.posterior = posterior
        trial.resources = to_dict(resources)
        trial.faults = faults
        trial.tags = {"sweep": spec.name, "baseline": cfg.model.baseline, "addons": str(addons_label),
                      "posterior": str(posterior), "seed": str(cfg.train.seed), "trial_index": str(trial.index)}
        by_id[trial.trial_id] = trial
        trials.append(trial)
    if not trials:
        raise ConfigError(f"{spec.path}: the axes expand to no trial")
    return SweepPlan(spec, workdir, trials, duplicates)


# -- cost estimate ---------------------------------------------------------------------------------------

def measured_durations(workdir: Path, stage: str) -> list[float]:
    return [float(r["duration_s"]) for r in layout.finished_stage_records(workdir, stage)
            if r.get("duration_s") is not None]


def estimate_hours(plan: SweepPlan, trial_states: dict[str, dict[str, tuple[str, str | None]]] | None = None
                   ) -> tuple[float, str, dict[str, str]]:
    """Device-hours of the stages still to run: measured median durations of finished stages of the same
    name where there are any, else the trial's time_min shared by its stages. GPU-hours when trials ask for
    GPUs, else CPU core-hours. Returns (hours, unit, per-stage basis)."""
    medians = {}
    basis = {}
    for name in {s.name for t in plan.trials for s in t.stages}:
        measured = measured_durations(plan.workdir, name)
        if measured:
            medians[name] = statistics.median(measured)
            basis[name] = f"median of {len(measured)} finished"
        else:
            basis[name] = "resources.time_min"
    total = 0.0
    gpus = any(t.resources["gpus_per_node"] > 0 for t in plan.trials)
    trial_states = plan.trial_states() if trial_states is None else trial_states
    counted: set[str] = set()
    for trial in plan.trials:
        res = Resources(**trial.resources)
        per_second = res.nodes * res.gpus_per_node if gpus else res.world_size * res.cpus_per_task
        for stage in trial.stages:
            if stage.key in counted or trial_states[trial.trial_id][stage.name][0] == "finished":
                continue
            counted.add(stage.key)
            seconds = medians.get(stage.name, res.time_min * 60 / len(trial.stages))
            total += seconds * per_second / 3600
    return total, "GPU-hours" if gpus else "CPU core-hours", basis


def format_plan(plan: SweepPlan, verbose: bool = True) -> str:
    spec = plan.spec
    lines = []
    sizes = " × ".join(f"{a.name} {len(a.values)}" for a in spec.axes) or "one run"
    grid = f"{len(spec.thresholds)} thresholds {spec.thresholds[0]:g}..{spec.thresholds[-1]:g}" \
        if spec.thresholds else "the evaluator's default thresholds"
    lines.append(f"sweep {spec.name} ({spec.path}): {len(plan.trials)} trials = {sizes}; {grid} "
                 f"(evaluation only, one pass per trial)")
    lines.append(f"work dir: {plan.workdir}")
    for combo, trial_id in plan.duplicates:
        lines.append(f"  duplicate: {combo} has the same stages as trial {trial_id} (run once)")
    trial_states = plan.trial_states()
    status = plan.stage_status(trial_states)
    lines.append("")
    names = _ordered_stage_names(plan)
    width = max([len("stage")] + [len(n) for n in names]) + 2
    lines.append(f"{'stage':<{width}}{'unique':>8}{'done':>8}{'running':>9}{'failed':>8}{'to run':>8}")
    for trial_stage in names:
        s = status[trial_stage]
        lines.append(f"{trial_stage:<{width}}{s['unique']:>8}{s['finished']:>8}{s['running']:>9}{s['failed']:>8}"
                     f"{s['to_run']:>8}")
    # The final stage's segmentation trainings are counted apart: they are the dominant GPU cost.
    training_stages = [n for n in names if find_stage(n).trains_model and n != SEGMENTATION_TRAINING]
    trainings = sum(status[n]["unique"] for n in training_stages)
    parts = [f"{status[n]['unique']} {n}" for n in training_stages]
    detail = f" ({' + '.join(parts)})" if len(parts) > 1 else ""
    lines.append(f"trainings: {trainings}{detail} (= distinct training configs; thresholds do not multiply them)")
    if SEGMENTATION_TRAINING in status:
        seg = status[SEGMENTATION_TRAINING]
        lines.append(f"segmentation trainings: {seg['unique']} ({seg['to_run']} to run; the final stage, usually "
                     f"the largest GPU cost)")
    hours, unit, basis = estimate_hours(plan, trial_states)
    res = plan.spec.resources
    lines.append(f"estimate for what is left: {hours:.2f} {unit} (resources per trial: {res.nodes} node(s) × "
                 f"{res.tasks_per_node} process(es), {res.cpus_per_task} cpu(s) each, {res.gpus_per_node} GPU(s) "
                 f"per node, {res.mem_gb:g} GB, {res.time_min} min; basis: "
                 + ", ".join(f"{k} {v}" for k, v in sorted(basis.items())) + ")")
    if verbose:
        lines.append("")
        lines.append(f"{'#':>4}  {'trial':<40} {'stages done':<12} axes")
        for trial in plan.trials:
            done = sum(trial_states[trial.trial_id][s.name][0] == "finished" for s in trial.stages)
            axes = " ".join(f"{k}={v}" for k, v in trial.axes.items())
            lines.append(f"{trial.index:>4}  {trial.trial_id:<40} {done}/{len(trial.stages):<10} {axes}")
    lines.extend(recompute_lines(trial_states))
    return "\n".join(lines)


def recompute_lines(trial_states: dict[str, dict[str, tuple[str, str | None]]]) -> list[str]:
    """One line per stage that was finished and is recomputed, with why (none when the store is intact)."""
    lines = [f"  {trial_id}: {name}: {reason}" for trial_id, states in trial_states.items()
             for name, (_, reason) in states.items() if reason]
    if lines:
        lines.insert(0, "\nrecompute (a stage found missing or damaged, and the stages after it):")
    return lines


def _ordered_stage_names(plan: SweepPlan) -> list[str]:
    names: list[str] = []
    for trial in plan.trials:
        for stage in trial.stages:
            name = find_stage(stage.name).store_name  # a shared stage (AMN's CAM training) counts as its twin
            if name not in names:
                names.append(name)
    return names
