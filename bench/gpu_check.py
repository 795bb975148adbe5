"""GPU check of the training and CAM paths: each baseline's training step at its reference crop and batch in
fp32 (torch's default, which runs cuDNN convolutions in TF32, and with TF32 off) and bf16 autocast (NCHW and
channels-last; torch.compile on top where asked), CAM generation per image
against batched, one DDP step over NCCL at world size 1, and the project's trainer on the GPU through torchrun.

    bash bench/gpu_check.sh                 # what to run on a machine with a CUDA GPU (about 5 minutes on an H200)
    bash bench/gpu_check.sh --smoke         # every section once on CPU with tiny sizes (what the test runs)
    python bench/gpu_check.py --help        # the knobs (steps, budget, compile, sections)

Weights are random-init and inputs are random tensors (the training step's cost does not depend on them); the
trainer section runs on the synthetic benchmark. Timings exclude warm-up steps (cuDNN autotuning, compilation)
and synchronise the device before reading the clock. Peak memory is ``torch.cuda.max_memory_allocated`` over the
timed steps, model and optimiser state included. Results: a Markdown table on stdout and, with ``$OUT`` (or
``--out-dir``) set, ``gpu_check.json`` and ``gpu_check.md`` there, rewritten after every row so that a run
stopped early still leaves what it measured.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from wsss_core.baselines.compose import build_model  # noqa: E402
from wsss_core.data.transforms import normalize_image  # noqa: E402
from wsss_core.training.config import load_run_config  # noqa: E402
from wsss_core.training.optim import build_sgd  # noqa: E402

CLI = "wsss.cli" if (ROOT / "wsss" / "cli.py").is_file() else "wsss_core.cli"  # the `wsss` command's module

# The papers' training settings (sweeps/*_paper.yaml): backbone, its options, crop, per-GPU batch.
REFERENCE = {
    "cam": ("resnet50", {"strides": [2, 2, 2, 1]}, 512, 16),  # IRN
    "seam": ("resnet38d", {}, 448, 8),  # SEAM
    "amn": ("resnet50", {"strides": [2, 2, 2, 1]}, 512, 16),  # AMN
}
# --smoke: the same sections and code paths at sizes a 2-core CPU runs in seconds.
SMOKE_BACKBONE = ("small", {"widths": [8, 16, 32], "output_stride": 4})
SMOKE_CROP, SMOKE_BATCH = 32, 2
# Training-step variants: (dtype label, autocast dtype or None, channels-last). "fp32" is torch's default, in
# which cuDNN runs fp32 convolutions on TF32 tensor cores; "fp32-noTF32" turns that off (IEEE fp32 throughout).
VARIANTS = [("fp32", None, False), ("fp32-noTF32", None, False), ("fp32", None, True), ("bf16", torch.bfloat16, False),
            ("bf16", torch.bfloat16, True)]
CAM_SCALES = (1.0, 0.5, 1.5, 2.0)  # the project's default cams.scales (IRN's), with flip
NUM_CLASSES = 20  # PASCAL VOC
SECTIONS = ("train", "compile", "cams", "ddp", "trainer")


@dataclass
class Row:
    section: str
    what: str  # baseline (and backbone), or the pipeline step
    shape: str  # crop x batch, or image size x images
    dtype: str
    layout: str
    compile: str
    images_per_s: float | None = None
    peak_mem_gib: float | None = None
    note: str = ""


class Check:
    """Runs the sections in order, each row inside the time budget, and keeps the results file current."""

    def __init__(self, args: argparse.Namespace, device: torch.device):
        self.args, self.device = args, device
        self.rows: list[Row] = []
        self.deadline = time.monotonic() + args.budget_s
        self.out_dir = Path(args.out_dir) if args.out_dir else None
        self.info = environment(device)

    # --- bookkeeping ---------------------------------------------------------------------------
    def over_budget(self) -> bool:
        return time.monotonic() > self.deadline

    def add(self, row: Row) -> None:
        self.rows.append(row)
        rate = "-" if row.images_per_s is None else f"{row.images_per_s:.1f} img/s"
        mem = "" if row.peak_mem_gib is None else f", {row.peak_mem_gib:.2f} GiB"
        print(f"[gpu_check] {row.section:8s} {row.what:28s} {row.shape:12s} {row.dtype:5s} {row.layout:13s} "
              f"{row.compile:8s} {rate}{mem} {row.note}", file=sys.stderr, flush=True)
        self.write()

    def skip(self, section: str, what: str, shape: str = "", dtype: str = "", layout: str = "",
             compile_: str = "") -> None:
        self.add(Row(section, what, shape, dtype, layout, compile_, note="skipped: time budget spent"))

    def write(self) -> None:
        if self.out_dir is None:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        payload = {"environment": self.info, "settings": vars(self.args), "rows": [asdict(r) for r in self.rows],
                   "summary": summary_lines(self.rows)}
        (self.out_dir / "gpu_check.json").write_text(json.dumps(payload, indent=2, default=str))
        (self.out_dir / "gpu_check.md").write_text(markdown(self.info, self.rows))

    # --- sizes --------------------------------------------------------------------------------
    def setting(self, baseline: str) -> tuple[str, dict, int, int]:
        if self.args.smoke:
            return (*SMOKE_BACKBONE, SMOKE_CROP, SMOKE_BATCH)
        backbone, options, crop, batch = REFERENCE[baseline]
        return backbone, options, self.args.crop or crop, self.args.batch or batch

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def reset_memory(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gib(self) -> float | None:
        if self.device.type != "cuda":
            return None
        return torch.cuda.max_memory_allocated(self.device) / 2**30

    # --- sections -----------------------------------------------------------------------------
    def train_steps(self, compile_mode: bool) -> None:
        """Each baseline's training step (forward, loss, backward, SGD step) in every variant."""
        targets = [b for b in self.args.baselines if not compile_mode or b in self.args.compile]
        for baseline in targets:
            backbone, options, crop, batch = self.setting(baseline)
            variants = [VARIANTS[-1]] if compile_mode else VARIANTS
            if self.args.smoke and not compile_mode:
                # fp32 NCHW and bf16 channels-last (and, once, fp32 without TF32) cover every code path
                variants = [VARIANTS[0], VARIANTS[-1]] + ([VARIANTS[1]] if baseline == "cam" else [])
            for label, dtype, channels_last in variants:
                row = Row("compile" if compile_mode else "train", f"{baseline} ({backbone})", f"{crop}x{batch}",
                          label, "channels-last" if channels_last else "NCHW",
                          self.args.compile_backend if compile_mode else "eager")
                if self.over_budget():
                    row.note = "skipped: time budget spent"
                    self.add(row)
                    continue
                self.reset_memory()
                try:
                    with tf32(label != "fp32-noTF32"):
                        row.images_per_s = self.train_rate(baseline, backbone, options, crop, batch, dtype,
                                                           channels_last, compile_mode)
                    row.peak_mem_gib = self.peak_gib()
                except Exception as exc:  # noqa: BLE001 - one failing variant (OOM, compile) must not stop the rest
                    row.note = failure(exc)
                finally:
                    if compile_mode:
                        torch._dynamo.reset()
                    self.reset_memory()
                self.add(row)

    def train_rate(self, baseline: str, backbone: str, options: dict, crop: int, batch: int,
                   dtype: torch.dtype | None, channels_last: bool, compile_mode: bool) -> float:
        model = make_model(baseline, backbone, options, self.device, channels_last)
        optimizer = build_sgd(model.baseline.param_groups(), 0.01, 1e-4, 0.9, False)
        net: Callable = model
        if compile_mode:
            net = torch.compile(model, backend=self.args.compile_backend)
        generator = torch.Generator(device=self.device).manual_seed(0)
        image = torch.randn(batch, 3, crop, crop, device=self.device, generator=generator)
        if channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        label = (torch.rand(batch, NUM_CLASSES, device=self.device, generator=generator) < 0.15).float()
        label[:, 0] = 1.0  # every image has a class, as in VOC
        # AMN trains on seed labels (its own stage makes them from CAMs): random ones cost the same to fit.
        seeds = torch.randint(0, NUM_CLASSES + 1, (batch, crop, crop), device=self.device, generator=generator)
        feeds_seeds = hasattr(model.baseline, "set_seed_targets")

        def step() -> None:
            if feeds_seeds:
                model.baseline.set_seed_targets(seeds)
            with autocast(self.device, dtype):
                total, _, _ = net(image, label)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()

        warmup = self.args.warmup + (self.args.compile_warmup if compile_mode else 0)
        return batch * self.args.steps / self.timed(step, warmup, self.args.steps)

    def timed(self, fn: Callable[[], Any], warmup: int, steps: int) -> float:
        """Seconds for ``steps`` calls of ``fn`` after ``warmup`` untimed ones (the device synchronised first)."""
        for _ in range(warmup):
            fn()
        self.sync()
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        self.sync()
        return time.perf_counter() - start

    def cam_generation(self) -> None:
        """CAM baseline, multi-scale x flip CAMs of same-size images, fp32 and bf16: one image per call against
        all of them in one call, with each scale's input made either from the normalised tensor (bilinear) or as
        the references and ``make_cams`` by default make it (uint8 image resized with PIL bicubic on the CPU,
        then normalised; included in the time). Where this checkout has no batched CAM API (``batch_cams``),
        the per-image loop alone is measured. The maps of one image per call and of the batch are compared."""
        backbone, options, _, _ = self.setting("cam")
        height, width = (24, 32) if self.args.smoke else (368, 496)  # about a VOC image
        count = 2 if self.args.smoke else self.args.cam_images
        api = cam_api()
        model = make_model("cam", backbone, options, self.device, channels_last=False).eval()
        rng = np.random.default_rng(0)
        uint8_images = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(count)]
        images = torch.stack([torch.from_numpy(normalize_image(image)) for image in uint8_images]).to(self.device)
        labels = torch.from_numpy((rng.random((count, NUM_CLASSES)) < 0.15).astype(np.float32)).to(self.device)
        labels[:, 0] = 1.0
        scales = CAM_SCALES[:2] if self.args.smoke else CAM_SCALES
        baseline = model.baseline
        paths: dict[tuple[str, str], Callable[[], list[torch.Tensor]] | None] = {
            ("tensor", "per-image"): lambda: [baseline.multiscale_cams(images[i:i + 1], labels[i], scales, True).cams
                                              for i in range(count)],
            ("tensor", "batched"): None if api is None else lambda: [
                r.cams for r in baseline.batch_cams(api.tensor_scaled_inputs(images, scales), labels, True)],
            ("reference", "per-image"): None if api is None else lambda: [
                baseline.batch_cams(api.scaled_inputs(uint8_images[i:i + 1], scales, "pil_bicubic", self.device),
                                    labels[i:i + 1], True)[0].cams for i in range(count)],
            ("reference", "batched"): None if api is None else lambda: [
                r.cams for r in baseline.batch_cams(api.scaled_inputs(uint8_images, scales, "pil_bicubic",
                                                                      self.device), labels, True)],
        }
        maps: dict[tuple[str, str, str], list[torch.Tensor]] = {}
        for dtype in (None, torch.bfloat16):
            for (inputs, calls), fn in paths.items():
                row = Row("cams", f"cam ({backbone}), {inputs} inputs", f"{height}x{width}x{count}", dtype_name(dtype),
                          "NCHW", "eager", note=f"{calls}; scales {list(scales)} x flip")
                if fn is None:
                    row.note = f"{calls}: no batched CAM API in this checkout (Baseline.batch_cams)"
                elif self.over_budget():
                    row.note = "skipped: time budget spent"
                else:
                    self.reset_memory()
                    try:
                        with torch.no_grad(), autocast(self.device, dtype):
                            seconds = self.timed(fn, self.args.warmup, self.args.cam_repeats)
                            maps[(dtype_name(dtype), inputs, calls)] = [m.float().cpu() for m in fn()]
                        row.images_per_s = count * self.args.cam_repeats / seconds
                        row.peak_mem_gib = self.peak_gib()
                    except Exception as exc:  # noqa: BLE001
                        row.note = f"{calls}: {failure(exc)}"
                self.add(row)
        for dtype in ("fp32", "bf16"):
            for inputs in ("tensor", "reference"):
                one, batch = maps.get((dtype, inputs, "per-image")), maps.get((dtype, inputs, "batched"))
                if one and batch:
                    diff = max(float((a - b).abs().max()) for a, b in zip(one, batch))
                    self.add(Row("cams", f"batched vs per-image, {inputs} inputs", "", dtype, "", "",
                                 note=f"max |diff| of maps {diff:.2e}"))
        del model
        self.reset_memory()

    def ddp_step(self) -> None:
        """One process group at world size 1 (NCCL on GPU, gloo on CPU) and the trainer's DDP wrapper around the
        CAM model: DDP's gradient all-reduce and the collectives the trainer uses all run through the backend."""
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

        backend = "nccl" if self.device.type == "cuda" else "gloo"
        backbone, options, crop, batch = self.setting("cam")
        row = Row("ddp", f"cam ({backbone}) DDP, {backend} x1", f"{crop}x{batch}",
                  "bf16" if self.device.type == "cuda" else "fp32", "channels-last", "eager")
        if self.over_budget():
            row.note = "skipped: time budget spent"
            self.add(row)
            return
        os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0",
                           "WORLD_SIZE": "1", "LOCAL_RANK": "0"})
        self.reset_memory()
        try:
            kwargs = {"device_id": self.device} if backend == "nccl" else {}
            dist.init_process_group(backend=backend, rank=0, world_size=1, **kwargs)
            model = make_model("cam", backbone, options, self.device, channels_last=True)
            net = DistributedDataParallel(model, device_ids=[self.device.index] if backend == "nccl" else None)
            optimizer = build_sgd(model.baseline.param_groups(), 0.01, 1e-4, 0.9, False)
            image = torch.randn(batch, 3, crop, crop, device=self.device).contiguous(memory_format=torch.channels_last)
            label = (torch.rand(batch, NUM_CLASSES, device=self.device) < 0.15).float()
            dtype = torch.bfloat16 if self.device.type == "cuda" else None

            def step() -> None:
                with autocast(self.device, dtype):
                    total, _, _ = net(image, label)
                flag = torch.tensor([0.0 if bool(torch.isfinite(total.detach())) else 1.0], device=self.device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # the trainer's non-finite-loss check
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                optimizer.step()

            seconds = self.timed(step, self.args.warmup, self.args.steps)
            gathered: list[Any] = [None]
            dist.all_gather_object(gathered, {"rank": 0})  # what the trainer's checkpoint RNG gather does
            dist.barrier()
            row.images_per_s = batch * self.args.steps / seconds
            row.peak_mem_gib = self.peak_gib()
            version = torch.cuda.nccl.version() if backend == "nccl" else ""
            version = ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
            row.note = f"{backend} {version}".strip() + "; all_reduce, all_gather_object, barrier ok"
        except Exception as exc:  # noqa: BLE001
            row.note = failure(exc)
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
            for key in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
                os.environ.pop(key, None)
            self.reset_memory()
        self.add(row)

    def trainer_run(self) -> None:
        """`wsss train` under torchrun on the synthetic benchmark: the trainer's own device, autocast, data loader
        and checkpoint path. One process per GPU up to --trainer-gpus (with 2 or more, DDP over NCCL)."""
        gpus = min(self.args.trainer_gpus, torch.cuda.device_count()) if self.device.type == "cuda" else 1
        smoke = self.args.smoke
        backbone, options, _, _ = self.setting("cam")
        crop, batch, steps = (32, 2, 2) if smoke else (256, 16, self.args.trainer_steps)
        row = Row("trainer", f"wsss train, cam ({backbone}), torchrun x{gpus}", f"{crop}x{batch}",
                  "bf16" if not smoke else "fp32", "NCHW", "eager")
        if self.over_budget():
            row.note = "skipped: time budget spent"
            self.add(row)
            return
        with tempfile.TemporaryDirectory(prefix="wsss-gpu-check-") as scratch:
            data, run_dir = Path(scratch) / "synthetic_voc", Path(scratch) / "run"
            size = 48 if smoke else 320
            n_train = 8 if smoke else batch * gpus * (steps + 2)
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
                   "WSSS_PROGRESS": "0"}
            synth = [sys.executable, "-m", CLI, "data", "synth", "--out", str(data), "--n-train",
                     str(n_train), "--n-aug-extra", "0", "--n-val", "2", "--size", str(size), "--classes", "6"]
            overrides = {"data.root": str(data), "data.train_split": "train", "data.crop": crop,
                         "data.num_workers": 0 if smoke else 8, "model.baseline": "cam", "model.backbone": backbone,
                         "model.backbone_options": json.dumps(options), "train.batch_size": batch,
                         "train.max_steps": steps, "train.epochs": 1000, "train.log_every": 1000,
                         "train.checkpoint_every": 100000,
                         "train.device": "cpu" if smoke else "cuda", "train.amp": "bf16"}  # CPU runs fp32
            train = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
                     "-m", CLI, "train", "--run-dir", str(run_dir), "--resume", "never"]
            for key, value in overrides.items():
                train += ["--set", f"{key}={value}"]
            start = time.perf_counter()
            try:
                for command in (synth, train):
                    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                                          timeout=max(30.0, self.deadline - time.monotonic() + 120))
                    if done.returncode != 0:
                        raise RuntimeError(f"`{' '.join(command[2:7])} …` exited {done.returncode}: "
                                           + error_line(done.stderr))
                records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
                warm = min(3, len(records) - 1)  # the first steps autotune cuDNN and start the loader
                row.images_per_s = statistics.median(r["images_per_s"] for r in records if r["step"] > warm)
                status = json.loads((run_dir / "status.json").read_text())["status"]
                row.note = (f"{len(records)} steps, status {status}; median of steps {warm + 1}.. (data loading "
                            f"included); {time.perf_counter() - start:.0f} s with start-up")
            except Exception as exc:  # noqa: BLE001
                row.note = failure(exc)
        self.add(row)


