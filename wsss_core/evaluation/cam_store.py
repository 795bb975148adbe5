"""CAM store: one folder, one file per image, streamed (never all CAMs in memory).

Layout::

    <store>/meta.json          {"format": "wsss-cam-store", "version": 1, "num_classes": C,
                                "class_names": [...] | null, "meta": {...}}
    <store>/<image_id>.cam     one image's maps (format below)

``num_classes`` is the number of *foreground* classes C; keys are 0-based foreground class indices
in ``[0, C)`` (class ``k`` is label value ``k + 1`` in a VOC mask).

A ``.cam`` file is a raw little-endian record, chosen because reading it is one ``readinto`` into
the destination array (about half the cost of ``np.load`` on a .npy and a tenth of an .npz)::

    offset 0   4 bytes  magic b"WCAM"
    offset 4   uint16   version (1)
    offset 6   uint16   flags (bit 0: a background map follows the class maps)
    offset 8   uint32   K (number of keys)
    offset 12  uint32   H
    offset 16  uint32   W
    offset 20  uint32   reserved (0)
    offset 24  int32[K] keys, sorted ascending, padded with zeros to a multiple of 8 bytes
    then       float32[K, H, W] class maps, then float32[H, W] background map if flagged

Without this module: ``np.fromfile(p, np.uint32, 6)`` gives the header and
``np.fromfile(p, np.float32, offset=24 + 4 * (K + K % 2))`` the maps.

Writes are atomic: the record goes to a hidden temp file in the store that is then ``os.replace``-d
onto ``<image_id>.cam``, so a killed writer leaves at most a stray temp file that is never listed.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_bytes_atomic
from ..errors import CamStoreError

CAM_SUFFIX = ".cam"
META_FILE = "meta.json"
STORE_FORMAT = "wsss-cam-store"
STORE_VERSION = 1
_MAGIC = b"WCAM"
_HEADER = struct.Struct("<4sHHIIII")
_FLAG_BG = 1


@dataclass(frozen=True)
class CamRecord:
    """One image's maps: ``keys`` (K,) int64 foreground class indices, ``cams`` (K, H, W) float32,
    ``bg`` (H, W) float32 or None (a stored background map, e.g. AMN's background channel)."""

    keys: np.ndarray
    cams: np.ndarray
    bg: np.ndarray | None = None


def _check_image_id(image_id: str) -> None:
    if not isinstance(image_id, str) or not image_id or image_id.startswith(".") or "/" in image_id \
            or "\\" in image_id or "\0" in image_id:
        raise CamStoreError(f"image id {image_id!r} is not valid: it must be a non-empty file name "
                            "without path separators that does not start with '.'")


def _keys_padded_len(num_keys: int) -> int:
    return num_keys + num_keys % 2


def validate_maps(image_id: str, keys: np.ndarray, cams: np.ndarray, bg: np.ndarray | None,
                  num_classes: int, where: str) -> None:
    """Raise CamStoreError naming the image if keys or maps are unusable."""
    if keys.ndim != 1:
        raise CamStoreError(f"{where}: image {image_id!r}: keys must be a 1-D array, got shape {keys.shape}")
    if cams.ndim != 3 or cams.shape[0] != len(keys):
        raise CamStoreError(f"{where}: image {image_id!r}: cams must have shape (len(keys)={len(keys)}, H, W), "
                            f"got {cams.shape}")
    if len(keys):
        if keys.min() < 0 or keys.max() >= num_classes:
            raise CamStoreError(f"{where}: image {image_id!r}: keys {keys.tolist()} outside the class range "
                                f"0..{num_classes - 1} (0-based foreground class indices)")
        if np.any(np.diff(keys) <= 0):
            raise CamStoreError(f"{where}: image {image_id!r}: keys {keys.tolist()} must be sorted ascending "
                                "and unique")
    check_finite_nonnegative(image_id, cams, where)
    if bg is not None:
        if bg.shape != cams.shape[1:]:
            raise CamStoreError(f"{where}: image {image_id!r}: background map shape {bg.shape} differs from "
                                f"the class maps' {cams.shape[1:]}")
        check_finite_nonnegative(image_id, bg, where, what="background map")


def check_finite_nonnegative(image_id: str, maps: np.ndarray, where: str, what: str = "maps") -> None:
    """Raise CamStoreError if ``maps`` holds NaN, infinite or negative values (one cheap pass)."""
    if maps.size == 0:
        return
    lo, hi = maps.min(), maps.max()
    if lo >= 0 and np.isfinite(hi):  # NaN fails both comparisons
        return
    if np.isnan(maps).any():
        problem = "NaN values"
    elif not np.isfinite(maps).all():
        problem = "infinite values"
    else:
        problem = f"negative values (min {float(lo):.4g})"
    raise CamStoreError(f"{where}: image {image_id!r}: {what} contain {problem}; CAMs must be finite and >= 0")


class CamStore:
    """A folder of per-image class activation maps; see the module docstring for the layout."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        meta_path = self.path / META_FILE
        if not meta_path.is_file():
            hint = "" if self.path.is_dir() else " (the folder does not exist)"
            raise CamStoreError(f"{self.path}: not a CAM store: {META_FILE} is missing{hint}; create one with "
                                "CamStore.create or import CAMs with `wsss eval --import-format`")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CamStoreError(f"{meta_path}: unreadable store metadata: {exc}") from None
        if meta.get("format") != STORE_FORMAT or not isinstance(meta.get("num_classes"), int):
            raise CamStoreError(f"{meta_path}: not a {STORE_FORMAT} metadata file (needs 'format' and "
                                "an integer 'num_classes')")
        self.num_classes: int = meta["num_classes"]
        self.class_names: list[str] | None = meta.get("class_names")
        self.meta: dict[str, Any] = meta.get("meta") or {}

    @classmethod
    def create(cls, path: str | Path, num_classes: int, class_names: list[str] | None = None,
               meta: dict | None = None) -> "CamStore":
        """Create a store (or open an existing one with the same number of classes)."""
        path = Path(path)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise CamStoreError(f"{path}: num_classes must be a positive integer, got {num_classes!r}")
        if class_names is not None and len(class_names) != num_classes:
            raise CamStoreError(f"{path}: {len(class_names)} class names given for num_classes={num_classes}")
        if (path / META_FILE).is_file():
            store = cls(path)
            if store.num_classes != num_classes:
                raise CamStoreError(f"{path}: existing store has num_classes={store.num_classes}, "
                                    f"asked for {num_classes}; use a new folder")
            if class_names is not None and store.class_names is not None and store.class_names != list(class_names):
                raise CamStoreError(f"{path}: existing store has different class names")
            return store
        path.mkdir(parents=True, exist_ok=True)
        payload = {"format": STORE_FORMAT, "version": STORE_VERSION, "num_classes": num_classes,
                   "class_names": list(class_names) if class_names is not None else None, "meta": meta or {}}
        write_bytes_atomic(path / META_FILE, json.dumps(payload, indent=2, default=str).encode())
        return cls(path)

    # -- writing -------------------------------------------------------------------------------------
    def write(self, image_id: str, keys: np.ndarray, cams: np.ndarray, bg: np.ndarray | None = None) -> None:
        """Store one image's maps atomically (validated: sorted in-range keys, finite maps >= 0)."""
        _check_image_id(image_id)
        keys = np.asarray(keys)
        if keys.size and not np.issubdtype(keys.dtype, np.integer):
            raise CamStoreError(f"{self.path}: image {image_id!r}: keys must be integers, got {keys.dtype}")
        keys = keys.astype(np.int64).reshape(-1) if keys.ndim <= 1 else keys
        cams = np.ascontiguousarray(cams, dtype=np.float32)
        if cams.ndim == 2 and len(keys) == 0:
            cams = cams.reshape(0, *cams.shape)
        bg = None if bg is None else np.ascontiguousarray(bg, dtype=np.float32)
        validate_maps(image_id, keys, cams, bg, self.num_classes, str(self.path))
        num_keys, height, width = cams.shape
        header = _HEADER.pack(_MAGIC, 1, _FLAG_BG if bg is not None else 0, num_keys, height, width, 0)
        padded = np.zeros(_keys_padded_len(num_keys), dtype="<i4")
        padded[:num_keys] = keys
        parts = [header, padded.tobytes(), cams.astype("<f4", copy=False).tobytes()]
        if bg is not None:
            parts.append(bg.astype("<f4", copy=False).tobytes())
        write_bytes_atomic(self.path / f"{image_id}{CAM_SUFFIX}", b"".join(parts))

    # -- reading -------------------------------------------------------------------------------------
    def file_for(self, image_id: str) -> Path:
        return self.path / f"{image_id}{CAM_SUFFIX}"

    def read_full(self, image_id: str) -> CamRecord:
        """Keys, maps and the background map (if one was stored) of one image."""
        _check_image_id(image_id)
        path = self.file_for(image_id)
        try:
            with open(path, "rb", buffering=0) as f:
                head = f.read(_HEADER.size)
                if len(head) != _HEADER.size:
                    raise CamStoreError(f"{path}: image {image_id!r}: truncated CAM file (no header)")
                magic, version, flags, num_keys, height, width, _ = _HEADER.unpack(head)
                if magic != _MAGIC or version != 1:
                    raise CamStoreError(f"{path}: image {image_id!r}: not a CAM file (bad magic/version)")
                keys = np.empty(_keys_padded_len(num_keys), dtype="<i4")
                cams = np.empty((num_keys, height, width), dtype=np.float32)
                bg = np.empty((height, width), dtype=np.float32) if flags & _FLAG_BG else None
                for buf in (keys, cams, bg):
                    if buf is not None and buf.nbytes and f.readinto(buf) != buf.nbytes:
                        raise CamStoreError(f"{path}: image {image_id!r}: truncated CAM file")
        except FileNotFoundError:
            raise CamStoreError(f"{self.path}: no CAMs for image {image_id!r}") from None
        return CamRecord(keys[:num_keys].astype(np.int64), cams, bg)

    def read(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        """``(keys, cams)`` of one image: (K,) int64 and (K, H, W) float32."""
        record = self.read_full(image_id)
        return record.keys, record.cams

    def ids(self) -> list[str]:
        """Sorted ids of the images stored (temp files of unfinished writes are not listed)."""
        with os.scandir(self.path) as entries:
            return sorted(e.name[: -len(CAM_SUFFIX)] for e in entries
                          if e.name.endswith(CAM_SUFFIX) and not e.name.startswith("."))

    def __contains__(self, image_id: object) -> bool:
        return isinstance(image_id, str) and self.file_for(image_id).is_file()

    def __len__(self) -> int:
        return len(self.ids())

    def __repr__(self) -> str:
        return f"CamStore({str(self.path)!r}, num_classes={self.num_classes})"
