"""The original's FMix spectrum against the isotropic one, and thresholding by selection."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sleepstaging.data import fmix
from bench.fmix_spectrum import grey_images, split_lines
from original_loader import reference_low_frequency_image


@pytest.mark.parametrize("shape", [(224, 224), (32, 48), (31, 17), (48, 31)])
def test_original_spectrum_is_the_reference_codes_image(shape):
    # The reference code draws a (1, H, K, 2) array and uses its rows 0 and 1:
    # given those normals, the project's image is the same.
    height, width = shape
    columns = width // 2 + 1 + width % 2
    reference = reference_low_frequency_image(np.random.default_rng(4), shape, 3.0)
    used = np.random.default_rng(4).standard_normal((1, height, columns, 2))[0, :2]
    assert fmix.spectrum_scales(shape, 3.0, "original").shape == used.shape
    np.testing.assert_allclose(fmix.low_frequency_image(used, shape, 3.0, "original"), reference,
                               rtol=0, atol=1e-12 * np.abs(reference).max())


def test_power_beyond_one_cycle_by_hand():
    y, x = np.mgrid[0:32, 0:48]
    # 1 cycle along the height, 3 along the width, equal power: half the power is beyond one cycle along the width.
    image = np.cos(2 * np.pi * y / 32) + np.cos(2 * np.pi * 3 * x / 48) + 5.0
    assert fmix.power_beyond_one_cycle(image) == pytest.approx((0.0, 0.5), abs=1e-12)
    # amplitude 2 at 2 cycles along the height: 4 / (4 + 1) of the power
    image = 2 * np.sin(2 * np.pi * 2 * y / 32) + np.cos(2 * np.pi * x / 48)
    assert fmix.power_beyond_one_cycle(image) == pytest.approx((0.8, 0.0), abs=1e-12)
    # a stack sums the power first
    stack = np.stack([np.cos(2 * np.pi * 3 * x / 48), 3 * np.cos(2 * np.pi * x / 48)])
    assert fmix.power_beyond_one_cycle(stack) == pytest.approx((0.0, 0.1), abs=1e-12)


def test_split_lines_counts_cyclic_runs():
    masks = np.array([[[1, 1, 0, 0, 1],    # one run, across the border
                       [0, 1, 0, 1, 0],    # two runs
                       [1, 0, 0, 0, 0],
                       [0, 0, 1, 0, 0]]])
    assert split_lines(masks, -1) == pytest.approx(1 / 4)
    assert split_lines(masks, -2) == pytest.approx(1 / 5)  # column 0 (1, 0, 1, 0) alone has two runs


@pytest.mark.slow
def test_the_original_spectrum_has_no_structure_beyond_one_cycle_along_the_width():
    # 100 grey images at the original's 224 px, as bench/fmix_spectrum.py measures them.
    stats = {}
    for kind in ("reference", "original", "isotropic"):
        greys = grey_images(kind, 100, 224, seed=0)
        masks = np.stack([fmix.mask_from_grey(grey, 0.65, 0.0) for grey in greys])
        stats[kind] = (*fmix.power_beyond_one_cycle(greys), split_lines(masks, -1))
    for kind in ("reference", "original"):
        height_share, width_share, split_rows = stats[kind]
        assert width_share < 1e-20  # only 0 and 1 cycle along the width
        assert 0.005 < height_share < 0.02  # a little along the height (~0.01)
        assert split_rows == 0.0  # every row of every mask is one run of ones (cyclically)
    height_share, width_share, split_rows = stats["isotropic"]
    assert height_share > 0.012 and width_share > 0.012 and split_rows > 0.005
    # the project's original and the reference code agree (different draws)
    assert stats["original"][0] == pytest.approx(stats["reference"][0], rel=0.3)


def sort_version(grey: np.ndarray, lam: float, max_soft: float) -> np.ndarray:
    """The mask by a full stable sort: brightest first, equal values in pixel order."""
    flat = grey.astype(np.float32).ravel()
    ranks = np.empty(flat.size, dtype=np.int64)
    ranks[np.argsort(-flat, kind="stable")] = np.arange(flat.size)
    first, stop = fmix._ramp_bounds(lam, max_soft, flat.size)
    return fmix._mask_from_ranks(ranks, first, stop).astype(np.float32).reshape(grey.shape)


GREYS = {
    "distinct": np.random.default_rng(0).standard_normal((24, 40)),
    "tied": np.random.default_rng(1).integers(-3, 4, size=(24, 40)).astype(np.float64),
    "zeros of both signs": np.where(np.arange(960).reshape(24, 40) % 3 == 0, -0.0, 0.0) +
                           np.where(np.arange(960).reshape(24, 40) % 7 == 0, 1.0, 0.0),
}


@pytest.mark.parametrize("name", list(GREYS))
@pytest.mark.parametrize("lam, max_soft", [(0.65, True), (0.6, 0.1), (0.3, 0.0), (0.5, 1.0), (1.0, 0.0),
                                           (0.0, True), (0.999, True)])
def test_selection_gives_the_sort_versions_mask(name, lam, max_soft):
    grey = GREYS[name]
    expected = sort_version(grey, lam, max_soft)
    np.testing.assert_array_equal(fmix.mask_from_grey(grey, lam, max_soft), expected)
    # the device path (one batched stable sort) gives the same values; run here on CPU tensors
    first, stop = fmix._ramp_bounds(lam, max_soft, grey.size)
    on_device = fmix._masks_on_device(torch.from_numpy(grey.astype(np.float32).reshape(1, -1)),
                                      torch.tensor([first], dtype=torch.float64),
                                      torch.tensor([stop], dtype=torch.float64))
    np.testing.assert_array_equal(on_device.numpy().reshape(grey.shape), expected)
    assert expected.sum(dtype=np.float64) == pytest.approx(math.floor(lam * grey.size + 0.5), abs=1e-3)


def test_tie_rule_is_pixel_order():
    # Four equal pixels, lambda 0.5 hard: the first two in row order are 1.
    grey = np.array([[1.0, 2.0, 1.0], [1.0, 0.0, 1.0]])
    np.testing.assert_array_equal(fmix.mask_from_grey(grey, 0.5, 0.0), [[1, 1, 1], [0, 0, 0]])


@pytest.mark.parametrize("spectrum", fmix.SPECTRA)
def test_both_paths_draw_the_same_distribution(spectrum):
    lams, shape = [0.65] * 48, (64, 64)
    rng = np.random.default_rng(2)
    numpy_masks = np.stack([fmix.sample_mask(lam, 3.0, shape, 0.0, rng, spectrum) for lam in lams])
    torch_masks = fmix.sample_masks_torch(torch.tensor(lams), 3.0, shape, 0.0, torch.Generator().manual_seed(2),
                                          spectrum=spectrum).numpy()
    for masks in (numpy_masks, torch_masks):
        assert (masks.sum(axis=(1, 2)) == math.floor(0.65 * 4096 + 0.5)).all()
    split = [split_lines(masks, -1) for masks in (numpy_masks, torch_masks)]
    power = [fmix.power_beyond_one_cycle(masks) for masks in (numpy_masks, torch_masks)]
    if spectrum == "original":
        assert split == [0.0, 0.0]
    else:
        assert min(split) > 0.0
    np.testing.assert_allclose(power[0], power[1], rtol=0.35)


def test_unknown_spectrum_is_refused():
    with pytest.raises(ValueError, match="unknown FMix spectrum 'radial'; choose one of original, isotropic"):
        fmix.sample_mask(0.6, 3.0, (8, 8), 0.0, np.random.default_rng(0), "radial")
