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
from wsss_core.pipeline import plan_trial, run_trial
from wsss_core.pipeline.runner import eval_json
from wsss_core.pipeline.stages.evaluate import score_cam_store
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
                trial = plan_trial(cfg, out / "work", sweep="exp")  # every baseline through the one runner
                run_trial(trial)
                entry = scores(json.loads(Path(eval_json(trial)).read_text()))
                if baseline == "amn":  # the robustness comparison: the CAM stage's CAMs scored alike
                    cam_store = Path(trial.stage("amn_cam_cams").dir) / "cams"
                    cam_eval = score_cam_store(cfg, cam_store, out / "cam_stage_eval" / name)
                    entry = {"cam_stage": scores(json.loads(Path(cam_eval["eval_json"]).read_text())), **entry}
                entry["seconds"] = time.perf_counter() - tick
                results[name] = entry
                results_path.write_text(json.dumps(results, indent=1))
                print(name, {k: entry[k] for k in ("best_miou", "best_t", "boundary_f", "plateau_width")},
                      f"{entry['seconds']:.0f}s", flush=True)


if __name__ == "__main__":
    main()
