"""``build_report``: a sweep's trials (from records or MLflow) → tables (md, tex, csv) and plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Sequence

import pandas as pd

from wsss_core.errors import ConfigError

from . import plots, tables
from .final import final_report
from .collect import CONTEXT, ReportError, _warn, trials_from_mlflow, trials_from_records

Source = Literal["records", "mlflow"]


def report_dir(workdir: str | Path, sweep_name: str) -> Path:
    return Path(workdir) / "sweeps" / sweep_name / "report"


def collect_trials(sweep_name: str, workdir: str | Path, source: Source = "records", tracking_uri: str | None = None,
                   fixed_threshold: float = 0.25) -> pd.DataFrame:
    if source == "records":
        return trials_from_records(sweep_name, workdir, fixed_threshold)
    if source == "mlflow":
        from wsss_core.tracking.store import resolve_tracking_uri, sqlite_path

        uri = resolve_tracking_uri(tracking_uri, workdir)
        path = sqlite_path(uri)
        if path is not None and not path.is_file():
            raise ReportError(f"{path}: no MLflow store; pass --tracking-uri, or --from records")
        return trials_from_mlflow(sweep_name, uri, fixed_threshold)
    raise ConfigError(f"report source {source!r} is not valid; valid choices: 'records', 'mlflow'")


def build_report(sweep_name: str, workdir: str | Path, source: Source = "records", tracking_uri: str | None = None,
                 fixed_threshold: float = 0.25, out_dir: str | Path | None = None,
                 trial_ids: Sequence[str] | None = None) -> dict[str, Any]:
    """Write the ablation, robustness and contour tables (``.md``, ``.tex``, ``.csv``) and the plots
    (``threshold_curves.png``, ``addon_delta.png``) into ``out_dir`` (default
    ``<workdir>/sweeps/<sweep>/report``). Returns ``trials``, ``ablation``, ``robustness``, ``contour``
    (DataFrames), ``paths`` (name -> Path) and ``markdown`` (the ablation table)."""
    if not 0.0 <= fixed_threshold <= 1.0:
        raise ConfigError(f"--fixed-threshold: {fixed_threshold} is outside [0, 1]")
    trials = collect_trials(sweep_name, workdir, source, tracking_uri, fixed_threshold)
    if trial_ids is not None:
        trials = only_planned(trials, trial_ids, sweep_name)
    out = Path(out_dir) if out_dir is not None else report_dir(workdir, sweep_name)
    out.mkdir(parents=True, exist_ok=True)
    ablation = tables.ablation_table(trials, fixed_threshold)
    robustness = tables.robustness_table(trials)
    contour = tables.contour_table(trials, fixed_threshold)
    n_rows = max(len(ablation.attrs["rows"]), 1)
    n_methods = len(robustness.attrs["methods"])
    paths: dict[str, Path] = {}
    calibration, protocol_line = calibrate(trials, out)
    scored = f" Scored with protocol {protocol_line}."
    for name, table, grid, caption, n_text in (
        ("ablation", ablation, tables.ablation_grid(ablation),
         f"{sweep_name}: mIoU (%) at the best and at a fixed background threshold, mean ± std over seeds "
         "(Δ against no add-on)", n_rows),
        ("robustness", robustness, tables.robustness_grid(robustness),
         f"{sweep_name}: threshold robustness", n_methods),
        ("contour", contour, tables.contour_grid(contour),
         f"{sweep_name}: contour quality (boundary F, %). {tables.CONTOUR_AVERAGING}", n_methods),
    ):
        for kind, path in tables.write_table(table, grid, out, name, caption + scored, n_text=n_text).items():
            paths[f"{name}_{kind}"] = path
    if calibration:
        frame = pd.DataFrame(calibration)
        paths.update({f"calibration_{kind}": path for kind, path in tables.write_table(
            frame, tables.calibration_grid(calibration), out, "calibration",
            f"{sweep_name}: trivial predictions from the ground truth on the same split ({protocol_line})").items()})
        for name in ("ablation", "contour"):  # beside the trials, in the same units
            scores = ("miou",) if name == "ablation" else ("contour_f", "contour_precision", "contour_recall")
            with paths[f"{name}_md"].open("a") as md:
                md.write("\n" + tables.to_markdown(*tables.calibration_grid(calibration, scores)))
    for name in ("ablation", "robustness", "contour"):
        path = paths[f"{name}_md"]
        note = f"\n{tables.CONTOUR_AVERAGING}\n" if name == "contour" else ""
        path.write_text(f"Evaluation protocol: {protocol_line}\n\n" + path.read_text() + note)
    final = final_report(trials, workdir, sweep_name, out) if source == "records" else None  # analysis/final.py
    if final is not None:
        paths.update(final["paths"])
    trials.drop(columns=["curve"]).to_csv(out / "trials.csv", index=False)
    paths["trials_csv"] = out / "trials.csv"
    paths["threshold_curves_png"] = plots.plot_threshold_curves(trials, out / "threshold_curves.png",
                                                                title=f"{sweep_name}: mIoU versus threshold")
    paths["addon_delta_png"] = plots.plot_addon_deltas(ablation, out / "addon_delta.png")
    text = (f"Evaluation protocol: {protocol_line}\nmIoU and boundary F in %, mean ± std over seeds; Δ against "
            f"the no-add-on setting.\n\n" + tables.to_text(*tables.ablation_long_grid(ablation, contour)))
    if calibration:
        text += "\n" + tables.to_text(*tables.calibration_grid(calibration, ("miou", "contour_f")))
    return {"trials": trials, "ablation": ablation, "robustness": robustness, "contour": contour, "paths": paths,
            "calibration": calibration, "protocol": protocol_line, "markdown": format_ablation_markdown(ablation),
            "text": text + (f"\nFinal segmentation network (val):\n{final['text']}" if final else ""),
            "final": final["table"] if final else None, "out_dir": out}


def only_planned(trials: pd.DataFrame, trial_ids: Sequence[str], sweep_name: str) -> pd.DataFrame:
    """The rows of the planned trials (a sweep file's, after overrides); the others are left out and counted,
    planned trials without a result named."""
    planned = set(trial_ids)
    keep = trials["trial_id"].isin(planned)
    if (~keep).any():
        _warn(f"{int((~keep).sum())} recorded trial(s) of sweep {sweep_name!r} are not in the sweep file as given "
              "(an earlier version of it, or other --set values) and are left out")
    missing = sorted(planned - set(trials["trial_id"]))
    if missing:
        _warn(f"{len(missing)} trial(s) of the sweep file have no result yet: {', '.join(missing[:5])}"
              f"{' ...' if len(missing) > 5 else ''}")
    if not keep.any():
        raise ReportError(f"none of the {len(planned)} trials of the sweep file has a result; run it first "
                          "(wsss sweep run), or pass the sweep name to report every recorded trial")
    kept = trials[keep].reset_index(drop=True)
    kept.attrs.update(trials.attrs)
    return kept


def calibrate(trials: pd.DataFrame, out: Path) -> tuple[list[dict], str]:
    """Calibration rows on the split the trials were scored on, with their protocol, and a line naming
    the protocol. Trials scored on different splits or protocols are not one table: that is an error."""
    from wsss_core.evaluation.protocols import PRED_255_CHOICES, resolve_protocol

    from .calibration import calibration_rows

    context = trials[list(CONTEXT)].drop_duplicates()
    if len(context) != 1:
        listing = "; ".join(f"{r.eval_split} of {r.eval_data_root} ({r.eval_protocol})" for r in context.itertuples())
        raise ReportError(f"the trials were scored on different splits or protocols ({listing}); report them "
                          "separately (e.g. with --set overrides) so each table compares like with like")
    row = context.iloc[0]
    name = row["eval_protocol"] if isinstance(row["eval_protocol"], str) and row["eval_protocol"] != "none" else None
    if name is None:
        return [], "not recorded (evaluated before protocols were recorded; re-run the eval stage)"
    pred_255 = row["eval_pred_255"] if row["eval_pred_255"] in PRED_255_CHOICES else None
    spec = resolve_protocol(name, pred_255)
    line = f"{spec.label} ({spec.reference})"
    root, split = row["eval_data_root"], row["eval_split"]
    if not isinstance(root, str) or not Path(root).is_dir():
        _warn(f"calibration rows left out: the evaluated split's data root {root!r} is not readable here")
        return [], line
    rows = calibration_rows(root, split, int(row["eval_num_classes"]), spec, cache_dir=out)
    return rows, line


def format_ablation_markdown(ablation: pd.DataFrame | dict) -> str:
    """The ablation table as Markdown (accepts the table or ``build_report``'s result)."""
    table = ablation["ablation"] if isinstance(ablation, dict) else ablation
    return tables.to_markdown(*tables.ablation_grid(table))
