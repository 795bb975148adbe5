"""AMN's components: the configs of its links, CRF-confident seeds, the AMN trainer and its activation maps.

An AMN trial is one run config (``model.baseline: amn``); :func:`amn_chain` splits it into the configs of
its links. The trial's data, backbone, optim/train settings and add-ons drive the CAM classifier stage
(so an AMN trial's classifier is trained exactly like a CAM trial's); ``model.options`` (AmnOptions) holds
the seed settings, the AMN network and its training (Adam 5e-6 / 1e-4 by default).

* :func:`make_seeds`: CRF-confident labels (fg 0.30 / bg 0.05, 255 uncertain) as PNGs, for AMN's training
  split and the split its maps are made for.
* :func:`train_amn`: the AMN network (``chain.amn``) trained on the seeds (PCL only).
* :func:`make_amn_cams`: AMN's activation maps into a CAM store (fg maps + bg map).

The stages that run them, their keys and their order are in ``wsss_core/pipeline`` (``chains.py``: CAM
training → CAMs → seeds → AMN training → maps → eval), run by the one trial runner like every baseline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..addons import ADDONS
from ..baselines.amn import AmnBaseline, AmnOptions, AmnSeedOptions
from ..baselines.base import ParamGroup
from ..baselines.compose import build_model
from ..config import from_dict, stable_hash, to_dict
from ..data import build_dataset
from ..data.base import MaskFolderDataset, read_mask_png
from ..data.loading import build_loader
from ..data.transforms import train_transform
from ..errors import ConfigError, DataError
from ..evaluation.crf import RefineConfig
from .config import RunConfig, run_config_from_dict, stage_slice
from .distributed import barrier, broadcast_object, setup_distributed
from .metrics import JsonlSink, MetricsSink, NullSink
from .trainer import Trainer

# --- the chain's configs ------------------------------------------------------------------------
@dataclass
class AmnChain:
    """The configs of one AMN trial's links."""

    trial: RunConfig  # the trial as given (model.baseline amn)
    cam: RunConfig  # the CAM classifier: trained, then CAMs for the AMN training split
    seeds: AmnSeedOptions
    amn: RunConfig  # the AMN network: trained on the seeds, maps for trial.cams.split, evaluated

    def refine_config(self) -> RefineConfig:
        s = self.seeds
        return RefineConfig(mode="confident", fg_threshold=s.fg_threshold, bg_threshold=s.bg_threshold,
                            gt_prob=s.gt_prob, confident_crf=s.crf)


def amn_options(cfg: RunConfig) -> AmnOptions:
    return from_dict(AmnOptions, cfg.model.options, "model.options")


def amn_chain(cfg: RunConfig, where: str = "config") -> AmnChain:
    """Split an AMN trial config into its CAM-stage and AMN-network configs."""
    if cfg.model.baseline != "amn":
        raise ConfigError(f"{where}: model.baseline: the AMN chain needs 'amn', got {cfg.model.baseline!r}")
    opts = amn_options(cfg)
    plain = to_dict(cfg)

    cam = dict(plain, model=dict(plain["model"], baseline=opts.cam_stage.baseline, options=opts.cam_stage.options),
               cams=dict(plain["cams"], split=cfg.data.train_split))

    pooling = {name for name in ADDONS.names() if ADDONS.get(name).replaces_pooling}
    network_addons = [a for a in plain["addons"] if a["name"] not in pooling] if opts.addons_on_network else []
    t = opts.training
    optim = dict(plain["optim"], lr=t.lr, weight_decay=t.weight_decay, momentum_quirk=False,
                 poly_power=0.0 if t.optimizer == "adam" else plain["optim"]["poly_power"])  # AMN: constant lr
    train = dict(plain["train"], epochs=t.epochs, batch_size=t.batch_size or cfg.train.batch_size)
    amn = dict(plain, addons=network_addons, optim=optim, train=train)
    return AmnChain(cfg, run_config_from_dict(cam, f"{where} (AMN's CAM stage)"), opts.seeds,
                    run_config_from_dict(amn, f"{where} (AMN network)"))


