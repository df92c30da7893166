"""FMix masks (Harris et al., "FMix: Enhancing Mixed Sample Data Augmentation",
arXiv:2002.12047), written for this project.

An FMix mask is made in two steps:

1. a random grey image with mostly low spatial frequencies: complex Gaussian
   noise in the Fourier domain, each frequency scaled by ``1 / f**decay_power``,
   transformed back to pixels;
2. that image binarised by rank: the brightest ``lambda`` fraction of pixels
   becomes 1, the rest 0. With a soft boundary, the pixels ranked just around
   the threshold get a linear ramp from 1 down to 0 instead, over
   ``2 * soft`` of all pixels, where ``soft = min(max_soft, lambda,
   1 - lambda)`` (so ``max_soft=True``, read as 1.0, means the widest ramp
   allowed). The ramp is symmetric about the threshold, so the mask's mean
   stays ``lambda``.

Two versions with the same distribution: :func:`sample_mask` (NumPy, one
mask, per-sample augmentation in DataLoader workers) and
:func:`sample_masks_torch` (a batch of masks on any device, for augmentation
of whole batches).
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch


def frequency_scale(shape: tuple[int, int], decay_power: float) -> np.ndarray:
    """Amplitude ``1 / f**decay_power`` of each frequency of a real 2-D FFT.

    Parameters
    ----------
    shape : (int, int)
        Mask height and width in pixels.
    decay_power : float
        Exponent of the spectral decay; larger values give smoother masks.

    Returns
    -------
    np.ndarray of float64, shape (height, width // 2 + 1)
        The scale on ``numpy.fft.rfft2``'s grid. The zero frequency is
        clamped to the lowest non-zero one (``1 / max(shape)`` cycles per
        pixel) so the scale stays finite.
    """
    height, width = shape
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    frequency = np.sqrt(fx**2 + fy**2)
    return 1.0 / np.maximum(frequency, 1.0 / max(shape)) ** decay_power


def _ramp_bounds(lam: float, max_soft: float, pixels: int) -> tuple[int, int]:
    """Ranks ``(first, stop)`` of the soft ramp; ranks below ``first`` are 1.

    ``stop - first`` is even (twice the soft width, rounded to whole pixels
    and kept within the image) and the ramp's values sum to half its length,
    so the mask sums to ``floor(lam * pixels + 0.5)``. Rounding rather than
    truncating keeps the width stable when ``lam`` arrives as float32.
    """
    on = math.floor(lam * pixels + 0.5)
    half_width = min(math.floor(pixels * min(float(max_soft), lam, 1.0 - lam) + 0.5), pixels - on)
    return on - half_width, on + half_width


def _mask_from_ranks(ranks, first, stop):
    """Mask value of each pixel from its brightness rank (0 = brightest).

    Works on NumPy arrays and torch tensors alike (``first``/``stop``
    broadcast against ``ranks``). A ramp of length ``n = stop - first`` runs
    from 1 at rank ``first`` to 0 at rank ``stop - 1`` (``linspace(1, 0, n)``);
    with ``n == 0`` the mask is hard: 1 below ``first``, 0 from it on.
    """
    ramp_length = stop - first
    hard = ramp_length == 0  # then (stop - ranks) / 1, clipped: 1 below ``first``, 0 from it on
    return ((stop - 1 + hard - ranks) / (ramp_length - 1 + 2 * hard)).clip(0.0, 1.0)


def sample_mask(lam: float, decay_power: float, shape: tuple[int, int], max_soft: float,
                rng: np.random.Generator) -> np.ndarray:
    """Draw one FMix mask.

    Parameters
    ----------
    lam : float
        Fraction of the mask that is 1 (the weight of the first image), in [0, 1].
    decay_power : float
        Spectral decay exponent (the seed used 3).
    shape : (int, int)
        Mask height and width in pixels.
    max_soft : float or bool
        Widest soft boundary as a fraction of pixels; ``True`` reads as 1.0
        and is clipped to ``min(lam, 1 - lam)``; 0 gives a hard 0/1 mask.
    rng : np.random.Generator
        Source of randomness (the only one used).

    Returns
    -------
    np.ndarray of float32, shape (height, width)
        Values in [0, 1] with mean ``floor(lam * pixels + 0.5) / pixels``.
    """
    scale = frequency_scale(shape, decay_power)
    noise = rng.standard_normal((2, *scale.shape))
    grey = np.fft.irfft2(scale * (noise[0] + 1j * noise[1]), s=shape)
    pixels = grey.size
    order = np.argsort(-grey.ravel(), kind="stable")
    ranks = np.empty(pixels, dtype=np.int64)
    ranks[order] = np.arange(pixels)
    first, stop = np.array(_ramp_bounds(float(lam), max_soft, pixels))
    return _mask_from_ranks(ranks, first, stop).reshape(shape).astype(np.float32)


@functools.lru_cache(maxsize=16)
def _frequency_scale_torch(shape: tuple[int, int], decay_power: float, device: torch.device) -> torch.Tensor:
    """:func:`frequency_scale` as float32 on ``device``, made once per (shape, decay, device)."""
    return torch.from_numpy(frequency_scale(shape, decay_power)).to(device=device, dtype=torch.float32)


def _inverse_fft(spectrum: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """``torch.fft.irfft2(spectrum, s=shape)``; on the CPU NumPy's (float32 in NumPy 2).

    torch's CPU result depends on the number of threads in the last bits,
    NumPy's does not: a CPU mask must not depend on where it is made (a
    DataLoader worker has one thread, the main process several).
    """
    if spectrum.device.type != "cpu":
        return torch.fft.irfft2(spectrum, s=shape)
    return torch.from_numpy(np.fft.irfft2(spectrum.numpy(), s=shape))


def _brightness_order(grey: torch.Tensor) -> torch.Tensor:
    """Pixel numbers of each row from brightest to darkest, ties in pixel order.

    Parameters
    ----------
    grey : torch.Tensor of float32, shape (batch, pixels)

    Returns
    -------
    torch.Tensor of int64, shape (batch, pixels)

    Notes
    -----
    Off the CPU this is torch's stable sort. On the CPU, where torch's sort
    is slow, NumPy sorts one 64-bit integer per pixel instead: the
    brightness, negated, as an order-preserving integer (IEEE bits with the
    magnitude bits of negative values flipped) in the high half and the pixel
    number in the low half. That is the same order, about 4x faster.
    """
    if grey.device.type != "cpu":
        return torch.argsort(grey, dim=1, descending=True, stable=True)
    bits = (0.0 - grey).numpy().view(np.int32)  # 0.0 - x: both zeros become +0.0, as equal as in torch
    key = (bits ^ ((bits >> 31) & 0x7FFFFFFF)).astype(np.int64)
    key <<= 32
    key |= np.arange(grey.shape[1], dtype=np.int64)
    key.sort(axis=1)
    key &= 0xFFFFFFFF
    return torch.from_numpy(key)


def sample_masks_torch(lams: torch.Tensor, decay_power: float, shape: tuple[int, int], max_soft: float,
                       generator: torch.Generator | None = None,
                       device: torch.device | str | None = None) -> torch.Tensor:
    """Draw a batch of FMix masks with torch, on ``device``.

    Same distribution as :func:`sample_mask`, one mask per entry of ``lams``.
    The noise and its transform are float32 (the NumPy version: float64),
    which only changes which pixels tie in brightness (resolved in pixel
    order either way).

    Parameters
    ----------
    lams : torch.Tensor, shape (batch,)
        Fraction of each mask that is 1.
    decay_power, shape, max_soft
        As in :func:`sample_mask`.
    generator : torch.Generator, optional
        Source of randomness; it must live on ``device``.
    device : torch.device or str, optional
        Where the masks are made; defaults to the device of ``lams``.

    Returns
    -------
    torch.Tensor of float32, shape (batch, height, width)
        Values in [0, 1]; mask ``i`` has mean ``floor(lams[i] * pixels + 0.5) / pixels``.
    """
    device = torch.device(device) if device is not None else lams.device
    lams = lams.to(device=device, dtype=torch.float64)
    batch = lams.shape[0]
    height, width = shape
    pixels = height * width
    scale = _frequency_scale_torch((height, width), float(decay_power), device)
    noise = torch.randn((batch, 2, *scale.shape), generator=generator, device=device, dtype=torch.float32)
    grey = _inverse_fft(torch.complex(noise[:, 0], noise[:, 1]) * scale, shape)
    order = _brightness_order(grey.reshape(batch, pixels))
    on = torch.floor(lams * pixels + 0.5)
    soft = torch.minimum(torch.minimum(lams, 1.0 - lams), torch.full_like(lams, float(max_soft)))
    half_width = torch.minimum(torch.floor(pixels * soft + 0.5), pixels - on)
    first = (on - half_width)[:, None].float()
    stop = (on + half_width)[:, None].float()
    # The mask value of each rank (the sorted mask), put back at the pixels holding those ranks.
    values = _mask_from_ranks(torch.arange(pixels, device=device, dtype=torch.float32), first, stop)
    mask = torch.empty((batch, pixels), device=device).scatter_(1, order, values)
    return mask.reshape(batch, height, width)
