"""Feature similarity loss: time and peak memory of the windowed form vs the all-pairs form.

    .venv/bin/python bench/feature_similarity.py [--grids 56 128] [--classes 21] [--repeats 3]

Forward + backward of one image's loss (N=1, C+1 channels, σ = 5, window radius ceil(3σ) = 15).
Peak memory is the CPU allocator's peak measured with torch's profiler. All-pairs is skipped (and
said so) when its estimated working set exceeds --max-all-pairs-gb.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from wsss_core.addons.feature_similarity import (FeatureSimilarityParams, binomial_targets, fsl_all_pairs,
                                                 fsl_windowed)


def peak_bytes(fn) -> int:
    """Peak of allocated-minus-freed CPU memory during ``fn`` (profiler memory events)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    current = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        current += event.cpu_memory_usage
        peak = max(peak, current)
    return peak


def run_once(form: str, grid: int, classes: int, radius: int) -> None:
    z = torch.randn(1, classes, grid, grid, requires_grad=True)
    label = torch.zeros(1, classes)
    label[0, :3] = 1
    rgb = torch.rand(1, 3, grid, grid)
    y = binomial_targets(z, label)
    if form == "windowed":
        loss = fsl_windowed(y, rgb, 2.5, 5.0, radius, 1e-5)
    else:
        loss = fsl_all_pairs(y, rgb, 2.5, 5.0, radius, 1e-5)
    loss.backward()


def all_pairs_gb(grid: int) -> float:
    # ~8 live (hw)² float32 tensors (distances, kernel, d_y, d_x, ψ and their grads)
    return 8 * (grid * grid) ** 2 * 4 / 2 ** 30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grids", type=int, nargs="+", default=[56, 128])
    parser.add_argument("--classes", type=int, default=20, help="foreground classes (C); y has C+1 channels")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-all-pairs-gb", type=float, default=6.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    radius = FeatureSimilarityParams().window_radius()
    print(f"threads {args.threads}, C {args.classes}, sigma 5, radius {radius}, forward+backward, N=1")
    print(f"{'grid':>8} {'form':>10} {'median s':>10} {'peak MiB':>10}")
    for grid in args.grids:
        for form in ("windowed", "all_pairs"):
            if form == "all_pairs" and all_pairs_gb(grid) > args.max_all_pairs_gb:
                print(f"{grid}x{grid:<4} {form:>10}   skipped: needs ~{all_pairs_gb(grid):.0f} GiB "
                      f"(> --max-all-pairs-gb {args.max_all_pairs_gb:g})")
                continue
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                run_once(form, grid, args.classes, radius)
                times.append(time.perf_counter() - start)
            peak = peak_bytes(lambda: run_once(form, grid, args.classes, radius))
            print(f"{grid}x{grid:<4} {form:>10} {statistics.median(times):>10.3f} {peak / 2 ** 20:>10.1f}")


if __name__ == "__main__":
    main()
