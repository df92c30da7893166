"""The two dropouts' hole placement, FMix over dropped pixels (the keep plane) and CutMix targets, on both paths."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from sleepstaging import recipe
from sleepstaging.data import fmix
from sleepstaging.data import batch_augment
from sleepstaging.data import loaders as L

CPU = torch.device("cpu")
SIZE = 32
SHAPE = (SIZE, SIZE)  # the library functions take (height, width)
MEAN, STD = np.array(recipe.IMAGENET_MEAN), np.array(recipe.IMAGENET_STD)


def normalised(value: float) -> np.ndarray:
    """albumentations Normalize of a grey pixel ``value`` (0..255): one number per channel."""
    return (value / 255.0 - MEAN) / STD


def cutout_holes(seed: int, draws: int, size: int = SIZE) -> np.ndarray:
    """(draws * 8, 4) holes (left, top, right, bottom) of the per-sample Cutout on a size x size image."""
    cutout = L.Cutout(p=1.0)
    cutout.set_random_seed(seed)
    params = {"shape": (size, size, 3)}
    return np.concatenate([cutout.get_params_dependent_on_data(params, {})["holes"] for _ in range(draws)])


def test_cutout_centres_holes_anywhere_and_clips_them_at_the_border():
    holes = cutout_holes(seed=0, draws=2000)
    left, top, right, bottom = holes.T
    for start, end in ((top, bottom), (left, right)):
        # centre uniform over 0..32 (33 values), corner max(centre - 4, 0): corner 0 five times as often
        assert set(start.tolist()) == set(range(SIZE - 4 + 1))
        counts = np.bincount(start, minlength=SIZE - 3) / len(start)
        assert counts[0] == pytest.approx(5 / 33, abs=0.015)
        assert np.abs(counts[1:] - 1 / 33).max() < 0.012
        # full 8 pixels, except at the bottom / right border: 4 to 7 pixels, never past it
        length = end - start
        assert (length[start <= SIZE - 8] == 8).all()
        np.testing.assert_array_equal(length[start > SIZE - 8], SIZE - start[start > SIZE - 8])
        assert end.max() == SIZE and length.min() == 4
    # CoarseDropout keeps its holes inside: the other dropout of the pipeline
    coarse = L.get_train_transforms(SHAPE).transforms[2]
    coarse.set_random_seed(0)
    inside = np.concatenate([coarse.get_params_dependent_on_data({"shape": (SIZE, SIZE, 3)}, {})["holes"]
                             for _ in range(300)])
    assert inside[:, :2].max() == SIZE - 8 and ((inside[:, 2:] - inside[:, :2]) == 8).all()


def test_cutout_zeroes_exactly_its_holes():
    image = np.ones((SIZE, SIZE, 3), np.float32)
    cutout = L.Cutout(p=1.0)
    cutout.set_random_seed(5)
    params = cutout.get_params_dependent_on_data({"shape": image.shape}, {})
    out = cutout.apply(image, **params)
    expected = image.copy()
    for left, top, right, bottom in params["holes"]:
        expected[top:bottom, left:right] = 0
    np.testing.assert_array_equal(out, expected)


def test_batch_plan_places_the_cutout_holes_as_the_per_sample_path():
    # The plan's corners of the second dropout, from centres uniform over 0..32: same law as above.
    batch_corners = []
    for step in range(60):
        rng = np.random.default_rng([1, 0, 0, step])  # a batch's generator, as CachedTrainBatches seeds it
        centres = rng.integers(0, SIZE + 1, size=(40, recipe.DROPOUT_HOLES, 2))
        batch_corners.append(batch_augment.cutout_corners(centres))
    corners = np.concatenate(batch_corners).ravel()
    assert corners.min() == 0 and corners.max() == SIZE - 4
    assert (corners == 0).mean() == pytest.approx(5 / 33, abs=0.01)
    per_sample = cutout_holes(seed=1, draws=2400)[:, :2].ravel()
    assert np.abs(np.bincount(corners) / corners.size - np.bincount(per_sample) / per_sample.size).max() < 0.012


def test_dropout_keep_clips_a_hole_at_the_border():
    corners = torch.zeros((1, 2, recipe.DROPOUT_HOLES, 2), dtype=torch.int64)
    corners[0, 1, 0] = torch.tensor([SIZE - 4, SIZE - 4])  # bottom-right: 4 x 4 pixels remain
    corners[0, 1, 1] = torch.tensor([0, SIZE - 5])  # top-right: 8 x 5, nothing wraps to the next rows
    corners[0, 1, 2:] = torch.tensor([SIZE - 6, 12])  # bottom: 6 x 8
    keep = batch_augment.dropout_keep(corners, torch.tensor([[False, True]]), SHAPE)[0, 0]
    expected = torch.ones(SIZE, SIZE)
    expected[SIZE - 4:, SIZE - 4:] = 0
    expected[:8, SIZE - 5:] = 0
    expected[SIZE - 6:, 12:20] = 0
    torch.testing.assert_close(keep, expected, rtol=0, atol=0)
    first = batch_augment.dropout_keep(corners, torch.tensor([[True, False]]), SHAPE)[0, 0]
    assert first[8:, :].eq(1).all()  # first: at 0, 0


def hand_plan(pixels, labels, dropout, corners, **mixing) -> batch_augment.CachedBatch:
    """A training batch with its plan written by hand (what CachedTrainBatches' items are)."""
    plan = {"dropout": torch.tensor(dropout), "corners": torch.tensor(corners, dtype=torch.int64),
            "fmix_rows": torch.tensor([], dtype=torch.int64), "fmix_lams": torch.tensor([], dtype=torch.float64),
            "cutmix_rows": torch.tensor([], dtype=torch.int64),
            "cutmix_boxes": torch.zeros((0, 4), dtype=torch.int64), "noise_seed": 11, "fmix_spectrum": "original",
            "integer_targets": False}
    plan.update({key: torch.tensor(value) if not isinstance(value, str) else value for key, value in mixing.items()})
    return batch_augment.CachedBatch(torch.tensor(pixels, dtype=torch.uint8), torch.tensor(labels),
                                     batch_augment.BatchPlan(**plan))


def hole_keep(corners_of_dropout) -> np.ndarray:
    """1 outside, 0 inside the 8 x 8 holes at (top, left) corners, clipped by slicing."""
    keep = np.ones((SIZE, SIZE))
    for top, left in corners_of_dropout:
        keep[top:top + 8, left:left + 8] = 0
    return keep


def test_fmix_over_dropped_pixels_mixes_the_normalised_dropped_images():
    # Own image grey 200 (Wake) with its CoarseDropout applied; partner grey 50 (REM) with its Cutout,
    # holes clipped at the border. The per-sample path normalises, drops (0), then mixes by the mask:
    # expected = m * keep_a * N(200) + (1 - m) * keep_b * N(50), channel by channel.
    own_holes = [[0, 0], [8, 16], [24, 24], [3, 5], [16, 0], [0, 24], [10, 10], [20, 4]]
    partner_holes = [[28, 28], [0, 0], [28, 0], [12, 30], [5, 5], [20, 20], [0, 27], [14, 2]]
    corners = [[own_holes, [[0, 0]] * 8], [[[0, 0]] * 8, partner_holes]]
    batch = hand_plan(np.stack([np.full((1, SIZE, SIZE), 200), np.full((1, SIZE, SIZE), 50)]), [0, 4],
                      [[True, False], [False, True]], corners, fmix_rows=[0], fmix_lams=[0.65])
    images, targets = batch_augment.finish_batch(batch, CPU)
    assert images.shape == (1, 3, SIZE, SIZE)
    mask = fmix.sample_masks_torch(torch.tensor([0.65], dtype=torch.float64), recipe.FMIX_DECAY_POWER,
                                   (SIZE, SIZE), recipe.FMIX_MAX_SOFT, torch.Generator().manual_seed(11),
                                   spectrum="original")[0].numpy()
    keep_a, keep_b = hole_keep(own_holes), hole_keep(partner_holes)
    expected = (mask * keep_a)[None] * normalised(200)[:, None, None] + \
        ((1 - mask) * keep_b)[None] * normalised(50)[:, None, None]
    np.testing.assert_allclose(images[0].numpy(), expected, rtol=0, atol=2e-5)
    # the target: the mask's share of the own stage, exactly floor(0.65 * 1024 + 0.5) / 1024
    share = math.floor(0.65 * SIZE * SIZE + 0.5) / (SIZE * SIZE)
    assert mask.sum(dtype=np.float64) == pytest.approx(share * SIZE * SIZE, abs=1e-3)
    np.testing.assert_allclose(targets[0].numpy(), [share, 0, 0, 0, 1 - share], rtol=0, atol=1e-7)


def test_cached_cutmix_target_is_the_area_share_of_the_box():
    box = [5, 21, 2, 14]  # top, bottom, left, right: 16 x 12 pixels from the partner
    batch = hand_plan(np.stack([np.full((1, SIZE, SIZE), 255), np.zeros((1, SIZE, SIZE))]), [1, 3],
                      [[False, False], [False, False]], np.zeros((2, 2, 8, 2)), cutmix_rows=[0], cutmix_boxes=[box])
    images, targets = batch_augment.finish_batch(batch, CPU)
    expected = np.broadcast_to(normalised(255)[:, None, None], (3, SIZE, SIZE)).copy()
    expected[:, 5:21, 2:14] = normalised(0)[:, None, None]
    np.testing.assert_allclose(images[0].numpy(), expected, rtol=0, atol=1e-6)
    share = 1 - 16 * 12 / (SIZE * SIZE)
    np.testing.assert_allclose(targets[0].numpy(), [0, share, 0, 1 - share, 0], rtol=0, atol=1e-7)


def test_per_sample_cutmix_target_is_the_area_share_of_the_box(tmp_path):
    # Black Wake and white REM images, CutMix alone: the partner's box can be read back from the image.
    black, white = tmp_path / "black.png", tmp_path / "white.png"
    cv2.imwrite(str(black), np.zeros((27, 48, 3), np.uint8))
    cv2.imwrite(str(white), np.full((27, 48, 3), 255, np.uint8))
    paths, labels = [black, white] * 30, np.array([0, 4] * 30)
    dataset = L.EpochImageDataset(paths, labels, L.get_valid_transforms(SHAPE), seed=2, cutmix_enabled=True)
    checked = 0
    for index in range(len(dataset)):
        image, target = dataset[index]
        own = labels[index]
        if target[own] == 1.0:
            continue
        other_level = normalised(255 if own == 0 else 0)[0]
        pasted = np.isclose(image[0].numpy(), other_level, atol=1e-5)
        rows, cols = np.flatnonzero(pasted.any(axis=1)), np.flatnonzero(pasted.any(axis=0))
        assert pasted.sum() == len(rows) * len(cols)  # a rectangle
        assert float(target[own]) == pytest.approx(1 - pasted.mean(), abs=1e-6)
        assert float(target[4 - own]) == pytest.approx(pasted.mean(), abs=1e-6)
        checked += 1
    assert checked >= 5


@pytest.mark.parametrize("channels", [1, 3], ids=["grey", "colour"])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last],
                         ids=["contiguous", "channels_last"])
