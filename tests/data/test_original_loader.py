"""The original's loader as re-stated for bench/loader_bench.py's path (o): its FMix masks and its items."""
from __future__ import annotations

import random

import cv2
import numpy as np
import pytest
import torch

from sleepstaging.data import fmix
from original_loader import (OriginalTrainImages, make_original_loader, reference_binarise_mask,
                                   reference_low_frequency_image)


def test_binarise_by_hand():
    grey = np.array([[0.9, 0.1], [0.5, 0.3]])
    # max_soft True at lambda 0.5: soft width int(4 * 0.5) = 2, ranks 0..3 get linspace(1, 0, 4)
    np.testing.assert_allclose(reference_binarise_mask(grey.copy(), 0.5, True, round_up=False),
                               [[[1.0, 0.0], [2 / 3, 1 / 3]]])
    # hard masks: 0.6 * 4 = 2.4 pixels on, rounded up or down by the coin
    np.testing.assert_array_equal(reference_binarise_mask(grey.copy(), 0.6, 0.0, round_up=True), [[[1, 0], [1, 1]]])
    np.testing.assert_array_equal(reference_binarise_mask(grey.copy(), 0.6, 0.0, round_up=False), [[[1, 0], [1, 0]]])


@pytest.mark.parametrize("max_soft", [True, 0.1, 0.0])
@pytest.mark.parametrize("round_up", [True, False])
def test_the_originals_binarisation_gives_the_projects_mask(max_soft, round_up):
    # 0.625 * 960 pixels is whole, so the coin does not matter and the project's rounding agrees;
    # distinct values rank the same in float64 (the original) and float32 (the project).
    grey = np.random.default_rng(3).standard_normal((24, 40))
    original = reference_binarise_mask(grey.copy(), 0.625, max_soft, round_up)[0]
    np.testing.assert_allclose(original, fmix.mask_from_grey(grey, 0.625, max_soft), rtol=0, atol=1e-6)
    assert original.sum() == pytest.approx(600)


def test_scaled_grey_image_is_min_max_scaled_and_keeps_the_ranks():
    raw = reference_low_frequency_image(np.random.default_rng(5), (20, 30), 3.0)
    scaled = reference_low_frequency_image(np.random.default_rng(5), (20, 30), 3.0, scaled=True)
    assert scaled.min() == 0.0 and scaled.max() == 1.0
    np.testing.assert_allclose(scaled, (raw - raw.min()) / (raw.max() - raw.min()), atol=1e-12)


@pytest.fixture()
def two_images(tmp_path):
    paths = []
    for row, level in enumerate((40, 200)):
        path = tmp_path / f"{row}.png"
        cv2.imwrite(str(path), np.full((27, 48, 3), level, dtype=np.uint8))
        paths.append(path)
    return paths


def test_items_mix_in_float64_and_mix_the_class_codes(two_images):
    dataset = OriginalTrainImages(two_images, np.array([0, 4]), 16)
    np.random.seed(0)
    random.seed(0)
    mixed = plain = 0
    for _ in range(60):
        image, target = dataset[0]
        assert image.shape == (3, 16, 16)
        if image.dtype == torch.float64:  # FMix applied: the float64 mask made the image float64
            mixed += 1
            # row 0 (code 0) with partner row 1 (code 4): (1 - share) * 4, the share lambda in [0.6, 0.7] rounded
            # up or down to whole pixels of 256; with itself as partner: 0
            assert target == 0 or 4 * (0.3 - 1 / 256) <= target <= 4 * (0.4 + 1 / 256)
        else:
            plain += 1
            assert image.dtype == torch.float32 and target == 0 and isinstance(target, np.integer)
    assert 15 <= mixed <= 45 and mixed + plain == 60  # probability 1/2


def test_the_loader_keeps_images_and_targets_paired(two_images):
    # Rows alternate grey level 40 (code 0) and 200 (code 4). An item whose target is a whole code shows that
    # code's level in most pixels (a partner of the same level leaves it; the holes of both dropouts cover at
    # most a quarter of 64 x 64), whichever dtype its batch was collated to.
    loader = make_original_loader(two_images * 3, np.array([0, 4] * 3), 64, batch_size=4, workers=0, seed=1)
    level = {0: (40 / 255 - 0.485) / 0.229, 4: (200 / 255 - 0.485) / 0.229}  # channel 0 after Normalize
    batches = list(loader)
    assert [images.shape for images, _ in batches] == [(4, 3, 64, 64), (2, 3, 64, 64)]
    whole = 0
    for images, targets in batches:
        assert targets.shape == (len(images),)
        for image, target in zip(images, targets.tolist()):
            if target in level:
                whole += 1
                assert image[0].median().item() == pytest.approx(level[target], abs=1e-5)
            else:  # mixed with the other level: (1 - share) * 4 or share * 4
                assert 4 * (0.3 - 1 / 4096) <= target <= 4 * (0.7 + 1 / 4096)
    assert whole >= 1
