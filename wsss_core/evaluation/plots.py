"""The mIoU-vs-threshold curve of an evaluation result."""

from __future__ import annotations

from pathlib import Path


def plot_threshold_curve(result: dict, path: str | Path) -> Path:
    """Write mIoU (and mean precision/recall) against the background threshold as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    rows = result["per_threshold"]
    t = [r["threshold"] for r in rows]
    as_points = (lambda key: [100 * r[key] if r[key] is not None else float("nan") for r in rows])
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(t, as_points("miou"), label="mIoU", linewidth=2)
    ax.plot(t, as_points("mean_precision"), label="mean precision", linestyle="--")
    ax.plot(t, as_points("mean_recall"), label="mean recall", linestyle=":")
    best = result["best"]
    if best["miou"] is not None:
        ax.axvline(best["threshold"], color="grey", linewidth=0.8)
        ax.annotate(f"best {100 * best['miou']:.1f} @ {best['threshold']:g}",
                    (best["threshold"], 100 * best["miou"]), textcoords="offset points", xytext=(5, 5))
    ax.set_xlabel("background threshold")
    ax.set_ylabel("%")
    ax.set_title(f"{Path(result['source']['path']).name} on {result['split']} ({result['num_images']} images)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
