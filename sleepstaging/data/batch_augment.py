"""The original's augmentation recipe, applied to whole batches on the model's device: one way to finish a batch.

- the hole and box placement both paths share (the recipe's constants,
  ImageNet normalisation, the two dropouts, FMix and CutMix, are in
  :mod:`recipe`);
- :class:`BatchPlan`, the random plan of a training batch's augmentation,
  drawn by :func:`draw_plan` (the only place that draws it, from the
  batch's generator) and carried with the batch's uint8 pixels in a
  :class:`CachedBatch` (made by :mod:`cached_batches`);
- :func:`finish_batch`: a batch made into model input on the model's
  device: normalisation, the two dropouts, FMix with torch masks and
  CutMix, with the per-sample path's distributions and, without
  augmentation (a batch whose plan is None: validation, inference), its
  tensors to the bit; :func:`device_batches`: every batch of a loader
  through it, the one way training, validation and inference batches
  reach a model.
"""
from __future__ import annotations

import dataclasses
import functools
import os

# albumentations asks the package index for a newer version at import unless told not to:
# the project never touches the network by itself.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import albumentations as A  # noqa: E402
import numpy as np
import torch
import torch.nn.functional as F

from sleepstaging.data import fmix
from sleepstaging.data import psg_layout
from sleepstaging.recipe import (CUTMIX_ALPHA, CUTMIX_LAMBDA_RANGE, CUTMIX_PROBABILITY, DROPOUT_HOLE_PIXELS, DROPOUT_HOLES,
                    FMIX_ALPHA, FMIX_DECAY_POWER, FMIX_LAMBDA_RANGE, FMIX_MAX_SOFT, FMIX_PROBABILITY, IMAGENET_MEAN,
                    IMAGENET_STD)
from sleepstaging.data.worker_transport import WorkerBlocks, iterate_batches, map_tensors

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


# --------------------------------------------------------------------------
# A batch's random plan, and the batch that carries it
# --------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class BatchPlan:
    """Everything random about a cached training batch's augmentation, drawn by :func:`draw_plan`.

    The batch has ``count`` samples; its members (``n``) are those
    samples, then the ``m`` FMix partners, then the ``k`` CutMix partners
    (``n = count + m + k``), in :attr:`CachedBatch.pixels` order. The
    per-sample path's distributions: see :func:`draw_plan`.

    Attributes
    ----------
    dropout : torch.Tensor of bool, shape (n, 2)
        Whether each member's CoarseDropout (column 0) and Cutout (column 1) applies.
    corners : torch.Tensor of int64, shape (n, 2, DROPOUT_HOLES, 2)
        (top, left) in pixels of each hole of each member's two dropouts
        (``DROPOUT_HOLE_PIXELS`` square, clipped at the bottom and right borders).
    fmix_rows : torch.Tensor of int64, shape (m,)
        The samples (0 .. count - 1) FMix mixes, in order; the ``i``-th
        one's partner is member ``count + i``.
    fmix_lams : torch.Tensor of float64, shape (m,)
        Their FMix lambda (the share of their own pixels the mask keeps, before rounding to whole pixels).
    cutmix_rows : torch.Tensor of int64, shape (k,)
        The samples CutMix mixes, in order (after FMix); the ``j``-th one's partner is member ``count + m + j``.
    cutmix_boxes : torch.Tensor of int64, shape (k, 4)
        The partner's box in pixels: (top, bottom, left, right), bottom and right exclusive.
    noise_seed : int
        Seed of the generator of the FMix masks, drawn where the batch is finished (:func:`draw_fmix_masks`).
    fmix_spectrum : {"original", "isotropic"}
        The FMix masks' spectrum (:mod:`fmix`).
    integer_targets : bool
        The original's integer mixed targets (``--original-defects``, see
        :class:`loaders.EpochImageDataset`).
    """

    dropout: torch.Tensor
    corners: torch.Tensor
    fmix_rows: torch.Tensor
    fmix_lams: torch.Tensor
    cutmix_rows: torch.Tensor
    cutmix_boxes: torch.Tensor
    noise_seed: int
    fmix_spectrum: str
    integer_targets: bool


