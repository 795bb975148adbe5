"""AMN's pipeline as a chain of cached stages, each with explicit input and output folders.

An AMN trial is one run config (``model.baseline: amn``); :func:`amn_chain` splits it into the configs of
its links. The trial's data, backbone, optim/train settings and add-ons drive the CAM classifier stage
(so an AMN trial's classifier is trained exactly like a CAM trial's); ``model.options`` (AmnOptions) holds
the seed settings, the AMN network and its training (Adam 5e-6 / 1e-4 by default).

    cam_train → cam_cams → seeds → amn_train → amn_maps → amn_eval   (+ cam_eval: the CAM stage scored)

1. ``cam_train``: the CAM classifier (``chain.cam``), :func:`~wsss_core.training.train`.
2. ``cam_cams``: its CAMs for AMN's training split, :func:`~wsss_core.training.make_cams`.
3. ``seeds``: :func:`make_seeds`, CRF-confident labels (fg 0.30 / bg 0.05, 255 uncertain) as PNGs, for
   AMN's training split and the split its maps are made for.
4. ``amn_train``: :func:`train_amn`, the AMN network (``chain.amn``) trained on the seeds (PCL only).
5. ``amn_maps``: :func:`make_amn_cams`, AMN's activation maps into a CAM store (fg maps + bg map).
6. ``amn_eval``: :func:`evaluate_stage`, every threshold in one pass (channel 0 dropped); ``cam_eval``
   scores the CAM stage's CAMs on the same split (the robustness comparison CAM vs AMN of one trial).

Each stage's output folder is named by a key: the hash of its own config slice and its inputs' keys
(:func:`chain_keys`). Two AMN configs that differ only in AMN or seed settings share the CAM training key,
so a sweep trains the classifier once; configs that differ only in the AMN network share the seeds too.
:func:`amn_chain_stages` lists the stages (name, key, inputs, output folder, run function) and
:func:`run_amn_chain` runs them in order, reusing every stage whose output is complete;
:func:`planner_stage_definitions` gives the same stages in the shape of ``launchers.stages.StageDef``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from ..addons import ADDONS
from ..baselines.amn import AmnBaseline, AmnOptions, AmnSeedOptions
from ..baselines.base import ParamGroup
from ..baselines.compose import build_model
from ..config import from_dict, stable_hash, to_dict
from ..data import build_dataset
from ..data.loading import build_loader
from ..data.transforms import train_transform
from ..errors import ConfigError, DataError
from ..evaluation.crf import RefineConfig
from .config import RunConfig, run_config_from_dict, stage_key, stage_slice
from .distributed import barrier, broadcast_object, setup_distributed
from .metrics import JsonlSink, MetricsSink, NullSink, write_json_atomic
from .trainer import Trainer

STAGES = ("cam_train", "cam_cams", "seeds", "amn_train", "amn_maps", "cam_eval", "amn_eval")
DONE_FILE = "stage_done.json"
CAM_STORE_DIR = "cams"  # make_cams writes <run_dir>/cams


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


def _eval_slice(cfg: RunConfig) -> dict[str, Any]:
    return {"thresholds": to_dict(cfg.eval.thresholds), "pred_255": cfg.eval.pred_255, "split": cfg.cams.split}


def chain_keys(chain: AmnChain) -> dict[str, str]:
    """Stage name → key; each key hashes the stage's own settings and its inputs' keys."""
    keys = {"cam_train": stage_key(chain.cam, "train"), "cam_cams": stage_key(chain.cam, "cams")}
    keys["seeds"] = stable_hash({"cam_cams": keys["cam_cams"], "seeds": to_dict(chain.seeds),
                                 "splits": seed_splits(chain)})
    keys["amn_train"] = stable_hash({"seeds": keys["seeds"], "amn": stage_slice(chain.amn, "train")})
    keys["amn_maps"] = stable_hash({"amn_train": keys["amn_train"], "cams": to_dict(chain.amn.cams)})
    keys["cam_eval"] = stable_hash({"cam_cams": keys["cam_cams"], "eval": _eval_slice(chain.amn)})
    keys["amn_eval"] = stable_hash({"amn_maps": keys["amn_maps"], "eval": _eval_slice(chain.amn)})
    return keys


# --- stage 3: seeds -----------------------------------------------------------------------------
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


def read_seed(seeds_dir: str | Path, image_id: str, shape: tuple[int, int]) -> np.ndarray:
    """One image's seed label (H × W uint8), checked against the image size."""
    path = Path(seeds_dir) / f"{image_id}.png"
    if not path.is_file():
        raise DataError(f"{path}: no seed label for image {image_id!r}; run the seeds stage (make_seeds) for "
                        f"this split first")
    with Image.open(path) as img:
        seed = np.array(img, dtype=np.uint8)
    if seed.shape != tuple(shape):
        raise DataError(f"{path}: seed size {seed.shape} differs from the image's {tuple(shape)}")
    return seed