def seed_splits(chain: AmnChain) -> list[str]:
    """Seeds are needed for AMN's training split and for the split its maps are made for."""
    return list(dict.fromkeys([chain.amn.data.train_split, chain.amn.cams.split]))


# --- seeds -----------------------------------------------------------------------------
def make_seeds(cfg: RunConfig, cam_store_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """CRF-confident seed PNGs (0 bg, class + 1, 255 uncertain) of the AMN trial ``cfg`` from the CAM store
    ``cam_store_dir``, for every split in :func:`seed_splits`, into ``out_dir``. Resumable: PNGs already
    written are kept. Runs in this process (CRF on ``cfg.eval.workers`` worker processes)."""
    from ..evaluation.crf import refine_cams

    chain = amn_chain(cfg)
    summary: dict[str, Any] = {"seeds_dir": str(out_dir), "splits": {}}
    for split in seed_splits(chain):
        result = refine_cams(cam_store_dir, chain.amn.data.root, split, out_dir, chain.refine_config(),
                             workers=cfg.eval.workers)
        summary["splits"][split] = {k: result[k] for k in ("num_images", "written", "skipped")}
    return summary


SEED_HINT = "run the seeds stage (make_seeds) for this split first"


def read_seed(seeds_dir: str | Path, image_id: str, shape: tuple[int, int]) -> np.ndarray:
    """One image's seed label (H × W uint8), checked against the image size."""
    return read_mask_png(seeds_dir, image_id, shape, "seed label", SEED_HINT)


def seed_label_dataset(dataset: Any, seeds_dir: str | Path) -> MaskFolderDataset:
    """``dataset`` with each sample's seed label as ``mask`` (so the augmentations keep it aligned)."""
    return MaskFolderDataset(dataset, seeds_dir, "seed label", SEED_HINT)


# --- AMN training ----------------------------------------------------------------------
def build_adam(groups: list[ParamGroup], lr: float, weight_decay: float) -> torch.optim.Adam:
    """Adam with AMN's groups (backbone 1×, head and label encoder ``head_lr_mult``×), L2 weight decay."""
    param_groups = [{"params": g.params, "lr": lr * g.lr_mult, "initial_lr": lr * g.lr_mult,
                     "weight_decay": weight_decay * g.weight_decay_mult, "name": g.name}
                    for g in groups if g.params]
    return torch.optim.Adam(param_groups, lr=lr)


def cam_stage_backbone(cam_run_dir: str | Path) -> dict[str, torch.Tensor]:
    """The trained CAM classifier's backbone weights (keys relative to the backbone)."""
    from .checkpoint import load_model_weights

    weights, _ = load_model_weights(cam_run_dir)
    prefix = "baseline.backbone."
    return {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}


class AmnTrainer(Trainer):
    """The standard trainer (DDP, checkpoints, exact resume) with seed labels as the AMN targets, Adam, and
    the backbone optionally initialised from the CAM stage."""

    def __init__(self, cfg: RunConfig, seeds_dir: str | Path, run_dir: str | Path, cam_run_dir: str | Path | None,
                 sink: MetricsSink | None = None, resume: str = "auto", key: str | None = None):
        chain = amn_chain(cfg)
        super().__init__(chain.amn, run_dir, sink=sink, resume=resume)
        self.seeds_dir = Path(seeds_dir)
        self.cam_run_dir = Path(cam_run_dir) if cam_run_dir is not None else None
        # The checkpoint's identity includes the seeds (the pipeline passes the amn_train stage key).
        self.key = key or stable_hash({"seeds": str(Path(seeds_dir).resolve()),
                                       "amn": stage_slice(chain.amn, "train")})

    def _build(self) -> None:
        super()._build()
        cfg = self.cfg
        self.loader = build_loader(seed_label_dataset(self.dataset, self.seeds_dir), cfg.train.batch_size,
                                   sampler=self.sampler, num_workers=cfg.data.num_workers, seed=cfg.train.seed,
                                   transform=train_transform(cfg.data.augment or "amn", cfg.data.crop))
        baseline = self.model.baseline
        assert isinstance(baseline, AmnBaseline)
        training = baseline.options.training
        init = training.init
        if init == "auto":
            init = "pretrained" if cfg.model.pretrained else "cam_stage"
        if init == "cam_stage":
            if self.cam_run_dir is None:
                raise ConfigError("model.options.training.init: 'cam_stage' needs the CAM stage's run dir")
            baseline.backbone.load_state_dict(cam_stage_backbone(self.cam_run_dir))
        if training.optimizer == "adam":
            self.optimizer = build_adam(baseline.param_groups(), cfg.optim.lr, cfg.optim.weight_decay)

    def _step(self, batch: dict[str, Any]):
        if batch.get("mask") is None:
            raise DataError("AMN training batch has no seed labels")
        self.model.baseline.set_seed_targets(batch["mask"].to(self.env.device, non_blocking=True))
        return super()._step(batch)


def train_amn(cfg: RunConfig, seeds_dir: str | Path, run_dir: str | Path, cam_run_dir: str | Path | None = None,
              sink: MetricsSink | None = None, resume: str = "auto", key: str | None = None) -> dict[str, Any]:
    """Train the AMN network of trial ``cfg`` on the seeds in ``seeds_dir`` into ``run_dir`` (checkpoints
    under ``run_dir/checkpoints``), in the current process group like :func:`train`. ``cam_run_dir``: the
    CAM stage's run (its backbone initialises AMN's when ``training.init`` asks for it)."""
    return AmnTrainer(cfg, seeds_dir, run_dir, cam_run_dir, sink=sink, resume=resume, key=key).run()


# --- AMN activation maps ---------------------------------------------------------------
def make_amn_cams(cfg: RunConfig, amn_run_dir: str | Path, seeds_dir: str | Path, out_dir: str | Path,
                  sink: MetricsSink | None = None) -> dict[str, Any]:
    """AMN's activation maps of ``cfg.cams.split`` into the CAM store ``out_dir`` (fg maps + bg map), with the
    network trained in ``amn_run_dir`` and the CAM-stage seeds in ``seeds_dir``; sharded over the ranks of
    the current process group, resumable (images already stored are skipped)."""
    from ..evaluation import CamStore
    from .cams import write_store_shard
    from .checkpoint import load_model_weights

    chain = amn_chain(cfg)
    net_cfg, out_dir = chain.amn, Path(out_dir)
    env = setup_distributed(net_cfg.train.device)
    sink = (sink or JsonlSink(out_dir, stage="amn_maps")) if env.is_main else NullSink()
    sink.set_status("running")
    dataset = build_dataset(net_cfg.data.dataset, net_cfg.data.root, net_cfg.cams.split)
    weights, meta = load_model_weights(amn_run_dir)
    model = build_model(net_cfg.model, net_cfg.addons, dataset.num_classes)
    model.load_state_dict(weights)
    model.to(env.device).eval()
    if env.is_main:
        CamStore.create(out_dir, dataset.num_classes, class_names=list(dataset.class_names),
                        meta={"amn_train_key": meta["stage_key"], "split": net_cfg.cams.split,
                              "kind": "amn activation maps"})
    barrier(env)

    def infer(samples: list[dict], inputs: Any, labels: torch.Tensor) -> Any:
        seeds = np.stack([read_seed(seeds_dir, s["id"], s["image"].shape[:2]) for s in samples])
        return model.baseline.batch_cams(inputs, labels, net_cfg.cams.flip, net_cfg.cams.upsample,
                                         seeds=torch.from_numpy(seeds).to(env.device))

    write_store_shard(CamStore(out_dir), dataset, env, net_cfg, infer, desc="amn maps")
    sink.set_status("finished")
    return broadcast_object(env, {"cam_store": str(out_dir), "split": net_cfg.cams.split})
