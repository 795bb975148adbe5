"""Decoded ground truth of a split, cached in one file that every evaluation of that split shares.

Decoding a split's PNG masks costs several times more than reading its CAMs, and every trial of a sweep
scores the same split. The cache holds each mask run-length encoded (run values uint8, run lengths
uint32: a VOC mask takes a few KB and decodes with one ``np.repeat``) with a CRC-32 per image.

* Keyed by the split's mask files: the file name carries a hash of the dataset root, the split, and
  every mask's id, size and mtime, so a changed, added or removed mask means a new cache.
* Written once, atomically: into a temp file in the cache folder, then renamed; a killed writer leaves
  at most a stray temp file. Then older caches of the same root and split, caches of dataset roots that
  no longer exist, and day-old temp files are removed.
* Verified on every read: the footer must list the split's ids; each image's bytes must match their
  CRC-32 and decode to H x W pixels. A damaged cache is reported (a warning), removed, and the image is
  decoded from its PNG instead: it is never silently trusted.

Location: ``$WSSS_GT_CACHE`` (a folder; ``off`` disables the cache), by default
``~/.cache/wsss-sweep/ground-truth``. Without a writable folder the evaluator decodes the PNGs as before.

File layout::

    b"WGTC" uint32 version                       (8 bytes)
    per image: run values uint8[runs] padded to 4 bytes, run lengths uint32[runs] (little-endian)
    footer: JSON {"key", "data_root", "split", "ids", "shapes", "offsets", "runs", "crc"}
    uint64 footer length, b"WGTC", uint32 version (16 bytes)
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
import time
import warnings
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError
from .ground_truth import MASK_DIR, read_gt_mask

FORMAT_VERSION = 1
_MAGIC = b"WGTC"
_HEAD = struct.Struct("<4sI")
_TAIL = struct.Struct("<Q4sI")
SUFFIX = ".wgt"
ENV = "WSSS_GT_CACHE"


class CacheDamaged(Exception):
    """A cache file failed verification (kept internal: callers fall back to the PNGs)."""


def cache_dir() -> Path | None:
    """The cache folder, or None when ``$WSSS_GT_CACHE`` is ``off``."""
    value = os.environ.get(ENV, "").strip()
    if value.lower() in ("off", "0", "false", "no"):
        return None
    if value:
        return Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "wsss-sweep" / "ground-truth"


def split_key(data_root: str | Path, split: str, ids: list[str]) -> tuple[str, str]:
    """(prefix, key): the prefix names the root and split, the key adds every mask's size and mtime."""
    root = str(Path(data_root).resolve())
    place = hashlib.sha256(f"{root}\0{split}".encode()).hexdigest()[:10]
    prefix = f"{_safe(split)}-{place}"
    digest = hashlib.sha256(f"{FORMAT_VERSION}\0{root}\0{split}\n".encode())
    masks = os.path.join(str(data_root), MASK_DIR)
    for image_id in ids:
        path = os.path.join(masks, f"{image_id}.png")  # plain strings: pathlib costs more than the stat
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise DataError(f"{path}: image {image_id!r}: label PNG not found") from None
        digest.update(f"{image_id}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return prefix, digest.hexdigest()[:20]


def _safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)[:40] or "split"


