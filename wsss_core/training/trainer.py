"""The training recipe: data → composed model (baseline + add-ons) → DDP → SGD/poly → checkpoints.

``train(cfg, run_dir)`` runs inside whatever process group the environment describes (torchrun, Ray
Train, submitit, :func:`~wsss_core.training.launch.launch_local`) or as a single process. Resuming
from ``<run_dir>/checkpoints/last.pt`` replays the exact same batches and random draws, so the final
weights equal those of an uninterrupted run.
"""

from __future__ import annotations

import os
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Sampler

from ..baselines.compose import WsssModel, build_model
from ..config import flatten, to_dict
from ..data import build_dataset
from ..data.loading import build_loader, validate_dataset
from ..data.transforms import train_transform
from ..errors import ConfigError, TrainingError
from .checkpoint import capture_rng, checkpoint_path, load_checkpoint, restore_rng, save_checkpoint
from .config import RunConfig, stage_key
from .distributed import DistEnv, all_reduce_flag, barrier, gather_objects, setup_distributed
from .metrics import JsonlSink, MetricsSink, NullSink, read_status
from .optim import build_sgd, set_poly_lr

# Test hook: SIGKILL this process right after the given optimiser step (a real crash, at a known point).
KILL_AFTER_STEP_ENV = "WSSS_TEST_KILL_AFTER_STEP"


class RankShardSampler(Sampler):
    """Seeded permutation per epoch, trimmed to whole global batches and dealt round-robin to ranks.

    Rank r of W takes perm[r::W]; with per-rank batch B, global batch k is perm[kBW:(k+1)BW] split
    across ranks, the same images a single process with batch B·W sees. ``skip_batches`` resumes
    mid-epoch.
    """

    def __init__(self, length: int, batch_size: int, rank: int, world_size: int, seed: int):
        self.length, self.batch_size = length, batch_size
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.epoch = 0
        self.skip_batches = 0

    @property
    def batches_per_epoch(self) -> int:
        return self.length // (self.batch_size * self.world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.skip_batches) * self.batch_size

    def __iter__(self) -> Iterator[int]:
        usable = self.batches_per_epoch * self.batch_size * self.world_size
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.length)[:usable]
        mine = order[self.rank::self.world_size]
        return iter(mine[self.skip_batches * self.batch_size:].tolist())


@dataclass
class Position:
    """Where the run is: optimiser steps done, current epoch and batches done within it."""

    step: int = 0
    epoch: int = 0
    batch: int = 0


def derived_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def seed_process(seed: int, rank: int, addons: list[Any]) -> None:
    """Per-rank streams for dropout, numpy, python and each add-on (model init is seeded separately)."""
    import random

    torch.manual_seed(derived_seed(seed, rank, 1))
    np.random.seed(derived_seed(seed, rank, 2))
    random.seed(derived_seed(seed, rank, 3))
    for index, addon in enumerate(addons):
        addon.seed(derived_seed(seed, rank, 100 + index))


def write_run_config(cfg: RunConfig, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".config.yaml.{os.getpid()}.tmp"
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    os.replace(tmp, run_dir / "config.yaml")


def _augmentation(cfg: RunConfig) -> str:
    if cfg.data.augment is not None:
        return cfg.data.augment
    return cfg.model.baseline if cfg.model.baseline in ("cam", "seam", "amn") else "cam"


def _plan_steps(cfg: RunConfig, batches_per_epoch: int, dataset_size: int, env: DistEnv) -> int:
    if batches_per_epoch < 1:
        raise ConfigError(f"train.batch_size: {cfg.train.batch_size} × {env.world_size} process(es) is more than "
                          f"the {dataset_size} images of split {cfg.data.train_split!r}")
    total = cfg.train.epochs * batches_per_epoch
    return min(total, cfg.train.max_steps) if cfg.train.max_steps is not None else total


def _format_terms(terms: dict[str, torch.Tensor]) -> str:
    return ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items())


