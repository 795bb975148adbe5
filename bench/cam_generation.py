"""CAM generation: how far the reference path (the default) is from the previous tensor path, and images/s of
the per-image loop against same-size batches, side by side in one run.

    .venv/bin/python bench/cam_generation.py [--part all|diff|speed] [--steps 240] [--images 48] [--repeats 3]

Part 1 (differences): on the synthetic benchmark with long side 200 px (no side a multiple of 16), a small
CNN trained here for ``--steps`` steps at output stride 4 (the demo's) and 16 (IRN's), and a randomly
initialised ResNet-50 at stride 16 (IRN's network; no pretrained weights here), each image's ground-truth
class maps are made four ways: cams.resize in {pil_bicubic, tensor_bilinear} x cams.upsample in {reference,
direct}. Printed: max and mean |map - default map| over images and pixels, and (trained models) the best
mIoU of the default and of the previous path over the 0..0.95 threshold sweep.

Part 2 (throughput): images/s of the previous per-image loop (normalised tensor, bilinear scales, direct
upsample), the reference path one image at a time (cams.batch_size 1), and same-size batches of 4 and 8,
each including the per-scale input preparation; on CPU (1 torch thread, oneDNN off as write_cams runs it) and,
when CUDA is present, on the GPU in fp32 and bf16 autocast. Last, write_store_shard end to end on the
synthetic split (mixed sizes: only images of one size share a forward).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from wsss_core.baselines.base import scaled_inputs
from wsss_core.baselines.compose import build_model
from wsss_core.data import build_dataset
from wsss_core.data.synth import generate_synthetic_voc
from wsss_core.data.transforms import normalize_image
from wsss_core.evaluation import CamStore, evaluate_cams
from wsss_core.training import load_run_config, train
from wsss_core.training.cams import write_store_shard
from wsss_core.training.checkpoint import load_model_weights
from wsss_core.training.distributed import DistEnv

SCALES = (1.0, 0.5, 1.5, 2.0)
PATHS = [("pil_bicubic", "reference"), ("tensor_bilinear", "reference"), ("pil_bicubic", "direct"),
         ("tensor_bilinear", "direct")]
SMALL16 = "model.backbone_options={widths: [16, 32, 64, 128], output_stride: 16}"
SMALL4 = "model.backbone_options={widths: [16, 32, 64], output_stride: 4}"


def trained_model(root: Path, work: Path, backbone_option: str, steps: int):
    cfg = load_run_config(None, [f"data.root={root}", "data.crop=96", backbone_option, "optim.lr=0.02",
                                 "train.batch_size=8", "train.device=cpu", f"train.max_steps={steps}",
                                 "train.epochs=100", "train.checkpoint_every=1000", "train.log_every=1000"])
    run_dir = work / f"train_{abs(hash(backbone_option)) % 10**8}"
    train(cfg, run_dir)
    weights, _ = load_model_weights(run_dir)
    model = build_model(cfg.model, cfg.addons, 6)
    model.load_state_dict(weights)
    return model.baseline.eval()


def random_resnet50():
    cfg = load_run_config(None, ["model.backbone=resnet50"])
    torch.manual_seed(0)
    return build_model(cfg.model, cfg.addons, 6).baseline.eval()


def path_maps(model, sample, resize: str, upsample: str) -> np.ndarray:
    label = torch.from_numpy(sample["label"])
    inputs = scaled_inputs([sample["image"]], SCALES, resize)
    with torch.backends.mkldnn.flags(enabled=False):
        return model.multiscale_cams(inputs, label, SCALES, True, upsample=upsample).cams.numpy()


def differences(name: str, model, dataset, count: int, root: Path, work: Path, score: bool) -> list[str]:
    """Rows: for each non-default path, max / mean |map - default| over the first ``count`` images."""
    stores = {}
    if score:
        for path in (PATHS[0], PATHS[3]):
            stores[path] = CamStore.create(work / f"store_{name}_{path[0]}_{path[1]}".replace(" ", "_"),
                                           dataset.num_classes)
    worst = {path: 0.0 for path in PATHS[1:]}
    sums = {path: 0.0 for path in PATHS[1:]}
    pixels = 0
    sizes = set()
    for index in range(count):
        sample = dataset.load(index)
        sizes.add(sample["image"].shape[:2])
        maps = {path: path_maps(model, sample, *path) for path in PATHS}
        keys = np.flatnonzero(sample["label"] > 0.5)
        for path, store in stores.items():
            store.write(sample["id"], keys, maps[path])
        pixels += maps[PATHS[0]].size
        for path in PATHS[1:]:
            delta = np.abs(maps[path] - maps[PATHS[0]])
            worst[path] = max(worst[path], float(delta.max()))
            sums[path] += float(delta.sum())
    multiple16 = sum(1 for h, w in sizes if h % 16 == 0 and w % 16 == 0)
    rows = []
    for path in PATHS[1:]:
        rows.append(f"| {name} | resize={path[0]}, upsample={path[1]} | {worst[path]:.4f} | "
                    f"{sums[path] / pixels:.5f} |")
    if score:
        best = {path: evaluate_cams(store.path, root, "train", thresholds=[i / 100 for i in range(96)])["best"]
                for path, store in stores.items()}
        default, previous = best[PATHS[0]], best[PATHS[3]]
        rows.append(f"| {name} | best mIoU: default {100 * default['miou']:.2f} % (t={default['threshold']:.2f}) | "
                    f"previous path {100 * previous['miou']:.2f} % (t={previous['threshold']:.2f}) | |")
    print(f"  {name}: {count} images, {len(sizes)} sizes, {multiple16} with both sides a multiple of 16",
          flush=True)
    return rows


def interleaved_medians(fns: list, repeats: int) -> list[float]:
    """Median seconds of each function, the functions run in turn within each repeat (after one warm-up
    round), so a change in the machine's load falls on all of them alike."""
    for fn in fns:
        fn()  # warm-up (first-shape kernels, allocator)
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, record in zip(fns, times):
            start = time.perf_counter()
            fn()
            record.append(time.perf_counter() - start)
    return [statistics.median(record) for record in times]


