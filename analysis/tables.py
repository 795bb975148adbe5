"""The sweep's tables: ablation (baselines x add-on settings), threshold robustness, contour quality.

Each table is a tidy DataFrame (one row per method; ``<score>_mean``, ``<score>_std`` over seeds with
ddof=1, ``n_seeds``), written as CSV (full precision, fractions as evaluated) and rendered as Markdown
and LaTeX (booktabs) in percent.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import pandas as pd

SEED_AXIS = "seed"
SETTING_AXIS = "addons"


def method_axes(trials: pd.DataFrame) -> list[str]:
    """The axes that name a method: every sweep axis but the seed."""
    return [a for a in trials.attrs.get("axes", []) if a != SEED_AXIS]


def row_axes(trials: pd.DataFrame) -> list[str]:
    return [a for a in method_axes(trials) if a != SETTING_AXIS]


def reference_setting(trials: pd.DataFrame) -> str | None:
    """The add-on setting whose add-on list is empty (the Δ reference), or None if the sweep has none."""
    plain = trials.loc[trials["addons_list"].map(len) == 0, SETTING_AXIS]
    return None if plain.empty else plain.iloc[0]


def summarise(trials: pd.DataFrame, scores: Sequence[str], by: Sequence[str]) -> pd.DataFrame:
    """Mean and std (ddof=1; NaN for one seed) of ``scores`` over seeds, per ``by`` group, in the order the
    groups first appear."""
    grouped = trials.groupby(list(by), sort=False, dropna=False)
    out = grouped[list(scores)].agg(["mean", "std"])
    out.columns = [f"{score}_{stat}" for score, stat in out.columns]
    out.insert(0, "n_seeds", grouped.size())
    return out.reset_index()


def _ordered(trials: pd.DataFrame) -> pd.DataFrame:
    """Reference setting first, then settings and baselines in order of appearance."""
    ref = reference_setting(trials)
    settings = list(dict.fromkeys(trials[SETTING_AXIS]))
    if ref is not None:
        settings.remove(ref)
        settings.insert(0, ref)
    order = {s: i for i, s in enumerate(settings)}
    rows = row_axes(trials)
    keys = trials[rows].astype(str).agg("\0".join, axis=1) if rows else pd.Series("", index=trials.index)
    row_order = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    ordered = trials.assign(_r=keys.map(row_order), _o=trials[SETTING_AXIS].map(order))
    return ordered.sort_values(["_r", "_o"], kind="stable").drop(columns=["_r", "_o"])


def ablation_table(trials: pd.DataFrame, fixed_threshold: float) -> pd.DataFrame:
    """mIoU at the best and at the fixed threshold per (baseline, ..., add-on setting), with the Δ of each
    mean against the same row's no-add-on setting."""
    rows = row_axes(trials)
    table = summarise(_ordered(trials), ["best_miou", "fixed_miou"], rows + [SETTING_AXIS])
    ref = reference_setting(trials)
    for score in ("best_miou", "fixed_miou"):
        if ref is None:
            table[f"{score}_delta"] = math.nan
            continue
        base = table[table[SETTING_AXIS] == ref].set_index(rows)[f"{score}_mean"] if rows else \
            table.loc[table[SETTING_AXIS] == ref, f"{score}_mean"]
        if rows:
            keys = pd.MultiIndex.from_frame(table[rows]) if len(rows) > 1 else table[rows[0]]
            reference = base.reindex(keys).to_numpy()
        else:
            reference = base.iloc[0]
        table[f"{score}_delta"] = table[f"{score}_mean"] - reference
        table.loc[table[SETTING_AXIS] == ref, f"{score}_delta"] = math.nan
    table.attrs.update(rows=rows, reference=ref, fixed_threshold=fixed_threshold)
    return table


def robustness_table(trials: pd.DataFrame) -> pd.DataFrame:
    """Best threshold, mean mIoU within ±0.1 of it, width of the within-1-point interval, per method."""
    table = summarise(_ordered(trials), ["best_threshold", "robust_mean_miou", "robust_width"], method_axes(trials))
    table.attrs.update(methods=method_axes(trials))
    return table