@dataclasses.dataclass(frozen=True, eq=False)
class CachedBatch:
    """A batch of uint8 pixels from the image cache, not yet finished (:func:`finish_batch` finishes it).

    Attributes
    ----------
    pixels : torch.Tensor of uint8, shape (n, C, H, W)
        The members' images, C 1 (grey) or 3: the batch's samples, then
        (for training) the partners its :attr:`plan` mixes in.
    labels : torch.Tensor of int64, shape (n,), or None
        Each member's stage; None for unlabelled (test) rows.
    plan : BatchPlan or None
        The augmentation; None: no augmentation (validation and inference:
        normalisation alone).
    """

    pixels: torch.Tensor
    labels: torch.Tensor | None
    plan: BatchPlan | None

    def to(self, device: torch.device) -> CachedBatch:
        """This batch with every tensor (the plan's too) on ``device``."""
        return map_tensors(self, lambda tensor: tensor.to(device, non_blocking=True))

    def pin_memory(self) -> CachedBatch:
        """This batch with every tensor in pinned memory (DataLoader calls it with ``pin_memory=True``)."""
        return map_tensors(self, torch.Tensor.pin_memory)


def draw_plan(rng: np.random.Generator, count: int, population: int, shape: tuple[int, int], *,
              fmix_enabled: bool, cutmix_enabled: bool, dropout_probability: float, fmix_spectrum: str,
              integer_targets: bool) -> tuple[np.ndarray, BatchPlan]:
    """The random plan of a training batch of ``count`` samples, from ``rng`` (the batch's generator).

    With the per-sample path's distributions: per sample FMix with
    probability ``FMIX_PROBABILITY``, lambda ~ Beta(1, 1) clipped to
    ``FMIX_LAMBDA_RANGE`` and a partner uniform over the ``population``;
    the same for CutMix when enabled, with its box (:func:`cutmix_box`);
    per member (the samples and every partner) each of the two dropouts
    with ``dropout_probability``, the CoarseDropout's hole corners uniform
    over the positions where a hole fits (rows over the height, columns
    over the width, as albumentations 1.0), the Cutout's from centres
    uniform over the image (:func:`cutout_corners`). The FMix masks
    themselves are drawn where the batch is finished, from ``noise_seed``.

    Parameters
    ----------
    rng : np.random.Generator
        Drawn from in a fixed order (that order is part of every run's numbers).
    count : int
        Samples of the batch.
    population : int
        Training samples the partners are drawn from (0 .. population - 1).
    shape : (int, int)
        The images' (height, width) in pixels.
    fmix_enabled, cutmix_enabled : bool
    dropout_probability : float
    fmix_spectrum : {"original", "isotropic"}
    integer_targets : bool
        See :class:`BatchPlan`.

    Returns
    -------
    partners : np.ndarray of int64, shape (m + k,)
        The FMix partners, then the CutMix partners (samples of the population), to read after the batch's own.
    plan : BatchPlan
    """
    fmix_on = fmix_enabled & (rng.random(count) < FMIX_PROBABILITY)
    fmix_lams = np.clip(rng.beta(FMIX_ALPHA, FMIX_ALPHA, count), *FMIX_LAMBDA_RANGE)[fmix_on]
    fmix_partners = rng.integers(population, size=count)[fmix_on]
    cutmix_on = cutmix_enabled & (rng.random(count) < CUTMIX_PROBABILITY)
    cutmix_lams = np.clip(rng.beta(CUTMIX_ALPHA, CUTMIX_ALPHA, count), *CUTMIX_LAMBDA_RANGE)[cutmix_on]
    cutmix_partners = rng.integers(population, size=count)[cutmix_on]
    boxes = np.array([cutmix_box(shape, lam, rng) for lam in cutmix_lams], dtype=np.int64)
    members = count + len(fmix_partners) + len(cutmix_partners)
    holes = (members, DROPOUT_HOLES, 2)  # (top, left): rows drawn over the height, columns over the width
    size = np.array(shape)
    corners = np.stack([rng.integers(0, size - DROPOUT_HOLE_PIXELS + 1, size=holes),  # CoarseDropout
                        cutout_corners(rng.integers(0, size + 1, size=holes))], axis=1)  # Cutout
    dropout = rng.random((members, 2)) < dropout_probability
    noise_seed = int(rng.integers(2**62))
    plan = BatchPlan(dropout=torch.from_numpy(dropout), corners=torch.from_numpy(corners),
                     fmix_rows=torch.from_numpy(np.flatnonzero(fmix_on)), fmix_lams=torch.from_numpy(fmix_lams),
                     cutmix_rows=torch.from_numpy(np.flatnonzero(cutmix_on)),
                     cutmix_boxes=torch.from_numpy(boxes.reshape(-1, 4)), noise_seed=noise_seed,
                     fmix_spectrum=fmix_spectrum, integer_targets=integer_targets)
    return np.concatenate([fmix_partners, cutmix_partners]), plan


