"""Datasets (VOC layout, COCO 2014, the synthetic benchmark), augmentations and loaders.

``build_dataset(name, root, split)`` gives a dataset by name; every dataset yields samples
``dict(id, image, label, mask)`` (see :class:`~wsss_core.data.base.SegmentationDataset`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..lazy import lazy_exports
from ..registry import Registry

if TYPE_CHECKING:
    from .base import SegmentationDataset
    from .transforms import Transform

# Loaded on first use (numpy, PIL): `wsss --help` reaches this package through wsss_core.data.cli.
__getattr__ = lazy_exports(globals(), {"SegmentationDataset": ".base"})

DATASETS: Registry = Registry("dataset")


@DATASETS.register("voc")
def _build_voc(root, split, transform=None, **kw):
    from .voc import VOCSegmentation

    return VOCSegmentation(root, split, transform=transform, **kw)


@DATASETS.register("coco")
def _build_coco(root, split, transform=None, **kw):
    from .coco import COCOSegmentation

    return COCOSegmentation(root, split, transform=transform, **kw)


def build_dataset(name: str, root: str | Path, split: str, transform: Transform | None = None,
                  **kw: Any) -> SegmentationDataset:
    """A dataset by registry name ('voc' or 'coco'); an unknown name lists the valid ones."""
    return DATASETS.get(name, "dataset")(root, split, transform=transform, **kw)


__all__ = ["DATASETS", "SegmentationDataset", "build_dataset"]
