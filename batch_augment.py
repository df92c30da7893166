"""The original's augmentation recipe, applied to whole batches on the model's device.

- the hole and box placement both paths share (the recipe's constants,
  ImageNet normalisation, the two dropouts, FMix and CutMix, are in
  :mod:`recipe`);
- :func:`finish_batch`: a batch of uint8 pixels from the image cache and the
  random plan of its augmentation (drawn by
  :class:`loader_vit_rgb.CachedTrainBatches`) made into model input on the
  model's device: normalisation, the two dropouts, FMix with torch masks and
  CutMix, with the per-sample path's distributions and, without
  augmentation, its tensors to the bit.
"""
from __future__ import annotations

import functools
import math
import os
import uuid
import weakref

# albumentations asks the package index for a newer version at import unless told not to:
# the project never touches the network by itself.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import albumentations as A  # noqa: E402
import numpy as np
import torch
import torch.nn.functional as F

import fmix
import psg_layout
from recipe import DROPOUT_HOLE_PIXELS, DROPOUT_HOLES, FMIX_DECAY_POWER, FMIX_MAX_SOFT, IMAGENET_MEAN, IMAGENET_STD
from psg_layout import input_shape

# From this many pixels a sample, the CPU augments a batch one sample at a time (_augmented_rows): its
# planes then stay in the CPU's cache. Below, the whole batch at once is faster (one sample's work is
# too small for the calls it takes); the two cross at about 160 x 160 px (measured in docs/speed.md).
_SAMPLE_AT_A_TIME_PIXELS = 160 * 160


