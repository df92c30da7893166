"""The original's training loader, re-stated to time it: path (o) of ``bench/loader_bench.py``.

The project's per-sample path (``--no-cache``, path (a)) takes the
original's steps per image but not all of its costs: its FMix masks are
ranked in float32 by selection and mixed in float32, where the original
called the FMix reference code. To say how fast the project is against
what the original ran, this module re-states the original's training
dataset (``PSMDataset`` of ``loaderViTrgb.py`` with ``do_fmix=True``,
``do_cutmix=False``) operation for operation. Per item:

- ``cv2.imread`` (BGR), the channels reversed by a view, the training
  transforms (Resize, Normalize, CoarseDropout, Cutout, to tensor:
  :func:`loaders.get_train_transforms`, albumentations 2's
  versions of the original's 1.0 ones);
- with probability 1/2, drawn from NumPy's global generator: lambda from
  Beta(1, 1) clipped to [0.6, 0.7]; the reference code's
  ``make_low_freq_image`` (a fresh frequency grid, the whole half-spectrum
  of normals drawn, its first two rows inverted by ``irfftn``, float64,
  min-max scaled) and ``binarise_mask`` (a full ``argsort``, the ramp by
  ``np.linspace``, float64); a partner row drawn from all rows, decoded and
  transformed; the two images mixed by the float64 mask, which makes the
  item float64; the class *indices* mixed by the mask's mean (the
  original's defect, see README);
- DataLoader's default collation, as the original's loader had it.

Not used for training. :func:`reference_low_frequency_image` and
:func:`reference_binarise_mask` are also the reference that
``bench/fmix_spectrum.py`` and the tests compare the project's masks with.
"""
from __future__ import annotations

import math
import random
from pathlib import Path


import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from sleepstaging.data import loaders
from sleepstaging.data import psg_layout
from sleepstaging.recipe import FMIX_ALPHA, FMIX_DECAY_POWER, FMIX_LAMBDA_RANGE, FMIX_MAX_SOFT

REPO = Path(__file__).resolve().parents[1]

# The original's per-item chance of FMix: np.random.uniform(0, 1) > 0.5.
ORIGINAL_FMIX_THRESHOLD = 0.5


