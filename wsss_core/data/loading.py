"""Batches for training and inference: reproducible augmentation and clean data errors from workers.

``build_loader`` wraps a torch DataLoader. Each sample is augmented with
``numpy.random.default_rng([seed, epoch, index])``, so the augmentation of an image depends only on
those three numbers: the same on every DDP rank, in every worker process, and after an exact resume.
Call ``loader.set_epoch(epoch)`` before each epoch (it also reaches a DistributedSampler).

A DataError raised while a worker reads a sample (a truncated JPEG, a bad mask) comes back to the main
process as that same one-line DataError, instead of torch's "Caught DataError in DataLoader worker
process 0 ... Original Traceback" text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from ..errors import DataError
from .transforms import Transform

Sample = dict[str, Any]
Batch = dict[str, Any]


@dataclass(frozen=True)
class _FailedSample:
    """Stands in for a sample whose reading raised DataError, so the message crosses processes intact."""

    message: str


def load_raw(dataset: Any, index: int) -> Sample:
    """The un-augmented sample ``index`` of a dataset (through Subset wrappers)."""
    if isinstance(dataset, Subset):
        return load_raw(dataset.dataset, dataset.indices[index])
    load = getattr(dataset, "load", None)
    return load(index) if callable(load) else dataset[index]


def dataset_transform(dataset: Any) -> Transform | None:
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return getattr(dataset, "transform", None)


class _AugmentedView(Dataset):
    """Index (epoch, i) → sample i augmented with rng [seed, epoch, i]; DataErrors become _FailedSample."""

    def __init__(self, dataset: Any, transform: Transform | None, seed: int):
        self.dataset = dataset
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Sample | _FailedSample:
        epoch, index = key
        try:
            sample = load_raw(self.dataset, index)
            if self.transform is not None:
                sample = self.transform(sample, np.random.default_rng([self.seed, epoch, index]))
            return sample
        except DataError as exc:
            return _FailedSample(str(exc))


class _EpochSampler(Sampler):
    """Yields (epoch, index) pairs; shuffles with a permutation drawn from (seed, epoch) if asked."""

    def __init__(self, length: int, base: Sampler | None, shuffle: bool, seed: int):
        self.length = length
        self.base = base
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.base) if self.base is not None else self.length

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.base is not None:
            order: Sequence[int] = list(self.base)
        elif self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.length).tolist()
        else:
            order = range(self.length)
        epoch = self.epoch
        return iter([(epoch, int(i)) for i in order])


def _stack(values: list[Any], key: str) -> Any:
    first = values[0]
    if isinstance(first, np.ndarray):
        shapes = {v.shape for v in values}
        if len(shapes) > 1:
            raise DataError(f"cannot batch {key!r}: samples have different shapes {sorted(shapes)}; add a "
                            f"RandomCrop to the transform or use batch_size=1")
        return torch.from_numpy(np.stack(values))
    if isinstance(first, torch.Tensor):
        return torch.stack(values)
    if isinstance(first, (int, float, np.integer, np.floating)) and not isinstance(first, bool):
        return torch.tensor(values)
    return list(values)


def collate_samples(samples: list[Sample]) -> Batch:
    """Stack samples: image float32 Nx3xHxW (after Normalize; uint8 HWC images become uint8 Nx3xHxW),
    label float32 NxC, mask int64 NxHxW with 255 ignore (None when no sample has one), id a list."""
    batch: Batch = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if key == "id":
            batch[key] = list(values)
        elif key == "image":
            images = [v if v.dtype != np.uint8 else np.ascontiguousarray(v.transpose(2, 0, 1)) for v in values]
            batch[key] = _stack(images, key)
        elif key == "label":
            batch[key] = _stack([np.asarray(v, np.float32) for v in values], key)
        elif key == "mask":
            if all(v is None for v in values):
                batch[key] = None
            elif any(v is None for v in values):
                missing = [s["id"] for s in samples if s["mask"] is None]
                raise DataError(f"cannot batch masks: images {', '.join(missing[:5])} have no mask while others "
                                f"do; use a split where every image has a mask")
            else:
                batch[key] = _stack([v.astype(np.int64) for v in values], key)
        else:
            batch[key] = _stack(values, key)
    return batch


class _CollateOrFail:
    """Collate, unless a sample failed: then pass its message on (picklable, unlike a closure)."""

    def __init__(self, collate_fn: Callable[[list[Sample]], Any]):
        self.collate_fn = collate_fn

    def __call__(self, samples: list[Sample | _FailedSample]) -> Any:
        for sample in samples:
            if isinstance(sample, _FailedSample):
                return sample
        try:
            return self.collate_fn(samples)
        except DataError as exc:
            return _FailedSample(str(exc))


class WsssLoader:
    """Iterable over batches with ``set_epoch``; raises a sample's DataError cleanly in the main process."""

    def __init__(self, dataset: Any, loader: DataLoader, sampler: _EpochSampler):
        self.dataset = dataset
        self.loader = loader
        self.sampler = sampler

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def set_epoch(self, epoch: int) -> None:
        self.sampler.epoch = epoch
        base_set_epoch = getattr(self.sampler.base, "set_epoch", None)
        if callable(base_set_epoch):
            base_set_epoch(epoch)  # DistributedSampler shuffles per epoch

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        for batch in self.loader:
            if isinstance(batch, _FailedSample):
                raise DataError(batch.message)
            yield batch


def build_loader(dataset: Any, batch_size: int, sampler: Sampler | None = None, shuffle: bool = False,
                 num_workers: int = 0, collate_fn: Callable[[list[Sample]], Any] | None = None,
                 drop_last: bool = False, seed: int = 0, transform: Transform | None = None) -> WsssLoader:
    """Batches of ``dataset`` with per-sample rng ``[seed, epoch, index]``.

    ``transform`` defaults to the dataset's own; ``sampler`` (e.g. a DistributedSampler) replaces the
    built-in order, otherwise ``shuffle`` draws a permutation from ``(seed, epoch)``.
    """
    if batch_size < 1:
        raise ValueError(f"build_loader: batch_size must be >= 1, got {batch_size}")
    if sampler is not None and shuffle:
        raise ValueError("build_loader: pass either a sampler or shuffle=True, not both")
    if transform is None:
        transform = dataset_transform(dataset)
    epoch_sampler = _EpochSampler(len(dataset), sampler, shuffle, seed)
    loader = DataLoader(
        _AugmentedView(dataset, transform, seed), batch_size=batch_size, sampler=epoch_sampler,
        num_workers=num_workers, collate_fn=_CollateOrFail(collate_fn or collate_samples),
        drop_last=drop_last, worker_init_fn=_limit_worker_threads if num_workers else None,
    )
    return WsssLoader(dataset, loader, epoch_sampler)


def _limit_worker_threads(_worker_id: int) -> None:
    torch.set_num_threads(1)  # workers decode images; intra-op threads would fight the trainer


def validate_dataset(dataset: Any) -> None:
    """Check in the main process, before training, that every listed file is there (DataError if not)."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    validate = getattr(dataset, "validate", None)
    if callable(validate):
        validate()
