"""Building blocks of the synthetic signals: control curves, coloured noise, events.

Per-second control curves smoothed and brought to a channel's rate; noise
with a given amplitude spectrum (bands with raised-cosine edges, pink),
partly shared between channels; on/off gates that are on for a local share
of the time; Poisson event times, stamping a waveform into a signal, and
per-second boxcars of events.
"""
from __future__ import annotations

import numpy as np
import scipy.fft
from scipy.ndimage import gaussian_filter1d
from scipy.special import ndtri


def smooth(values: np.ndarray, sigma_samples: float) -> np.ndarray:
    """Gaussian smoothing along the only axis, ``sigma_samples`` wide, ends held."""
    return gaussian_filter1d(values, sigma_samples, mode="nearest")


def upsample(per_second: np.ndarray, fs: float) -> np.ndarray:
    """Linear interpolation of a 1-Hz control curve onto ``fs`` samples per second."""
    n = int(round(len(per_second) * fs))
    return np.interp((np.arange(n) + 0.5) / fs, np.arange(len(per_second)) + 0.5, per_second)


def slow_noise(rng: np.random.Generator, n: int, sigma_samples: float) -> np.ndarray:
    """Unit-variance Gaussian noise smoothed over ``sigma_samples``."""
    noise = smooth(rng.standard_normal(n), sigma_samples)
    return noise / (noise.std() + 1e-12)


def gate_with_fraction(rng: np.random.Generator, fraction: np.ndarray, sigma_samples: float) -> np.ndarray:
    """A 0..1 on/off curve that is on for about ``fraction`` of the time, locally.

    A smoothed Gaussian process is compared with its ``1 - fraction``
    quantile, so on-periods last several ``sigma_samples`` and their share
    follows ``fraction`` (an array of the same length).
    """
    threshold = ndtri(1 - np.clip(fraction, 1e-4, 1 - 1e-4))
    return 1 / (1 + np.exp(-(slow_noise(rng, len(fraction), sigma_samples) - threshold) / 0.15))


def band_noise(rng: np.random.Generator, n: int, fs: float, shape, channels: int = 1, shared: float = 0.0):
    """Coloured Gaussian noise, unit rms per channel, shape (channels, n).

    ``shape(f)`` gives the amplitude spectrum at frequencies ``f`` (Hz);
    ``shared`` is the fraction of power common to all channels, as for one
    generator seen by several electrodes. One noise is drawn per call (one
    inverse FFT over the night, the costly step); each channel's own part is
    that noise read at a different point of the night, a fifth of the night
    or more apart, so the parts are independent over any stretch of time
    that matters.
    """
    length = scipy.fft.next_fast_len(n, real=True)
    gain = shape(np.fft.rfftfreq(length, 1 / fs)).astype(np.float32)
    used = np.flatnonzero(gain)
    spectrum = np.zeros(len(gain), dtype=np.complex64)
    spectrum[used] = (rng.standard_normal(len(used), dtype=np.float32)
                      + 1j * rng.standard_normal(len(used), dtype=np.float32)) * gain[used]
    noise = scipy.fft.irfft(spectrum, length)[:n]
    noise /= noise.std() + 1e-12
    if channels == 1:
        return noise[None, :]
    out = np.empty((channels, n), dtype=np.float32)
    spacing = n // (channels + 1)
    for channel in range(channels):
        shift = (channel + 1) * spacing
        out[channel, :shift] = noise[n - shift:]
        out[channel, shift:] = noise[:n - shift]
        out[channel] *= np.sqrt(1 - shared)
        out[channel] += np.sqrt(shared) * noise
    return out


def band(low: float, high: float, edge: float = 0.5):
    """Amplitude spectrum of a band with raised-cosine edges ``edge`` Hz wide."""
    def shape(f):
        rise = np.clip((f - (low - edge / 2)) / edge, 0, 1)
        fall = np.clip(((high + edge / 2) - f) / edge, 0, 1)
        return (0.5 - 0.5 * np.cos(np.pi * rise)) * (0.5 - 0.5 * np.cos(np.pi * fall))
    return shape


def pink(low: float, high: float):
    """1/f power spectrum between ``low`` and ``high`` Hz."""
    def shape(f):
        return np.where((f >= low) & (f <= high), 1 / np.sqrt(np.maximum(f, low)), 0.0)
    return shape


def event_times(rng: np.random.Generator, per_minute: np.ndarray) -> np.ndarray:
    """Poisson event times (s) with a rate given per second of the night (events/min)."""
    counts = rng.poisson(np.maximum(per_minute, 0) / 60)
    return np.repeat(np.arange(len(per_minute)), counts) + rng.random(counts.sum())


def stamp(target: np.ndarray, fs: float, start_s: float, waveform: np.ndarray) -> None:
    """Add ``waveform`` into ``target`` from ``start_s`` on, cut at the ends."""
    first = int(round(start_s * fs))
    lo, hi = max(first, 0), min(first + len(waveform), len(target))
    if hi > lo:
        target[lo:hi] += waveform[lo - first:hi - first]


def boxcar(n_seconds: int, starts: np.ndarray, durations: np.ndarray) -> np.ndarray:
    """1 during each (start, start + duration) interval, 0 elsewhere, one value per second."""
    edges = np.zeros(n_seconds + 1)
    first = np.clip(np.round(starts).astype(int), 0, n_seconds)
    last = np.clip(np.round(starts + durations).astype(int), 0, n_seconds)
    np.add.at(edges, first, 1)
    np.add.at(edges, last, -1)
    return np.minimum(np.cumsum(edges)[:n_seconds], 1)