def reference_low_frequency_image(rng, shape: tuple[int, int], decay_power: float,
                                  scaled: bool = False) -> np.ndarray:
    """The FMix reference code's ``make_low_freq_image`` as the original ran it (re-stated).

    Samples the whole (1, H, K, 2) parameter array (K horizontal
    frequencies: ``W // 2 + 1``, one more for odd W), scales it by
    ``1 / max(f, 1 / max(H, W))**decay_power``, forms ``spectrum[:, 0] + 1j *
    spectrum[:, 1]`` (rows 0 and 1 of the height axis: shape (1, K, 2)) and
    inverts it with ``irfftn(..., (H, W))`` over the last two axes.

    Parameters
    ----------
    rng : np.random.Generator or the module ``np.random``
        Source of the normals; ``np.random`` is NumPy's global generator,
        the original's.
    shape : (int, int)
        Height and width in pixels.
    decay_power : float
        Spectral decay exponent (the original's: 3).
    scaled : bool
        Min-max scale to [0, 1] as the reference code does (it changes no rank).

    Returns
    -------
    np.ndarray of float64, shape (height, width)
    """
    height, width = shape
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.fftfreq(width)[: width // 2 + 1 + width % 2][None, :]
    scale = 1.0 / np.maximum(np.sqrt(fx * fx + fy * fy), 1.0 / max(height, width)) ** decay_power
    parameters = rng.standard_normal((1, height, fx.size, 2))
    sampled = scale[None, :, :, None] * parameters
    grey = np.real(np.fft.irfftn(sampled[:, 0] + 1j * sampled[:, 1], (height, width), axes=(1, 2)))[0]
    if scaled:
        grey -= grey.min()
        grey /= grey.max()
    return grey


def reference_binarise_mask(grey: np.ndarray, lam: float, max_soft: float, round_up: bool) -> np.ndarray:
    """The FMix reference code's ``binarise_mask`` as the original ran it (re-stated); ``grey`` is overwritten.

    The pixels are ranked by a full ``argsort`` (descending: the ascending
    order reversed). ``round_up`` picks ``ceil(lam * pixels)`` pixels
    above the threshold, else ``floor`` (the reference code tosses
    ``random.random() > 0.5``). The soft width is ``int(pixels * soft)``
    with ``soft = max_soft``, or ``min(lam, 1 - lam)`` when ``max_soft``
    exceeds either; the ranks from ``on - width`` to ``on + width`` get
    ``np.linspace(1, 0, 2 * width)``, those above 1, those below 0.

    Parameters
    ----------
    grey : np.ndarray of float64, shape (height, width)
    lam : float
        The share of pixels above the threshold.
    max_soft : float or bool
        ``True`` reads as 1.
    round_up : bool

    Returns
    -------
    np.ndarray of float64, shape (1, height, width)
    """
    flat = grey.reshape(-1)
    order = flat.argsort()[::-1]
    on = math.ceil(lam * flat.size) if round_up else math.floor(lam * flat.size)
    soft = min(lam, 1 - lam) if (max_soft > lam or max_soft > 1 - lam) else max_soft
    width = int(flat.size * soft)
    low, high = on - width, on + width
    flat[order[:high]] = 1
    flat[order[low:]] = 0
    flat[order[low:high]] = np.linspace(1, 0, high - low)
    return flat.reshape(1, *grey.shape)


class OriginalTrainImages(Dataset):
    """The original's training dataset, re-stated for timing (see the module's description).

    Parameters
    ----------
    image_paths : sequence of Path
        One image file per row.
    labels : np.ndarray of int64, shape (rows,)
        Stage codes 0-4.
    img_size : int or (int, int)
        Model input size in pixels (square, or height and width).

    Items
    -----
    ``(image, target)``: image float32 (3, H, W), float64 when mixed;
    target the row's stage code (np.int64), or a float64 mixture of two
    codes.
    """

    def __init__(self, image_paths, labels: np.ndarray, img_size):
        self.image_paths = [str(path) for path in image_paths]
        self.labels = np.asarray(labels)
        self.rows = np.arange(len(self.image_paths))
        self.shape = psg_layout.input_shape(img_size)
        self.transforms = loaders.get_train_transforms(self.shape)

    def __len__(self) -> int:
        return len(self.image_paths)

    def _image(self, row: int) -> torch.Tensor:
        bgr = cv2.imread(self.image_paths[row])
        return self.transforms(image=bgr[:, :, ::-1])["image"]

    def __getitem__(self, row: int):
        image, target = self._image(row), self.labels[row]
        if np.random.uniform(0.0, 1.0, size=1)[0] > ORIGINAL_FMIX_THRESHOLD:
            with torch.no_grad():
                lam = np.clip(np.random.beta(FMIX_ALPHA, FMIX_ALPHA), *FMIX_LAMBDA_RANGE)
                grey = reference_low_frequency_image(np.random, self.shape, FMIX_DECAY_POWER, scaled=True)
                mask = reference_binarise_mask(grey, lam, FMIX_MAX_SOFT, random.random() > 0.5)
                partner = np.random.choice(self.rows, size=1)[0]
                mask_tensor = torch.from_numpy(mask)
                image = mask_tensor * image + (1.0 - mask_tensor) * self._image(partner)
                share = mask.sum() / self.shape[0] / self.shape[1]
                target = share * target + (1.0 - share) * self.labels[partner]
        return image, target


def make_original_loader(image_paths, labels: np.ndarray, img_size, batch_size: int, workers: int,
                         seed: int) -> DataLoader:
    """The original's training DataLoader over :class:`OriginalTrainImages`: shuffled, default collation.

    NumPy's and Python's global generators are seeded with ``seed`` here
    (the original seeded them once at start-up); forked workers inherit
    them, as the original's did.
    """
    np.random.seed(seed)
    random.seed(seed)
    return DataLoader(OriginalTrainImages(image_paths, labels, img_size), batch_size=batch_size, shuffle=True,
                      num_workers=workers, drop_last=False, generator=torch.Generator().manual_seed(seed))
