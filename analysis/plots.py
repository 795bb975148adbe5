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


def mean_curves(trials: pd.DataFrame) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray, int]]:
    """(method label, thresholds, mean mIoU, std mIoU (ddof=1, 0 for one seed), seeds) per method; thresholds
    common to all of the method's seeds."""
    axes = method_axes(trials)
    out = []
    for key, group in trials.groupby(axes, sort=False, dropna=False):
        curves = [c for c in group["curve"] if c]
        if not curves:
            continue
        common = sorted(set.intersection(*(set(c) for c in curves)))
        values = np.array([[c[t] for t in common] for c in curves], dtype=np.float64)
        std = values.std(axis=0, ddof=1) if len(curves) > 1 else np.zeros(len(common))
        label = method_label(dict(zip(axes, key if isinstance(key, tuple) else (key,))), axes)
        out.append((label, np.array(common), values.mean(axis=0), std, len(curves)))
    return out


def plot_threshold_curves(trials: pd.DataFrame, out_png: str | Path, title: str = "") -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for label, t, mean, std, n in mean_curves(trials):
        line, = ax.plot(t, 100 * mean, label=f"{label} (n={n})", linewidth=1.8)
        ax.fill_between(t, 100 * (mean - std), 100 * (mean + std), color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel("background threshold")
    ax.set_ylabel("mIoU (%)")
    ax.set_title(title or "mIoU versus background threshold (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
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
