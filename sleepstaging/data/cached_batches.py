"""Whole batches read from the image cache: the Datasets and the DataLoader of the default path.

An item is a whole batch: its rows' uint8 pixels read from the image cache
(:mod:`image_cache`) in one call, as a :class:`batch_augment.CachedBatch`;
a training batch also carries the random plan of its augmentation
(:func:`batch_augment.draw_plan`, from a generator seeded by ``(seed,
epoch, rank, step)``), a validation or inference batch none. For a CUDA
model the batch travels as it is and :func:`batch_augment.finish_batch`
finishes it on the GPU; for a CPU model the same function finishes it here,
in the loader's workers, into reused shared memory
(:mod:`worker_transport`). :func:`loaders.make_train_loader` and
:func:`loaders.make_eval_loader` build these loaders.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from sleepstaging.data import fmix
from sleepstaging.data.batch_augment import CachedBatch, draw_plan, finish_batch
from sleepstaging.data.image_cache import ImageCache
from sleepstaging.recipe import DROPOUT_PROBABILITY
from sleepstaging.data.worker_transport import WorkerBlocks, input_errors_as_items, sendable


class NumberedBatches(Sampler):
    """The batches of ``sampler``'s order as ``(epoch, step, sample indices)`` keys.

    The epoch travels in the key (not in the dataset), so persistent
    workers see :meth:`set_epoch`.

    Parameters
    ----------
    sampler : DistributedSampler or loaders.StageBalancedSampler
        The epoch's order of samples.
    batch_size : int
    """

    def __init__(self, sampler: Sampler, batch_size: int):
        self.sampler = sampler
        self.batch_size = batch_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    def __iter__(self):
        indices = list(self.sampler)
        for step, start in enumerate(range(0, len(indices), self.batch_size)):
            yield self.epoch, step, indices[start:start + self.batch_size]


class _CachedBatches(Dataset):
    """Rows of a table read from the image cache, a whole batch per item.

    The cache is opened by :meth:`prepare` (the loader calls it before its
    first pass, in the main process), not on construction.

    Parameters
    ----------
    opener : callable
        Returns the :class:`ImageCache` (``open_cache`` with its arguments).
    rows : np.ndarray of int
        Table row of each sample.
    labels : np.ndarray of int64 or None
        Stage of each sample.
    finish : bool
        Finish batches here (:func:`batch_augment.finish_batch` on the CPU, in the worker)
        rather than leave the pixels and the plan to the model's device.
    workers : int
        The loader's workers: with ``finish``, each refills blocks of shared
        memory for its batches (:class:`worker_transport.WorkerBlocks`).
    """

    def __init__(self, opener, rows: np.ndarray, labels: np.ndarray | None, finish: bool, workers: int = 0):
        self.opener = opener
        self.cache: ImageCache | None = None
        self.rows = np.asarray(rows, dtype=np.int64)
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.finish = finish
        self.blocks = WorkerBlocks(workers) if finish and workers > 0 else None

    def prepare(self) -> None:
        """Open the cache, building what is missing or stale (once)."""
        if self.cache is None:
            self.cache = self.opener()

    def __len__(self) -> int:
        return len(self.rows)

    def _finished(self, batch: CachedBatch):
        """The item: ``batch`` finished here or not, as a worker sends it (:func:`worker_transport.sendable`)."""
        if self.finish:
            batch = finish_batch(batch, torch.device("cpu"), blocks=self.blocks)
        return sendable(batch, self.blocks)


class CachedEvalBatches(_CachedBatches):
    """Validation / inference batches: items are lists of sample indices (in order).

    Items: a :class:`batch_augment.CachedBatch` without a plan (labels None
    without a table's labels), or finished: float32 images [, one-hot targets].
    """

    @input_errors_as_items
    def __getitem__(self, indices):
        labels = None if self.labels is None else torch.from_numpy(self.labels[indices])
        return self._finished(CachedBatch(torch.from_numpy(self.cache.read(self.rows[indices])), labels, None))


class CachedTrainBatches(_CachedBatches):
    """Training batches with the random plan of their augmentation.

    An item's key is ``(epoch, step, sample indices)``; everything random
    about the batch is drawn by :func:`batch_augment.draw_plan` from a
    generator seeded by ``(seed, epoch, rank, step)``, partners uniform over
    all training samples.

    Items: a :class:`batch_augment.CachedBatch` whose pixels hold the
    batch's images, then its partners', with its :class:`batch_augment.BatchPlan`;
    or, finished: float32 images and targets.

    Parameters
    ----------
    img_size : (int, int)
        Model input size in pixels, (height, width).
    seed, rank : int
        Keys of the batches' generators.
    fmix_enabled, cutmix_enabled : bool
    dropout_probability : float
    fmix_spectrum : {"original", "isotropic"}
    integer_targets : bool
        See :func:`batch_augment.draw_plan`.
    (The others as for :class:`_CachedBatches`.)
    """

    def __init__(self, opener, rows: np.ndarray, labels: np.ndarray, img_size, seed: int, rank: int,
                 fmix_enabled: bool, cutmix_enabled: bool, finish: bool,
                 dropout_probability: float = DROPOUT_PROBABILITY, fmix_spectrum: str = fmix.DEFAULT_SPECTRUM,
                 workers: int = 0, integer_targets: bool = False):
        super().__init__(opener, rows, labels, finish, workers)
        self.shape = tuple(img_size)
        self.seed, self.rank = seed, rank
        self.plan_options = dict(fmix_enabled=fmix_enabled, cutmix_enabled=cutmix_enabled,
                                 dropout_probability=dropout_probability, fmix_spectrum=fmix_spectrum,
                                 integer_targets=integer_targets)

    @input_errors_as_items
    def __getitem__(self, key):
        epoch, step, indices = key
        rng = np.random.default_rng([self.seed, epoch, self.rank, step])
        own = np.asarray(indices, dtype=np.int64)
        partners, plan = draw_plan(rng, len(own), len(self), self.shape, **self.plan_options)
        members = np.concatenate([own, partners])
        batch = CachedBatch(torch.from_numpy(self.cache.read(self.rows[members])),
                            torch.from_numpy(self.labels[members]), plan)
        return self._finished(batch)


class CachedLoader(DataLoader):
    """A DataLoader over :class:`CachedTrainBatches` or :class:`CachedEvalBatches`: opens the cache first.

    The cache is opened (built where missing or stale) before the loader's first pass, in the main process.
    """

    def __iter__(self):
        self.dataset.prepare()
        return super().__iter__()
