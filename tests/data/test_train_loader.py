"""loader_vit_rgb.py: tables and their checks, folds, image reading, transforms, loaders."""
from __future__ import annotations

import csv
import random
import shutil

import cv2
import numpy as np
import pytest
import torch
from sklearn.model_selection import StratifiedKFold

from sleepstaging import recipe
from sleepstaging.data import batch_augment
from sleepstaging.data import image_cache
from sleepstaging.data import loaders
from sleepstaging.data import psg_layout
from sleepstaging import script_io
from sleepstaging.data import worker_transport
from sleepstaging.script_io import InputError

NORMALISED_WHITE = [(1.0 - m) / s for m, s in zip(recipe.IMAGENET_MEAN, recipe.IMAGENET_STD)]


def make_root(root, rows, images=None):
    """A data root with a train CSV of ``rows`` and a small image for each name in ``images``."""
    root.mkdir(parents=True, exist_ok=True)
    script_io.write_csv_rows(root / psg_layout.TRAIN_CSV, rows)
    for recording_id, idnum, *_ in rows if images is None else images:
        (root / recording_id).mkdir(exist_ok=True)
        cv2.imwrite(str(root / recording_id / idnum), np.full((27, 48, 3), 200, np.uint8))
    return root


def test_missing_data_root_says_how_to_make_data(tmp_path):
    with pytest.raises(InputError, match=r"make_synthetic\.py .*render_edf\.py.*--data-root"):
        loaders.read_train_table(tmp_path / "nowhere")
    with pytest.raises(InputError, match="data root not found"):
        loaders.read_test_table(tmp_path / "nowhere")


def test_every_missing_image_is_reported_at_once(tmp_path):
    rows = [["R1", "R1_0001.png", "Wake"], ["R1", "R1_0002.png", "N1"], ["R1", "R1_0003.png", "N2"],
            ["R2", "R2_0001.png", "N3"], ["R2", "R2_0002.png", "REM"]]
    root = make_root(tmp_path / "DATA", rows, images=[rows[0]])
    (root / "R1" / "R1_0003.png").mkdir()  # a folder where an image should be
    with pytest.raises(InputError) as caught:
        loaders.read_train_table(root)
    message = str(caught.value)
    assert "\n" not in message
    assert "folder R2/ missing (2 images)" in message
    assert "1 image(s) missing: R1/R1_0002.png (row 2)" in message
    assert "1 image(s) not a file: R1/R1_0003.png (row 3)" in message
    assert message.endswith(f"({root / psg_layout.TRAIN_CSV})")


def test_symlinks_must_stay_inside_the_data_root(tmp_path):
    rows = [["R1", "R1_0001.png", "Wake"], ["R1", "R1_0002.png", "N1"]]
    root = make_root(tmp_path / "DATA", rows, images=rows[:1])
    outside = tmp_path / "outside.png"
    shutil.copy(root / "R1" / "R1_0001.png", outside)
    (root / "R1" / "R1_0002.png").symlink_to(outside)
    with pytest.raises(InputError, match=r"1 image\(s\) outside the data root: R1/R1_0002.png \(row 2\)"):
        loaders.read_train_table(root)
    # A link to another image inside the root is fine.
    (root / "R1" / "R1_0002.png").unlink()
    (root / "R1" / "R1_0002.png").symlink_to(root / "R1" / "R1_0001.png")
    table = loaders.read_train_table(root)
    assert table.labels.tolist() == [0, 1]
    # A recording folder that links outside the root is refused too.
    shutil.copytree(root / "R1", tmp_path / "R1_elsewhere", symlinks=False)
    shutil.rmtree(root / "R1")
    (root / "R1").symlink_to(tmp_path / "R1_elsewhere")
    with pytest.raises(InputError, match=r"2 image\(s\) outside the data root"):
        loaders.read_train_table(root)