# --- helpers ------------------------------------------------------------------------------------
def make_model(baseline: str, backbone: str, options: dict, device: torch.device, channels_last: bool):
    cfg = load_run_config(None, [f"model.baseline={baseline}", f"model.backbone={backbone}",
                                 f"model.backbone_options={json.dumps(options)}"])
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.addons, NUM_CLASSES).to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def cam_api() -> Any:
    """The module holding the batched CAM path's input makers (``scaled_inputs``, ``tensor_scaled_inputs``), or
    None where this checkout has none (then only the per-image loop is measured)."""
    from wsss_core.baselines import base

    names = ("scaled_inputs", "tensor_scaled_inputs")
    return base if hasattr(base.Baseline, "batch_cams") and all(hasattr(base, n) for n in names) else None


@contextmanager
def tf32(allowed: bool) -> Iterator[None]:
    """TF32 for cuDNN convolutions and CUDA matmuls as torch's defaults have it (allowed), or off."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    if not allowed:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def dtype_name(dtype: torch.dtype | None) -> str:
    return "bf16" if dtype == torch.bfloat16 else "fp32"


def failure(exc: BaseException) -> str:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return "out of GPU memory"
    line = (str(exc).strip().splitlines() or [""])[0][:200]
    return f"failed: {type(exc).__name__}: {line}"


def error_line(stderr: str) -> str:
    """The line of a child's stderr that names its error (torchrun frames it in rows of '=')."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip() and set(line.strip()) != {"="}]
    named = [line for line in lines if "Error" in line or "error:" in line]
    return (named or lines or ["(no stderr)"])[-1][:300]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def environment(device: torch.device) -> dict[str, Any]:
    info = {"host": platform.node(), "python": platform.python_version(), "torch": torch.__version__,
            "device": str(device), "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update({"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                     "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                     "gpus": torch.cuda.device_count()})
    else:
        info["cpu_threads"] = torch.get_num_threads()
    return info


def summary_lines(rows: list[Row]) -> list[str]:
    """bf16 against fp32 NCHW per baseline (best bf16 variant, compiled included), and the CAM target."""
    lines = []
    for baseline in REFERENCE:
        def rate(pred) -> float | None:
            values = [r.images_per_s for r in rows if r.what.startswith(baseline + " (") and r.images_per_s
                      and r.section in ("train", "compile") and pred(r)]
            return max(values) if values else None

        fp32 = rate(lambda r: r.dtype == "fp32" and r.layout == "NCHW")
        strict = rate(lambda r: r.dtype == "fp32-noTF32")
        bf16 = rate(lambda r: r.dtype == "bf16")
        if fp32 and bf16:
            line = (f"{baseline}: best bf16 {bf16:.1f} img/s vs fp32 NCHW {fp32:.1f} img/s (torch default, TF32 "
                    f"convolutions) = {bf16 / fp32:.2f}x")
            if strict:
                line += f"; vs fp32 without TF32 {strict:.1f} img/s = {bf16 / strict:.2f}x"
            if baseline == "cam":
                line += f" (target bf16 >= 2x fp32 default: {'met' if bf16 / fp32 >= 2 else 'NOT met'})"
            lines.append(line)
    return lines


def markdown(info: dict[str, Any], rows: list[Row]) -> str:
    device = info.get("gpu", info["device"])
    lines = [f"device: {device}; torch {info['torch']}" + (f", CUDA {info['cuda']}, cuDNN {info['cudnn']}"
                                                            if "cuda" in info else ""),
             f"TF32: matmul {info['tf32_matmul']}, cuDNN convolutions {info['tf32_cudnn']}; cuDNN benchmark "
             f"{info['cudnn_benchmark']}", "",
             "| section | model | shape | dtype | layout | compile | images/s | peak GiB | note |",
             "|---|---|---|---|---|---|---:|---:|---|"]
    for r in rows:
        rate = "" if r.images_per_s is None else f"{r.images_per_s:.1f}"
        mem = "" if r.peak_mem_gib is None else f"{r.peak_mem_gib:.2f}"
        lines.append(f"| {r.section} | {r.what} | {r.shape} | {r.dtype} | {r.layout} | {r.compile} | {rate} | {mem} "
                     f"| {r.note} |")
    lines += [""] + summary_lines(rows)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny sizes, every section once (for tests)")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--baselines", nargs="+", choices=tuple(REFERENCE), default=list(REFERENCE))
    parser.add_argument("--crop", type=int, default=None, help="override every baseline's reference crop")
    parser.add_argument("--batch", type=int, default=None, help="override every baseline's reference batch")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (cuDNN autotuning)")
    parser.add_argument("--compile", nargs="*", choices=tuple(REFERENCE), default=["cam"],
                        help="baselines also timed under torch.compile in bf16 channels-last (default: cam)")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend (default inductor)")
    parser.add_argument("--compile-warmup", type=int, default=2, help="extra untimed steps when compiled")
    parser.add_argument("--cam-images", type=int, default=8, help="images per CAM-generation measurement")
    parser.add_argument("--cam-repeats", type=int, default=2, help="timed passes over those images")
    parser.add_argument("--trainer-gpus", type=int, default=1, help="torchrun processes for the trainer run")
    parser.add_argument("--trainer-steps", type=int, default=20, help="optimiser steps of the trainer run")
    parser.add_argument("--budget-s", type=float, default=360.0,
                        help="start no new measurement after this many seconds (default 360)")
    parser.add_argument("--no-cudnn-benchmark", action="store_true", help="leave cuDNN autotuning off")
    parser.add_argument("--out-dir", default=os.environ.get("OUT") or None,
                        help="write gpu_check.json / gpu_check.md here (default $OUT)")
    args = parser.parse_args(argv)

    if args.smoke:
        device = torch.device("cpu")
        args.steps, args.warmup, args.compile_warmup, args.cam_repeats = 1, 1, 0, 1
        if args.compile_backend == "inductor":
            args.compile_backend = "eager"  # dynamo's tracing and the guard, without a C++ build on CPU
    elif not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible (torch " + torch.__version__ + "); nothing to measure. Run it on a "
              "machine with a CUDA GPU, or pass --smoke to run every section once on CPU at tiny sizes.")
        return 0
    else:
        device = torch.device("cuda", 0)
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = not args.no_cudnn_benchmark

    check = Check(args, device)
    print(f"[gpu_check] {json.dumps(check.info)}", file=sys.stderr, flush=True)
    if "train" in args.sections:
        check.train_steps(compile_mode=False)
    if "compile" in args.sections and args.compile:
        check.train_steps(compile_mode=True)
    if "cams" in args.sections:
        check.cam_generation()
    if "ddp" in args.sections:
        check.ddp_step()
    if "trainer" in args.sections:
        check.trainer_run()
    check.write()
    print(markdown(check.info, check.rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