def test_one_sample_at_a_time_on_the_cpu_equals_the_whole_batch_at_once(channels, memory_format):
    # finish_batch's CPU path against the path it takes on a GPU, both run here: FMix and CutMix partners
    # (two samples get both), both dropouts on some images, some samples untouched; the same numbers to the bit.
    rng = np.random.default_rng(4)
    count, height, width = 12, 40, 24
    fmix_rows, cutmix_rows = [0, 2, 3, 5, 8, 9], [2, 4, 5, 11]
    members = count + len(fmix_rows) + len(cutmix_rows)
    corners = np.stack([rng.integers(0, [height - 7, width - 7], (members, 8, 2)),
                        batch_augment.cutout_corners(rng.integers(0, [height + 1, width + 1], (members, 8, 2)))],
                       axis=1)
    batch = hand_plan(rng.integers(0, 256, (members, channels, height, width)), rng.integers(0, 5, members),
                      rng.random((members, 2)) < 0.4, corners, fmix_rows=fmix_rows,
                      fmix_lams=rng.uniform(0.6, 0.7, len(fmix_rows)), cutmix_rows=cutmix_rows,
                      cutmix_boxes=[batch_augment.cutmix_box((height, width), 0.35, rng) for _ in cutmix_rows])
    mixes = batch_augment._mixes(batch.plan, count, height, width)
    one_at_a_time = batch_augment._augmented_rows(batch, count, mixes, memory_format, None)
    whole_batch = batch_augment._augmented_planes(batch, count, mixes, memory_format, None)
    assert one_at_a_time.shape == (count, 3, height, width)
    assert one_at_a_time.is_contiguous(memory_format=memory_format)
    assert torch.equal(one_at_a_time, whole_batch)
    untouched = [row for row in range(count)
                 if row not in fmix_rows + cutmix_rows and not batch.plan.dropout[row].any()]
    assert untouched and (one_at_a_time[untouched] != 0).all()
    assert (one_at_a_time == 0).sum() >= 64  # dropped holes
