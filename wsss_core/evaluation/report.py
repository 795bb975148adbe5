"""Evaluation results as files (eval.json, eval.csv, threshold_curve.png) and as a console table."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import replace
from pathlib import Path

from .plots import plot_threshold_curve


def write_eval_outputs(result: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write eval.json (the whole result), eval.csv (one row per threshold: mIoU, mean precision/recall,
    per-class IoU) and threshold_curve.png (only when there is a curve); returns name -> path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "eval.json", "csv": out_dir / "eval.csv"}
    tmp = paths["json"].with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2, allow_nan=False))
    os.replace(tmp, paths["json"])
    _write_csv(result, paths["csv"])
    if len(result["per_threshold"]) > 1:
        paths["png"] = plot_threshold_curve(result, out_dir / "threshold_curve.png")
    return paths


def _write_csv(result: dict, path: Path) -> None:
    names = result["class_names"]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["threshold", "miou", "mean_precision", "mean_recall", "best"] + [f"iou_{n}" for n in names])
        for i, row in enumerate(result["per_threshold"]):
            writer.writerow([_cell(row["threshold"]), _cell(row["miou"]), _cell(row["mean_precision"]),
                             _cell(row["mean_recall"]), int(i == result["best"]["index"])]
                            + [_cell(v) for v in row["iou"]])


def _cell(value) -> str:
    return "" if value is None else (f"{value:.6f}" if isinstance(value, float) else str(value))


def _pct(value) -> str:
    return "   n/a" if value is None else f"{100 * value:6.2f}"


def protocol_label(result: dict) -> str:
    """The scoring protocol of an eval.json result, for table headers ("irn", "project, pred 255 ignore");
    results written before protocols existed scored as "project"."""
    proto = result.get("protocol")
    if not proto:
        return f"project, pred 255 {result.get('pred_255', 'wrong')}"
    from .protocols import PROTOCOLS

    known = PROTOCOLS.get(proto["name"])
    return replace(known, pred_255=proto["pred_255"]).label if known else proto["name"]


def format_table(result: dict) -> str:
    """Every threshold's mIoU, mean precision and recall (in %), the best marked, then the summary."""
    lines = [f"{'threshold':>9}  {'mIoU':>6}  {'prec':>6}  {'recall':>6}   (protocol {protocol_label(result)})"]
    for i, row in enumerate(result["per_threshold"]):
        t = "labels" if row["threshold"] is None else f"{row['threshold']:.3f}"
        mark = "  <- best" if i == result["best"]["index"] and len(result["per_threshold"]) > 1 else ""
        lines.append(f"{t:>9}  {_pct(row['miou'])}  {_pct(row['mean_precision'])}  {_pct(row['mean_recall'])}{mark}")
    best = result["best"]
    where = "" if best["threshold"] is None else f" at threshold {best['threshold']:g}"
    lines.append(f"best mIoU {_pct(best['miou']).strip()}{where} ({result['num_images']} images, "
                 f"{result['num_classes']} classes)")
    rob = result.get("robustness")
    if rob:
        lines.append(f"robustness: mean mIoU within +-{rob['window']:g} of best {_pct(rob['mean_miou_near_best']).strip()}; "
                     f"within {100 * rob['tolerance']:g} point of best for t in [{rob['plateau'][0]:g}, "
                     f"{rob['plateau'][1]:g}] (width {rob['plateau_width']:g})")
    for b in result.get("boundary") or []:
        at = "labels" if b["threshold"] is None else f"t={b['threshold']:g}"
        lines.append(f"boundary F ({at}): P {_pct(b['precision']).strip()}  R {_pct(b['recall']).strip()}  "
                     f"F {_pct(b['f']).strip()}")
    return "\n".join(lines)
