"""The final segmentation stage in the report: "final val mIoU" per method (mean ± std over seeds, Δ against the
no-add-on setting) beside the pseudo-label mIoU it was trained from, and the pseudo-label vs final scatter.

Per trial (from its record): ``final_miou`` and ``final_boundary_f`` from the ``seg_eval`` stage's
``val/eval.json`` (the val split, the trial's protocol); ``pseudo_miou`` is the eval stage's mIoU at the
threshold the pseudo-labels used (its row in the trial's eval.json: the maps at that threshold on the eval
split, the labels themselves before any CRF refinement); ``final_threshold`` that threshold.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from wsss_core.pipeline import layout

from . import tables
from .collect import same_threshold

FINAL_SCORES = ("final_miou", "final_boundary_f", "pseudo_miou", "final_threshold")
SEG_EVAL_STAGE, LABEL_STAGES, VAL_DIR = "seg_eval", ("pseudo_labels", "amn_pseudo_labels"), "val"


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def final_row(record: dict[str, Any]) -> dict[str, float]:
    """The final-stage scores of one trial record (NaN where the stage is off or not finished)."""
    out = {k: math.nan for k in FINAL_SCORES}
    stages = record.get("stages") or {}
    if SEG_EVAL_STAGE not in stages:
        return out
    result = _read(Path(stages[SEG_EVAL_STAGE]["dir"]) / VAL_DIR / "eval.json")
    if result:
        row = result["per_threshold"][0]
        out["final_miou"] = math.nan if row.get("miou") is None else float(row["miou"])
        boundary = (result.get("boundary") or [{}])[0]
        out["final_boundary_f"] = math.nan if boundary.get("f") is None else float(boundary["f"])
    labels = next((_read(Path(stages[n]["dir"]) / "pseudo_labels.json") for n in LABEL_STAGES if n in stages), None)
    scores = _read(Path(record["eval_json"])) if record.get("eval_json") else None
    if labels and labels.get("threshold") is not None:
        out["final_threshold"] = float(labels["threshold"])
        if scores:
            row = next((r for r in scores.get("per_threshold", [])
                        if same_threshold(r.get("threshold"), labels["threshold"])), None)
            if row is not None and row.get("miou") is not None:
                out["pseudo_miou"] = float(row["miou"])
    return out


def add_final_scores(trials: pd.DataFrame, workdir: str | Path, sweep_name: str) -> bool:
    """Add :data:`FINAL_SCORES` columns to ``trials`` (in place, from the trial records) when any trial has a
    final score (a sweep without the final stage keeps its columns); True then."""
    records = {r.get("trial_id"): r for r in layout.list_trials(Path(workdir), sweep_name)}
    rows = [final_row(records.get(t, {})) for t in trials["trial_id"]]
    if not any(not math.isnan(r["final_miou"]) for r in rows):
        return False
    for score in FINAL_SCORES:
        trials[score] = [r[score] for r in rows]
    return True


def final_table(trials: pd.DataFrame) -> pd.DataFrame:
    """Pseudo-label mIoU and final val mIoU per (baseline, ..., add-on setting), mean ± std over seeds, with
    the Δ of each mean against the same row's no-add-on setting."""
    rows = tables.row_axes(trials)
    setting = tables.SETTING_AXIS
    table = tables.summarise(tables._ordered(trials), ["pseudo_miou", "final_miou"], rows + [setting])
    ref = tables.reference_setting(trials)
    for score in ("pseudo_miou", "final_miou"):
        table[f"{score}_delta"] = math.nan
        if ref is None:
            continue
        for index, row in table.iterrows():
            if row[setting] == ref:
                continue
            same = table[(table[setting] == ref) & (table[rows] == row[rows]).all(axis=1)] if rows else \
                table[table[setting] == ref]
            if not same.empty:
                table.loc[index, f"{score}_delta"] = row[f"{score}_mean"] - same.iloc[0][f"{score}_mean"]
    table.attrs.update(rows=rows, reference=ref)
    return table


def final_grid(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    rows = table.attrs.get("rows", [])
    header = [*rows, tables.SETTING_AXIS, "seeds", "pseudo-label mIoU", "final val mIoU"]
    body = [[*(str(r[a]) for a in rows), str(r[tables.SETTING_AXIS]), str(int(r["n_seeds"])),
             tables.cell(r["pseudo_miou_mean"], r["pseudo_miou_std"], delta=r["pseudo_miou_delta"]),
             tables.cell(r["final_miou_mean"], r["final_miou_std"], delta=r["final_miou_delta"])]
            for _, r in table.iterrows()]
    return header, body


def plot_pseudo_vs_final(trials: pd.DataFrame, path: Path, title: str = "") -> Path:
    """One point per trial: pseudo-label mIoU (x) against final val mIoU (y), coloured by method."""
    from .plots import _pyplot, method_label

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    axes = tables.method_axes(trials)
    done = trials[trials["final_miou"].notna()]
    for index, (key, group) in enumerate(done.groupby(axes, sort=False, dropna=False)):
        method = dict(zip(axes, key if isinstance(key, tuple) else (key,)))
        ax.scatter(100 * group["pseudo_miou"], 100 * group["final_miou"], label=method_label(method, axes), s=30,
                   marker="os^Dv"[index // 10 % 5])  # the colour cycle repeats after 10 methods
    ax.set_xlabel("pseudo-label mIoU (%), eval split")
    ax.set_ylabel("final val mIoU (%)")
    ax.set_title(title or "pseudo-labels vs final model, one point per trial")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def final_report(trials: pd.DataFrame, workdir: str | Path, sweep_name: str, out: Path) -> dict[str, Any] | None:
    """The final-stage table (``final.md``/``.tex``/``.csv``) and ``pseudo_vs_final.png`` in ``out``; None
    when no trial of the sweep has a final score."""
    if not add_final_scores(trials, workdir, sweep_name):
        return None
    table = final_table(trials)
    grid = final_grid(table)
    paths = {f"final_{k}": p for k, p in tables.write_table(
        table, grid, out, "final", f"{sweep_name}: final segmentation network, val mIoU (%), mean ± std over seeds "
        "(Δ against no add-on), beside the pseudo-label mIoU it was trained from", n_text=len(grid[0]) - 2).items()}
    paths["pseudo_vs_final_png"] = plot_pseudo_vs_final(trials, out / "pseudo_vs_final.png",
                                                        f"{sweep_name}: pseudo-labels vs final model")
    return {"table": table, "paths": paths, "text": tables.to_text(*grid)}
