"""Training throughput (images/s) per baseline × add-on setting, on CPU and, when present, CUDA (fp32, bf16).

    .venv/bin/python bench/train_throughput.py [--backbone small] [--crop 64] [--batch 8] [--steps 10]

Each setting trains ``--steps`` optimiser steps on synthetic random tensors through the same composed
model and optimiser the trainer uses (data loading excluded); the first 2 steps are warm-up.
"""

from __future__ import annotations

import argparse
import time

import torch

from wsss_core.baselines.compose import build_model
from wsss_core.training.config import load_run_config
from wsss_core.training.optim import build_sgd

ADDON_SETTINGS = {
    "none": "addons=[]",
    "IS": "addons=[{name: importance_sampling}]",
    "FSL": "addons=[{name: feature_similarity}]",
    "IS+FSL": "addons=[{name: importance_sampling}, {name: feature_similarity}]",
    "IS+FSL multinomial": "addons=[{name: importance_sampling, posterior: multinomial}, "
                          "{name: feature_similarity, posterior: multinomial}]",
}


def measure(baseline: str, backbone: str, addons: str, device: torch.device, dtype: str, crop: int, batch: int,
            steps: int, classes: int) -> float:
    cfg = load_run_config(None, [f"model.baseline={baseline}", f"model.backbone={backbone}", addons])
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.addons, classes).to(device).train()
    optimizer = build_sgd(model.baseline.param_groups(), 0.01, 1e-4, 0.9, False)
    image = torch.randn(batch, 3, crop, crop, device=device)
    label = (torch.rand(batch, classes, device=device) < 0.3).float()
    # AMN trains on seed labels (its own stage makes them from CAMs): random ones cost the same to fit.
    seeds = torch.randint(0, classes + 1, (batch, crop, crop), device=device)
    feeds_seeds = hasattr(model.baseline, "set_seed_targets")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16")
    warmup = 2
    for step in range(steps + warmup):
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        if feeds_seeds:
            model.baseline.set_seed_targets(seeds)
        with autocast:
            total, _, _ = model(image, label)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baselines", nargs="+", default=["cam", "seam", "amn"])
    parser.add_argument("--backbone", default="small")
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    targets = [(torch.device("cpu"), "fp32")]
    if torch.cuda.is_available():
        targets += [(torch.device("cuda"), "fp32"), (torch.device("cuda"), "bf16")]
    print(f"backbone {args.backbone}, crop {args.crop}, batch {args.batch}, {args.steps} steps, "
          f"C {args.classes}, CPU threads {args.threads}")
    print(f"{'baseline':>9} {'add-ons':>20} {'device':>7} {'dtype':>5} {'images/s':>9}")
    for baseline in args.baselines:
        for name, addons in ADDON_SETTINGS.items():
            for device, dtype in targets:
                rate = measure(baseline, args.backbone, addons, device, dtype, args.crop, args.batch, args.steps,
                               args.classes)
                print(f"{baseline:>9} {name:>20} {device.type:>7} {dtype:>5} {rate:>9.1f}", flush=True)


if __name__ == "__main__":
    main()
