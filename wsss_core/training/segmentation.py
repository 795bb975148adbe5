"""The final segmentation stage: pseudo-labels from a trial's maps, a DeepLab network trained on them, its
score on val (docs/fidelity.md, "Final segmentation stage"; settings ``RunConfig.final``).

* :func:`make_pseudo_labels`: label PNGs (VOC palette; 0 background, class + 1, 255 ignored) of the
  segmentation training split from a CAM store at a background threshold (a number, or the best of the
  trial's eval stage), optionally dense-CRF refined with the evaluation engine's forms. The labels live in a
  label set keyed by what they are (the maps, the resolved threshold, the refinement), so two threshold
  rules that resolve to one value share one set.
* :class:`SegTrainer` / :func:`train_segmentation`: the project's trainer (DDP, bf16 on GPU, exact resume,
  progress, metrics sink) with a DeepLab network, pixel cross-entropy (255 ignored) and SGD/poly with the
  head at ×10.
* :func:`predict_segmentation` / :func:`evaluate_segmentation`: val predictions (optionally multi-scale +
  flip and dense CRF) as palette PNGs, scored by :func:`wsss_core.evaluation.evaluate_label_dir` with the
  trial's evaluation protocol.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..config import from_dict, stable_hash, to_dict
from ..data import build_dataset
from ..data.base import MaskFolderDataset
from ..data.loading import build_loader
from ..data.transforms import Compose, Normalize, RandomCrop, RandomHFlip, RandomScale, normalize_image
from ..errors import ConfigError, DataError
from ..evaluation.crf import VOID, CrfParams, RefineConfig, write_label_png
from ..evaluation.parallel import CountingTask
from ..progress import progress
from .config import RunConfig, run_config_from_dict
from .distributed import barrier, broadcast_object, setup_distributed
from .metrics import MetricsSink
from .trainer import RankShardSampler, Trainer, seed_process

LABELS_JSON = "pseudo_labels.json"
LABEL_SETS = "pseudo_label_sets"  # <workdir>/stages/pseudo_label_sets/<label set key>/: the shared PNGs
PRED_DIR = "predictions"


# --- configs ------------------------------------------------------------------------------------
def segmentation_split(cfg: RunConfig) -> str:
    return cfg.final.split or cfg.data.train_split


def segmentation_config(cfg: RunConfig) -> RunConfig:
    """The trial's config as the segmentation trainer sees it: data on the segmentation split with the final
    stage's crop, its optimiser and iterations (the trainer's ``max_steps``), its batch size."""
    f, plain = cfg.final, to_dict(cfg)
    plain["data"] = dict(plain["data"], train_split=segmentation_split(cfg), crop=f.crop)
    plain["optim"] = {"lr": f.lr, "weight_decay": f.weight_decay, "momentum": f.momentum, "momentum_quirk": False,
                      "poly_power": f.poly_power}
    plain["train"] = dict(plain["train"], epochs=f.iterations, max_steps=f.iterations, batch_size=f.batch_size)
    plain["addons"] = []
    return run_config_from_dict(plain, "final (segmentation view)")


def refine_config(cfg: RunConfig) -> RefineConfig:
    return from_dict(RefineConfig, cfg.final.refine_options, "final.refine_options")


# --- pseudo-labels ------------------------------------------------------------------------------
def resolve_threshold(cfg: RunConfig, eval_dir: str | Path | None) -> float | None:
    """The background threshold of ``cfg.final``: the number given, or ``best.threshold`` of the eval stage's
    ``eval.json`` in ``eval_dir``; None for ``refine: probability`` (SEAM's CRF has no threshold)."""
    f = cfg.final
    if f.refine == "probability":
        return None
    if f.threshold != "best":
        return float(f.threshold)
    path = Path(eval_dir or "") / "eval.json"
    if eval_dir is None or not path.is_file():
        raise ConfigError(f"final.threshold: 'best' reads the trial's eval stage, but {path} does not exist; run "
                          f"the eval stage first or give a number")
    best = json.loads(path.read_text()).get("best", {}).get("threshold")
    if best is None:
        raise ConfigError(f"{path}: has no best.threshold (an evaluation of label PNGs?); give final.threshold "
                          f"as a number")
    return float(best)


def label_set_key(maps: dict[str, Any], threshold: float | None, cfg: RunConfig) -> str:
    """What a label set is: its maps (the stages and settings that made them, and the split), the resolved
    threshold and the refinement settings that apply."""
    f = cfg.final
    refine: dict[str, Any] = {"mode": f.refine}
    options = f.refine_options
    if f.refine == "crf":
        refine.update(gt_prob=options["gt_prob"], crf=options["confident_crf"])
    elif f.refine == "probability":
        refine.update(alpha=options["alpha"], crf=options["probability_crf"])
    return stable_hash({"maps": maps, "threshold": threshold, "refine": refine})


def pseudo_label(image: np.ndarray | None, keys: np.ndarray, cams: np.ndarray, threshold: float | None,
                 mode: str, options: RefineConfig) -> np.ndarray:
    """One image's pseudo-label (H × W uint8 VOC values). ``none``: the evaluator's label at ``threshold``
    (the max map where it exceeds float32(t), else background; the same map eval.json scores); ``crf``:
    CRF(argmax([t, maps])) with a unary from those labels (IRN/AMN's form, ``confident_crf`` and ``gt_prob``);
    ``probability``: SEAM's CRF over [(1 - max)^alpha, maps]."""
    from ..evaluation.crf import _crf_label_indices, crf_probability_labels
    from ..evaluation.threshold_sweep import class_map_from_cams, predict_labels

    if mode == "none":
        m, class_map = class_map_from_cams(keys, cams)
        return predict_labels(m, class_map, threshold)
    assert image is not None
    if len(keys) == 0:
        return np.zeros(cams.shape[1:], np.uint8)
    if mode == "probability":
        return crf_probability_labels(image, keys, cams, options)
    values = np.concatenate([[0], np.asarray(keys, dtype=np.int64) + 1]).astype(np.uint8)
    return values[_crf_label_indices(image, cams, threshold, options)]


class _LabelTask(CountingTask):
    """Pseudo-label PNGs of a list of ids (module level, so the evaluation's process pool can pickle it)."""

    def __init__(self, store: str, data_root: str, out_dir: str, threshold: float | None, mode: str,
                 options: RefineConfig):
        self.store, self.data_root, self.out_dir = store, data_root, out_dir
        self.threshold, self.mode, self.options = threshold, mode, options

    def new_state(self) -> dict:
        return {"written": 0, "skipped": 0}

    def add(self, state: dict, image_id: str) -> None:
        from ..evaluation import CamStore
        from ..evaluation.ground_truth import read_image

        out = Path(self.out_dir) / f"{image_id}.png"
        if out.exists():
            state["skipped"] += 1
            return
        keys, cams = CamStore(self.store).read(image_id)
        image = read_image(self.data_root, image_id) if self.mode != "none" else None
        write_label_png(pseudo_label(image, keys, cams, self.threshold, self.mode, self.options), out)
        state["written"] += 1



def write_label_set(cfg: RunConfig, store: str | Path, out_dir: str | Path, threshold: float | None) -> dict:
    """Pseudo-labels of the segmentation split from CAM store ``store`` into ``out_dir`` (resumable: PNGs
    already there are kept; each is written atomically, so two processes making one set agree)."""
    from ..evaluation import CamStore
    from ..evaluation.ground_truth import read_split_ids
    from ..evaluation.parallel import run_sharded

    split = segmentation_split(cfg)
    ids = read_split_ids(cfg.data.root, split)
    opened = CamStore(store)
    missing = [i for i in ids if i not in opened]
    if missing:
        raise DataError(f"{store}: {len(missing)} of {len(ids)} images of split {split!r} have no maps, e.g. "
                        f"{', '.join(missing[:5])}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    task = _LabelTask(str(store), cfg.data.root, str(out_dir), threshold, cfg.final.refine, refine_config(cfg))
    counts = run_sharded(task, ids, cfg.eval.workers, f"pseudo-labels {split}", chunk=2)
    return {"num_images": len(ids), **counts}


def make_pseudo_labels(cfg: RunConfig, stage_dir: str | Path, workdir: str | Path, maps: dict[str, Any],
                       store: str | Path | None, eval_dir: str | Path | None,
                       make_maps: Any = None) -> dict[str, Any]:
    """The pseudo-label stage, on every rank of the current process group. ``maps`` names what the maps are
    (it keys the label set); ``store``: a CAM store that already covers the segmentation split, or None, then
    ``make_maps(maps_dir)`` writes one (sharded over the ranks; it is skipped when the label set exists).
    Writes ``pseudo_labels.json`` (threshold, label set folder) into ``stage_dir``; returns it on every rank."""
    from ..pipeline import layout

    env = setup_distributed(cfg.train.device)
    stage_dir = Path(stage_dir)
    threshold = resolve_threshold(cfg, eval_dir)
    key = label_set_key(maps, threshold, cfg)
    labels_dir = layout.stage_dir(Path(workdir), LABEL_SETS, key)
    done = labels_dir / "done.json"
    summary: dict[str, Any] = {"threshold": threshold, "threshold_rule": cfg.final.threshold,
                               "refine": cfg.final.refine, "labels_dir": str(labels_dir), "label_set": key,
                               "split": segmentation_split(cfg)}
    if not broadcast_object(env, done.is_file()):  # rank 0's view, so every rank takes the same branch
        if store is None:
            store = make_maps(stage_dir / "maps")
        if env.is_main:
            counts = write_label_set(cfg, store, labels_dir, threshold)
            tmp = labels_dir / f".done.json.{os.getpid()}.tmp"
            tmp.write_text(json.dumps({**summary, **counts, "maps": maps}, indent=2))
            os.replace(tmp, done)
            summary.update(counts, shared=False)
    else:
        summary["shared"] = True  # made by another trial whose rule resolved to the same threshold
    if env.is_main:
        (stage_dir / LABELS_JSON).write_text(json.dumps(summary, indent=2))
    barrier(env)
    return broadcast_object(env, summary)


def read_labels_dir(pseudo_label_stage: str | Path) -> Path:
    path = Path(pseudo_label_stage) / LABELS_JSON
    if not path.is_file():
        raise DataError(f"{path}: no pseudo-label record; run the pseudo_labels stage first")
    return Path(json.loads(path.read_text())["labels_dir"])


# --- training -----------------------------------------------------------------------------------
def build_network(cfg: RunConfig, num_classes: int) -> torch.nn.Module:
    from ..models.deeplab import build_segmentation_net

    f = cfg.final
    return build_segmentation_net(f.arch, f.backbone, num_classes + 1, backbone_options=f.backbone_options,
                                  pretrained=f.pretrained, aspp_rates=f.aspp_rates)


def segmentation_loss(outputs: list[torch.Tensor], mask: torch.Tensor, label_resize: str) -> torch.Tensor:
    """Pixel cross-entropy (255 ignored) summed over the outputs. ``to_logits``: the labels resized to each
    output by nearest neighbour (kazuto1011's resize_labels, PIL NEAREST); ``to_labels``: each output
    upsampled bilinearly to the labels."""
    total = torch.zeros((), device=mask.device)
    for logits in outputs:
        if label_resize == "to_labels":
            logits = F.interpolate(logits, size=mask.shape[-2:], mode="bilinear", align_corners=False)
            target = mask
        else:
            h, w = logits.shape[-2:]
            target = torch.stack([torch.from_numpy(np.array(Image.fromarray(m.astype(np.uint8)).resize(
                (w, h), Image.NEAREST))).long() for m in mask.cpu().numpy()]).to(mask.device)
        total = total + F.cross_entropy(logits.float(), target, ignore_index=VOID)
    return total


class SegTrainer(Trainer):
    """The classifier's trainer (DDP, checkpoints, exact resume, sink) with a DeepLab network trained on
    pseudo-labels. ``key``: the seg_train stage key (a checkpoint of another key is refused)."""

    def __init__(self, cfg: RunConfig, labels_dir: str | Path, run_dir: str | Path, sink: MetricsSink | None = None,
                 resume: str = "auto", key: str | None = None):
        self.trial_cfg = cfg
        super().__init__(segmentation_config(cfg), run_dir, sink=sink, resume=resume)
        self.labels_dir = Path(labels_dir)
        self.key = key or stable_hash({"labels": str(self.labels_dir.resolve()), "final": to_dict(cfg.final)})

    def _build(self) -> None:
        cfg, f, env = self.cfg, self.trial_cfg.final, self.env
        base = build_dataset(cfg.data.dataset, cfg.data.root, cfg.data.train_split)
        self.dataset = MaskFolderDataset(base, self.labels_dir, "pseudo-label",
                                         "the pseudo-label set is incomplete; rerun the pseudo_labels stage")
        self.sampler = RankShardSampler(len(base), cfg.train.batch_size, env.rank, env.world_size, cfg.train.seed)
        transform = Compose((RandomScale(*f.scale), RandomHFlip(), Normalize(), RandomCrop(f.crop)))
        self.loader = build_loader(self.dataset, cfg.train.batch_size, sampler=self.sampler,
                                   num_workers=cfg.data.num_workers, seed=cfg.train.seed, transform=transform)
        from .trainer import _plan_steps

        self.total_steps = _plan_steps(cfg, self.sampler.batches_per_epoch, len(base), env)
        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        self.model = build_network(self.trial_cfg, base.num_classes).to(env.device)
        self.model.train()
        seed_process(cfg.train.seed, env.rank, [])
        groups = [{"params": params, "lr": f.lr * (f.head_lr_mult if head else 1.0),
                   "initial_lr": f.lr * (f.head_lr_mult if head else 1.0), "weight_decay": f.weight_decay,
                   "name": name} for name, params, head in self.model.param_groups() if params]
        self.optimizer = torch.optim.SGD(groups, lr=f.lr, momentum=f.momentum)
        from .trainer import Position
        from torch.nn.parallel import DistributedDataParallel

        self.position = Position()
        self.net = self.model
        if env.distributed:
            ids = [env.device.index] if env.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)

    def _step(self, batch: dict[str, Any]):
        from ..errors import TrainingError
        from .distributed import all_reduce_flag
        from .optim import set_poly_lr

        f = self.trial_cfg.final
        lr = set_poly_lr(self.optimizer, self.position.step, self.total_steps, f.poly_power)
        if batch.get("mask") is None:
            raise DataError("segmentation training batch has no labels")
        image = batch["image"].to(self.env.device, non_blocking=True)
        mask = batch["mask"].to(self.env.device, non_blocking=True)
        with self._autocast():
            if len(f.train_scales) == 1 and f.train_scales[0] == 1.0:
                outputs = [self.net(image)]
            else:
                outputs = _msc(self.net, self.model, image, f.train_scales)
        loss = segmentation_loss(outputs, mask, f.label_resize)
        if all_reduce_flag(self.env, not bool(torch.isfinite(loss.detach()))):
            raise TrainingError(f"step {self.position.step + 1}: non-finite segmentation loss {float(loss)}; lower "
                                f"final.lr or check the pseudo-labels")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach(), {"lr": torch.tensor(lr), "seg_loss": loss.detach()}


def _msc(net: torch.nn.Module, model: Any, image: torch.Tensor, scales: tuple[float, ...]) -> list[torch.Tensor]:
    """MSC through the (possibly DDP-wrapped) network: each scale a forward of ``net``."""
    base = net(image)
    outputs = []
    for s in scales:
        if s == 1.0:
            outputs.append(base)
            continue
        small = F.interpolate(image, scale_factor=s, mode="bilinear", align_corners=False)
        outputs.append(F.interpolate(net(small), size=base.shape[-2:], mode="bilinear", align_corners=False))
    return outputs + [torch.max(torch.stack(outputs), dim=0).values]


def train_segmentation(cfg: RunConfig, labels_dir: str | Path, run_dir: str | Path, sink: MetricsSink | None = None,
                       resume: str = "auto", key: str | None = None) -> dict[str, Any]:
    """Train trial ``cfg``'s final network on the labels in ``labels_dir`` into ``run_dir`` (checkpoints in
    ``run_dir/checkpoints``), in the current process group like :func:`wsss_core.training.train`."""
    return SegTrainer(cfg, labels_dir, run_dir, sink=sink, resume=resume, key=key).run()


# --- val predictions and their score ------------------------------------------------------------
@torch.no_grad()
def predict_probabilities(model: torch.nn.Module, image: np.ndarray, scales: tuple[float, ...], flip: bool,
                          device: torch.device) -> np.ndarray:
    """Class probabilities (K+1, H, W) of one uint8 image: softmax of the scores upsampled bilinearly to
    H × W, averaged over ``scales`` (the normalised image resized bilinearly) and, with ``flip``, mirrors."""
    h, w = image.shape[:2]
    x = torch.from_numpy(normalize_image(image))[None].to(device)
    total = None
    for s in scales:
        xs = x if s == 1.0 else F.interpolate(x, size=(max(1, round(h * s)), max(1, round(w * s))),
                                               mode="bilinear", align_corners=False)
        batch = torch.cat([xs, xs.flip(-1)]) if flip else xs
        logits = F.interpolate(model(batch).float(), size=(h, w), mode="bilinear", align_corners=False)
        probs = logits.softmax(1)
        probs = probs[0] + probs[1].flip(-1) if flip else probs[0]
        total = probs if total is None else total + probs
    return (total / (len(scales) * (2 if flip else 1))).cpu().numpy()


def crf_refine(image: np.ndarray, probs: np.ndarray, params: CrfParams) -> np.ndarray:
    """argmax of the dense CRF of ``probs`` (unary -log p), the evaluation engine's CRF call."""
    from pydensecrf.utils import unary_from_softmax

    from ..evaluation.crf import _dense_crf

    probs = np.ascontiguousarray(probs, dtype=np.float32)
    return _dense_crf(image, unary_from_softmax(probs), probs.shape[0], params).argmax(axis=0).astype(np.uint8)


def predict_segmentation(cfg: RunConfig, run_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Palette PNGs of ``cfg.final.val_split`` with the network trained in ``run_dir`` (this process;
    resumable: PNGs already written are kept)."""
    from ..evaluation.ground_truth import read_image, read_split_ids
    from .checkpoint import load_model_weights

    f = cfg.final
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dataset = build_dataset(cfg.data.dataset, cfg.data.root, f.val_split)
    weights, meta = load_model_weights(run_dir)
    model = build_network(cfg, dataset.num_classes)
    model.load_state_dict(weights)
    device = torch.device("cuda" if cfg.train.device != "cpu" and torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    crf = from_dict(CrfParams, f.test_crf_params, "final.test_crf_params")
    written = 0
    ids = read_split_ids(cfg.data.root, f.val_split)
    with torch.backends.mkldnn.flags(enabled=False):  # every image has its own size (see training/cams.py)
        for image_id in progress(ids, desc=f"segment {f.val_split}", total=len(ids), unit="img"):
            path = out_dir / f"{image_id}.png"
            if path.exists():
                continue
            image = read_image(cfg.data.root, image_id)
            probs = predict_probabilities(model, image, f.test_scales, f.test_flip, device)
            label = crf_refine(image, probs, crf) if f.test_crf else probs.argmax(axis=0).astype(np.uint8)
            write_label_png(label, path)
            written += 1
    return {"predictions": str(out_dir), "num_images": len(ids), "written": written, "model_key": meta["stage_key"]}


def evaluate_segmentation(cfg: RunConfig, run_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Predict ``final.val_split`` into ``<out_dir>/predictions`` and score them with the trial's evaluation
    protocol (mIoU, per-class IoU, precision, recall, boundary F) into ``<out_dir>/eval.json``."""
    from ..evaluation import evaluate_label_dir, write_eval_outputs

    out_dir = Path(out_dir)
    predicted = predict_segmentation(cfg, run_dir, out_dir / PRED_DIR)
    result = evaluate_label_dir(out_dir / PRED_DIR, cfg.data.root, cfg.final.val_split,
                                pred_255=cfg.eval.pred_255, workers=cfg.eval.workers, protocol=cfg.eval.protocol)
    result["final"] = {"arch": cfg.final.arch, "backbone": cfg.final.backbone, "model_key": predicted["model_key"]}
    write_eval_outputs(result, out_dir)
    row = result["per_threshold"][0]
    boundary = result["boundary"][0] if result["boundary"] else {}
    return {"final_miou": row["miou"], "final_mean_precision": row.get("mean_precision"),
            "final_mean_recall": row.get("mean_recall"), "final_boundary_f": boundary.get("f"),
            "num_images": result["num_images"], "eval_json": str(out_dir / "eval.json"),
            "predictions": predicted["predictions"]}