def contour_table(trials: pd.DataFrame, fixed_threshold: float) -> pd.DataFrame:
    """Boundary F, precision, recall at the best and at the fixed threshold, per method."""
    scores = [f"contour_{m}_{w}" for w in ("best", "fixed") for m in ("f", "precision", "recall")]
    table = summarise(_ordered(trials), scores, method_axes(trials))
    table.attrs.update(methods=method_axes(trials), fixed_threshold=fixed_threshold)
    return table


# -- rendering -----------------------------------------------------------------------------------------

def cell(mean: float, std: float, scale: float = 100.0, digits: int = 1, delta: float | None = None) -> str:
    """``61.2 ± 0.8`` (std left out for one seed), ``(+1.3)`` appended for a Δ; ``–`` when missing."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    text = f"{scale * mean:.{digits}f}"
    if std is not None and not (isinstance(std, float) and math.isnan(std)):
        text += f" ± {scale * std:.{digits}f}"
    if delta is not None and not (isinstance(delta, float) and math.isnan(delta)):
        text += f" ({scale * delta:+.{digits}f})"
    return text


def ablation_grid(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the ablation table: baselines as rows, add-on settings as columns."""
    rows_axes = table.attrs["rows"]
    fixed = table.attrs["fixed_threshold"]
    settings = list(dict.fromkeys(table[SETTING_AXIS]))
    header = [a for a in rows_axes] or ["method"]
    for setting in settings:
        header += [f"{setting} (best t)", f"{setting} (t={fixed:g})"]
    out = []
    keys = list(dict.fromkeys(map(tuple, table[rows_axes].itertuples(index=False)))) if rows_axes else [()]
    for key in keys:
        mask = pd.Series(True, index=table.index)
        for axis, value in zip(rows_axes, key):
            mask &= table[axis] == value
        line = [str(v) for v in key] or ["all"]
        for setting in settings:
            match = table[mask & (table[SETTING_AXIS] == setting)]
            if match.empty:
                line += ["–", "–"]
                continue
            r = match.iloc[0]
            line += [cell(r["best_miou_mean"], r["best_miou_std"], delta=r["best_miou_delta"]),
                     cell(r["fixed_miou_mean"], r["fixed_miou_std"], delta=r["fixed_miou_delta"])]
        out.append(line)
    return header, out


def ablation_long_grid(table: pd.DataFrame, contour: pd.DataFrame | None = None) -> tuple[list[str], list[list[str]]]:
    """The ablation as one row per (baseline, …, add-on setting), for a terminal of 80–120 columns: mIoU at
    the best and the fixed threshold with their Δ against no add-on, the boundary F at the best threshold
    and the seed count. The files keep the paper layout (:func:`ablation_grid`)."""
    rows_axes = table.attrs["rows"]
    fixed = table.attrs["fixed_threshold"]
    keys = rows_axes + [SETTING_AXIS]
    header = (rows_axes or []) + ["add-ons", "mIoU best t", "Δ", f"mIoU t={fixed:g}", "Δ"]
    f_best = None
    if contour is not None and "contour_f_best_mean" in contour:
        f_best = contour.set_index(keys)["contour_f_best_mean"] if keys else None
        header.append("F best t")
    header.append("seeds")

    def delta(value: float) -> str:
        return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:+.1f}"

    out = []
    for _, r in table.iterrows():
        line = [str(r[a]) for a in rows_axes] + [str(r[SETTING_AXIS]),
                                                 cell(r["best_miou_mean"], r["best_miou_std"]), delta(r["best_miou_delta"]),
                                                 cell(r["fixed_miou_mean"], r["fixed_miou_std"]), delta(r["fixed_miou_delta"])]
        if f_best is not None:
            key = tuple(r[k] for k in keys)
            line.append(cell(f_best.get(key if len(key) > 1 else key[0], math.nan), None))
        line.append(str(r["n_seeds"]))
        out.append(line)
    return header, out


