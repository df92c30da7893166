"""FMix masks (NumPy and batched torch) and FMix mixing in the training dataset."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from sleepstaging.data import fmix
from sleepstaging.data import loaders
def low_frequency_energy(mask: np.ndarray, radius: float = 4 / 64) -> float:
    """Share of the mask's (mean-removed) spectral energy within ``radius`` cycles per pixel."""
    power = np.abs(np.fft.fft2(mask - mask.mean())) ** 2
    fy = np.fft.fftfreq(mask.shape[0])[:, None]
    fx = np.fft.fftfreq(mask.shape[1])[None, :]
    return float(power[np.sqrt(fx**2 + fy**2) <= radius].sum() / power.sum())


def numpy_masks(lams, shape, max_soft, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([fmix.sample_mask(lam, 3.0, shape, max_soft, rng) for lam in lams])


def torch_masks(lams, shape, max_soft, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return fmix.sample_masks_torch(torch.tensor(lams), 3.0, shape, max_soft, generator=generator).numpy()


SAMPLERS = [numpy_masks, torch_masks]


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("max_soft", [0.0, 0.1, True])
def test_mask_mean_equals_lambda(sampler, max_soft):
    lams = [0.6, 0.63, 0.7, 0.3, 0.5]
    masks = sampler(lams, (48, 80), max_soft)
    assert masks.shape == (5, 48, 80) and masks.dtype == np.float32
    pixels = 48 * 80
    for lam, mask in zip(lams, masks):
        # The mask sums exactly to the rounded pixel count of lambda.
        assert mask.sum(dtype=np.float64) == pytest.approx(math.floor(lam * pixels + 0.5), abs=1e-3)
        assert abs(mask.mean() - lam) <= 0.5 / pixels + 1e-6


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_soft_values_stay_in_unit_interval_and_ramp_is_linear(sampler):
    # 10 x 10, lambda 0.6, max_soft=True -> soft width min(1, 0.6, 0.4) = 0.4:
    # 60 pixels "on", ramp over ranks 60 - 40 = 20 .. 60 + 40 = 100, i.e. the
    # 20 brightest pixels are 1 and the other 80 follow linspace(1, 0, 80).
    mask = sampler([0.6], (10, 10), True)[0]
    assert mask.min() >= 0.0 and mask.max() <= 1.0
    expected = np.concatenate([np.ones(20), np.linspace(1.0, 0.0, 80)])
    np.testing.assert_allclose(np.sort(mask.ravel())[::-1], expected, atol=1e-6)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_hard_mask_is_binary(sampler):
    mask = sampler([0.65], (32, 32), 0.0)[0]
    assert set(np.unique(mask)) == {0.0, 1.0}
    assert mask.sum() == math.floor(0.65 * 1024 + 0.5)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_mask_energy_is_at_low_frequencies(sampler):
    masks = sampler([0.5] * 8, (64, 64), 0.0)
    shares = [low_frequency_energy(m) for m in masks]
    # A mask of independent pixels puts ~1.2 % of its energy there (the disc's
    # share of the frequency plane); FMix with decay power 3 puts most of it.
    white = (np.random.default_rng(0).random((64, 64)) < 0.5).astype(np.float64)
    assert low_frequency_energy(white) < 0.05
    assert min(shares) > 0.6 and np.mean(shares) > 0.75


def test_numpy_and_torch_masks_have_the_same_statistics():
    shape = (32, 48)
    a = numpy_masks([0.65] * 32, shape, True, seed=1)
    b = torch_masks([0.65] * 32, shape, True, seed=1)
    # Same ramp: the same number of strictly soft pixels in every mask.
    assert {int(((m > 0) & (m < 1)).sum()) for m in np.concatenate([a, b])} == {int(((a[0] > 0) & (a[0] < 1)).sum())}
    energy_a = np.mean([low_frequency_energy(m) for m in a])
    energy_b = np.mean([low_frequency_energy(m) for m in b])
    assert abs(energy_a - energy_b) < 0.05


def test_masks_are_seedable():
    np.testing.assert_array_equal(numpy_masks([0.6, 0.7], (16, 16), True, seed=3),
                                  numpy_masks([0.6, 0.7], (16, 16), True, seed=3))
    np.testing.assert_array_equal(torch_masks([0.6, 0.7], (16, 16), True, seed=3),
                                  torch_masks([0.6, 0.7], (16, 16), True, seed=3))
    assert not np.array_equal(numpy_masks([0.6], (16, 16), True, seed=3), numpy_masks([0.6], (16, 16), True, seed=4))


def test_fmix_in_the_dataset_mixes_images_and_targets_by_the_mask_share(tmp_path):
    # Two constant images: black = Wake, white = REM. After Normalize, a mixed
    # pixel is m * a + (1 - m) * b, so the mask can be read back from the image.
    black, white = tmp_path / "black.png", tmp_path / "white.png"
    cv2.imwrite(str(black), np.zeros((27, 48, 3), np.uint8))
    cv2.imwrite(str(white), np.full((27, 48, 3), 255, np.uint8))
    paths, labels = [black, white] * 20, np.array([0, 4] * 20)
    dataset = loaders.EpochImageDataset(paths, labels, loaders.get_valid_transforms((32, 32)),
                                               seed=5, fmix_enabled=True)
    level = {0: (0.0 - 0.485) / 0.229, 4: (1.0 - 0.485) / 0.229}  # channel 0 after Normalize
    mixed_with_other_class = 0
    for index in range(len(dataset)):
        image, target = dataset[index]
        assert target.dtype == torch.float32 and target.shape == (5,)
        assert float(target.sum()) == pytest.approx(1.0, abs=1e-6)
        own = labels[index]
        if target[own] == 1.0:
            continue
        other = 4 - own
        mask = (image[0].numpy() - level[other]) / (level[own] - level[other])
        assert mask.min() >= -1e-5 and mask.max() <= 1 + 1e-5
        assert float(target[own]) == pytest.approx(mask.mean(), abs=1e-5)
        assert 0.6 - 1e-3 <= float(target[own]) <= 0.7 + 1e-3
        mixed_with_other_class += 1
    # p = 0.5 per sample and a partner of the other class half of the time.
    assert 3 <= mixed_with_other_class <= 20
    # The same (seed, epoch, index) gives the same sample; another epoch another one.
    np.testing.assert_array_equal(dataset[7][0].numpy(), dataset[7][0].numpy())
    first = [dataset[i][1].numpy() for i in range(len(dataset))]
    dataset.set_epoch(1)
    assert not np.array_equal(first, [dataset[i][1].numpy() for i in range(len(dataset))])
