"""Data layer speed: generating the default synthetic benchmark, and loader throughput with augmentation.

    .venv/bin/python bench/bench_data.py [--repeats 3]

Prints a Markdown table (medians over repeats) for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from wsss_core.data.loading import build_loader
from wsss_core.data.synth import generate_synthetic_voc
from wsss_core.data.transforms import train_transform
from wsss_core.data.voc import VOCSegmentation


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        counter = iter(range(1000))
        generate = _median_seconds(
            lambda: generate_synthetic_voc(Path(tmp) / f"gen{next(counter)}", show_progress=False), args.repeats)
        root = Path(tmp) / "gen0"
        rows = [("generate default synthetic set (400 images, 128 px)", f"{generate:.2f} s",
                 f"{400 / generate:.0f} img/s")]
        for baseline in ("cam", "seam"):
            dataset = VOCSegmentation(root, "train_aug")
            for workers in (0, 2):
                loader = build_loader(dataset, 16, shuffle=True, num_workers=workers, seed=0, drop_last=True,
                                      transform=train_transform(baseline, 112))
                images = len(loader) * 16
                seconds = _median_seconds(lambda: [None for _ in loader], args.repeats)
                rows.append((f"loader, {baseline} augmentation, crop 112, batch 16, {workers} workers "
                             f"({images} images)", f"{seconds:.2f} s", f"{images / seconds:.0f} img/s"))
    print(f"Machine: {platform.machine()}, {torch.get_num_threads()} torch thread(s), "
          f"python {platform.python_version()}, torch {torch.__version__}\n")
    print("| what | median time | throughput |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
