"""Atomic file writes: a reader (another trial, a resumed run, `wsss sweep status`) never sees half a file.

Write to a hidden temp file beside the target, then rename it into place; a killed writer leaves the old
file (or none) and a stray ``.name.*.tmp`` that no reader lists. Imports nothing heavy (no torch), so the
tracking and launcher layers use it too.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        _write_and_replace(path, data)
    except OSError as exc:
        # A full disk: a record (stage.json, a trial record) must still be able to say why its stage failed. The
        # old file's blocks are allocated already, so it is overwritten in place when the new bytes fit in them:
        # not atomic, but a record cut short by a crash is read as damaged and rebuilt from the stage store.
        if exc.errno == errno.ENOSPC and _overwrite_in_place(path, data):
            return
        if exc.filename is None or Path(exc.filename).name.startswith(f".{path.name}."):
            # a failed write names no file, a refused create names the hidden temp file: name the one meant
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise


def _overwrite_in_place(path: Path, data: bytes) -> bool:
    """Write ``data`` over ``path`` within the blocks it holds; False when it does not fit (nothing written) or
    the write failed (the file may then be cut short: a damaged record)."""
    try:
        if len(data) > path.stat().st_blocks * 512:
            return False
        fd = os.open(path, os.O_WRONLY)
    except OSError:
        return False
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.ftruncate(fd, len(data))
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def _write_and_replace(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide results from other users of a shared cluster
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_json_atomic(path: str | Path, data: Any) -> None:
    write_bytes_atomic(path, (json.dumps(data, indent=2, default=str) + "\n").encode())
