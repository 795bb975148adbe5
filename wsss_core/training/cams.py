"""CAM generation: the trained model's multi-scale × flip CAMs for a split, written to the run's CamStore
(sharded across DDP ranks), then scored over every threshold by rank 0.

Per image (see the baseline's ``batch_cams``): per scale the uint8 image resized with PIL bicubic and
normalised (``cams.resize``), ReLU(CAM), flipped map flipped back, upsampled to image size by the baseline's
reference rule (``cams.upsample``; IRN: stride-aligned then cropped), summed over scales, ground-truth classes
kept, each divided by its max + 1e-5. Images of one size go through the network together (``cams.batch_size``).
"""

from __future__ import annotations

import math
import shutil
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..baselines.base import CamResult, ScaledInputs, scaled_inputs
from ..baselines.compose import build_model
from ..data import build_dataset
from ..errors import CamStoreError
from ..evaluation import CamStore, evaluate_cams, write_eval_outputs
from ..progress import progress
from .checkpoint import load_model_weights
from .config import RunConfig, stage_key
from .distributed import DistEnv, barrier, broadcast_object, setup_distributed
from .metrics import JsonlSink, MetricsSink, NullSink

CAM_DIR = "cams"
EVAL_DIR = "eval"


def _prepare_store(env: DistEnv, path: Path, num_classes: int, class_names: list[str], meta: dict) -> None:
    """Rank 0 (re)creates the store; a store made by another model or CAM setting is replaced."""
    if env.is_main and path.exists():
        try:
            stale = CamStore(path).meta.get("cams_key") != meta["cams_key"]
        except CamStoreError:
            stale = True
        if stale:
            shutil.rmtree(path)
    if env.is_main:
        CamStore.create(path, num_classes, class_names=class_names, meta=meta)
    barrier(env)


def _inference_context(cfg: RunConfig, env: DistEnv):
    if env.device.type == "cuda":
        if cfg.train.amp == "bf16":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()
    # Every image has its own size: oneDNN builds a new conv primitive per shape (~0.3 s each, measured),
    # ten times slower than the plain CPU kernels here (bench/RESULTS.md, Training).
    return torch.backends.mkldnn.flags(enabled=False)


# Images waiting for same-size company before a batch is run anyway: this many batches' worth.
PENDING_BATCHES = 4

CamInfer = Callable[[list[dict], ScaledInputs, torch.Tensor], list[CamResult]]


def write_store_shard(store: CamStore, dataset: Any, env: DistEnv, cfg: RunConfig, infer: CamInfer,
                      desc: str) -> None:
    """This rank's share of ``dataset`` (images rank, rank + W, …) into ``store``. Images of one size are
    batched (up to ``cfg.cams.batch_size``, null: 1 on CPU, 8 on CUDA; a batch runs early when
    ``PENDING_BATCHES`` batches' worth of images wait), their per-scale inputs made as ``cfg.cams.resize``
    says; ``infer(samples, inputs, labels)`` gives one CamResult per sample. Images already stored (an interrupted earlier run) are skipped."""
    batch_size = cfg.cams.batch_size or (8 if env.device.type == "cuda" else 1)
    pending: dict[tuple[int, int], list[dict]] = {}

    def run(samples: list[dict]) -> None:
        inputs = scaled_inputs([s["image"] for s in samples], cfg.cams.scales, cfg.cams.resize, env.device)
        labels = torch.from_numpy(np.stack([np.asarray(s["label"], np.float32) for s in samples])).to(env.device)
        with _inference_context(cfg, env):
            results = infer(samples, inputs, labels)
        for sample, result in zip(samples, results):
            bg = None if result.bg is None else result.bg.float().cpu().numpy()
            store.write(sample["id"], np.asarray(result.keys, np.int64), result.cams.float().cpu().numpy(), bg=bg)

    mine = range(env.rank, len(dataset), env.world_size)
    for index in progress(mine, desc=f"{desc} rank {env.rank}", total=len(mine), unit="img",
                          disable=not env.is_main):
        sample = dataset.load(index)
        if sample["id"] in store:
            continue  # written by an earlier, interrupted run of the same model and settings
        size = sample["image"].shape[:2]
        pending.setdefault(size, []).append(sample)
        if len(pending[size]) == batch_size:
            run(pending.pop(size))
        elif sum(map(len, pending.values())) >= PENDING_BATCHES * batch_size:
            run(pending.pop(max(pending, key=lambda key: len(pending[key]))))
    for group in pending.values():
        run(group)
    barrier(env)