class SeedLabelDataset:
    """A dataset whose samples carry the seed label as ``mask`` (so the augmentations keep it aligned)."""

    def __init__(self, dataset: Any, seeds_dir: str | Path):
        self.dataset = dataset
        self.seeds_dir = Path(seeds_dir)
        self.transform = None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["dataset"], name)

    def load(self, index: int) -> dict[str, Any]:
        sample = self.dataset.load(index)
        sample["mask"] = read_seed(self.seeds_dir, sample["id"], sample["image"].shape[:2])
        return sample


# --- stage 4: AMN training ----------------------------------------------------------------------
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
        self.key = key or chain_keys(chain)["amn_train"]  # the checkpoint's identity includes the seeds

    def _build(self) -> None:
        super()._build()
        cfg = self.cfg
        self.loader = build_loader(SeedLabelDataset(self.dataset, self.seeds_dir), cfg.train.batch_size,
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


# --- stage 5: AMN activation maps ---------------------------------------------------------------
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


# --- stage 6: evaluation ------------------------------------------------------------------------
def evaluate_stage(cfg: RunConfig, cam_store_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Score a CAM store (AMN's maps, or the CAM stage's CAMs) on ``cfg.cams.split`` over every threshold;
    writes eval.json / eval.csv / the curve into ``out_dir`` and returns the summary scalars."""
    from ..evaluation import evaluate_cams, write_eval_outputs
    from .cams import summarise

    result = evaluate_cams(cam_store_dir, cfg.data.root, cfg.cams.split,
                           thresholds=list(cfg.eval.thresholds) if cfg.eval.thresholds else None,
                           pred_255=cfg.eval.pred_255, workers=cfg.eval.workers)
    paths = write_eval_outputs(result, out_dir)
    return {"eval_json": str(paths["json"]), **summarise(result)}


# --- the chain ----------------------------------------------------------------------------------
@dataclass
class ChainStage:
    """One stage: output in ``out_dir`` (named by ``key``); ``inputs`` are stage names; ``run(nproc)``
    produces the output (on ``nproc`` local processes when ``distributed``)."""

    name: str
    key: str
    inputs: tuple[str, ...]
    out_dir: Path
    run: Callable[[int], dict[str, Any]]
    distributed: bool


def amn_chain_stages(cfg: RunConfig, root: str | Path) -> list[ChainStage]:
    """The stages of AMN trial ``cfg`` with their keys and output folders ``<root>/<stage>/<key>``."""
    from .launch import launch_local

    chain = amn_chain(cfg)
    keys = chain_keys(chain)
    out = {name: Path(root) / name / keys[name] for name in STAGES}
    cam_store = out["cam_cams"] / CAM_STORE_DIR
    return [
        ChainStage("cam_train", keys["cam_train"], (), out["cam_train"],
                   lambda n: launch_local("train", chain.cam, out["cam_train"], nproc=n), True),
        ChainStage("cam_cams", keys["cam_cams"], ("cam_train",), out["cam_cams"],
                   lambda n: launch_local("make_cams", chain.cam, out["cam_cams"], nproc=n,
                                          weights_dir=str(out["cam_train"]), evaluate=False), True),
        ChainStage("seeds", keys["seeds"], ("cam_cams",), out["seeds"],
                   lambda n: make_seeds(cfg, cam_store, out["seeds"]), False),
        ChainStage("amn_train", keys["amn_train"], ("seeds", "cam_train"), out["amn_train"],
                   lambda n: launch_amn("train_amn", n, cfg, str(out["seeds"]), str(out["amn_train"]),
                                        str(out["cam_train"])), True),
        ChainStage("amn_maps", keys["amn_maps"], ("amn_train", "seeds"), out["amn_maps"],
                   lambda n: launch_amn("make_amn_cams", n, cfg, str(out["amn_train"]), str(out["seeds"]),
                                        str(out["amn_maps"])), True),
        ChainStage("cam_eval", keys["cam_eval"], ("cam_cams",), out["cam_eval"],
                   lambda n: evaluate_stage(chain.amn, cam_store, out["cam_eval"]), False),
        ChainStage("amn_eval", keys["amn_eval"], ("amn_maps",), out["amn_eval"],
                   lambda n: evaluate_stage(chain.amn, out["amn_maps"], out["amn_eval"]), False),
    ]


def stage_done(stage: ChainStage) -> dict[str, Any] | None:
    """The recorded summary of a completed stage, or None."""
    try:
        record = json.loads((stage.out_dir / DONE_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return record.get("summary") if record.get("key") == stage.key else None


def run_amn_chain(cfg: RunConfig, root: str | Path, nproc: int = 1,
                  until: str = "amn_eval") -> dict[str, dict[str, Any]]:
    """Run AMN trial ``cfg``'s stages up to ``until`` under ``root``, reusing every stage already done (same
    key). Returns stage name → summary (``cached: True`` for reused ones)."""
    if until not in STAGES:
        raise ConfigError(f"until: {until!r} is not a stage; valid choices: {', '.join(STAGES)}")
    summaries: dict[str, dict[str, Any]] = {}
    for stage in amn_chain_stages(cfg, root)[: STAGES.index(until) + 1]:
        done = stage_done(stage)
        if done is not None:
            summaries[stage.name] = {**done, "cached": True}
            continue
        stage.out_dir.mkdir(parents=True, exist_ok=True)
        summary = stage.run(nproc if stage.distributed else 1)
        write_json_atomic(stage.out_dir / DONE_FILE, {"stage": stage.name, "key": stage.key, "summary": summary})
        summaries[stage.name] = {**summary, "cached": False}
    return summaries


# --- the same stages for the sweep planner (launchers.stages.StageDef fields) ---------------------
def _planner_train_slice(cfg: RunConfig, extras: dict[str, Any]) -> dict[str, Any]:
    out = stage_slice(cfg, "train")
    if extras.get("synthetic") is not None:
        out["data"] = {k: v for k, v in out["data"].items() if k != "root"}  # the data stage key stands for it
    out["world_size"] = extras["world_size"]
    return out


def planner_stage_definitions() -> list[dict[str, Any]]:
    """AMN's stages as keyword arguments of ``launchers.stages.StageDef`` (name, inputs, key_slice, run,
    distributed, evaluation_only, sink_stage); ``run`` takes the planner's ``StageRun`` (cfg = the trial's
    run config, stage_dir, inputs: stage name → folder, sink). Wire them with::

        for d in planner_stage_definitions(): register_stage(StageDef(**d))
        PIPELINES["amn"] = AMN_PIPELINE
    """

    def cam_train(run: Any) -> dict[str, Any]:
        from .trainer import train

        return train(amn_chain(run.cfg).cam, run.stage_dir, sink=run.sink, resume="auto")

    def cam_cams(run: Any) -> dict[str, Any]:
        from .cams import make_cams

        return make_cams(amn_chain(run.cfg).cam, run.stage_dir, sink=run.sink,
                         weights_dir=run.inputs["amn_cam_train"], evaluate=False)

    def seeds(run: Any) -> dict[str, Any]:
        return make_seeds(run.cfg, Path(run.inputs["amn_cam_cams"]) / CAM_STORE_DIR, run.stage_dir)

    def network(run: Any) -> dict[str, Any]:
        return train_amn(run.cfg, run.inputs["amn_seeds"], run.stage_dir, run.inputs["amn_cam_train"],
                         sink=run.sink, key=Path(run.stage_dir).name)

    def maps(run: Any) -> dict[str, Any]:
        return make_amn_cams(run.cfg, run.inputs["amn_train"], run.inputs["amn_seeds"], run.stage_dir,
                             sink=run.sink)

    def cam_eval(run: Any) -> dict[str, Any]:
        return evaluate_stage(amn_chain(run.cfg).amn, Path(run.inputs["amn_cam_cams"]) / CAM_STORE_DIR,
                              run.stage_dir)

    def amn_eval(run: Any) -> dict[str, Any]:
        return evaluate_stage(amn_chain(run.cfg).amn, run.inputs["amn_maps"], run.stage_dir)

    def cams_slice(cfg: RunConfig, extras: dict[str, Any]) -> dict[str, Any]:
        return {"cams": to_dict(amn_chain(cfg).cam.cams)}

    def seeds_slice(cfg: RunConfig, extras: dict[str, Any]) -> dict[str, Any]:
        chain = amn_chain(cfg)
        return {"seeds": to_dict(chain.seeds), "splits": seed_splits(chain)}

    return [
        dict(name="amn_cam_train", inputs=("data",), key_slice=lambda c, e: _planner_train_slice(amn_chain(c).cam, e),
             run=cam_train, distributed=True, sink_stage="train"),
        dict(name="amn_cam_cams", inputs=("amn_cam_train",), key_slice=cams_slice, run=cam_cams, distributed=True,
             sink_stage="cams"),
        dict(name="amn_seeds", inputs=("amn_cam_cams",), key_slice=seeds_slice, run=seeds),
        dict(name="amn_train", inputs=("amn_seeds", "amn_cam_train"),
             key_slice=lambda c, e: _planner_train_slice(amn_chain(c).amn, e), run=network, distributed=True,
             sink_stage="train"),
        dict(name="amn_maps", inputs=("amn_train", "amn_seeds"),
             key_slice=lambda c, e: {"cams": to_dict(amn_chain(c).amn.cams)}, run=maps, distributed=True,
             sink_stage="cams"),
        dict(name="amn_cam_eval", inputs=("amn_cam_cams",), key_slice=lambda c, e: {"eval": _eval_slice(c)},
             run=cam_eval, evaluation_only=True, sink_stage="eval"),
        dict(name="amn_eval", inputs=("amn_maps",), key_slice=lambda c, e: {"eval": _eval_slice(c)},
             run=amn_eval, evaluation_only=True, sink_stage="eval"),
    ]


AMN_PIPELINE = ("amn_cam_train", "amn_cam_cams", "amn_seeds", "amn_train", "amn_maps", "amn_cam_eval", "amn_eval")


def launch_amn(fn_name: str, nproc: int, *args: Any) -> dict[str, Any]:
    """Run ``train_amn`` or ``make_amn_cams`` on ``nproc`` local processes (gloo on CPU); rank 0's result."""
    from .launch import launch_entry

    if fn_name not in ("train_amn", "make_amn_cams"):
        raise ConfigError(f"launch_amn: unknown entry point {fn_name!r}; valid choices: train_amn, make_amn_cams")
    return launch_entry(fn_name, nproc, args)
