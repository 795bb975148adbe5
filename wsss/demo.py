"""``wsss demo``: the README's main command. Runs ``sweeps/demo.yaml`` (CAM × the 7 HFPL add-on settings ×
2 seeds on the synthetic benchmark, every threshold 0..0.95 in one pass) with the local launcher, then
prints the ablation table. A second run reuses every finished stage and only prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

from wsss_core.errors import WsssError

DEMO_SWEEP = Path(__file__).resolve().parents[1] / "sweeps" / "demo.yaml"


def register(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser("demo", help="run the demo sweep (CAM x HFPL add-ons x 2 seeds, synthetic data) "
                                 "and print the ablation table",
                                 description="Equivalent to `wsss sweep run sweeps/demo.yaml` followed by the "
                                 "ablation table of `wsss report`. About 10 minutes on 2 CPU cores; finished "
                                 "stages are reused on a second run.")
    demo.add_argument("--sweep", default=str(DEMO_SWEEP), help="sweep file (default: sweeps/demo.yaml)")
    demo.add_argument("--workdir", help="work dir (default: $WSSS_WORKDIR or ./runs)")
    from launchers.cli import add_run_options

    add_run_options(demo)
    demo.set_defaults(func=run_demo, overrides=[])


def compact_table(records: list[dict]) -> str:
    """Rows baselines, columns add-on settings: best-threshold mIoU (%), mean ± std over seeds."""
    cells: dict[tuple[str, str], list[float]] = {}
    settings: list[str] = []
    baselines: list[str] = []
    for record in records:
        path = record.get("eval_json")
        if not path or not Path(path).is_file():
            continue
        best = json.loads(Path(path).read_text()).get("best", {}).get("miou")
        if best is None:
            continue
        baseline, setting = str(record.get("baseline")), str(record.get("addons_label") or "none")
        baselines += [baseline] if baseline not in baselines else []
        settings += [setting] if setting not in settings else []
        cells.setdefault((baseline, setting), []).append(100 * float(best))
    if not cells:
        return "(no evaluated trials)"

    def fmt(values: list[float] | None) -> str:
        if not values:
            return "–"
        std = statistics.stdev(values) if len(values) > 1 else math.nan
        return f"{statistics.mean(values):.1f}" + ("" if math.isnan(std) else f" ± {std:.1f}")

    header = ["baseline"] + settings
    rows = [[b] + [fmt(cells.get((b, s))) for s in settings] for b in baselines]
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])


def ablation_markdown(sweep_name: str, workdir: Path, records: list[dict]) -> str:
    """The analysis package's ablation table (written with the full report), else a compact one."""
    try:
        from analysis.report import build_report
    except ImportError:
        return compact_table(records)
    try:
        report = build_report(sweep_name, workdir)
    except WsssError as exc:
        print(f"wsss demo: report: {exc}; showing the compact table", file=sys.stderr)
        return compact_table(records)
    return f"{report['text']}\n(full report: {report['out_dir']})"


def run_demo(args: argparse.Namespace) -> int:
    from launchers.cli import run_and_summarise

    spec, outcome = run_and_summarise(args, args.sweep)
    print()
    print(f"Ablation of sweep {spec.name} (pseudo-label mIoU on the synthetic train split, "
          f"{len(spec.thresholds or ())} thresholds per trial scored in one pass)")
    print(ablation_markdown(spec.name, outcome.plan.workdir, outcome.records))
    return 0 if outcome.ok else 1