def csv_module_rows(path):
    """Every line of a challenge CSV as a list of fields, read by the csv module alone (the header dropped)."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    return rows[1:] if rows[0][:2] == ["ID", "IDnum"] else rows


def test_tables_of_the_tiny_data_set_hold_every_row_of_their_csv(tiny_data):
    train = loaders.read_train_table(tiny_data)
    test = loaders.read_test_table(tiny_data)
    stage_names = ["Wake", "N1", "N2", "N3", "REM"]  # the challenge's label order, Wake=0 ... REM=4
    assert [[r, i, stage_names[s]] for r, i, s in zip(train.recording_ids, train.idnums, train.labels)] \
        == csv_module_rows(tiny_data / psg_layout.TRAIN_CSV)
    assert test.labels is None
    assert [[r, i] for r, i in zip(test.recording_ids, test.idnums)] == csv_module_rows(tiny_data / psg_layout.TEST_CSV)
    assert len(set(train.labels.tolist())) == 5 and len(set(test.recording_ids)) == 2


def test_subject_folds_never_split_a_recording(tiny_data):
    table = loaders.read_train_table(tiny_data)
    recordings = np.array(table.recording_ids)
    for n_folds in (2, 3, 5):
        folds = loaders.make_folds(table, n_folds=n_folds, seed=72, cv="subject")
        assert sorted(set(folds)) == list(range(n_folds))
        for recording in set(recordings):
            assert len(set(folds[recordings == recording])) == 1, recording
    # The same seed gives the same folds.
    np.testing.assert_array_equal(loaders.make_folds(table), loaders.make_folds(table))
    with pytest.raises(InputError, match="needs at least 7 recordings"):
        loaders.make_folds(table, n_folds=7, cv="subject")


def test_stratified_folds_are_the_originals_split(tiny_data):
    table = loaders.read_train_table(tiny_data)
    folds = loaders.make_folds(table, n_folds=5, seed=72, cv="stratified")
    splits = StratifiedKFold(n_splits=5, shuffle=True, random_state=72).split(np.arange(len(table)), table.labels)
    for fold, (_, valid_rows) in enumerate(splits):
        np.testing.assert_array_equal(np.flatnonzero(folds == fold), np.sort(valid_rows))
    recordings = np.array(table.recording_ids)
    # ... which puts epochs of one night on both sides (why it is not the default).
    assert any(len(set(folds[recordings == r])) > 1 for r in set(recordings))


def test_images_are_read_as_rgb_whatever_their_format(tmp_path):
    red_bgr = np.zeros((27, 48, 3), np.uint8)
    red_bgr[..., 2] = 255
    cv2.imwrite(str(tmp_path / "red.png"), red_bgr)
    assert image_cache.read_image_rgb(tmp_path / "red.png")[0, 0].tolist() == [255, 0, 0]
    cv2.imwrite(str(tmp_path / "grey.png"), np.full((100, 60), 77, np.uint8))
    grey = image_cache.read_image_rgb(tmp_path / "grey.png")
    assert grey.shape == (100, 60, 3) and (grey == 77).all()
    # Any size becomes the model's size, 3 channels.
    image = loaders.get_valid_transforms((40, 40))(image=grey)["image"]
    assert image.shape == (3, 40, 40) and image.dtype == torch.float32


def test_corrupt_images_raise_an_input_error_naming_the_file(tmp_path):
    folder = tmp_path / "R"
    folder.mkdir()
    cv2.imwrite(str(folder / "good.png"), np.full((27, 48, 3), 9, np.uint8))
    data = (folder / "good.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"not a decodable image .*truncated.png"):
        image_cache.read_image_rgb(folder / "truncated.png")
    # Through a DataLoader worker the error keeps its one-line message.
    table = psg_layout.EpochTable(tmp_path / "t.csv", ["R", "R"], ["good.png", "truncated.png"], None)
    loader = loaders.make_eval_loader(tmp_path, table, (16, 16), batch_size=2, workers=1, cache_dir=None)
    with pytest.raises(InputError) as caught:
        list(worker_transport.iterate_batches(loader))
    assert str(caught.value) == f"not a decodable image (corrupt or truncated PNG?) ({folder / 'truncated.png'})"


def test_train_transforms_drop_two_sets_of_eight_8x8_holes(tmp_path):
    white = np.full((270, 480, 3), 255, np.uint8)
    transforms = loaders.get_train_transforms((64, 64))
    zeros_per_sample = []
    for seed in range(40):
        transforms.set_random_state(np.random.default_rng(seed), random.Random(seed))
        image = transforms(image=white)["image"]
        assert image.shape == (3, 64, 64)
        dropped = (image == 0).all(dim=0)
        for channel, value in enumerate(NORMALISED_WHITE):
            np.testing.assert_allclose(image[channel][~dropped].numpy(), value, rtol=1e-5)
        zeros_per_sample.append(int(dropped.sum()))
    # At most 2 x 8 holes of 64 pixels; none in 1/4 of samples (both p=0.5).
    assert max(zeros_per_sample) <= 2 * 8 * 64
    assert 4 <= sum(z == 0 for z in zeros_per_sample) <= 20
    assert any(z > 8 * 64 for z in zeros_per_sample)  # both dropouts fired
    valid = loaders.get_valid_transforms((64, 64))(image=white)["image"]
    np.testing.assert_allclose(valid[0].numpy(), NORMALISED_WHITE[0], rtol=1e-5)


@pytest.mark.parametrize("cache", [False, True], ids=["per-sample path", "cached path"])
def test_no_holes_leaves_every_training_pixel(tiny_data, tmp_path, cache):
    # --no-holes: dropout probability 0 on both paths; on the cached one (the batch plan draws the holes
    # whether or not they apply) the batches' other draws, order and FMix, are unchanged
    table = loaders.read_train_table(tiny_data)
    rows = np.arange(24)

    def first_batches(dropout_probability):
        loader = loaders.make_train_loader(tiny_data, table, rows, (32, 32), 8, 0, seed=72,
                                           cache_dir=tmp_path if cache else None,
                                           dropout_probability=dropout_probability)
        loaders.set_loader_epoch(loader, 0)
        batches = list(worker_transport.iterate_batches(loader))
        return [batch_augment.finish_batch(b, torch.device("cpu")) if cache else b for b in batches]

    def dropped(images):  # pixels zero in all three channels: a hole (no trace pixel normalises to 0)
        return int((images == 0).all(dim=1).sum())

    with_holes, without = first_batches(recipe.DROPOUT_PROBABILITY), first_batches(0.0)
    assert sum(dropped(images) for images, _ in with_holes) > 0
    assert sum(dropped(images) for images, _ in without) == 0
    if cache:
        for (_, targets_a), (_, targets_b) in zip(with_holes, without):
            torch.testing.assert_close(targets_a, targets_b, rtol=0, atol=0)


def test_training_loader_is_a_function_of_seed_and_epoch(tiny_data):
    table = loaders.read_train_table(tiny_data)
    rows = np.arange(40)

    def epoch_batches(workers, epoch):
        loader = loaders.make_train_loader(tiny_data, table, rows, (32, 32), batch_size=8, workers=workers, seed=72,
                                                  cache_dir=None)  # the per-sample path
        loaders.set_loader_epoch(loader, epoch)
        return list(worker_transport.iterate_batches(loader))

    zero_workers, two_workers = epoch_batches(0, 1), epoch_batches(2, 1)
    assert len(zero_workers) == 5 and zero_workers[0][0].shape == (8, 3, 32, 32)
    for (images_a, targets_a), (images_b, targets_b) in zip(zero_workers, two_workers):
        torch.testing.assert_close(images_a, images_b, rtol=0, atol=0)
        torch.testing.assert_close(targets_a, targets_b, rtol=0, atol=0)
    targets = torch.cat([t for _, t in zero_workers])
    torch.testing.assert_close(targets.sum(1), torch.ones(40))
    # Every row exactly once per epoch, in the sampler's order; each keeps lambda in [0.6, 0.7] of its own
    # stage when FMix mixed it with another stage, all of it otherwise.
    sampler = loaders.make_train_loader(tiny_data, table, rows, (32, 32), 8, 0, seed=72, cache_dir=None).sampler
    sampler.set_epoch(1)
    order = list(sampler)
    assert sorted(order) == list(range(40))
    own = targets[torch.arange(40), torch.from_numpy(table.labels[rows[order]])]
    assert ((own == 1) | ((own >= 0.6 - 1e-3) & (own <= 0.7 + 1e-3))).all() and (own < 1).any()  # a pixel share
    other_epoch = epoch_batches(0, 2)
    assert not torch.equal(zero_workers[0][0], other_epoch[0][0])


def test_ranks_share_each_epochs_permutation_without_overlap(tiny_data, tmp_path):
    table = loaders.read_train_table(tiny_data)
    rows = np.arange(1, 41)  # 40 training rows: 20 a rank

    def drawn(rank, epoch, cache_dir):
        loader = loaders.make_train_loader(tiny_data, table, rows, (32, 32), batch_size=8, workers=0, seed=72,
                                                  rank=rank, world_size=2, cache_dir=cache_dir)
        loaders.set_loader_epoch(loader, epoch)
        keys = list(loader.sampler)  # per-sample path: dataset indices; cached path: (epoch, step, indices)
        return [int(i) for key in keys for i in (key[2] if isinstance(key, tuple) else [key])]

    for cache_dir in (None, tmp_path / "cache"):
        epoch_1 = [drawn(rank, 1, cache_dir) for rank in (0, 1)]
        assert [len(shard) for shard in epoch_1] == [20, 20]
        assert sorted(epoch_1[0] + epoch_1[1]) == list(range(40))  # every row once, on one rank
        epoch_2 = [drawn(rank, 2, cache_dir) for rank in (0, 1)]
        assert sorted(epoch_2[0] + epoch_2[1]) == list(range(40)) and epoch_2[0] != epoch_1[0]
    # Validation: each rank its interleaved share, all ranks together every row once.
    shards = [loaders.make_eval_loader(tiny_data, table, (32, 32), 8, 0, rows=rows, rank=rank, world_size=3,
                                              cache_dir=None).dataset.image_paths for rank in range(3)]
    names = loaders.table_image_paths(tiny_data, table)
    assert sorted(str(p) for shard in shards for p in shard) == sorted(str(names[r]) for r in rows)


# --------------------------------------------------------------------------
# --stage-balance: rows drawn with replacement, stages weighted by count ** -power
# --------------------------------------------------------------------------
def stage_shares(sampler, labels, epochs):
    counts = np.zeros(5)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        counts += np.bincount(labels[list(sampler)], minlength=5)
    return counts / counts.sum()


@pytest.mark.parametrize("power, shares", [
    (1.0, [1 / 3, 1 / 3, 1 / 3, 0, 0]),  # every stage present equally often
    (0.5, [12 ** 0.5 / (12 ** 0.5 + 3 ** 0.5 + 1), 3 ** 0.5 / (12 ** 0.5 + 3 ** 0.5 + 1),
           1 / (12 ** 0.5 + 3 ** 0.5 + 1), 0, 0]),  # count ** (1 - power) shares: 0.559, 0.280, 0.161
])
def test_stage_balanced_draws_fill_each_stage_by_its_count_to_one_minus_the_power(power, shares):
    labels = np.array([0] * 12 + [1] * 3 + [2])
    sampler = loaders.StageBalancedSampler(labels, power, seed=72)
    assert len(sampler) == len(labels)
    np.testing.assert_allclose(stage_shares(sampler, labels, 4000), shares, atol=0.01)


def test_stage_balanced_draws_depend_on_seed_and_epoch_and_split_over_ranks():
    labels = np.array([0] * 12 + [1] * 3 + [2])
    draws = {}
    for seed, epoch in ((72, 0), (72, 0), (72, 1), (73, 0)):
        sampler = loaders.StageBalancedSampler(labels, 1.0, seed)
        sampler.set_epoch(epoch)
        draws.setdefault((seed, epoch), []).append(list(sampler))
    assert draws[72, 0][0] == draws[72, 0][1]
    assert len({tuple(d[0]) for d in draws.values()}) == 3
    # Three ranks: 6 draws each (ceil(16 / 3)), interleaved from one draw of 18.
    ranks = [loaders.StageBalancedSampler(labels, 1.0, 72, rank, 3) for rank in range(3)]
    shares = [list(sampler) for sampler in ranks]
    assert [len(share) for share in shares] == [6, 6, 6]
    interleaved = [share[i] for i in range(6) for share in shares]
    assert interleaved[:16] == draws[72, 0][0]  # the one-process draws of epoch 0 (numpy's choice is prefix-stable)


@pytest.mark.slow
def test_per_sample_path_augments_each_balanced_draw_of_a_row_on_its_own(tiny_data):
    table = loaders.read_train_table(tiny_data)
    loader = loaders.make_train_loader(tiny_data, table, np.arange(len(table)), (16, 16), 512, 0, seed=72,
                                              cache_dir=None, stage_balance=1.0)
    loaders.set_loader_epoch(loader, 1)
    keys = list(loader.sampler)
    assert [draw for _, draw in keys] == list(range(len(table)))
    (images, targets), = worker_transport.iterate_batches(loader)
    by_row = {}
    for (row, _), image, target in zip(keys, images, targets):
        by_row.setdefault(row, []).append(torch.cat([image.flatten(), target]))
    repeats = [(a, b) for items in by_row.values() for a, b in zip(items, items[1:])]
    alike = sum(torch.equal(a, b) for a, b in repeats)
    # Keyed by row, every repeat would be alike; keyed by draw, only those without dropout or FMix both times.
    assert len(repeats) > 50 and alike < len(repeats) / 8
    dataset = loader.dataset
    first, again = dataset[keys[0]], dataset[keys[0]]
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


def test_training_loader_with_stage_balance_evens_out_the_stages(tiny_data, tmp_path):
    table = loaders.read_train_table(tiny_data)
    rows = np.arange(len(table))
    natural = np.bincount(table.labels, minlength=5) / len(table)
    assert natural.min() < 0.1  # N1 is rare in a night
    loader = loaders.make_train_loader(tiny_data, table, rows, (16, 16), 32, 0, seed=72, fmix_enabled=False,
                                              cache_dir=tmp_path, stage_balance=1.0)
    seen = np.zeros(5)
    for epoch in range(3):
        loaders.set_loader_epoch(loader, epoch)
        for batch in worker_transport.iterate_batches(loader):
            _, targets = batch_augment.finish_batch(batch, torch.device("cpu"))
            seen += np.bincount(targets.argmax(dim=1).numpy(), minlength=5)
    assert seen.sum() == 3 * len(rows)
    np.testing.assert_allclose(seen / seen.sum(), 0.2, atol=0.05)
