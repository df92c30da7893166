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

Two spectra for step 1 (``spectrum``):

- ``"original"`` (the default): the grey image as the original's FMix
  library (``make_low_freq_image`` of the FMix reference code, which the
  original called) made it. That code samples the whole half-spectrum,
  then takes its first two *rows* (vertical frequencies 0 and 1 cycle) as
  the real and imaginary parts of a (``width // 2 + 1``, 2) array and
  inverts that: the rows' horizontal frequencies end up along the height,
  and along the width only 0 and 1 cycle remain. Every image is one smooth
  bump per axis, so every mask is one smooth region (measured with
  :func:`power_beyond_one_cycle`: no power beyond one cycle along the
  width, about 1 % along the height).
- ``"isotropic"``: the whole half-spectrum, as the FMix paper describes:
  masks with several blobs of all orientations.

Two versions with the same distributions: :func:`sample_mask` (NumPy, one
mask, per-sample augmentation in DataLoader workers) and
:func:`sample_masks_torch` (a batch of masks on any device, for augmentation
of whole batches). Both rank pixels in float32, ties in pixel order, and
threshold by selection (:func:`mask_from_grey`).
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch

SPECTRA = ("original", "isotropic")
DEFAULT_SPECTRUM = "original"
# Pixels of the masks made together on the CPU: their int64 keys fill about a core's L2 cache (512 KiB),
# so one 224 x 224 mask at a time (faster than 16 at once, docs/speed.md), 16 masks of 64 x 64 together.
_CHUNK_PIXELS = 2**16


def _inverse_frequency(fy: np.ndarray, fx: np.ndarray, shape: tuple[int, int], decay_power: float) -> np.ndarray:
    """``1 / f**decay_power`` at frequencies ``sqrt(fy**2 + fx**2)``, clamped below at ``1 / max(shape)``."""
    frequency = np.sqrt(fx**2 + fy**2)
    return 1.0 / np.maximum(frequency, 1.0 / max(shape)) ** decay_power


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
    return _inverse_frequency(np.fft.fftfreq(height)[:, None], np.fft.rfftfreq(width)[None, :], shape, decay_power)


@functools.lru_cache(maxsize=32)
def spectrum_scales(shape: tuple[int, int], decay_power: float, spectrum: str = DEFAULT_SPECTRUM) -> np.ndarray:
    """Scales of the real and imaginary parts of the Fourier coefficients that are drawn.

    The spectrum of a grey image is ``scales[0] * a + 1j * scales[1] * b``
    with ``a``, ``b`` standard normal, inverted with ``irfft2(..., s=shape)``.

    Parameters
    ----------
    shape : (int, int)
        Mask height and width in pixels (height at least 2 for ``"original"``).
    decay_power : float
        Spectral decay exponent.
    spectrum : {"original", "isotropic"}
        See the module's description.

    Returns
    -------
    np.ndarray of float64, shape (2, rows, columns), read-only
        ``"isotropic"``: ``frequency_scale`` twice, shape (2, height,
        width // 2 + 1). ``"original"``: shape (2, columns, 2) with
        ``columns`` the original's count of horizontal frequencies
        (``width // 2 + 1``, one more for an odd width): row ``k`` of the
        real part holds the scale of vertical frequency 0 at horizontal
        frequency ``k``, of the imaginary part that of vertical frequency 1
        (both in the two columns), which an inverse FFT over the last two
        axes reads as ``k`` cycles along the height and 0 or 1 along the width.
    """
    height, width = shape
    if spectrum == "isotropic":
        scale = frequency_scale(shape, decay_power)
        scales = np.stack([scale, scale])
    elif spectrum == "original":
        if height < 2 or width < 3:
            raise ValueError(f"the original's FMix spectrum needs at least 2 x 3 pixels, got {height} x {width}")
        columns = width // 2 + 1 + width % 2
        first_rows = _inverse_frequency(np.fft.fftfreq(height)[:2, None], np.fft.fftfreq(width)[None, :columns],
                                        shape, decay_power)  # (2, columns): vertical frequencies 0 and 1
        scales = np.repeat(first_rows[:, :, None], 2, axis=2)
    else:
        raise ValueError(f"unknown FMix spectrum {spectrum!r}; choose one of {', '.join(SPECTRA)}")
    scales.setflags(write=False)
    return scales


def _two_column_inverse(coefficients: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``irfft2(coefficients, s=shape)`` for coefficients of shape (..., rows, 2), in closed form.

    The inverse FFT along the rows (zero-padded or cut to ``height``) gives
    ``g0`` and ``g1`` per row; the real inverse along the width of a
    half-spectrum holding only ``[g0, g1]`` is ``(Re g0 + 2 Re g1 cos(2 pi x
    / W) - 2 Im g1 sin(2 pi x / W)) / W`` (width at least 3; the imaginary
    part of ``g0`` drops out, as in ``irfft``). Two multiply-adds per pixel
    instead of an FFT of every row.
    """
    rows = _two_column_rows(coefficients, shape)
    return _two_column_grey(rows, shape[1], np.empty(rows.shape[:-1] + (shape[1],), dtype=rows.real.dtype))


def _two_column_rows(coefficients: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``g0`` and ``g1`` of :func:`_two_column_inverse`, over ``W``: complex (..., height, 2)."""
    height, width = shape
    return np.fft.ifft(coefficients, n=height, axis=-2) / width


def _two_column_grey(rows: np.ndarray, width: int, out: np.ndarray) -> np.ndarray:
    """The grey image(s) of :func:`_two_column_rows`' ``rows``, written into ``out`` (..., height, width)."""
    cosine, sine = _width_waves(width, rows.real.dtype)
    np.multiply(rows[..., 1].real[..., None], cosine, out=out)
    out += rows[..., 1].imag[..., None] * sine
    out += rows[..., 0].real[..., None]
    return out


@functools.lru_cache(maxsize=16)
def _width_waves(width: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """``2 cos(2 pi x / W)`` and ``-2 sin(2 pi x / W)`` for x = 0 .. W - 1, in ``dtype`` (read-only)."""
    angle = 2.0 * np.pi * np.arange(width) / width
    waves = (2.0 * np.cos(angle)).astype(dtype), (-2.0 * np.sin(angle)).astype(dtype)
    for wave in waves:
        wave.setflags(write=False)
    return waves


def low_frequency_image(noise: np.ndarray, shape: tuple[int, int], decay_power: float,
                        spectrum: str = DEFAULT_SPECTRUM) -> np.ndarray:
    """The grey image(s) of standard normal ``noise``.

    Parameters
    ----------
    noise : np.ndarray of float32 or float64, shape (..., 2, rows, columns)
        Standard normal values, ``(2, rows, columns) = spectrum_scales(...).shape``:
        the real parts, then the imaginary parts.
    shape, decay_power, spectrum
        As for :func:`spectrum_scales`.

    Returns
    -------
    np.ndarray of noise's dtype, shape (..., height, width)
    """
    coefficients = _coefficients(noise, shape, decay_power, spectrum)
    if spectrum == "original":
        return _two_column_inverse(coefficients, shape)
    return np.fft.irfft2(coefficients, s=shape)


def _coefficients(noise: np.ndarray, shape: tuple[int, int], decay_power: float, spectrum: str) -> np.ndarray:
    """The complex spectrum of :func:`low_frequency_image`: ``noise`` scaled by :func:`spectrum_scales`."""
    scales = spectrum_scales(shape, decay_power, spectrum).astype(noise.dtype)
    return scales[0] * noise[..., 0, :, :] + 1j * (scales[1] * noise[..., 1, :, :])


def power_beyond_one_cycle(grey: np.ndarray) -> tuple[float, float]:
    """Shares of a grey image's power beyond one cycle along the height and along the width.

    Parameters
    ----------
    grey : np.ndarray, shape (..., height, width)
        One image or a stack; the power of a stack is summed before the
        shares are taken.

    Returns
    -------
    (float, float)
        Power (squared magnitude of the 2-D FFT of the mean-removed image)
        at more than 1 cycle per image height, and at more than 1 cycle per
        image width, each divided by the total.
    """
    grey = np.asarray(grey, dtype=np.float64)
    centred = grey - grey.mean(axis=(-2, -1), keepdims=True)
    power = np.abs(np.fft.fft2(centred)) ** 2
    power = power.reshape(-1, *power.shape[-2:]).sum(axis=0)
    height, width = power.shape
    cycles_y = np.abs(np.fft.fftfreq(height) * height)[:, None]
    cycles_x = np.abs(np.fft.fftfreq(width) * width)[None, :]
    total = power.sum()
    return (float((power * (cycles_y > 1)).sum() / total), float((power * (cycles_x > 1)).sum() / total))


def _pixels_on(lam: float, pixels: int) -> int:
    """What every mask of ``lam`` over ``pixels`` pixels sums to: ``floor(lam * pixels + 0.5)``."""
    return math.floor(lam * pixels + 0.5)


def mask_share(lam: float, pixels: int) -> float:
    """The mean of every mask of ``lam`` over ``pixels`` pixels, exactly (the mixed target's weight)."""
    return _pixels_on(lam, pixels) / pixels


def _ramp_bounds(lam: float, max_soft: float, pixels: int) -> tuple[int, int]:
    """Ranks ``(first, stop)`` of the soft ramp; ranks below ``first`` are 1.

    ``stop - first`` is even (twice the soft width, rounded to whole pixels
    and kept within the image) and the ramp's values sum to half its length,
    so the mask sums to ``floor(lam * pixels + 0.5)``. Rounding rather than
    truncating keeps the width stable when ``lam`` arrives as float32.
    """
    on = _pixels_on(lam, pixels)
    half_width = min(math.floor(pixels * min(float(max_soft), lam, 1.0 - lam) + 0.5), pixels - on)
    return on - half_width, on + half_width


def _mask_from_ranks(ranks, first, stop):
    """Mask value of each pixel from its brightness rank (0 = brightest).

    Works on NumPy arrays and torch tensors alike (``first``/``stop``
    broadcast against ``ranks``). A ramp of length ``n = stop - first`` runs
    from 1 at rank ``first`` to 0 at rank ``stop - 1``, the value at rank
    ``r`` being ``(stop - 1 - r) / (n - 1)``; with ``n == 0`` the mask is
    hard: 1 below ``first``, 0 from it on.
    """
    ramp_length = stop - first
    hard = ramp_length == 0  # then (stop - ranks) / 1, clipped: 1 below ``first``, 0 from it on
    return ((stop - 1 + hard - ranks) / (ramp_length - 1 + 2 * hard)).clip(0.0, 1.0)


def _brightness_keys(grey: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """One int64 per pixel whose ascending order is brightest first, ties in pixel order.

    Parameters
    ----------
    grey : np.ndarray of float32, shape (..., pixels)
    out : np.ndarray of int64, optional
        Where to write the keys.

    Returns
    -------
    np.ndarray of int64, same shape
        The brightness, negated, as an order-preserving integer (IEEE bits
        with the magnitude bits of negative values flipped) in the high half
        and the pixel number in the low half: all keys differ, and
        ``key & 0xFFFFFFFF`` is the pixel.
    """
    bits = np.subtract(np.float32(0.0), grey, dtype=np.float32).view(np.int32)  # both zeros become +0.0: a tie
    order = bits >> 31
    order &= 0x7FFFFFFF
    order ^= bits
    keys = np.left_shift(order, 32, dtype=np.int64, out=out)
    keys |= _pixel_numbers(grey.shape[-1])
    return keys


@functools.lru_cache(maxsize=8)
def _pixel_numbers(pixels: int) -> np.ndarray:
    """``0 .. pixels - 1`` as int64 (read-only)."""
    numbers = np.arange(pixels, dtype=np.int64)
    numbers.setflags(write=False)
    return numbers


@functools.lru_cache(maxsize=8)
def _countdown(pixels: int) -> np.ndarray:
    """``pixels - 1, ..., 1, 0`` as float64 (read-only): the tail of length ``n`` over ``n - 1`` is a ramp from 1 to 0."""
    countdown = np.arange(pixels - 1, -1, -1, dtype=np.float64)
    countdown.setflags(write=False)
    return countdown


def _mask_from_keys(keys: np.ndarray, first: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
    """Mask of one image from its :func:`_brightness_keys` (reordered in place), by selection.

    ``partition`` (linear time) puts the ``first`` smallest keys (the
    pixels that are 1) before index ``first`` and the ramp's keys before
    ``stop``; only the ramp's ``stop - first`` keys are sorted, to give each
    its value. Equal to :func:`_mask_from_ranks` of the pixels' full ranks
    (a hard mask, ``first == stop``, needs no sort at all). Written into
    ``out`` (float32, ``keys.size`` values) when given.
    """
    pixels = keys.size
    cuts = [cut for cut in (first, stop) if 0 < cut < pixels]
    if cuts:
        keys.partition(cuts)
    keys[first:stop].sort()
    keys &= 0xFFFFFFFF  # the pixel of each rank (the order within the ones and within the zeros does not matter)
    values = np.empty(pixels, dtype=np.float32)  # by rank: 1, then the ramp (as _mask_from_ranks gives it), then 0
    values[:first] = 1.0
    length = stop - first
    np.divide(_countdown(pixels)[pixels - length:], max(length - 1, 1), out=values[first:stop], casting="same_kind")
    values[stop:] = 0.0
    mask = np.empty(pixels, dtype=np.float32) if out is None else out
    mask[keys] = values
    return mask


def mask_from_grey(grey: np.ndarray, lam: float, max_soft: float) -> np.ndarray:
    """Binarise one grey image: the brightest ``lam`` of its pixels 1, with the soft ramp.

    Parameters
    ----------
    grey : np.ndarray, shape (height, width)
        Ranked in float32 (brightest first; equal values in pixel order,
        row by row).
    lam : float
        Fraction of the mask that is 1, in [0, 1].
    max_soft : float or bool
        Widest soft boundary as a fraction of pixels (``True`` reads as 1.0).

    Returns
    -------
    np.ndarray of float32, shape (height, width)
        Values in [0, 1] summing to ``floor(lam * pixels + 0.5)``.
    """
    keys = _brightness_keys(np.asarray(grey, dtype=np.float32).ravel())  # a new array: reordered freely
    first, stop = _ramp_bounds(float(lam), max_soft, keys.size)
    return _mask_from_keys(keys, first, stop).reshape(grey.shape)


def sample_mask(lam: float, decay_power: float, shape: tuple[int, int], max_soft: float,
                rng: np.random.Generator, spectrum: str = DEFAULT_SPECTRUM) -> np.ndarray:
    """Draw one FMix mask.

    Parameters
    ----------
    lam : float
        Fraction of the mask that is 1 (the weight of the first image), in [0, 1].
    decay_power : float
        Spectral decay exponent (the original used 3).
    shape : (int, int)
        Mask height and width in pixels.
    max_soft : float or bool
        Widest soft boundary as a fraction of pixels; ``True`` reads as 1.0
        and is clipped to ``min(lam, 1 - lam)``; 0 gives a hard 0/1 mask.
    rng : np.random.Generator
        Source of randomness (the only one used).
    spectrum : {"original", "isotropic"}
        The grey image's spectrum (see the module's description).

    Returns
    -------
    np.ndarray of float32, shape (height, width)
        Values in [0, 1] with mean ``floor(lam * pixels + 0.5) / pixels``.
    """
    noise = rng.standard_normal(spectrum_scales(shape, decay_power, spectrum).shape)
    return mask_from_grey(low_frequency_image(noise, shape, decay_power, spectrum), lam, max_soft)


def _grey_chunks(noise: np.ndarray, shape: tuple[int, int], decay_power: float, spectrum: str, chunk: int):
    """The grey images of ``noise`` (batch, 2, rows, columns), ``chunk`` at a time.

    Yields ``(start, grey)``, grey of noise's dtype, shape (count, pixels):
    the images ``start .. start + count - 1``. The isotropic images come
    from one transform of them all; the original spectrum's are made one
    chunk at a time into the same scratch array (valid until the next
    chunk), from a transform of all their rows at once.
    """
    batch = noise.shape[0]
    height, width = shape
    if spectrum != "original":
        whole = low_frequency_image(noise, shape, decay_power, spectrum).reshape(batch, height * width)
        for start in range(0, batch, chunk):
            yield start, whole[start:start + chunk]
        return
    rows = _two_column_rows(_coefficients(noise, shape, decay_power, spectrum), shape)
    scratch = np.empty((chunk, height, width), dtype=rows.real.dtype)
    for start in range(0, batch, chunk):
        count = min(chunk, batch - start)
        yield start, _two_column_grey(rows[start:start + count], width, scratch[:count]).reshape(count, height * width)


@functools.lru_cache(maxsize=16)
def _spectrum_scales_torch(shape: tuple[int, int], decay_power: float, spectrum: str,
                           device: torch.device) -> torch.Tensor:
    """:func:`spectrum_scales` as float32 on ``device``, made once per (shape, decay, spectrum, device)."""
    return torch.from_numpy(np.array(spectrum_scales(shape, decay_power, spectrum))).to(device=device,
                                                                                           dtype=torch.float32)


def _masks_on_device(grey: torch.Tensor, first: torch.Tensor, stop: torch.Tensor) -> torch.Tensor:
    """Masks of (batch, pixels) float32 ``grey`` off the CPU: one stable sort of every row.

    Same values as :func:`_mask_from_keys` (a batched sort is faster on a
    GPU than a selection per row).
    """
    pixels = grey.shape[1]
    order = torch.argsort(grey, dim=1, descending=True, stable=True)
    ranks = torch.arange(pixels, device=grey.device, dtype=torch.float64)
    values = _mask_from_ranks(ranks, first[:, None], stop[:, None]).float()
    return torch.empty_like(grey).scatter_(1, order, values)


def sample_masks_torch(lams: torch.Tensor, decay_power: float, shape: tuple[int, int], max_soft: float,
                       generator: torch.Generator | None = None, device: torch.device | str | None = None,
                       spectrum: str = DEFAULT_SPECTRUM) -> torch.Tensor:
    """Draw a batch of FMix masks with torch, on ``device``.

    Same distribution as :func:`sample_mask`, one mask per entry of ``lams``.
    The noise and its transform are float32 (the NumPy version: float64,
    ranked in float32 as here), which only changes which pixels tie in
    brightness (resolved in pixel order either way).

    Parameters
    ----------
    lams : torch.Tensor, shape (batch,)
        Fraction of each mask that is 1.
    decay_power, shape, max_soft, spectrum
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
    batch = lams.shape[0]
    height, width = shape
    pixels = height * width
    scales = _spectrum_scales_torch((height, width), float(decay_power), spectrum, device)
    noise = torch.randn((batch, *scales.shape), generator=generator, device=device, dtype=torch.float32)
    bounds = [_ramp_bounds(lam, max_soft, pixels) for lam in lams.tolist()]
    if device.type != "cpu":
        grey = torch.fft.irfft2(torch.complex(noise[:, 0] * scales[0], noise[:, 1] * scales[1]), s=shape)
        first, stop = torch.tensor(bounds, dtype=torch.float64, device=device).reshape(batch, 2).unbind(1)
        return _masks_on_device(grey.reshape(batch, pixels), first, stop).reshape(batch, height, width)
    # On the CPU, NumPy's transforms: unlike torch's, their last bits do not depend on the number of
    # threads, so a mask does not depend on where it is made (a DataLoader worker or the main process).
    # A few masks at a time, through the same scratch grey images and keys, which stay in the CPU's cache.
    masks = np.empty((batch, pixels), dtype=np.float32)
    chunk = min(batch, max(1, _CHUNK_PIXELS // pixels))
    keys = np.empty((chunk, pixels), dtype=np.int64)
    for start, grey in _grey_chunks(noise.numpy(), shape, decay_power, spectrum, chunk):
        count = grey.shape[0]
        _brightness_keys(grey, out=keys[:count])
        for row, row_keys in enumerate(keys[:count], start=start):
            _mask_from_keys(row_keys, *bounds[row], out=masks[row])
    return torch.from_numpy(masks).reshape(batch, height, width)
