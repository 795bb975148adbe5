"""Import CAM files written by the reference codebases into a :class:`CamStore`.

* ``irn`` (IRN, AMN and their forks): ``<id>.npy`` holding a pickled dict with ``keys`` (0-based
  foreground class indices), ``cam`` (low-resolution maps) and ``high_res`` (image-resolution maps: the
  ones imported). IRN's ``high_res`` has one map per key; AMN's has K + 1, the background channel first
  (its evaluation drops channel 0): that channel is kept as the store's background map.
* ``seam`` (SEAM, HFPL): ``<id>.npy`` holding a pickled dict {0-based class index: H x W map}.

The files are pickles (``np.load(allow_pickle=True)``): import only files you trust. AMN pickles torch
tensors, which unpickle through torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from ..errors import CamStoreError, ConfigError
from ..progress import progress
from .cam_store import CamStore

ImportFormat = Literal["irn", "seam"]
FORMATS = ("irn", "seam")


def _as_numpy(value) -> np.ndarray:
    """numpy view of an array or a (CPU) torch tensor as pickled by the references."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def read_irn_file(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(keys, cams, bg or None) of an IRN/AMN ``.npy`` dict."""
    content = _load_dict(path)
    for key in ("keys", "high_res"):
        if key not in content:
            raise CamStoreError(f"{path}: image {path.stem!r}: IRN/AMN CAM dict has no {key!r} entry "
                                f"(found {sorted(map(str, content))}); is this the 'seam' format?")
    keys = _as_numpy(content["keys"]).astype(np.int64).reshape(-1)
    maps = _as_numpy(content["high_res"]).astype(np.float32)
    if maps.ndim == 2 and len(keys) == 1:
        maps = maps[None]
    if maps.ndim != 3:
        raise CamStoreError(f"{path}: image {path.stem!r}: 'high_res' must be (K, H, W), got shape {maps.shape}")
    if maps.shape[0] == len(keys) + 1:  # AMN: background channel first
        bg, cams = maps[0], maps[1:]
    elif maps.shape[0] == len(keys):
        bg, cams = None, maps
    else:
        raise CamStoreError(f"{path}: image {path.stem!r}: 'high_res' has {maps.shape[0]} maps for {len(keys)} "
                            f"keys {keys.tolist()}; expected {len(keys)} (IRN) or {len(keys) + 1} (AMN, background "
                            "first)")
    return keys, cams, bg


def read_seam_file(path: Path) -> tuple[np.ndarray, np.ndarray, None]:
    """(keys, cams, None) of a SEAM/HFPL ``.npy`` dict {class index: map}."""
    content = _load_dict(path)
    try:
        keys = np.array([int(k) for k in content], dtype=np.int64)
    except (TypeError, ValueError):
        raise CamStoreError(f"{path}: image {path.stem!r}: SEAM/HFPL CAM dict keys must be class indices, got "
                            f"{list(content)[:5]}; is this the 'irn' format?") from None
    maps = [_as_numpy(v).astype(np.float32) for v in content.values()]
    shapes = {m.shape for m in maps}
    if len(shapes) > 1 or any(len(s) != 2 for s in shapes):
        raise CamStoreError(f"{path}: image {path.stem!r}: maps must all be H x W of one size, got {sorted(shapes)}")
    cams = np.stack(maps) if maps else np.zeros((0, 0, 0), np.float32)
    # SEAM's released min-max leaves each class's minimum pixels slightly below 0 ((0 - min - 1e-5) / …);
    # the store holds maps >= 0. Clamping changes no label at any threshold t >= 0 (fg iff max > t).
    return keys, np.maximum(cams, 0.0), None


def _load_dict(path: Path) -> dict:
    try:
        content = np.load(path, allow_pickle=True)
        content = content.item() if isinstance(content, np.ndarray) and content.dtype == object else content
    except (OSError, ValueError, EOFError, ModuleNotFoundError) as exc:
        raise CamStoreError(f"{path}: image {path.stem!r}: unreadable CAM file: {exc}") from None
    if not isinstance(content, dict):
        raise CamStoreError(f"{path}: image {path.stem!r}: expected a pickled dict, got {type(content).__name__}")
    return content


READERS = {"irn": read_irn_file, "seam": read_seam_file}


def import_cams(src_dir: str | Path, fmt: ImportFormat, dest: str | Path, num_classes: int,
                class_names: list[str] | None = None) -> CamStore:
    """Import every ``<id>.npy`` of ``src_dir`` (format ``irn`` or ``seam``) into the store ``dest``."""
    if fmt not in READERS:
        raise ConfigError(f"import format {fmt!r} is not valid; valid choices: {', '.join(FORMATS)}")
    src_dir = Path(src_dir)
    if not src_dir.is_dir():
        raise CamStoreError(f"{src_dir}: CAM folder to import not found")
    files = sorted(src_dir.glob("*.npy"))
    if not files:
        raise CamStoreError(f"{src_dir}: no .npy CAM files to import")
    store = CamStore.create(dest, num_classes, class_names, meta={"imported_from": str(src_dir), "format": fmt})
    for path in progress(files, desc=f"import {fmt} CAMs", total=len(files), unit="img"):
        keys, cams, bg = READERS[fmt](path)
        order = np.argsort(keys, kind="stable")  # the store keeps keys sorted (argmax ties: lowest class)
        store.write(path.stem, keys[order], cams[order], bg)
    return store
