"""Feature similarity loss: cost and accuracy of each form against HFPL's untruncated all-pairs loss.

    .venv/bin/python bench/feature_similarity.py [--grids 24 32 56 128] [--batch 2] [--classes 4]

Per CAM grid, side by side in one run: forward + backward of the loss (binomial targets, σ = 5, μ = 2.5)
for each form and truncation (the ``truncate`` setting, in σ); wall and process-CPU seconds (the least of
--repeats runs: other processes only ever add time), the CPU allocator's peak (torch profiler), and the
relative difference from the untruncated loss in value and in gradient (‖Δg‖ / ‖g‖ over the logits) on two inputs: i.i.d. random logits, and smooth CAM-like logits (random
logits on an 8× coarser grid, upsampled) where far pairs differ more than near ones. The image is
noisy and random: a few random colour regions plus Gaussian noise, at 8× the grid, so the resize to
the grid is part of the loss. The reference is the blocked form without truncation (every pair), checked
against the materialised all-pairs form where that fits in --max-all-pairs-gb.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from wsss_core.addons.feature_similarity import FeatureSimilarityParams, choose_form, feature_similarity_loss

SIGMA = FeatureSimilarityParams().sigma


def peak_bytes(fn) -> int:
    """Peak of allocated-minus-freed CPU memory during ``fn`` (profiler memory events; each event's own
    allocations only, since the inclusive figure counts a nested op's allocation in its parent too)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    current = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        current += event.self_cpu_memory_usage
        peak = max(peak, current)
    return peak


def noisy_image(n: int, size: int, gen: torch.Generator) -> torch.Tensor:
    regions = F.interpolate(torch.rand(n, 3, 5, 5, generator=gen), size=(size, size), mode="nearest")
    return (regions + 0.1 * torch.randn(n, 3, size, size, generator=gen)).clamp(0.0, 1.0)


def inputs(n: int, classes: int, grid: int, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    label = (torch.rand(n, classes, generator=gen) < 0.5).float()
    label[:, 0] = 1.0
    image = noisy_image(n, 8 * grid, gen)
    iid = 3.0 * torch.randn(n, classes, grid, grid, generator=gen)
    coarse = 3.0 * torch.randn(n, classes, max(2, grid // 8), max(2, grid // 8), generator=gen)
    smooth = F.interpolate(coarse, size=(grid, grid), mode="bilinear", align_corners=False)
    return {"iid": (iid, label, image), "smooth": (smooth, label, image)}


def loss_and_grad(params: FeatureSimilarityParams, logits, label, image) -> tuple[float, torch.Tensor]:
    z = logits.clone().requires_grad_(True)
    loss = feature_similarity_loss(z, label, image, params, "binomial")
    loss.backward()
    return loss.item(), z.grad


def all_pairs_gb(n: int, classes: int, grid: int) -> float:
    # the pairwise differences of C+1 target channels plus ~8 more N × (hw)² float32 tensors (measured:
    # 1.0 GiB at N 2, C 4, 56 × 56)
    return n * (grid * grid) ** 2 * (classes + 1 + 8) * 4 / 2 ** 30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grids", type=int, nargs="+", default=[24, 32, 56, 128])
    parser.add_argument("--batch", type=int, default=2, help="images N")
    parser.add_argument("--classes", type=int, default=4, help="foreground classes C; y has C+1 channels")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--truncate", type=float, nargs="+", default=[3.0, 4.0, 5.0],
                        help="truncation radii to try, in units of σ (the truncate setting)")
    parser.add_argument("--max-all-pairs-gb", type=float, default=4.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads {args.threads}, N {args.batch}, C {args.classes}, sigma {SIGMA:g}, forward+backward")
    print(f"{'grid':>7} {'form':>9} {'radius':>8} {'wall s':>7} {'cpu s':>7} {'peak MiB':>9} "
          f"{'value iid':>9} {'grad iid':>9} {'value smooth':>12} {'grad smooth':>11}")
    for grid in args.grids:
        data = inputs(args.batch, args.classes, grid, seed=grid)
        default = FeatureSimilarityParams()
        print(f"{grid}x{grid:<4} default: form auto = {choose_form(grid, grid, args.classes + 1, default.radius())}, "
              f"truncate {default.truncate:g}σ")
        exact = FeatureSimilarityParams(form="blocked", truncate=None)
        reference = {name: loss_and_grad(exact, *tensors) for name, tensors in data.items()}
        variants = []
        if all_pairs_gb(args.batch, args.classes, grid) <= args.max_all_pairs_gb:
            variants.append(FeatureSimilarityParams(form="all_pairs", truncate=None))
        else:
            print(f"{grid}x{grid:<4} all_pairs   skipped: needs ~{all_pairs_gb(args.batch, args.classes, grid):.0f} GiB "
                  f"(> --max-all-pairs-gb {args.max_all_pairs_gb:g})")
        variants.append(exact)
        for form in ("blocked", "windowed"):
            for k in args.truncate:
                variants.append(FeatureSimilarityParams(form=form, truncate=k))
        for params in variants:
            walls, cpus = [], []
            for _ in range(args.repeats):
                wall, cpu = time.perf_counter(), time.process_time()
                loss_and_grad(params, *data["iid"])
                walls.append(time.perf_counter() - wall)
                cpus.append(time.process_time() - cpu)
            peak = peak_bytes(lambda: loss_and_grad(params, *data["iid"]))
            errors = []
            for name, tensors in data.items():
                value, grad = loss_and_grad(params, *tensors)
                ref_value, ref_grad = reference[name]
                errors += [abs(value - ref_value) / abs(ref_value), ((grad - ref_grad).norm() / ref_grad.norm()).item()]
            radius = "all" if params.truncate is None else f"{params.truncate:g}σ={params.radius():g}"
            print(f"{grid}x{grid:<4} {params.form:>9} {radius:>8} {min(walls):>7.3f} "
                  f"{min(cpus):>7.3f} {peak / 2 ** 20:>9.1f} {errors[0]:>9.1e} {errors[1]:>9.1e} "
                  f"{errors[2]:>12.1e} {errors[3]:>11.1e}", flush=True)


if __name__ == "__main__":
    main()
