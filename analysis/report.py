"""``build_report``: a sweep's trials (from records or MLflow) → tables (md, tex, csv) and plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pandas as pd

from wsss_core.errors import ConfigError

from . import plots, tables
from .collect import ReportError, trials_from_mlflow, trials_from_records

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
                 fixed_threshold: float = 0.25, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Write the ablation, robustness and contour tables (``.md``, ``.tex``, ``.csv``) and the plots
    (``threshold_curves.png``, ``addon_delta.png``) into ``out_dir`` (default
    ``<workdir>/sweeps/<sweep>/report``). Returns ``trials``, ``ablation``, ``robustness``, ``contour``
    (DataFrames), ``paths`` (name -> Path) and ``markdown`` (the ablation table)."""
    if not 0.0 <= fixed_threshold <= 1.0:
        raise ConfigError(f"--fixed-threshold: {fixed_threshold} is outside [0, 1]")
    trials = collect_trials(sweep_name, workdir, source, tracking_uri, fixed_threshold)
    out = Path(out_dir) if out_dir is not None else report_dir(workdir, sweep_name)
    out.mkdir(parents=True, exist_ok=True)
    ablation = tables.ablation_table(trials, fixed_threshold)
    robustness = tables.robustness_table(trials)
    contour = tables.contour_table(trials, fixed_threshold)
    n_rows = max(len(ablation.attrs["rows"]), 1)
    n_methods = len(robustness.attrs["methods"])
    paths: dict[str, Path] = {}
    for name, table, grid, caption, n_text in (
        ("ablation", ablation, tables.ablation_grid(ablation),
         f"{sweep_name}: mIoU (%) at the best and at a fixed background threshold, mean ± std over seeds "
         "(Δ against no add-on)", n_rows),
        ("robustness", robustness, tables.robustness_grid(robustness),
         f"{sweep_name}: threshold robustness", n_methods),
        ("contour", contour, tables.contour_grid(contour), f"{sweep_name}: contour quality (boundary F, %)",
         n_methods),
    ):
        for kind, path in tables.write_table(table, grid, out, name, caption, n_text=n_text).items():
            paths[f"{name}_{kind}"] = path
    trials.drop(columns=["curve"]).to_csv(out / "trials.csv", index=False)
    paths["trials_csv"] = out / "trials.csv"
    paths["threshold_curves_png"] = plots.plot_threshold_curves(trials, out / "threshold_curves.png",
                                                                title=f"{sweep_name}: mIoU versus threshold")
    paths["addon_delta_png"] = plots.plot_addon_deltas(ablation, out / "addon_delta.png")
    return {"trials": trials, "ablation": ablation, "robustness": robustness, "contour": contour, "paths": paths,
            "markdown": format_ablation_markdown(ablation), "out_dir": out}


def format_ablation_markdown(ablation: pd.DataFrame | dict) -> str:
    """The ablation table as Markdown (accepts the table or ``build_report``'s result)."""
    table = ablation["ablation"] if isinstance(ablation, dict) else ablation
    return tables.to_markdown(*tables.ablation_grid(table))