# --------------------------------------------------------------------------
# Finishing a batch
# --------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _normalisation(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """albumentations Normalize's own float32 constants: pixel mean and 1 / (std * 255), shape (1, 3, 1, 1)."""
    normalize = A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD, max_pixel_value=255.0)
    mean = torch.tensor(normalize.mean_np, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    scale = torch.tensor(normalize.denominator, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    return mean, scale


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
    img_size : (int, int)
        (height, width) in pixels.

    Returns
    -------
    torch.Tensor of float32, shape (n, 1, height, width)
    """
    keep = torch.ones((corners.shape[0], 1, *tuple(img_size)), device=corners.device)
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


def _cutmix_outside(plan: BatchPlan, height: int, width: int) -> torch.Tensor:
    """bool (k, H, W): True outside each CutMix row's box (the sample's own pixels)."""
    device = plan.cutmix_boxes.device
    rows, cols = torch.arange(height, device=device), torch.arange(width, device=device)
    top, bottom, left, right = (plan.cutmix_boxes[:, i, None] for i in range(4))
    return ~(((rows >= top) & (rows < bottom))[:, :, None] & ((cols >= left) & (cols < right))[:, None, :])


def _mixes(plan: BatchPlan, count: int, height: int, width: int) -> list[tuple]:
    """FMix, then CutMix, in that order: (rows, partner members, weight planes, shares) of each.

    Weight planes are float32 (n, 1, H, W); shares, float64 (n, 1), are
    each row's share of its own pixels, the weight of its own target:
    exactly ``floor(lam * pixels + 0.5) / pixels`` for FMix (what its
    masks sum to), the area outside the box for CutMix.
    """
    fmix_rows, cutmix_rows = plan.fmix_rows, plan.cutmix_rows
    device = fmix_rows.device
    mixes = []
    if len(fmix_rows):
        shares = torch.tensor([fmix.mask_share(lam, height * width) for lam in plan.fmix_lams.tolist()],
                              dtype=torch.float64, device=device)[:, None]
        mixes.append((fmix_rows, torch.arange(count, count + len(fmix_rows), device=device),
                      draw_fmix_masks(plan, (height, width), device)[:, None], shares))
    if len(cutmix_rows):
        first = count + len(fmix_rows)
        outside = _cutmix_outside(plan, height, width)
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


def _augmented_planes(batch: CachedBatch, count: int, mixes: list, memory_format, blocks) -> torch.Tensor:
    """The augmented images of a batch, all samples at once (on a GPU; on the CPU below ``_SAMPLE_AT_A_TIME_PIXELS``).

    The C pixel planes and the keep plane of every member (see :func:`_model_input`), dropped and mixed together.
    """
    pixels = batch.pixels
    members, channels, height, width = pixels.shape
    planes = torch.empty((members, channels + 1, height, width), device=pixels.device)
    planes[:, :channels] = pixels
    planes[:, channels] = 1.0
    _drop_holes(planes, batch.plan.corners, batch.plan.dropout)
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


def _augmented_rows(batch: CachedBatch, count: int, mixes: list, memory_format, blocks) -> torch.Tensor:
    """The augmented images of a batch on the CPU, one sample at a time: :func:`_augmented_planes`'s values to the bit.

    A sample's planes stay in the CPU's cache, and what is 1 everywhere is
    not made: a sample neither mixed nor dropped is normalised straight
    from its uint8 pixels, a dropped one gets 0 at its holes afterwards
    (what normalising 0 with the mean taken 0 times gives), and the keep
    plane exists only where a mixed sample or its partner has holes (a
    mix of two planes of ones is ones). Used from
    ``_SAMPLE_AT_A_TIME_PIXELS`` pixels a sample, where it is the faster.
    """
    pixels = batch.pixels
    _, channels, height, width = pixels.shape
    holes = _hole_pixels(batch.plan.corners, batch.plan.dropout, height, width)
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


def draw_fmix_masks(plan: BatchPlan, shape: tuple[int, int], device: torch.device) -> torch.Tensor:
    """The FMix masks of a training batch's plan, drawn on ``device`` from its ``noise_seed``.

    Parameters
    ----------
    plan : BatchPlan
    shape : (int, int)
        The batch's (height, width) in pixels.
    device : torch.device

    Returns
    -------
    torch.Tensor of float32, shape (len(plan.fmix_lams), height, width)
    """
    generator = torch.Generator(device=device).manual_seed(plan.noise_seed)
    return fmix.sample_masks_torch(plan.fmix_lams, FMIX_DECAY_POWER, shape, FMIX_MAX_SOFT, generator=generator,
                                   device=device, spectrum=plan.fmix_spectrum)


def finish_batch(batch, device: torch.device, memory_format: torch.memory_format = torch.contiguous_format,
                 blocks: WorkerBlocks | None = None):
    """Move a loader's batch to ``device`` and finish it for the model.

    A :class:`CachedBatch` is normalised there and, with a plan (training),
    augmented: the two dropouts, FMix with masks drawn by
    :func:`draw_fmix_masks` on ``device``, then CutMix. Targets are the
    one-hot labels mixed by the share of pixels each image contributes.
    Ready batches are only moved: batches finished by this function in a
    DataLoader worker (for a CPU model), and the per-sample path's
    (``--no-cache``, and inference's TTA rounds after the first), whose
    augmentation albumentations draws image by image in the workers: as a
    plan here they would get other numbers. ``blocks`` gives the images'
    memory on the CPU (:class:`worker_transport.WorkerBlocks`: reused
    shared memory in a DataLoader worker); None: ordinary memory.

    Returns
    -------
    images, or (images, targets) : float32 (batch, 3, H, W) in ``memory_format``, (batch, 5)
    """
    if not isinstance(batch, CachedBatch):
        if isinstance(batch, (list, tuple)):  # (images, targets), or (images,) from a TensorDataset
            images, *others = batch
            return (images.to(device, non_blocking=True).contiguous(memory_format=memory_format),
                    *(other.to(device, non_blocking=True) for other in others))
        return batch.to(device, non_blocking=True).contiguous(memory_format=memory_format)
    batch = batch.to(device)
    plan = batch.plan
    if plan is None:
        images = _model_input(batch.pixels.float(), None, memory_format, blocks)
        if batch.labels is None:
            return images
        return images, F.one_hot(batch.labels, psg_layout.NUM_CLASSES).float()
    members, _, height, width = batch.pixels.shape
    count = members - len(plan.fmix_rows) - len(plan.cutmix_rows)
    mixes = _mixes(plan, count, height, width)
    one_at_a_time = device.type == "cpu" and height * width >= _SAMPLE_AT_A_TIME_PIXELS
    augmented = _augmented_rows if one_at_a_time else _augmented_planes
    return (augmented(batch, count, mixes, memory_format, blocks),
            _mixed_targets(batch.labels, count, mixes, plan.integer_targets))


def device_batches(batches, device: torch.device, memory_format: torch.memory_format = torch.contiguous_format):
    """Every batch of a loader, finished on ``device`` by :func:`finish_batch`: how batches reach a model.

    Training, validation and inference all take their batches through
    this one step.

    Parameters
    ----------
    batches : iterable
        A DataLoader of this project (an InputError met in one of its
        workers is raised here, see :func:`worker_transport.iterate_batches`),
        or any iterable of its batches.
    device : torch.device
    memory_format : torch.memory_format
        The images' layout.

    Yields
    ------
    (images, targets) : float32 (batch, 3, H, W), and float32 (batch, 5) or None (unlabelled rows)
    """
    for batch in iterate_batches(batches):
        finished = finish_batch(batch, device, memory_format)
        images, *targets = finished if isinstance(finished, tuple) else (finished,)
        yield images, (targets[0] if targets else None)
