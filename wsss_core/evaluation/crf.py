"""Dense-CRF pseudo-labels from CAMs, in the two forms the references use (pydensecrf).

* ``confident`` (IRN/AMN seeds): fg_conf = CRF(argmax([t_fg, cams])), bg_conf = CRF(argmax([t_bg, cams]))
  with a unary from labels; label = fg_conf, 255 where fg_conf is background, 0 where both are.
* ``probability`` (SEAM/HFPL): background score (1 - max cam)^alpha, a softmax-style unary (-log p) over
  [bg, cams]; label = argmax of the CRF marginals.

Label maps use VOC values: 0 background, key + 1 for foreground class ``key``, 255 uncertain.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from ..config import from_dict, stable_hash, to_dict
from ..errors import CamStoreError, ConfigError
from .cam_store import CamStore
from .ground_truth import read_image, read_split_ids
from .parallel import CountingTask, run_sharded

VOID = 255
REFINE_META = "refine.json"


@dataclass
class CrfParams:
    """Pairwise terms and iterations of one dense CRF (pydensecrf's names)."""

    gaussian_sxy: float = 3.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 50.0
    bilateral_srgb: float = 5.0
    bilateral_compat: float = 10.0
    iterations: int = 10

    def validate(self, where: str) -> None:
        for name in ("gaussian_sxy", "bilateral_sxy", "bilateral_srgb"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{where}.{name}: must be > 0, got {getattr(self, name)}")
        if self.iterations < 1:
            raise ConfigError(f"{where}.iterations: must be >= 1, got {self.iterations}")


@dataclass
class RefineConfig:
    """Settings of ``wsss refine``; defaults are the references' (docs/fidelity.md)."""

    mode: Literal["confident", "probability"] = "confident"
    fg_threshold: float = 0.30  # confident: AMN's CAM-stage conf_fg_thres
    bg_threshold: float = 0.05  # confident: conf_bg_thres
    gt_prob: float = 0.7  # confident: unary_from_labels certainty
    alpha: float = 1.0  # probability: background = (1 - max)^alpha (HFPL also uses 24)
    confident_crf: CrfParams = field(default_factory=CrfParams)
    probability_crf: CrfParams = field(default_factory=lambda: CrfParams(bilateral_sxy=80.0, bilateral_srgb=13.0))

    def validate(self, where: str) -> None:
        if not 0.0 <= self.bg_threshold <= self.fg_threshold <= 1.0:
            raise ConfigError(f"{where}: need 0 <= bg_threshold <= fg_threshold <= 1, got "
                              f"bg_threshold={self.bg_threshold}, fg_threshold={self.fg_threshold}")
        if not 0.0 < self.gt_prob < 1.0:
            raise ConfigError(f"{where}.gt_prob: must be in (0, 1), got {self.gt_prob}")
        if self.alpha <= 0:
            raise ConfigError(f"{where}.alpha: must be > 0, got {self.alpha}")
        self.confident_crf.validate(f"{where}.confident_crf")
        self.probability_crf.validate(f"{where}.probability_crf")

    @property
    def crf(self) -> CrfParams:
        return self.confident_crf if self.mode == "confident" else self.probability_crf


def _dense_crf(image: np.ndarray, unary: np.ndarray, n_labels: int, params: CrfParams) -> np.ndarray:
    """Marginals (n_labels, H, W) of a DenseCRF2D with the given unary (n_labels, H*W) float32."""
    import pydensecrf.densecrf as dcrf

    h, w = image.shape[:2]
    crf = dcrf.DenseCRF2D(w, h, n_labels)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=params.gaussian_sxy, compat=params.gaussian_compat)
    crf.addPairwiseBilateral(sxy=params.bilateral_sxy, srgb=params.bilateral_srgb,
                             rgbim=np.array(image, dtype=np.uint8, order="C"), compat=params.bilateral_compat)
    return np.asarray(crf.inference(params.iterations), dtype=np.float32).reshape(n_labels, h, w)


def _check_inputs(image: np.ndarray, keys: np.ndarray, cams: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3:
        raise CamStoreError(f"image must be (H, W, 3) RGB, got shape {image.shape}")
    if cams.shape != (len(keys), *image.shape[:2]):
        raise CamStoreError(f"CAM shape {cams.shape} does not match {len(keys)} keys and image size "
                            f"{image.shape[:2]}")


def _crf_label_indices(image: np.ndarray, cams: np.ndarray, threshold: float, cfg: RefineConfig) -> np.ndarray:
    """CRF(argmax([t, cams])) as indices into [background, keys...]."""
    from pydensecrf.utils import unary_from_labels

    n_labels = cams.shape[0] + 1
    scores = np.concatenate([np.full((1, *cams.shape[1:]), threshold, dtype=np.float32), cams])
    labels = scores.argmax(axis=0)  # ties go to the background (index 0), as in the references
    unary = unary_from_labels(labels, n_labels, gt_prob=cfg.gt_prob, zero_unsure=False)
    return _dense_crf(image, unary, n_labels, cfg.confident_crf).argmax(axis=0)


def crf_confident_labels(image: np.ndarray, keys: np.ndarray, cams: np.ndarray, cfg: RefineConfig) -> np.ndarray:
    """AMN/IRN confident seeds: (H, W) uint8 with 0 confident background, key + 1, 255 uncertain."""
    _check_inputs(image, keys, cams)
    if len(keys) == 0:
        return np.zeros(image.shape[:2], np.uint8)
    values = np.concatenate([[0], np.asarray(keys, dtype=np.int64) + 1]).astype(np.uint8)
    fg_conf = values[_crf_label_indices(image, cams, cfg.fg_threshold, cfg)]
    bg_conf = values[_crf_label_indices(image, cams, cfg.bg_threshold, cfg)]
    label = fg_conf.copy()
    label[fg_conf == 0] = VOID
    label[(fg_conf == 0) & (bg_conf == 0)] = 0
    return label


def crf_probability_labels(image: np.ndarray, keys: np.ndarray, cams: np.ndarray, cfg: RefineConfig) -> np.ndarray:
    """SEAM/HFPL: argmax of CRF([(1 - max)^alpha, cams]) as (H, W) uint8 label values."""
    from pydensecrf.utils import unary_from_softmax

    _check_inputs(image, keys, cams)
    if len(keys) == 0:
        return np.zeros(image.shape[:2], np.uint8)
    values = np.concatenate([[0], np.asarray(keys, dtype=np.int64) + 1]).astype(np.uint8)
    bg = np.power(1.0 - cams.max(axis=0, keepdims=True), np.float32(cfg.alpha))
    probs = np.concatenate([bg.astype(np.float32), cams]).astype(np.float32)
    marginals = _dense_crf(image, unary_from_softmax(probs), probs.shape[0], cfg.probability_crf)
    return values[marginals.argmax(axis=0)]


LABEL_FUNCTIONS = {"confident": crf_confident_labels, "probability": crf_probability_labels}


def voc_palette() -> list[int]:
    """The PASCAL VOC colour map (256 RGB triples, flattened)."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette += [r, g, b]
    return palette


_PALETTE = voc_palette()


def write_label_png(label: np.ndarray, path: str | Path) -> None:
    """Save class indices as a VOC palette PNG, atomically (temp file + rename)."""
    path = Path(path)
    img = Image.fromarray(np.ascontiguousarray(label, dtype=np.uint8))
    img.putpalette(_PALETTE)  # an 'L' image becomes 'P' with the indices kept
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            img.save(f, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _RefineTask(CountingTask):
    def __init__(self, store: str, data_root: str, out_dir: str, cfg: RefineConfig, overwrite: bool):
        self.store, self.data_root, self.out_dir, self.cfg, self.overwrite = store, data_root, out_dir, cfg, overwrite
        self._opened: CamStore | None = None

    def __getstate__(self):
        return {**self.__dict__, "_opened": None}

    def new_state(self) -> dict:
        return {"written": 0, "skipped": 0}

    def add(self, state: dict, image_id: str) -> None:
        out = Path(self.out_dir) / f"{image_id}.png"
        if out.exists() and not self.overwrite:
            state["skipped"] += 1
            return
        if self._opened is None:
            self._opened = CamStore(self.store)
        keys, cams = self._opened.read(image_id)
        image = read_image(self.data_root, image_id)
        if cams.shape[1:] != image.shape[:2]:
            raise CamStoreError(f"{self.store}: image {image_id!r}: CAM shape {cams.shape[1:]} differs from the "
                                f"image size {image.shape[:2]}")
        write_label_png(LABEL_FUNCTIONS[self.cfg.mode](image, keys, cams, self.cfg), out)
        state["written"] += 1



def refine_cams(cam_store_path: str | Path, data_root: str | Path, split: str, out_dir: str | Path,
                cfg: RefineConfig | dict | None = None, workers: int = 1, overwrite: bool = False) -> dict:
    """CRF pseudo-labels for every image of ``split`` as VOC palette PNGs in ``out_dir``.

    Resumable: PNGs already present are kept (each is written atomically) unless ``overwrite``; a folder
    made with a different config is refused. Returns a summary (counts, config, out_dir).
    """
    cfg = cfg if isinstance(cfg, RefineConfig) else from_dict(RefineConfig, cfg or {}, "refine")
    store = CamStore(cam_store_path)
    ids = read_split_ids(data_root, split)
    missing = [i for i in ids if i not in store]
    if missing:
        raise CamStoreError(f"{store.path}: {len(missing)} of {len(ids)} images of split {split!r} have no CAMs, "
                            f"e.g. {', '.join(missing[:5])}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"config": to_dict(cfg), "config_hash": stable_hash(cfg), "cam_store": str(store.path), "split": split}
    meta_path = out_dir / REFINE_META
    if meta_path.is_file() and not overwrite:
        previous = json.loads(meta_path.read_text())
        if previous.get("config_hash") != meta["config_hash"]:
            raise ConfigError(f"{out_dir}: holds labels made with another refine config "
                              f"({previous.get('config')}); use a new folder or overwrite")
    meta_path.write_text(json.dumps(meta, indent=2))
    task = _RefineTask(str(store.path), str(data_root), str(out_dir), cfg, overwrite)
    # a CRF takes ~0.3 s per image: small chunks keep both workers busy to the end
    counts = run_sharded(task, ids, workers, f"refine {split} ({cfg.mode})", chunk=2)
    return {"out_dir": str(out_dir), "num_images": len(ids), **counts, **meta}
