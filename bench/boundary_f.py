"""Benchmark: boundary F-score per image, the NumPy/SciPy reference against the compiled kernel, one run.

    .venv/bin/python bench/boundary_f.py [--work /tmp/wsss_bench_eval] [--images 1464] [--threshold 0.25]

Same synthetic VOC-sized split as bench/eval_thresholds.py (generated once into --work, reused). The
label maps at --threshold are made once from the CAMs and held in memory with the ground truth, so the
rows time BoundaryScore.add alone: kernel="numpy" (seg2bmap + scipy disk dilation per class) and
kernel="compiled" (numba); their matched and total counts are asserted identical. Then evaluate_cams
end to end with boundary F at the threshold, before (NumPy kernels, PNG decoding) and after (compiled
kernels, ground-truth cache).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("WSSS_PROGRESS", "0")

from eval_thresholds import C, THRESHOLDS, prepare  # noqa: E402
from wsss_core.evaluation import CamStore, evaluate_cams  # noqa: E402
from wsss_core.evaluation.boundary import BoundaryScore  # noqa: E402
from wsss_core.evaluation.ground_truth import read_gt_mask  # noqa: E402
from wsss_core.evaluation.threshold_sweep import class_map_from_cams, predict_labels  # noqa: E402


def score(kernel: str, pairs) -> tuple[float, BoundaryScore]:
    result = BoundaryScore(C, kernel=kernel)
    t0 = time.perf_counter()
    for pred, gt in pairs:
        result.add(pred, gt)
    return time.perf_counter() - t0, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/wsss_bench_eval"))
    ap.add_argument("--images", type=int, default=1464)
    ap.add_argument("--threshold", type=float, default=0.25)
    args = ap.parse_args()
    voc, cam_dir, ids = prepare(args.work, args.images)
    store = CamStore(cam_dir)
    pairs = []
    for i in ids:
        keys, cams = store.read(i)
        m, class_map = class_map_from_cams(keys, cams)
        pairs.append((predict_labels(m, class_map, args.threshold), read_gt_mask(voc, i)))
    score("compiled", pairs[:2])  # compile (or load the cached compiled code) before timing

    t_old, old = score("numpy", pairs)
    t_new, new = score("compiled", pairs)
    for name in ("pred_matched", "pred_total", "gt_matched", "gt_total"):
        assert np.array_equal(getattr(old, name), getattr(new, name)), f"{name} differs"
    assert old.summary() == new.summary()

    evaluate_cams(cam_dir, voc, "train", thresholds=THRESHOLDS, boundary_thresholds=[])  # build the GT cache
    e2e = {}
    for label, kw in (("before", {"kernel": "numpy", "gt_cache": False}), ("after", {})):
        t0 = time.perf_counter()
        res = evaluate_cams(cam_dir, voc, "train", thresholds=THRESHOLDS, boundary_thresholds=[args.threshold], **kw)
        e2e[label] = (time.perf_counter() - t0, res)
    assert e2e["before"][1]["boundary"] == e2e["after"][1]["boundary"]
    assert e2e["before"][1]["per_threshold"] == e2e["after"][1]["per_threshold"]

    n = len(ids)
    f = new.summary()["f"]
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"python {platform.python_version()}, numpy {np.__version__}; load: {os.getloadavg()[0]:.2f}")
    print(f"split: {n} images 375x500, boundary F at t={args.threshold:g} (tolerance 5 px): F = {100 * f:.2f} %")
    print("| measurement | seconds | ms/image | speed-up |")
    print("|---|---|---|---|")
    print(f"| BoundaryScore.add, NumPy/SciPy reference | {t_old:.2f} | {1000 * t_old / n:.2f} | 1.0x |")
    print(f"| BoundaryScore.add, compiled kernel | {t_new:.2f} | {1000 * t_new / n:.2f} | {t_old / t_new:.1f}x |")
    tb, ta = e2e["before"][0], e2e["after"][0]
    print(f"| evaluate_cams + boundary F, before (NumPy, PNG decoding) | {tb:.2f} | {1000 * tb / n:.2f} | 1.0x |")
    print(f"| evaluate_cams + boundary F, after (compiled, GT cache) | {ta:.2f} | {1000 * ta / n:.2f} | {tb / ta:.1f}x |")
    print("matched/total counts per class identical (asserted); evaluate_cams results identical (asserted)")


if __name__ == "__main__":
    main()