def encode(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run values (uint8) and run lengths (uint32) of a mask in row-major order."""
    flat = np.ascontiguousarray(mask).reshape(-1)
    if flat.size == 0:
        return np.zeros(0, np.uint8), np.zeros(0, np.uint32)
    starts = np.flatnonzero(np.concatenate(([True], flat[1:] != flat[:-1])))
    lengths = np.diff(np.append(starts, flat.size)).astype("<u4")
    return flat[starts].astype(np.uint8), lengths


def _record(values: np.ndarray, lengths: np.ndarray) -> bytes:
    pad = (-len(values)) % 4
    return values.tobytes() + b"\0" * pad + lengths.astype("<u4", copy=False).tobytes()


class _Writer:
    """Streams encoded masks into a temp file in the cache folder; ``finish`` renames it into place."""

    def __init__(self, target: Path, data_root: str, split: str, key: str):
        self.target = target
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=SUFFIX, dir=target.parent)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would lock other users out of a shared cache folder
        self.tmp = Path(tmp)
        self.file = os.fdopen(fd, "wb")
        self.file.write(_HEAD.pack(_MAGIC, FORMAT_VERSION))
        self.offset = _HEAD.size
        self.footer = {"key": key, "data_root": data_root, "split": split, "ids": [], "shapes": [],
                       "offsets": [], "runs": [], "crc": []}

    def append(self, item) -> None:
        image_id, shape, values, lengths = item
        blob = _record(values, lengths)
        self.file.write(blob)
        for name, value in (("ids", image_id), ("shapes", list(shape)), ("offsets", self.offset),
                            ("runs", len(values)), ("crc", zlib.crc32(blob))):
            self.footer[name].append(value)
        self.offset += len(blob)

    def finish(self) -> None:
        footer = json.dumps(self.footer, separators=(",", ":")).encode()
        self.file.write(footer + _TAIL.pack(len(footer), _MAGIC, FORMAT_VERSION))
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.target)

    def abort(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


class _BuildTask:
    """Decode and encode masks (run by parallel.run_sharded): workers return encoded lists; the parent's
    state is the writer, so masks stream to disk in split order."""

    def __init__(self, data_root: str, writer: _Writer):
        self.data_root, self.writer = data_root, writer

    def __getstate__(self):
        return {"data_root": self.data_root, "writer": None}

    def new_state(self):
        return self.writer

    def encode(self, image_id: str):
        mask = read_gt_mask(self.data_root, image_id)
        return (image_id, mask.shape, *encode(mask))

    def add(self, state, image_id: str) -> None:
        state.append(self.encode(image_id))

    def run(self, ids: list[str]):
        return [self.encode(i) for i in ids]

    @staticmethod
    def merge(total, part) -> None:
        for item in part:
            total.append(item)


class GroundTruth:
    """The split's ground truth, read from the cache when there is a valid one, else from the PNGs.

    Picklable (paths only): each process opens the cache file itself on first use."""

    def __init__(self, data_root: str | Path, cache_file: Path | None = None):
        self.data_root = str(data_root)
        self.cache_file = str(cache_file) if cache_file is not None else None
        self._index = None
        self._fd = None

    def __getstate__(self):
        return {"data_root": self.data_root, "cache_file": self.cache_file, "_index": None, "_fd": None}

    def read(self, image_id: str) -> np.ndarray:
        """(H, W) uint8 class indices of one image (255 = void)."""
        if self.cache_file is not None:
            try:
                return self._read_cached(image_id)
            except CacheDamaged as exc:
                self._give_up(str(exc))
        return read_gt_mask(self.data_root, image_id)

    def _open(self) -> dict:
        if self._index is None:
            self._fd = os.open(self.cache_file, os.O_RDONLY)
            footer = read_footer(self._fd, self.cache_file)
            self._index = {i: k for k, i in enumerate(footer["ids"])}
            self._footer = footer
        return self._index

    def _read_cached(self, image_id: str) -> np.ndarray:
        try:
            index = self._open()
        except OSError as exc:
            raise CacheDamaged(f"{self.cache_file}: unreadable ({exc})") from None
        k = index.get(image_id)
        if k is None:  # an id outside the cached split: read its PNG
            return read_gt_mask(self.data_root, image_id)
        f = self._footer
        runs, (h, w) = f["runs"][k], f["shapes"][k]
        size = runs + (-runs) % 4 + 4 * runs
        blob = os.pread(self._fd, size, f["offsets"][k])
        if len(blob) != size or zlib.crc32(blob) != f["crc"][k]:
            raise CacheDamaged(f"{self.cache_file}: image {image_id!r}: stored bytes fail their CRC-32 check")
        values = np.frombuffer(blob, np.uint8, runs)
        lengths = np.frombuffer(blob, "<u4", runs, offset=size - 4 * runs)
        if int(lengths.sum(dtype=np.int64)) != h * w:
            raise CacheDamaged(f"{self.cache_file}: image {image_id!r}: runs do not add up to {h}x{w} pixels")
        return np.repeat(values, lengths).reshape(h, w)

    def _give_up(self, reason: str) -> None:
        warnings.warn(f"ground-truth cache not used: {reason}; it is removed and the PNG masks are decoded "
                      "instead (the next evaluation rebuilds it)", RuntimeWarning, stacklevel=3)
        try:
            os.unlink(self.cache_file)
        except OSError:
            pass
        if self._fd is not None:
            os.close(self._fd)
        self.cache_file, self._index, self._fd = None, None, None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._index = None


def read_footer(fd: int, name: str) -> dict:
    """The footer of an open cache file; CacheDamaged if the file is not a complete cache."""
    size = os.fstat(fd).st_size
    if size < _HEAD.size + _TAIL.size:
        raise CacheDamaged(f"{name}: truncated ({size} bytes)")
    magic, version = _HEAD.unpack(os.pread(fd, _HEAD.size, 0))
    length, tail_magic, tail_version = _TAIL.unpack(os.pread(fd, _TAIL.size, size - _TAIL.size))
    if (magic, tail_magic) != (_MAGIC, _MAGIC) or version != FORMAT_VERSION or tail_version != FORMAT_VERSION:
        raise CacheDamaged(f"{name}: not a version-{FORMAT_VERSION} ground-truth cache")
    if length > size - _HEAD.size - _TAIL.size:
        raise CacheDamaged(f"{name}: footer length {length} does not fit the file")
    try:
        footer = json.loads(os.pread(fd, length, size - _TAIL.size - length))
        n = len(footer["ids"])
        if any(len(footer[k]) != n for k in ("shapes", "offsets", "runs", "crc")):
            raise ValueError("footer lists of different lengths")
    except (ValueError, KeyError, TypeError) as exc:
        raise CacheDamaged(f"{name}: unreadable footer ({exc})") from None
    return footer


def ground_truth(data_root: str | Path, split: str, ids: list[str], workers: int = 1) -> GroundTruth:
    """The ground truth of ``ids`` (the split's images, in order): from a verified cache, built now if
    there is none; from the PNGs when the cache is off or its folder is not writable."""
    folder = cache_dir()
    if folder is None:
        return GroundTruth(data_root)
    prefix, key = split_key(data_root, split, ids)
    target = folder / f"{prefix}-{key}{SUFFIX}"
    if target.is_file() and _valid(target, ids):
        return GroundTruth(data_root, target)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _build(data_root, split, ids, target, key, workers)
    except OSError as exc:
        warnings.warn(f"ground-truth cache off: cannot write {folder} ({exc}); decoding the PNG masks",
                      RuntimeWarning, stacklevel=2)
        return GroundTruth(data_root)
    _prune(folder, prefix, target)
    return GroundTruth(data_root, target)


def _prune(folder: Path, prefix: str, keep: Path) -> None:
    """After a build: remove older caches of this split, caches whose dataset root is gone (e.g. a test's
    temporary tree), and temp files a killed writer left over a day ago."""
    for path in folder.glob(f"*{SUFFIX}"):
        if path == keep:
            continue
        try:
            if path.name.startswith(".tmp-"):
                if time.time() - path.stat().st_mtime > 86400:
                    path.unlink()
                continue
            if path.name.startswith(f"{prefix}-"):
                path.unlink()
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                root = read_footer(fd, str(path)).get("data_root")
            finally:
                os.close(fd)
            if not isinstance(root, str) or not os.path.isdir(root):
                path.unlink()
        except (OSError, CacheDamaged):
            continue


def _valid(path: Path, ids: list[str]) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        footer = read_footer(fd, str(path))
    except CacheDamaged as exc:
        warnings.warn(f"ground-truth cache rebuilt: {exc}", RuntimeWarning, stacklevel=3)
        return False
    finally:
        os.close(fd)
    return footer["ids"] == list(ids)


def _build(data_root, split: str, ids: list[str], target: Path, key: str, workers: int) -> None:
    from .parallel import run_sharded

    writer = _Writer(target, str(Path(data_root).resolve()), split, key)
    try:
        run_sharded(_BuildTask(str(data_root), writer), ids, workers, f"ground-truth cache {split}")
        writer.finish()
    except BaseException:
        writer.abort()
        raise
