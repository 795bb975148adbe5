"""Experiment (not a test): CAM, SEAM, AMN × HFPL add-on settings at demo scale, and the threshold
robustness of CAM vs AMN. Writes a JSON of the scores; ``--table`` prints the markdown tables.

    .venv/bin/python bench/exp_baselines.py --out /tmp/exp --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from wsss_core.config import load_yaml
from wsss_core.data.synth import generate_synthetic_voc
from wsss_core.evaluation import evaluate_cams
from wsss_core.training import make_cams, train
from wsss_core.training.amn_stages import run_amn_chain
from wsss_core.training.config import run_config_from_dict

ADDONS = {
    "none": [],
    "is": [{"name": "importance_sampling"}],
    "fsl": [{"name": "feature_similarity"}],
    "both": [{"name": "importance_sampling"}, {"name": "feature_similarity"}],
}
THRESHOLDS = [round(0.01 * i, 2) for i in range(96)]


def scores(result: dict) -> dict:
    rows = result["per_threshold"]
    curve = [r["miou"] for r in rows]
    at = {t: curve[THRESHOLDS.index(t)] for t in (0.1, 0.25, 0.4, 0.55, 0.7, 0.85)}
    best_boundary = next(b for b in result["boundary"] if b["threshold"] == result["best"]["threshold"])
    return {"best_miou": result["best"]["miou"], "best_t": result["best"]["threshold"],
            "boundary_f": best_boundary["f"], "plateau_width": result["robustness"]["plateau_width"],
            "mean_near_best": result["robustness"]["mean_miou_near_best"], "miou_at": at, "curve": curve}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="/tmp/wsss_exp")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--baselines", nargs="+", default=["cam", "seam", "amn"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    demo = load_yaml(Path(__file__).resolve().parents[1] / "sweeps" / "amn_demo.yaml")
    root = generate_synthetic_voc(out / "voc", show_progress=False, **demo["synthetic_data"])
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    for seed in args.seeds:
        for baseline in args.baselines:
            for label, addons in ADDONS.items():
                name = f"{baseline}-{label}-s{seed}"
                if name in results:
                    continue
                base = json.loads(json.dumps(demo["base"]))
                base["data"]["root"] = str(root)
                base["model"]["baseline"] = baseline
                if baseline != "amn":
                    base["model"]["options"] = {}
                base.update(addons=addons, eval={"thresholds": THRESHOLDS})
                base["train"]["seed"] = seed
                cfg = run_config_from_dict(base, name)
                tick = time.perf_counter()
                if baseline == "amn":
                    stages = run_amn_chain(cfg, out / "amn_chain")
                    entry = {"cam_stage": scores(json.loads(Path(stages["cam_eval"]["eval_json"]).read_text())),
                             **scores(json.loads(Path(stages["amn_eval"]["eval_json"]).read_text()))}
                else:
                    run_dir = out / name
                    train(cfg, run_dir)
                    make_cams(cfg, run_dir, evaluate=False)
                    entry = scores(evaluate_cams(run_dir / "cams", root, "train", thresholds=THRESHOLDS))
                entry["seconds"] = time.perf_counter() - tick
                results[name] = entry
                results_path.write_text(json.dumps(results, indent=1))
                print(name, {k: entry[k] for k in ("best_miou", "best_t", "boundary_f", "plateau_width")},
                      f"{entry['seconds']:.0f}s", flush=True)


if __name__ == "__main__":
    main()
