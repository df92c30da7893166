"""The original's augmentation recipe, applied to whole batches on the model's device.

- the recipe's constants (ImageNet normalisation, the two dropouts, FMix,
  CutMix), which the per-sample path (:mod:`loader_vit_rgb`) uses too, and
  the hole and box placement both paths share;
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

# albumentations asks the package index for a newer version at import unless told not to:
# the project never touches the network by itself.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import albumentations as A  # noqa: E402
import numpy as np
import torch
import torch.nn.functional as F

import fmix
import psg_layout
from image_cache import input_shape

# ImageNet statistics, as the original normalised with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The original's CoarseDropout and Cutout with the albumentations 1.0 defaults it
# ran: 8 holes of 8 x 8 pixels each, filled with 0 after normalisation;
# CoarseDropout's holes lie inside the image, Cutout's are placed by a
# centre anywhere in it and clipped at the bottom and right borders (see loader_vit_rgb.Cutout).
DROPOUT_HOLES = 8
DROPOUT_HOLE_PIXELS = 8
DROPOUT_PROBABILITY = 0.5
# The original's FMix: applied to half of the samples, lambda ~ Beta(1, 1)
# clipped to [0.6, 0.7], decay power 3, max_soft=True (read as 1.0).
FMIX_PROBABILITY = 0.5
FMIX_ALPHA = 1.0
FMIX_LAMBDA_RANGE = (0.6, 0.7)
FMIX_DECAY_POWER = 3.0
FMIX_MAX_SOFT = 1.0
# The original's CutMix (off by default): lambda ~ Beta(1, 1) clipped to [0.3, 0.4].
CUTMIX_PROBABILITY = 0.5
CUTMIX_ALPHA = 1.0
CUTMIX_LAMBDA_RANGE = (0.3, 0.4)


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


def _empty_images(shape: tuple[int, int, int, int], device: torch.device,
                  memory_format: torch.memory_format) -> torch.Tensor:
    """An uninitialised float32 batch; in a DataLoader worker, in shared memory.

    A worker's batch travels to the main process in shared memory: made
    there from the start (as DataLoader's own collate does), it is sent
    without a copy.
    """
    if device.type != "cpu" or torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, device=device, memory_format=memory_format)
    strides = torch.empty(shape, device="meta", memory_format=memory_format).stride()
    storage = torch.UntypedStorage._new_shared(math.prod(shape) * 4)
    return torch.empty(0, dtype=torch.float32).set_(storage, 0, shape, strides)


def _model_input(pixels: torch.Tensor, keep: torch.Tensor | None, memory_format: torch.memory_format) -> torch.Tensor:
    """``(pixels - keep * mean) / (std * 255)``: float32 (n, 3, H, W) from (n, C, H, W), C = 1 or 3.

    Normalising a pixel ``p`` and then dropping it (0) or mixing it with a
    share ``m``, as the per-sample path does, equals normalising
    ``m * keep * p`` with the mean taken ``m * keep`` times: augmentation
    works on one channel and the three are made only here. With ``keep``
    None or all 1 (no augmentation) it is albumentations' Normalize to the bit.
    """
    mean, scale = _normalisation(pixels.device)
    count, _, height, width = pixels.shape
    out = _empty_images((count, 3, height, width), pixels.device, memory_format)
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
        One size (square) or (height, width) in pixels (see :func:`image_cache.input_shape`).

    Returns
    -------
    torch.Tensor of float32, shape (n, 1, height, width)
    """
    keep = torch.ones((corners.shape[0], 1, *input_shape(img_size)), device=corners.device)
    _drop_holes(keep, corners, applied)
    return keep


def _drop_holes(planes: torch.Tensor, corners: torch.Tensor, applied: torch.Tensor) -> None:
    """In place: 0 in every plane of (n, planes, H, W) where a hole of an applied dropout lies.

    A product with 0 (dropped) or 1 (a dropout not applied), only at the
    holes' pixels. A hole's part beyond the bottom or right border is
    clamped onto its own last row or column, which it covers anyway.
    """
    count, depth, height, width = planes.shape
    span = torch.arange(DROPOUT_HOLE_PIXELS, device=corners.device)
    rows = (corners[..., 0, None, None] + span[:, None]).clamp(max=height - 1)
    cols = (corners[..., 1, None, None] + span[None, :]).clamp(max=width - 1)
    pixels = (rows * width + cols).reshape(count, 1, -1)
    kept = (~applied)[..., None, None, None].expand(*applied.shape, DROPOUT_HOLES, DROPOUT_HOLE_PIXELS,
                                                    DROPOUT_HOLE_PIXELS).reshape(count, 1, -1).to(planes.dtype)
    planes.view(count, depth, height * width).scatter_reduce_(
        2, pixels.expand(-1, depth, -1), kept.expand(-1, depth, -1), reduce="prod")


def _mix(planes, targets, rows, partners, weight, share) -> None:
    """In place: samples ``rows`` become ``weight`` of themselves plus ``1 - weight`` of ``partners``.

    ``partners`` is a slice of ``planes``; ``weight`` holds one (1, H, W) plane per row.
    """
    for row, partner, row_weight in zip(rows.tolist(), range(partners.start, partners.stop), weight):
        torch.lerp(planes[partner], planes[row], row_weight, out=planes[row])
    targets[rows] = torch.lerp(targets[partners], targets[rows], share)


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


def finish_batch(batch, device: torch.device, memory_format: torch.memory_format = torch.contiguous_format):
    """Move a loader's batch to ``device`` and finish it for the model.

    A cached batch (a dict, see :class:`loader_vit_rgb.CachedTrainBatches` and
    :class:`loader_vit_rgb.CachedEvalBatches`) is normalised there and, for training,
    augmented: the two dropouts, FMix with masks drawn by
    :func:`draw_fmix_masks` on ``device``, then CutMix. Targets are the one-hot labels
    mixed by the share of pixels each image contributes. Ready batches (the
    per-sample path, or batches finished in workers) are only moved.

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
        images = _model_input(pixels.float(), None, memory_format)
        if "labels" not in batch:
            return images
        return images, F.one_hot(batch["labels"], psg_layout.NUM_CLASSES).float()
    members, channels, height, width = pixels.shape
    # The C pixel planes and the keep plane of every member (see _model_input), dropped and mixed together.
    planes = torch.empty((members, channels + 1, height, width), device=device)
    planes[:, :channels] = pixels
    planes[:, channels] = 1.0
    _drop_holes(planes, batch["corners"], batch["dropout"])
    targets = F.one_hot(batch["labels"], psg_layout.NUM_CLASSES).double()
    fmix_rows, cutmix_rows = batch["fmix_rows"], batch["cutmix_rows"]
    count = members - len(fmix_rows) - len(cutmix_rows)
    if len(fmix_rows):
        masks = draw_fmix_masks(batch, device)[:, None]
        share = torch.tensor([fmix.mask_share(lam, height * width) for lam in batch["fmix_lams"].tolist()],
                             dtype=torch.float64, device=device)[:, None]
        _mix(planes, targets, fmix_rows, slice(count, count + len(fmix_rows)), masks, share)
    if len(cutmix_rows):
        rows, cols = torch.arange(height, device=device), torch.arange(width, device=device)
        top, bottom, left, right = (batch["cutmix_boxes"][:, i, None] for i in range(4))
        outside = ~(((rows >= top) & (rows < bottom))[:, :, None] & ((cols >= left) & (cols < right))[:, None, :])
        share = outside.sum(dim=(1, 2), dtype=torch.float64)[:, None] / (height * width)
        first = count + len(fmix_rows)
        _mix(planes, targets, cutmix_rows, slice(first, first + len(cutmix_rows)), outside[:, None].float(), share)
    own = planes[:count]
    return _model_input(own[:, :channels], own[:, channels:], memory_format), targets[:count].float()