class Trainer:
    """One training run in one process (one DDP rank)."""

    def __init__(self, cfg: RunConfig, run_dir: str | Path, sink: MetricsSink | None = None, resume: str = "auto"):
        if resume not in ("auto", "never"):
            raise ConfigError(f"resume: {resume!r} is not valid; valid choices: auto, never")
        self.cfg, self.run_dir, self.resume = cfg, Path(run_dir), resume
        self.env = setup_distributed(cfg.train.device)
        self.key = stage_key(cfg, "train")
        if self.env.is_main:
            self.sink: MetricsSink = sink or JsonlSink(self.run_dir, print_every=cfg.train.log_every)
        else:
            self.sink = NullSink()

    # --- setup ----------------------------------------------------------------------------------
    def _build(self) -> None:
        cfg, env = self.cfg, self.env
        self.dataset = build_dataset(cfg.data.dataset, cfg.data.root, cfg.data.train_split)
        if env.is_main:
            validate_dataset(self.dataset)
        self.sampler = RankShardSampler(len(self.dataset), cfg.train.batch_size, env.rank, env.world_size,
                                        cfg.train.seed)
        self.loader = build_loader(self.dataset, cfg.train.batch_size, sampler=self.sampler,
                                   num_workers=cfg.data.num_workers, seed=cfg.train.seed,
                                   transform=train_transform(_augmentation(cfg), cfg.data.crop))
        self.total_steps = _plan_steps(cfg, self.sampler.batches_per_epoch, len(self.dataset), env)
        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        self.model: WsssModel = build_model(cfg.model, cfg.addons, self.dataset.num_classes).to(env.device)
        self.model.train()
        seed_process(cfg.train.seed, env.rank, self.model.addons)
        o = cfg.optim
        self.optimizer = build_sgd(self.model.baseline.param_groups(), o.lr, o.weight_decay, o.momentum,
                                   o.momentum_quirk)
        self.position = Position()
        self.net = self.model
        if env.distributed:
            ids = [env.device.index] if env.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)

    def _maybe_resume(self) -> bool:
        """Load the last checkpoint if there is one for this config; True if the run is already done."""
        path = checkpoint_path(self.run_dir)
        if self.resume == "never" or not path.is_file():
            return False
        state = load_checkpoint(path)
        if state.get("stage_key") != self.key:
            raise ConfigError(f"{self.run_dir}: holds a run of a different config (training key "
                              f"{state.get('stage_key')}, this config {self.key}); use another --run-dir or "
                              f"--resume never")
        if state["world_size"] != self.env.world_size:
            raise ConfigError(f"{path}: written by {state['world_size']} process(es), resuming with "
                              f"{self.env.world_size}; an exact resume needs the same --nproc")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.position = Position(**state["position"])
        restore_rng(state["rng"][self.env.rank], self.model.addons)
        return bool(state.get("finished"))

    def _save(self, finished: bool = False) -> None:
        rng = gather_objects(self.env, capture_rng(self.model.addons))
        if not self.env.is_main:
            return
        save_checkpoint(checkpoint_path(self.run_dir), {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "position": vars(self.position).copy(), "rng": rng, "world_size": self.env.world_size,
            "total_steps": self.total_steps, "stage_key": self.key, "finished": finished,
        })

    # --- loop -----------------------------------------------------------------------------------
    def _autocast(self):
        if self.env.device.type == "cuda" and self.cfg.train.amp == "bf16":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def _step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        lr = set_poly_lr(self.optimizer, self.position.step, self.total_steps, self.cfg.optim.poly_power)
        image = batch["image"].to(self.env.device, non_blocking=True)
        label = batch["label"].to(self.env.device, non_blocking=True)
        with self._autocast():
            total, terms, _ = self.net(image, label)
        if all_reduce_flag(self.env, not bool(torch.isfinite(total.detach()))):
            raise TrainingError(f"step {self.position.step + 1}: non-finite loss {float(total.detach())} "
                                f"(terms: {_format_terms(terms)}); lower optim.lr or check the data")
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        return total.detach(), {"lr": torch.tensor(lr), **{k: v.detach() for k, v in terms.items()}}

    def _log(self, total: torch.Tensor, terms: dict[str, torch.Tensor], seconds: float) -> None:
        images = self.cfg.train.batch_size * self.env.world_size
        metrics = {"loss": float(total), **{k: float(v) for k, v in terms.items()},
                   "images_per_s": images / max(seconds, 1e-9), "epoch": float(self.position.epoch)}
        self.sink.log_metrics(metrics, self.position.step)

    def _run_epochs(self) -> None:
        pos, steps_per_epoch = self.position, self.sampler.batches_per_epoch
        kill_after = int(os.environ.get(KILL_AFTER_STEP_ENV, "0"))
        while pos.step < self.total_steps:
            if pos.batch >= steps_per_epoch:
                pos.epoch, pos.batch = pos.epoch + 1, 0
            self.sampler.skip_batches = pos.batch
            self.loader.set_epoch(pos.epoch)
            tick = time.perf_counter()
            for batch in self.loader:
                total, terms = self._step(batch)
                pos.step, pos.batch = pos.step + 1, pos.batch + 1
                self._log(total, terms, time.perf_counter() - tick)
                tick = time.perf_counter()
                at_end = pos.batch == steps_per_epoch or pos.step == self.total_steps
                if at_end or pos.step % self.cfg.train.checkpoint_every == 0:
                    self._save(finished=pos.step == self.total_steps)
                if kill_after and pos.step == kill_after:
                    os.kill(os.getpid(), signal.SIGKILL)
                if pos.step == self.total_steps:
                    break

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        if self.env.is_main:
            write_run_config(cfg, self.run_dir)
            if self.resume == "never":
                (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)
        try:
            self._build()
            done = self._maybe_resume()
            if self.env.is_main:
                self.sink.log_params({"stage_key": self.key, "world_size": self.env.world_size,
                                      "total_steps": self.total_steps, **flatten(to_dict(cfg))})
                self.sink.set_status("finished" if done else "running")
            if not done:
                start = time.perf_counter()
                resumed_at = self.position.step
                self._run_epochs()
                elapsed = time.perf_counter() - start
            barrier(self.env)
        except Exception as exc:
            line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self.sink.set_status("failed", f"{type(exc).__name__}: {line}")
            raise
        summary = {"run_dir": str(self.run_dir), "stage_key": self.key, "steps": self.position.step,
                   "total_steps": self.total_steps, "world_size": self.env.world_size,
                   "checkpoint": str(checkpoint_path(self.run_dir)), "resumed": self.position.step > 0 and done}
        if not done:
            steps_run = self.position.step - resumed_at
            summary["images_per_s"] = steps_run * cfg.train.batch_size * self.env.world_size / max(elapsed, 1e-9)
            summary["resumed_from_step"] = resumed_at
        self.sink.set_status("finished")
        return summary


def train(cfg: RunConfig, run_dir: str | Path, sink: MetricsSink | None = None, resume: str = "auto") -> dict:
    """Train ``cfg`` into ``run_dir`` (resuming its last checkpoint when ``resume='auto'``); rank 0's
    summary (steps, images/s, checkpoint path) is returned on every rank."""
    return Trainer(cfg, run_dir, sink=sink, resume=resume).run()


def is_finished(run_dir: str | Path) -> bool:
    status = read_status(run_dir) or {}
    return status.get("stages", {}).get("train", {}).get("status") == "finished"


__all__ = ["train", "Trainer", "RankShardSampler", "is_finished", "KILL_AFTER_STEP_ENV"]