def throughput_rows(name: str, model, images: list[np.ndarray], device: torch.device, dtype: str,
                    repeats: int) -> list[str]:
    model = model.to(device)
    labels = torch.zeros(len(images), model.num_classes, device=device)
    labels[:, ::2] = 1.0
    if device.type == "cuda":
        context = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if dtype == "bf16" else nullcontext
    else:
        context = lambda: torch.backends.mkldnn.flags(enabled=False)  # noqa: E731

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def previous_loop():
        for image, label in zip(images, labels):
            tensor = torch.from_numpy(normalize_image(image))[None].to(device)
            with context():
                result = model.multiscale_cams(tensor, label, SCALES, True, upsample="direct")
            result.cams.float().cpu()
        sync()

    def batched(size: int):
        def run():
            for start in range(0, len(images), size):
                chunk = images[start:start + size]
                inputs = scaled_inputs(chunk, SCALES, "pil_bicubic", device)
                with context():
                    results = model.batch_cams(inputs, labels[start:start + size], True)
                [r.cams.float().cpu() for r in results]
            sync()
        return run

    height, width = images[0].shape[:2]
    cases = [("previous per-image loop (tensor path)", previous_loop),
             ("reference path, 1 image per forward", batched(1)),
             ("reference path, 4 same-size images per forward", batched(4)),
             ("reference path, 8 same-size images per forward", batched(8))]
    rates = [len(images) / seconds for seconds in interleaved_medians([fn for _, fn in cases], repeats)]
    rows = [f"| {name} | {device.type} {dtype} | {height}x{width} | {label} | {rate:.2f} | {rate / rates[0]:.2f}x |"
            for (label, _), rate in zip(cases, rates)]
    print("\n".join("  " + row for row in rows), flush=True)
    return rows


