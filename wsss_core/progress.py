"""Progress for long work: a tqdm bar on a terminal, periodic count/rate lines in logs (Slurm, CI)."""

from __future__ import annotations

import os
import sys
from typing import Iterable, Iterator, TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it",
             disable: bool = False) -> Iterator[T]:
    """Wrap ``iterable`` in a progress display.

    On a terminal it is a live bar; otherwise (log files, batch jobs) tqdm prints a line with the
    count and rate at most every 30 s so logs stay readable. ``WSSS_PROGRESS=0`` turns it off.
    """
    if os.environ.get("WSSS_PROGRESS", "1") == "0":
        disable = True
    interactive = sys.stderr.isatty()
    return iter(tqdm(iterable, desc=desc, total=total, unit=unit, disable=disable,
                     mininterval=0.5 if interactive else 30.0, dynamic_ncols=interactive,
                     file=sys.stderr))
