"""The sweep's figures: mIoU against the background threshold per method (mean over seeds, ±std band),
and each add-on setting's Δ mIoU per baseline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .tables import SETTING_AXIS, method_axes


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def method_label(row: pd.Series | dict, axes: list[str]) -> str:
    return " / ".join(str(row[a]) for a in axes)


def mean_curves(trials: pd.DataFrame) -> list[tuple[dict, np.ndarray, np.ndarray, np.ndarray, int]]:
    """(method: axis → value, thresholds, mean mIoU, std mIoU (ddof=1, 0 for one seed), seeds) per method;
    thresholds common to all of the method's seeds."""
    axes = method_axes(trials)
    out = []
    for key, group in trials.groupby(axes, sort=False, dropna=False):
        curves = [c for c in group["curve"] if c]
        if not curves:
            continue
        common = sorted(set.intersection(*(set(c) for c in curves)))
        values = np.array([[c[t] for t in common] for c in curves], dtype=np.float64)
        std = values.std(axis=0, ddof=1) if len(curves) > 1 else np.zeros(len(common))
        method = dict(zip(axes, key if isinstance(key, tuple) else (key,)))
        out.append((method, np.array(common), values.mean(axis=0), std, len(curves)))
    return out


def plot_threshold_curves(trials: pd.DataFrame, out_png: str | Path, title: str = "") -> Path:
    """One line per method with a ±std band over seeds; with several baselines, one panel per baseline (shared
    y axis) so each panel's add-on settings keep distinct colours."""
    plt = _pyplot()
    curves = mean_curves(trials)
    axes = method_axes(trials)
    panel_axis = "baseline" if "baseline" in axes and len({c[0]["baseline"] for c in curves}) > 1 else None
    panels = list(dict.fromkeys(c[0][panel_axis] for c in curves)) if panel_axis else [None]
    fig, grid = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 1.5, 4.5), dpi=100, sharey=True,
                             squeeze=False)
    for ax, panel in zip(grid[0], panels):
        shown = [c for c in curves if panel_axis is None or c[0][panel_axis] == panel]
        colours = plt.get_cmap("tab10" if len(shown) <= 10 else "tab20")
        for i, (method, t, mean, std, n) in enumerate(shown):
            label = method_label(method, [a for a in axes if a != panel_axis] or axes)
            line, = ax.plot(t, 100 * mean, label=f"{label} (n={n})", linewidth=1.8, color=colours(i))
            ax.fill_between(t, 100 * (mean - std), 100 * (mean + std), color=line.get_color(), alpha=0.15,
                            linewidth=0)
        ax.set_xlabel("background threshold")
        if panel_axis:
            ax.set_title(str(panel))
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    grid[0][0].set_ylabel("mIoU (%)")
    fig.suptitle(title or "mIoU versus background threshold (mean ± std over seeds)")
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png)
    plt.close(fig)
    return out_png


def plot_addon_deltas(ablation: pd.DataFrame, out_png: str | Path, score: str = "best_miou") -> Path:
    """Grouped bars: per baseline row, the Δ mIoU (points) of every add-on setting against no add-on."""
    plt = _pyplot()
    rows = ablation.attrs["rows"]
    ref = ablation.attrs.get("reference")
    data = ablation[ablation[SETTING_AXIS] != ref] if ref is not None else ablation.iloc[0:0]
    settings = list(dict.fromkeys(data[SETTING_AXIS]))
    groups = list(dict.fromkeys(data[rows].astype(str).agg(" / ".join, axis=1))) if rows else ["all"]
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(groups) * max(len(settings), 1)), 4), dpi=100)
    width = 0.8 / max(len(settings), 1)
    x = np.arange(len(groups))
    labels = data[rows].astype(str).agg(" / ".join, axis=1) if rows else pd.Series("all", index=data.index)
    for i, setting in enumerate(settings):
        part = data[data[SETTING_AXIS] == setting]
        heights = [100 * part.loc[labels[part.index] == g, f"{score}_delta"].sum(min_count=1) for g in groups]
        ax.bar(x + (i - (len(settings) - 1) / 2) * width, heights, width, label=str(setting))
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(x, groups)
    ax.set_ylabel(f"Δ mIoU vs {ref} (points)" if ref is not None else "Δ mIoU (no reference setting)")
    ax.set_title("add-on effect per baseline (" + ("best threshold" if score == "best_miou" else "fixed threshold") + ")")
    ax.grid(axis="y", alpha=0.3)
    if settings:
        ax.legend(fontsize=8)
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png)
    plt.close(fig)
    return out_png