def to_text(header: list[str], rows: list[list[str]]) -> str:
    """A plain aligned table for the terminal (text left, numbers right)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    numeric = [all(not r[i] or r[i][0] in "+-–0123456789" for r in rows) for i in range(len(header))]

    def line(cells):
        return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric)).rstrip()

    return "\n".join([line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows]) + "\n"


CONTOUR_AVERAGING = ("P and R are summed over the split per class (matched boundary pixels over all boundary "
                     "pixels), F is each class's harmonic mean of its P and R, and each column is the mean over "
                     "foreground classes — so F is not the harmonic mean of the mean P and mean R shown.")


def robustness_grid(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    methods = table.attrs["methods"]
    header = methods + ["best threshold", "mIoU within ±0.1 of best", "width within 1 pt", "seeds"]
    rows = [[str(r[a]) for a in methods]
            + [cell(r["best_threshold_mean"], r["best_threshold_std"], scale=1, digits=2),
               cell(r["robust_mean_miou_mean"], r["robust_mean_miou_std"]),
               cell(r["robust_width_mean"], r["robust_width_std"], scale=1, digits=2), str(r["n_seeds"])]
            for _, r in table.iterrows()]
    return header, rows


def contour_grid(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    methods = table.attrs["methods"]
    fixed = table.attrs["fixed_threshold"]
    header = list(methods)
    for which, label in (("best", "best t"), ("fixed", f"t={fixed:g}")):
        header += [f"F ({label})", f"P ({label})", f"R ({label})"]
    rows = []
    for _, r in table.iterrows():
        line = [str(r[a]) for a in methods]
        for which in ("best", "fixed"):
            line += [cell(r[f"contour_{m}_{which}_mean"], r[f"contour_{m}_{which}_std"]) for m in ("f", "precision", "recall")]
        rows.append(line)
    return header, rows


def calibration_grid(rows: list[dict], scores: tuple[str, ...] = ("miou", "contour_f", "contour_precision",
                                                                     "contour_recall")) -> tuple[list[str], list[list[str]]]:
    """The calibration rows (trivial predictions from the ground truth) as a small table, in percent."""
    names = {"miou": "mIoU", "contour_f": "F", "contour_precision": "P", "contour_recall": "R"}
    header = ["calibration (no network)"] + [names[s] for s in scores]
    return header, [[r["name"]] + [cell(r[s], None) for s in scores] for r in rows]


def to_markdown(header: list[str], rows: list[list[str]]) -> str:
    def line(cells):
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    align = ["---"] * len(header)
    return "\n".join([line(header), "| " + " | ".join(align) + " |"] + [line(r) for r in rows]) + "\n"


LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    out = "".join(LATEX_ESCAPES.get(ch, ch) for ch in text)
    return out.replace("±", r"$\pm$").replace("–", "--").replace("Δ", r"$\Delta$")


def to_latex(header: list[str], rows: list[list[str]], n_text: int = 1, caption: str = "", label: str = "") -> str:
    """A booktabs table (\\toprule, \\midrule, \\bottomrule; needs ``\\usepackage{booktabs}``): ``n_text``
    left-aligned name columns, then right-aligned numbers."""
    spec = "l" * n_text + "r" * (len(header) - n_text)
    lines = [r"\begin{table}[t]", r"\centering", rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(latex_escape(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(latex_escape(c) for c in row) + r" \\" for row in rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if caption:
        lines.append(rf"\caption{{{latex_escape(caption)}}}")
    if label:
        lines.append(rf"\label{{{label}}}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def write_table(table: pd.DataFrame, grid: tuple[list[str], list[list[str]]], out_dir: Path, name: str,
                caption: str, n_text: int = 1) -> dict[str, Path]:
    """``<name>.csv`` (tidy, full precision), ``<name>.md`` and ``<name>.tex``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    header, rows = grid
    paths = {"csv": out_dir / f"{name}.csv", "md": out_dir / f"{name}.md", "tex": out_dir / f"{name}.tex"}
    table.to_csv(paths["csv"], index=False)
    paths["md"].write_text(to_markdown(header, rows))
    paths["tex"].write_text(to_latex(header, rows, n_text=n_text, caption=caption, label=f"tab:{name}"))
    return paths