def write_cams(cfg: RunConfig, run_dir: Path, env: DistEnv, weights_dir: Path | None = None) -> Path:
    """This rank's share of the split (images rank, rank + W, …) into ``<run_dir>/cams``, with the model
    trained in ``weights_dir`` (default: ``run_dir`` itself)."""
    dataset = build_dataset(cfg.data.dataset, cfg.data.root, cfg.cams.split)
    weights, meta = load_model_weights(weights_dir or run_dir)
    model = build_model(cfg.model, cfg.addons, dataset.num_classes)
    model.load_state_dict(weights)
    model.to(env.device).eval()
    store_path = run_dir / CAM_DIR
    _prepare_store(env, store_path, dataset.num_classes, list(dataset.class_names),
                   {"train_key": meta["stage_key"], "cams_key": stage_key(cfg, "cams"), "split": cfg.cams.split})
    infer = lambda samples, inputs, labels: model.baseline.batch_cams(  # noqa: E731
        inputs, labels, cfg.cams.flip, cfg.cams.upsample)
    write_store_shard(CamStore(store_path), dataset, env, cfg, infer, desc="cams")
    barrier(env)
    return store_path


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """The scalars of an evaluation result (best threshold and mIoU, image count, …) for logs and trackers,
    nested mappings flattened one level (``best.miou`` → ``best_miou``)."""
    out: dict[str, Any] = {}
    for key, value in result.items():
        items = value.items() if isinstance(value, dict) else [(None, value)]
        for sub, item in items:
            if isinstance(item, (int, float, str, bool)) and not (isinstance(item, float) and math.isnan(item)):
                out[key if sub is None else f"{key}_{sub}"] = item
    return out


def score_cams(cfg: RunConfig, store: Path, out_dir: Path) -> tuple[dict[str, Any], dict[str, Path]]:
    """Every threshold of ``store`` scored on ``cfg.cams.split`` with ``cfg.eval``'s settings (grid, protocol,
    pred_255, workers), written into ``out_dir``: the one evaluation call of `wsss cams` and the pipeline."""
    result = evaluate_cams(store, cfg.data.root, cfg.cams.split,
                           thresholds=list(cfg.eval.thresholds) if cfg.eval.thresholds else None,
                           pred_255=cfg.eval.pred_255, workers=cfg.eval.workers, protocol=cfg.eval.protocol)
    return result, write_eval_outputs(result, out_dir)


def make_cams(cfg: RunConfig, run_dir: str | Path, sink: MetricsSink | None = None,
              weights_dir: str | Path | None = None, evaluate: bool = True) -> dict[str, Any]:
    """Write the CAMs of ``cfg.cams.split`` into ``<run_dir>/cams`` with the model trained in
    ``weights_dir`` (default ``run_dir``) and, unless ``evaluate`` is False (a sweep evaluates in a stage
    of its own), score them into ``<run_dir>/eval``; returns the summary on every rank."""
    run_dir = Path(run_dir)
    weights_dir = Path(weights_dir) if weights_dir is not None else None
    env = setup_distributed(cfg.train.device)
    sink = (sink or JsonlSink(run_dir, stage="cams")) if env.is_main else NullSink()
    summary: dict[str, Any] | None = None
    try:
        sink.set_status("running")
        store_path = write_cams(cfg, run_dir, env, weights_dir)
        summary = {"cam_store": str(store_path)}
        if env.is_main and evaluate:
            result, _ = score_cams(cfg, store_path, run_dir / EVAL_DIR)
            summary = {"cam_store": str(store_path), "eval_dir": str(run_dir / EVAL_DIR), **summarise(result)}
        summary = broadcast_object(env, summary)
    except Exception as exc:
        line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        sink.set_status("failed", f"{type(exc).__name__}: {line}")
        raise
    sink.set_status("finished")
    return summary