def store_rows(model, root: Path, work: Path, repeats: int) -> list[str]:
    dataset = build_dataset("voc", root, "train")
    sizes = [dataset.load(i)["image"].shape[:2] for i in range(len(dataset))]
    counter = iter(range(10**6))

    def shard(batch: int):
        cfg = load_run_config(None, [f"data.root={root}", f"cams.batch_size={batch}"])

        def run():
            store = CamStore.create(work / f"shard_{batch}_{next(counter)}", dataset.num_classes)
            write_store_shard(store, dataset, DistEnv(), cfg,
                              lambda samples, inputs, labels: model.batch_cams(inputs, labels, True), "bench")
        return run

    batches = (1, 4, 8)
    seconds = interleaved_medians([shard(batch) for batch in batches], repeats)
    rows = [f"| write_store_shard, synthetic train split ({len(dataset)} images, {len(set(sizes))} sizes) | cpu fp32 "
            f"| mixed | cams.batch_size={batch} | {len(dataset) / time_s:.2f} | {seconds[0] / time_s:.2f}x |"
            for batch, time_s in zip(batches, seconds)]
    print("\n".join("  " + row for row in rows), flush=True)
    return rows


def speed(small, root: Path, work: Path, repeats: int) -> list[str]:
    print("Part 2: throughput", flush=True)
    rng = np.random.default_rng(0)
    cases = [("small CNN, stride 4 (demo)", small, [rng.integers(0, 256, (150, 200, 3), np.uint8)
                                                    for _ in range(16)]),
             ("ResNet-50, stride 16", random_resnet50(), [rng.integers(0, 256, (188, 250, 3), np.uint8)
                                                          for _ in range(8)])]
    speed_rows = []
    for name, model, images in cases:
        speed_rows += throughput_rows(name, model, images, torch.device("cpu"), "fp32", repeats)
    if torch.cuda.is_available():
        voc = [rng.integers(0, 256, (375, 500, 3), np.uint8) for _ in range(16)]
        for name, model, _ in cases:
            for dtype in ("fp32", "bf16"):
                speed_rows += throughput_rows(name, model, voc, torch.device("cuda"), dtype, repeats)
    return speed_rows + store_rows(small.to("cpu"), root, work, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=240, help="training steps of each small model")
    parser.add_argument("--images", type=int, default=48, help="images of the difference measurement")
    parser.add_argument("--resnet-images", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--part", choices=("all", "diff", "speed"), default="all")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        root = generate_synthetic_voc(work / "voc", seed=0, n_train=args.images, n_val=2, size=200,
                                      num_classes=6, n_aug_extra=args.images, show_progress=False)
        dataset = build_dataset("voc", root, "train")
        diff_rows, speed_rows = [], []
        small = trained_model(root, work, SMALL4, args.steps)
        if args.part in ("all", "diff"):
            print("Part 1: differences", flush=True)
            diff_rows += differences("small CNN, stride 4, trained", small, dataset, len(dataset), root, work, True)
            diff_rows += differences("small CNN, stride 16, trained", trained_model(root, work, SMALL16, args.steps),
                                     dataset, len(dataset), root, work, score=True)
            diff_rows += differences("ResNet-50, stride 16, random init", random_resnet50(), dataset,
                                     min(args.resnet_images, len(dataset)), root, work, score=False)
        if args.part in ("all", "speed"):
            speed_rows = speed(small, root, work, args.repeats)

    print(f"\nMachine: {platform.machine()}, {torch.get_num_threads()} torch thread(s), python "
          f"{platform.python_version()}, torch {torch.__version__}"
          + (f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no CUDA"))
    if diff_rows:
        print("\n| model | compared with the default (resize=pil_bicubic, upsample=reference) | max abs diff | "
              "mean abs diff |\n|---|---|---|---|")
        print("\n".join(diff_rows))
    if speed_rows:
        print("\n| model | device | image size | path | images/s | vs first row |\n|---|---|---|---|---|---|")
        print("\n".join(speed_rows))


if __name__ == "__main__":
    main()
