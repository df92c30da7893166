"""How an item travels from a DataLoader worker to the training process.

DataLoader pickles what a worker returns and shares every tensor in it
through a shared-memory block of its own, created, mapped and passed as a
file descriptor. For the batches of this project that costs more than the
work of making them, so this module decides how each part travels:

- finished images in blocks of shared memory that each worker reuses
  (:class:`WorkerBlocks`): a new 19 MB block for every batch cost 26 ms of
  a worker's 57 ms at 224 px (creating it, then a page fault for every
  4 KiB of it), refilling one the worker holds costs 3 ms; alone this took
  the default loader from 1,040 to 1,342 images/s at 224 px (the loader
  section of docs/speed.md);
- every other tensor (labels, targets, a batch's random plan) by value,
  inside the pickle (:func:`sendable`);
- bad input met in a worker as an item holding its one-line message,
  raised again as an :class:`InputError` by :func:`iterate_batches` in the
  training process (DataLoader would raise it with the worker's whole
  traceback as its message).

Outside a worker (``workers=0``) items are left as they are.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import uuid
import weakref

import torch
from torch.utils.data import default_collate, get_worker_info

from sleepstaging.script_io import InputError

# The field of a batch left for the model's device (a dataclass, such as batch_augment.CachedBatch) that
# travels in shared memory: its pixels. Its other tensors travel by value.
SHARED_FIELD = "pixels"


# --------------------------------------------------------------------------
# Finished images in reused shared memory
# --------------------------------------------------------------------------
def _shared_images(shape: tuple[int, int, int, int], memory_format: torch.memory_format,
                   storage: torch.UntypedStorage | None = None) -> torch.Tensor:
    """An uninitialised float32 batch in ``storage``, or in a new block of shared memory."""
    strides = torch.empty(shape, device="meta", memory_format=memory_format).stride()
    if storage is None:
        storage = torch.UntypedStorage._new_shared(math.prod(shape) * 4)
    return torch.empty(0, dtype=torch.float32).set_(storage, 0, shape, strides)


class WorkerBlocks:
    """Shared memory for the batches finished in a DataLoader's workers, reused once the training process lets go.

    A batch finished in a worker travels to the training process in shared
    memory; made there from the start, it is sent without a copy. A new
    block for every batch costs about as much as the batch's whole
    augmentation at 224 px (see the module's docstring). So each worker
    keeps up to :attr:`SLOTS` blocks and refills one that the training
    process no longer uses. ``flags`` (shared, one row per worker) holds 1
    for a block from the moment its worker takes it until no tensor of the
    training process shares it any more: a finalizer on the storage there
    clears it (see :func:`_received_images`). A batch that never arrives (a
    pass broken off, a worker stopped) keeps its block taken; when none is
    free the worker uses a new block once, as without reuse.

    Made in the training process before the workers start (the dataset
    carries it to them); outside a worker batches use ordinary memory.

    Parameters
    ----------
    workers : int
        The loader's worker processes.
    """

    SLOTS = 6

    def __init__(self, workers: int):
        self.flags = torch.zeros((max(workers, 1), self.SLOTS), dtype=torch.uint8).share_memory_()
        self.token = uuid.uuid4().hex  # how a received batch finds these flags in the training process
        _BLOCK_FLAGS[self.token] = self.flags
        self._storages: dict[int, torch.UntypedStorage] = {}  # slot -> block, in a worker

    def __getstate__(self) -> dict:
        return {"flags": self.flags, "token": self.token, "_storages": {}}

    def empty(self, shape: tuple[int, int, int, int], memory_format: torch.memory_format) -> torch.Tensor:
        """An uninitialised float32 batch: in a worker, in one of its shared blocks (or a new one)."""
        worker = get_worker_info()
        if worker is None:
            return torch.empty(shape, memory_format=memory_format)
        if worker.id >= len(self.flags):
            return _shared_images(shape, memory_format)
        nbytes = math.prod(shape) * 4
        for slot, taken in enumerate(self.flags[worker.id].tolist()):
            if taken:
                continue
            storage = self._storages.get(slot)
            if storage is None or storage.nbytes() < nbytes:
                storage = self._storages[slot] = torch.UntypedStorage._new_shared(nbytes)
            self.flags[worker.id, slot] = 1
            return _shared_images(shape, memory_format, storage)
        return _shared_images(shape, memory_format)

    def pooled(self, images: torch.Tensor):
        """``images`` as a worker sends them: in a block of the pool, one that frees itself after use."""
        pointer = images.untyped_storage().data_ptr()
        for slot, storage in self._storages.items():
            if storage.data_ptr() == pointer:
                return _PooledImages(images, self.token, get_worker_info().id * self.SLOTS + slot)
        return images


# WorkerBlocks' flags by token, in the training process (forgotten with their blocks).
_BLOCK_FLAGS: weakref.WeakValueDictionary[str, torch.Tensor] = weakref.WeakValueDictionary()


class _PooledImages:
    """A worker's batch in a pooled block; unpickled in the training process as the plain tensor."""

    def __init__(self, images: torch.Tensor, token: str, index: int):
        self.images, self.token, self.index = images, token, index

    def __reduce__(self):
        return _received_images, (self.images, self.token, self.index)


def _received_images(images: torch.Tensor, token: str, index: int) -> torch.Tensor:
    """In the training process: ``images``, whose block is marked free again once its storage is gone."""
    flags = _BLOCK_FLAGS.get(token)
    if flags is not None:
        weakref.finalize(images.untyped_storage(), _free_block, flags, index)
    return images


def _free_block(flags: torch.Tensor, index: int) -> None:
    flags.view(-1)[index] = 0


# --------------------------------------------------------------------------
# Small tensors by value
# --------------------------------------------------------------------------
class _InlineTensor:
    """A small tensor that a worker sends by value (unpickled as a tensor).

    Every tensor a worker returns otherwise travels in a shared-memory
    block of its own, created, mapped and passed as a file descriptor:
    for a batch's labels, plan and targets, more than their bytes cost.
    """

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor

    def __reduce__(self):
        return torch.from_numpy, (self.tensor.numpy(),)


def map_tensors(value, function):
    """``value`` with ``function`` applied to every tensor in it: itself, or a dataclass's fields (recursively).

    Anything else is returned as it is.
    """
    if torch.is_tensor(value):
        return function(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{field.name: map_tensors(getattr(value, field.name), function)
                                             for field in dataclasses.fields(value)})
    return value


def sendable(item, blocks: WorkerBlocks | None):
    """A loader item as a DataLoader worker returns it; unchanged outside a worker.

    Images travel in shared memory (finished images in ``blocks`` when
    given; a batch left for the device, a dataclass, its
    :data:`SHARED_FIELD`); every other tensor by value.
    """
    if get_worker_info() is None:
        return item
    if dataclasses.is_dataclass(item):
        return dataclasses.replace(item, **{field.name: map_tensors(getattr(item, field.name), _InlineTensor)
                                            for field in dataclasses.fields(item) if field.name != SHARED_FIELD})
    images, *others = item if isinstance(item, (list, tuple)) else (item,)
    if blocks is not None:
        images = blocks.pooled(images)
    if not others:
        return images
    return (images, *(_InlineTensor(other) for other in others))


# --------------------------------------------------------------------------
# Bad input met in a worker
# --------------------------------------------------------------------------
class _InputErrorItem:
    """What a DataLoader worker delivers instead of an item its bad input kept it from making.

    DataLoader raises a worker's exception again in the main process with
    the worker's whole traceback as its message; delivered as an item, the
    InputError's one-line message arrives as it was, and
    :func:`iterate_batches` raises it.
    """

    def __init__(self, error: InputError):
        self.message = str(error)


def input_errors_as_items(getitem):
    """Decorate a Dataset's ``__getitem__``: in a DataLoader worker, an InputError becomes an item.

    The item is an :class:`_InputErrorItem` holding the error's message.

    Outside a worker (``workers=0``, or the item asked for directly) the error is raised as it is.
    """
    @functools.wraps(getitem)
    def item_or_error(self, key):
        try:
            return getitem(self, key)
        except InputError as error:
            if get_worker_info() is None:
                raise
            return _InputErrorItem(error)
    return item_or_error


def collate(items: list):
    """DataLoader's default collation, or the first :class:`_InputErrorItem` among ``items``."""
    failed = [item for item in items if isinstance(item, _InputErrorItem)]
    return failed[0] if failed else default_collate(items)


def iterate_batches(loader):
    """Iterate ``loader``; an InputError met in a worker is raised here with its one-line message.

    The loaders' datasets deliver it as an item (see :func:`input_errors_as_items`).
    """
    for batch in loader:
        if isinstance(batch, _InputErrorItem):
            raise InputError(batch.message)
        yield batch