def cutout_corners(centres: np.ndarray) -> np.ndarray:
    """albumentations 1.0 ``Cutout``'s hole corner (top or left) from its centre: ``max(centre - 4, 0)``.

    ``centres`` are uniform over ``0 .. size`` inclusive (Python's
    ``random.randint(0, size)``), ``size`` the height for rows and the
    width for columns; the hole then spans ``corner`` up to
    ``min(corner + 8, size)``: full 8 pixels at the top and left borders
    (centres 0 to 4 all give corner 0), clipped to 4 to 7 pixels at the
    bottom and right ones.
    """
    return np.maximum(centres - DROPOUT_HOLE_PIXELS // 2, 0)



def cutmix_box(shape: tuple[int, int], lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A box of ``1 - lam`` of the area around a uniform centre, clipped: (top, bottom, left, right)."""
    height, width = shape
    cut = np.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * cut), int(width * cut)
    centre_y, centre_x = rng.integers(height), rng.integers(width)
    top, bottom = np.clip([centre_y - cut_h // 2, centre_y + cut_h // 2], 0, height)
    left, right = np.clip([centre_x - cut_w // 2, centre_x + cut_w // 2], 0, width)
    return int(top), int(bottom), int(left), int(right)



@functools.lru_cache(maxsize=None)
def _normalisation(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """albumentations Normalize's own float32 constants: pixel mean and 1 / (std * 255), shape (1, 3, 1, 1)."""
    normalize = A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD, max_pixel_value=255.0)
    mean = torch.tensor(normalize.mean_np, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    scale = torch.tensor(normalize.denominator, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    return mean, scale


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
    augmentation at 224 px: creating and mapping 19 MB, then a page fault
    for every 4 KiB of it (26 of a worker's 57 ms a batch, see
    docs/speed.md), where refilling a block the worker already holds costs 3 ms. So each
    worker keeps up to :attr:`SLOTS` blocks and refills one that the
    training process no longer uses. ``flags`` (shared, one row per worker)
    holds 1 for a block from the moment its worker takes it until no tensor
    of the training process shares it any more: a finalizer on the storage
    there clears it (see :func:`_received_images`). A batch that never
    arrives (a pass broken off, a worker stopped) keeps its block taken;
    when none is free the worker uses a new block once, as without reuse.

    Made in the training process before the workers start (the dataset
    carries it to them); outside a worker batches use ordinary memory.
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
        worker = torch.utils.data.get_worker_info()
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
                return _PooledImages(images, self.token, torch.utils.data.get_worker_info().id * self.SLOTS + slot)
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


def sendable(item, blocks: WorkerBlocks | None):
    """A loader item as a DataLoader worker returns it; unchanged outside a worker.

    Images (``pixels`` of a batch left for the model's device, or finished
    images) travel in shared memory, finished images in ``blocks`` when
    given; every other tensor by value.
    """
    if torch.utils.data.get_worker_info() is None:
        return item
    if isinstance(item, dict):
        return {key: _InlineTensor(value) if torch.is_tensor(value) and key != "pixels" else value
                for key, value in item.items()}
    images, *others = item if isinstance(item, (list, tuple)) else (item,)
    if blocks is not None:
        images = blocks.pooled(images)
    if not others:
        return images
    return (images, *(_InlineTensor(other) for other in others))


def _empty_images(shape: tuple[int, int, int, int], device: torch.device, memory_format: torch.memory_format,
                  blocks: WorkerBlocks | None) -> torch.Tensor:
    """An uninitialised float32 batch on ``device``; on the CPU from ``blocks`` when given."""
    if device.type == "cpu" and blocks is not None:
        return blocks.empty(shape, memory_format)
    return torch.empty(shape, device=device, memory_format=memory_format)


def _model_input(pixels: torch.Tensor, keep: torch.Tensor | None, memory_format: torch.memory_format,
                 blocks: WorkerBlocks | None) -> torch.Tensor:
    """``(pixels - keep * mean) / (std * 255)``: float32 (n, 3, H, W) from (n, C, H, W), C = 1 or 3.

    Normalising a pixel ``p`` and then dropping it (0) or mixing it with a
    share ``m``, as the per-sample path does, equals normalising
    ``m * keep * p`` with the mean taken ``m * keep`` times: augmentation
    works on one channel and the three are made only here. With ``keep``
    None or all 1 (no augmentation) it is albumentations' Normalize to the bit.
    On the CPU ``blocks`` gives the memory (shared in a DataLoader worker).
    """
    mean, scale = _normalisation(pixels.device)
    count, _, height, width = pixels.shape
    out = _empty_images((count, 3, height, width), pixels.device, memory_format, blocks)
    if keep is None:
        torch.sub(pixels, mean, out=out)
    else:
        torch.addcmul(pixels, keep, -mean, out=out)
    return out.mul_(scale)


def dropout_keep(corners: torch.Tensor, applied: torch.Tensor, img_size) -> torch.Tensor:
    """0 where a hole of an applied dropout covers a pixel, else 1.

    Parameters
    ----------
    corners : torch.Tensor of int64, shape (n, dropouts, holes, 2)
        (top, left) of each hole of ``DROPOUT_HOLE_PIXELS`` x
        ``DROPOUT_HOLE_PIXELS``, clipped at the bottom and right borders.
    applied : torch.Tensor of bool, shape (n, dropouts)
    img_size : int or (int, int)
        One size (square) or (height, width) in pixels (see :func:`psg_layout.input_shape`).

    Returns
    -------
    torch.Tensor of float32, shape (n, 1, height, width)
    """
    keep = torch.ones((corners.shape[0], 1, *input_shape(img_size)), device=corners.device)
    _drop_holes(keep, corners, applied)
    return keep


def _hole_numbers(corners: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """int64 (n, dropouts, holes, 8, 8): the number (``row * width + column``) of each pixel of each hole.

    A hole's part beyond the bottom or right border is clamped onto its own
    last row or column, which it covers anyway (so numbers repeat there).
    """
    span = torch.arange(DROPOUT_HOLE_PIXELS, device=corners.device)
    rows = (corners[..., 0, None, None] + span[:, None]).clamp(max=height - 1)
    cols = (corners[..., 1, None, None] + span[None, :]).clamp(max=width - 1)
    return rows * width + cols


def _drop_holes(planes: torch.Tensor, corners: torch.Tensor, applied: torch.Tensor) -> None:
    """In place: 0 in every plane of (n, planes, H, W) where a hole of an applied dropout lies.

    A product with 0 (dropped) or 1 (a dropout not applied), only at the
    holes' pixels (:func:`_hole_numbers`).
    """
    count, depth, height, width = planes.shape
    pixels = _hole_numbers(corners, height, width).reshape(count, 1, -1)
    kept = (~applied)[..., None, None, None].expand(*applied.shape, DROPOUT_HOLES, DROPOUT_HOLE_PIXELS,
                                                    DROPOUT_HOLE_PIXELS).reshape(count, 1, -1).to(planes.dtype)
    planes.view(count, depth, height * width).scatter_reduce_(
        2, pixels.expand(-1, depth, -1), kept.expand(-1, depth, -1), reduce="prod")


def _mix(planes, rows, partners, weight) -> None:
    """In place: samples ``rows`` become ``weight`` of themselves plus ``1 - weight`` of ``partners``.

    ``partners`` holds one member of ``planes`` per row, ``weight`` one (1, H, W) plane per row.
    """
    for row, partner, row_weight in zip(rows.tolist(), partners.tolist(), weight):
        torch.lerp(planes[partner], planes[row], row_weight, out=planes[row])


def _cutmix_outside(batch: dict, height: int, width: int) -> torch.Tensor:
    """bool (k, H, W): True outside each CutMix row's box (the sample's own pixels)."""
    device = batch["cutmix_boxes"].device
    rows, cols = torch.arange(height, device=device), torch.arange(width, device=device)
    top, bottom, left, right = (batch["cutmix_boxes"][:, i, None] for i in range(4))
    return ~(((rows >= top) & (rows < bottom))[:, :, None] & ((cols >= left) & (cols < right))[:, None, :])


def _mixes(batch: dict, count: int, height: int, width: int) -> list[tuple]:
    """FMix, then CutMix, in that order: (rows, partner members, weight planes, shares) of each.

    Weight planes are float32 (n, 1, H, W); shares, float64 (n, 1), are
    each row's share of its own pixels, the weight of its own target:
    exactly ``floor(lam * pixels + 0.5) / pixels`` for FMix (what its
    masks sum to), the area outside the box for CutMix.
    """
    fmix_rows, cutmix_rows = batch["fmix_rows"], batch["cutmix_rows"]
    device = fmix_rows.device
    mixes = []
    if len(fmix_rows):
        shares = torch.tensor([fmix.mask_share(lam, height * width) for lam in batch["fmix_lams"].tolist()],
                              dtype=torch.float64, device=device)[:, None]
        mixes.append((fmix_rows, torch.arange(count, count + len(fmix_rows), device=device),
                      draw_fmix_masks(batch, device)[:, None], shares))
    if len(cutmix_rows):
        first = count + len(fmix_rows)
        outside = _cutmix_outside(batch, height, width)
        shares = outside.sum(dim=(1, 2), dtype=torch.float64)[:, None] / (height * width)
        mixes.append((cutmix_rows, torch.arange(first, first + len(cutmix_rows), device=device),
                      outside[:, None].float(), shares))
    return mixes


def _mixed_targets(labels: torch.Tensor, count: int, mixes: list, integer: bool = False) -> torch.Tensor:
    """float32 (count, 5): one-hot labels, mixed with the partners' by each row's share of its own pixels.

    ``integer``: the original's defect instead: the class indices mixed by
    the same shares, then cast to an integer (truncated), one-hot.
    """
    if integer:
        indices = labels.double()
        for rows, partners, _, shares in mixes:
            share = shares.flatten()
            indices[rows] = share * indices[rows] + (1.0 - share) * indices[partners]  # the original's arithmetic
        return F.one_hot(indices[:count].long(), psg_layout.NUM_CLASSES).float()
    targets = F.one_hot(labels, psg_layout.NUM_CLASSES).double()
    for rows, partners, _, shares in mixes:
        targets[rows] = torch.lerp(targets[partners], targets[rows], shares)
    return targets[:count].float()


def _augmented_planes(batch: dict, count: int, mixes: list, memory_format, blocks) -> torch.Tensor:
    """The augmented images of a batch, all samples at once (on a GPU; on the CPU below ``_SAMPLE_AT_A_TIME_PIXELS``).

    The C pixel planes and the keep plane of every member (see :func:`_model_input`), dropped and mixed together.
    """
    pixels = batch["pixels"]
    members, channels, height, width = pixels.shape
    planes = torch.empty((members, channels + 1, height, width), device=pixels.device)
    planes[:, :channels] = pixels
    planes[:, channels] = 1.0
    _drop_holes(planes, batch["corners"], batch["dropout"])
    for rows, partners, weight, _ in mixes:
        _mix(planes, rows, partners, weight)
    own = planes[:count]
    return _model_input(own[:, :channels], own[:, channels:], memory_format, blocks)


def _hole_pixels(corners: torch.Tensor, applied: torch.Tensor, height: int, width: int) -> list[torch.Tensor]:
    """Per member, the int64 numbers (:func:`_hole_numbers`) of the pixels its applied dropouts drop (repeats allowed)."""
    numbers = _hole_numbers(corners, height, width).numpy()  # NumPy: faster than torch on arrays this small
    return [torch.from_numpy(member[dropped].ravel()) for member, dropped in zip(numbers, applied.numpy())]


def _zero_at(planes: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """In place: 0 at the pixel numbers ``pixels`` of every plane of (planes, H, W) (any memory layout)."""
    planes.view(planes.shape[0], -1).index_fill_(1, pixels, 0.0)
    return planes


def _augmented_rows(batch: dict, count: int, mixes: list, memory_format, blocks) -> torch.Tensor:
    """The augmented images of a batch on the CPU, one sample at a time: :func:`_augmented_planes`'s values to the bit.

    A sample's planes stay in the CPU's cache, and what is 1 everywhere is
    not made: a sample neither mixed nor dropped is normalised straight
    from its uint8 pixels, a dropped one gets 0 at its holes afterwards
    (what normalising 0 with the mean taken 0 times gives), and the keep
    plane exists only where a mixed sample or its partner has holes (a
    mix of two planes of ones is ones). Used from
    ``_SAMPLE_AT_A_TIME_PIXELS`` pixels a sample, where it is the faster.
    """
    pixels = batch["pixels"]
    _, channels, height, width = pixels.shape
    holes = _hole_pixels(batch["corners"], batch["dropout"], height, width)
    mean, scale = (constant[0] for constant in _normalisation(pixels.device))  # (3, 1, 1)
    images = _empty_images((count, 3, height, width), pixels.device, memory_format, blocks)
    partners = {}  # own row -> [(partner member, weight plane), ...], FMix before CutMix
    for rows, members, weight, _ in mixes:
        for row, member, row_weight in zip(rows.tolist(), members.tolist(), weight):
            partners.setdefault(row, []).append((member, row_weight))
    ones = torch.ones((1, height, width))

    def planes_of(member: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        plane = pixels[member].float()
        if not len(holes[member]):
            return plane, None
        return _zero_at(plane, holes[member]), _zero_at(ones.clone(), holes[member])

    for row in range(count):
        out = images[row]
        if row not in partners:
            _zero_at(torch.sub(pixels[row], mean, out=out).mul_(scale), holes[row])
            continue
        plane, keep = planes_of(row)
        for member, weight in partners[row]:
            partner_plane, partner_keep = planes_of(member)
            plane = torch.lerp(partner_plane, plane, weight)
            if keep is not None or partner_keep is not None:
                keep = torch.lerp(ones if partner_keep is None else partner_keep, ones if keep is None else keep, weight)
        if keep is None:
            torch.sub(plane, mean, out=out)
        else:
            torch.addcmul(plane, keep, -mean, out=out)
        out.mul_(scale)
    return images


def draw_fmix_masks(batch: dict, device: torch.device) -> torch.Tensor:
    """The FMix masks of a cached training batch's plan, drawn on ``device`` from its ``noise_seed``.

    Returns
    -------
    torch.Tensor of float32, shape (len(batch["fmix_lams"]), height, width)
    """
    generator = torch.Generator(device=device).manual_seed(batch["noise_seed"])
    return fmix.sample_masks_torch(batch["fmix_lams"], FMIX_DECAY_POWER, tuple(batch["pixels"].shape[-2:]),
                                   FMIX_MAX_SOFT, generator=generator, device=device,
                                   spectrum=batch["fmix_spectrum"])


def finish_batch(batch, device: torch.device, memory_format: torch.memory_format = torch.contiguous_format,
                 blocks: WorkerBlocks | None = None):
    """Move a loader's batch to ``device`` and finish it for the model.

    A cached batch (a dict, see :class:`loader_vit_rgb.CachedTrainBatches` and
    :class:`loader_vit_rgb.CachedEvalBatches`) is normalised there and, for training,
    augmented: the two dropouts, FMix with masks drawn by
    :func:`draw_fmix_masks` on ``device``, then CutMix. Targets are the one-hot labels
    mixed by the share of pixels each image contributes. Ready batches (the
    per-sample path, or batches finished in workers) are only moved.
    ``blocks`` gives the images' memory on the CPU (:class:`WorkerBlocks`:
    reused shared memory in a DataLoader worker); None: ordinary memory.

    Returns
    -------
    images, or (images, targets) : float32 (batch, 3, H, W) in ``memory_format``, (batch, 5)
    """
    if not isinstance(batch, dict):
        if isinstance(batch, (list, tuple)):  # (images, targets), or (images,) from a TensorDataset
            images, *others = batch
            return (images.to(device, non_blocking=True).contiguous(memory_format=memory_format),
                    *(other.to(device, non_blocking=True) for other in others))
        return batch.to(device, non_blocking=True).contiguous(memory_format=memory_format)
    batch = {key: value.to(device, non_blocking=True) if torch.is_tensor(value) else value
             for key, value in batch.items()}
    pixels = batch["pixels"]
    if "corners" not in batch:
        images = _model_input(pixels.float(), None, memory_format, blocks)
        if "labels" not in batch:
            return images
        return images, F.one_hot(batch["labels"], psg_layout.NUM_CLASSES).float()
    members, _, height, width = pixels.shape
    count = members - len(batch["fmix_rows"]) - len(batch["cutmix_rows"])
    mixes = _mixes(batch, count, height, width)
    one_at_a_time = device.type == "cpu" and height * width >= _SAMPLE_AT_A_TIME_PIXELS
    augmented = _augmented_rows if one_at_a_time else _augmented_planes
    return (augmented(batch, count, mixes, memory_format, blocks),
            _mixed_targets(batch["labels"], count, mixes, batch.get("integer_targets", False)))

