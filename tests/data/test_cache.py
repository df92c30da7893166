"""The image cache and batch augmentation: the same images as the per-sample path, the same statistics."""
from __future__ import annotations

import functools
import gc
import json
import os

import cv2
import numpy as np
import pytest
import torch

from sleepstaging.training import engine
from sleepstaging.data import batch_augment
from sleepstaging.data import cached_batches
from sleepstaging.data import image_cache
from sleepstaging.data import loaders as L
from sleepstaging.data import worker_transport
import main_vit_rgb
from sleepstaging.data import psg_layout
from sleepstaging.training import train_options
from sleepstaging.data.psg_layout import EpochTable
from sleepstaging.script_io import InputError

CPU = torch.device("cpu")
SIZE = 32
SHAPE = (SIZE, SIZE)  # the library functions take (height, width)


def finished(loader):
    """Every batch of ``loader``, finished on the CPU."""
    return [batch_augment.finish_batch(batch, CPU) for batch in worker_transport.iterate_batches(loader)]


def write_recordings(root, recordings):
    """A data root with ``{recording_id: [uint8 HxWx3 RGB images]}``; returns its EpochTable (labels 0..4 cycled)."""
    ids, names = [], []
    for recording_id, images in recordings.items():
        (root / recording_id).mkdir(parents=True)
        for number, image in enumerate(images, start=1):
            name = psg_layout.image_name(recording_id, number)
            cv2.imwrite(str(root / recording_id / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            ids.append(recording_id)
            names.append(name)
    return EpochTable(root / psg_layout.TRAIN_CSV, ids, names, np.arange(len(names)) % 5)


def cached_train_batch(table, root, cache_dir, indices, size=SHAPE, resize="linear", **options):
    """The dataset of all rows (no mixing, batches left for the device) and its item (epoch 0, step 0, indices)."""
    rows = np.arange(len(table))
    opener = functools.partial(image_cache.open_cache, root, table, size, cache_dir, resize=resize)
    settings = dict(seed=3, rank=0, fmix_enabled=False, cutmix_enabled=False, finish=False)
    dataset = cached_batches.CachedTrainBatches(opener, rows, table.labels, size, **{**settings, **options})
    dataset.prepare()
    return dataset, dataset[0, 0, list(indices)]


# --------------------------------------------------------------------------
# Without augmentation: the per-sample path's tensors, to the bit
# --------------------------------------------------------------------------
SIZES = pytest.mark.parametrize("size, resize", [(SHAPE, "linear"), ((40, 24), "linear"), (SHAPE, "area")],
                                ids=["square", "40x24", "square-area"])  # (height, width); the interpolation


@pytest.mark.slow
@pytest.mark.parametrize("device", ["cpu", "cuda"])  # finished in the workers / left for the device (done on the CPU)
@SIZES
def test_eval_batches_equal_the_per_sample_path(tiny_data, tmp_path, device, size, resize):
    table = L.read_train_table(tiny_data)
    rows = np.arange(0, len(table), 3)
    per_sample = finished(L.make_eval_loader(tiny_data, table, size, 16, 0, rows=rows, cache_dir=None, resize=resize))
    cached = finished(L.make_eval_loader(tiny_data, table, size, 16, 1, rows=rows, cache_dir=tmp_path,
                                         device=device, resize=resize))
    assert len(per_sample) == len(cached) == -(-len(rows) // 16)
    for (images_a, targets_a), (images_b, targets_b) in zip(per_sample, cached):
        assert images_b.dtype == torch.float32 and images_b.shape[1:] == (3, *psg_layout.input_shape(size))
        torch.testing.assert_close(images_a, images_b, rtol=0, atol=0)
        torch.testing.assert_close(targets_a, targets_b, rtol=0, atol=0)
    test = L.read_test_table(tiny_data)  # no labels: images alone
    images = finished(L.make_eval_loader(tiny_data, test, size, 64, 0, cache_dir=tmp_path, resize=resize))
    reference = finished(L.make_eval_loader(tiny_data, test, size, 64, 0, cache_dir=None, resize=resize))
    torch.testing.assert_close(torch.cat(images), torch.cat(reference), rtol=0, atol=0)


@SIZES
def test_training_batches_without_augmentation_equal_the_per_sample_path(tiny_data, tmp_path, size, resize):
    table = L.read_train_table(tiny_data)
    indices = [5, 0, 77, 200, 13]
    _, batch = cached_train_batch(table, tiny_data, tmp_path, indices, size=size, resize=resize,
                                  dropout_probability=0.0)
    images, targets = batch_augment.finish_batch(batch, CPU)
    per_sample = L.EpochImageDataset(L.table_image_paths(tiny_data, table), table.labels,
                                     L.get_valid_transforms(size, resize))
    for position, index in enumerate(indices):
        image, target = per_sample[index]
        torch.testing.assert_close(images[position], image, rtol=0, atol=0)
        torch.testing.assert_close(targets[position], target, rtol=0, atol=0)


def test_area_resize_keeps_a_one_pixel_trace_that_the_original_resize_drops():
    # A 270 x 480 epoch image, black but for one white row: row 3. Shrunk to 64 rows (4.22 source rows
    # each), the original's INTER_LINEAR samples source rows 1-2 and 5-6 for output rows 0 and 1,
    # so the trace vanishes; INTER_AREA averages every source row, so output row 0 (source rows
    # 0-4.22) holds 255 / 4.21875 = 60.4 -> 60 across the width, and every other row 0.
    image = np.zeros((270, 480, 3), np.uint8)
    image[3] = 255
    linear = image_cache.make_resize((64, 64))(image=image)["image"]
    area = image_cache.make_resize((64, 64), "area")(image=image)["image"]
    assert linear.shape == area.shape == (64, 64, 3) and linear.max() == 0
    assert (area[0] == 60).all() and area[1:].max() == 0
    with pytest.raises(InputError, match="^--resize must be one of linear, area, got 'cubic'$"):
        image_cache.make_resize(64, "cubic")


def test_grey_images_are_stored_once_and_colour_in_three_channels(tmp_path):
    rng = np.random.default_rng(0)
    grey = [np.repeat(rng.integers(0, 256, (27, 48, 1), dtype=np.uint8), 3, axis=2) for _ in range(3)]
    colour = [image.copy() for image in grey]
    colour[1][5:9, 10:20] = (200, 30, 90)  # one coloured patch: that recording needs 3 channels
    root, cache_dir = tmp_path / "root", tmp_path / "cache"
    table = write_recordings(root, {"GREY": grey, "COLOUR": colour})
    cache = image_cache.open_cache(root, table, SHAPE, cache_dir)
    folder = image_cache.cache_folder(cache_dir, root, SHAPE)
    assert json.loads((folder / "GREY.json").read_text())["channels"] == 1
    assert json.loads((folder / "COLOUR.json").read_text())["channels"] == 3
    assert np.load(folder / "GREY.npy", mmap_mode="r").shape == (3, 1, SIZE, SIZE)
    assert np.load(folder / "COLOUR.npy", mmap_mode="r").shape == (3, 3, SIZE, SIZE)
    # Read together, grey recordings are broadcast to three channels; the model gets the same tensors.
    assert cache.read([0, 4]).shape == (2, 3, SIZE, SIZE)
    cached = finished(L.make_eval_loader(root, table, SHAPE, 4, 0, cache_dir=cache_dir))
    reference = finished(L.make_eval_loader(root, table, SHAPE, 4, 0, cache_dir=None))
    for (images_a, _), (images_b, _) in zip(cached, reference):
        torch.testing.assert_close(images_a, images_b, rtol=0, atol=0)
    grey_only = image_cache.open_cache(root, table, SHAPE, cache_dir, rows=[0, 1, 2])
    assert grey_only.channels == 1 and grey_only.read([2]).shape == (1, 1, SIZE, SIZE)


# --------------------------------------------------------------------------
# Building, fingerprints, rebuilding
# --------------------------------------------------------------------------
def test_cache_is_rebuilt_exactly_when_files_or_settings_change(tmp_path):
    rng = np.random.default_rng(1)
    images = {name: [rng.integers(0, 256, (27, 48, 3), dtype=np.uint8) for _ in range(2)] for name in ("A", "B")}
    root, cache_dir = tmp_path / "root", tmp_path / "cache"
    table = write_recordings(root, images)
    image_cache.open_cache(root, table, SHAPE, cache_dir, workers=2)
    folder = image_cache.cache_folder(cache_dir, root, SHAPE)
    built = {name: (folder / f"{name}.npy").stat().st_mtime_ns for name in "AB"}

    def rebuilt():
        return {name for name in "AB" if (folder / f"{name}.npy").stat().st_mtime_ns != built[name]}

    image_cache.open_cache(root, table, SHAPE, cache_dir)
    assert rebuilt() == set()
    # New content (same size), only B's file: B rebuilt with the new pixels.
    path = root / "B" / psg_layout.image_name("B", 2)
    stat = path.stat()
    new = np.full((27, 48, 3), 128, np.uint8)
    cv2.imwrite(str(path), new)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    cache = image_cache.open_cache(root, table, SHAPE, cache_dir)
    assert rebuilt() == {"B"} and (cache.read([3]) == 128).all()
    # A half-built recording (no manifest, or an array shorter than it says) is rebuilt.
    built = {name: (folder / f"{name}.npy").stat().st_mtime_ns for name in "AB"}
    (folder / "A.json").unlink()
    with open(folder / "B.npy", "r+b") as handle:
        handle.truncate(100)
    image_cache.open_cache(root, table, SHAPE, cache_dir)
    assert rebuilt() == {"A", "B"}
    # Another size or resize is another folder; the data root is never written to.
    image_cache.open_cache(root, table, (16, 16), cache_dir)
    assert (image_cache.cache_folder(cache_dir, root, (16, 16)) / "A.npy").is_file()
    built = {name: (folder / f"{name}.npy").stat().st_mtime_ns for name in "AB"}
    image_cache.open_cache(root, table, SHAPE, cache_dir, resize="area")
    area_folder = image_cache.cache_folder(cache_dir, root, SHAPE, "area")
    assert area_folder.name == f"{SIZE}px-area" and (area_folder / "A.npy").is_file() and rebuilt() == set()
    assert sorted(p.name for p in root.rglob("*") if p.is_file()) == sorted(table.idnums)


def test_a_failed_build_leaves_no_partial_files_and_names_the_image(tmp_path):
    root, cache_dir = tmp_path / "root", tmp_path / "cache"
    table = write_recordings(root, {"R": [np.zeros((27, 48, 3), np.uint8)] * 2})
    broken = root / "R" / table.idnums[1]
    broken.write_bytes(broken.read_bytes()[:40])
    loader = L.make_eval_loader(root, table, SHAPE, 2, 1, cache_dir=cache_dir)  # built on the first pass
    with pytest.raises(InputError, match=r"^not a decodable image .*R_0002.png\)$"):
        finished(loader)
    assert [p.name for p in image_cache.cache_folder(cache_dir, root, SHAPE).iterdir()] == []


@pytest.mark.parametrize("training", [False, True])
def test_a_cache_error_in_a_worker_arrives_with_its_one_line_message(tmp_path, training):
    root, cache_dir = tmp_path / "root", tmp_path / "cache"
    table = write_recordings(root, {"R": [np.zeros((27, 48, 3), np.uint8)] * 4})
    rows = np.arange(4)
    if training:
        loader = L.make_train_loader(root, table, rows, SHAPE, 4, 1, seed=0, cache_dir=cache_dir)
    else:
        loader = L.make_eval_loader(root, table, SHAPE, 4, 1, cache_dir=cache_dir)
    loader.dataset.prepare()  # opened (built) here; cut short before the worker reads it
    array = image_cache.cache_folder(cache_dir, root, SHAPE) / "R.npy"
    with open(array, "r+b") as handle:
        handle.truncate(200)
    with pytest.raises(InputError) as caught:
        finished(loader)
    assert str(caught.value) == f"image cache file shorter than its manifest says: delete it to rebuild ({array})"
    # Stop the worker now: left to a later garbage collection, its shutdown can wait 5 s on a join.
    del loader, caught
    gc.collect()


@pytest.mark.slow
def test_cache_inside_the_data_root_is_refused_before_anything_is_written(tiny_data, tmp_path):
    table = L.read_train_table(tiny_data)
    with pytest.raises(InputError, match="must not be inside the data root"):
        image_cache.open_cache(tiny_data, table, SHAPE, tiny_data / "cache")
    args = train_options.build_parser(main_vit_rgb.DEFAULTS, "").parse_args(
        ["--data-root", str(tiny_data), "--weights-dir", str(tmp_path / "w"), "--cache-dir", str(tiny_data / "x"),
         "--pretrained", "none"])
    with pytest.raises(InputError, match=r"^the image cache must not be inside the data root .*--cache-dir"):
        engine.train(args)
    assert not (tiny_data / "x").exists() and not (tmp_path / "w").exists()


# --------------------------------------------------------------------------
# With augmentation: the per-sample path's statistics
# --------------------------------------------------------------------------
def test_dropout_keep_makes_whole_8x8_holes_inside_the_image():
    corners = torch.tensor([[[[0, 0], [0, 8], [8, 0], [24, 24], [16, 16], [0, 24], [24, 0], [8, 8]],
                             [[3, 3]] * 8]])  # second dropout: 8 holes on one spot
    keep = batch_augment.dropout_keep(corners, torch.tensor([[True, False]]), SHAPE)[0, 0]
    assert keep.shape == (SIZE, SIZE) and int((keep == 0).sum()) == 8 * 64
    assert (keep[:16, :16] == 0).all() and (keep[24:, 24:] == 0).all() and keep[3, 20] == 1
    keep = batch_augment.dropout_keep(corners, torch.tensor([[False, True]]), SHAPE)[0, 0]
    assert int((keep == 0).sum()) == 64 and (keep[3:11, 3:11] == 0).all()


@pytest.mark.slow
def test_dropout_statistics_match_the_per_sample_path(tmp_path):
    # White images: after Normalize nothing is 0 but a dropped pixel.
    root, count, size = tmp_path / "root", 100, (64, 64)
    table = write_recordings(root, {"W": [np.full((27, 48, 3), 255, np.uint8)] * count})
    _, batch = cached_train_batch(table, root, tmp_path / "cache", range(count), size=size)
    cached = (batch_augment.finish_batch(batch, CPU)[0] == 0).all(dim=1).sum(dim=(1, 2)).numpy()
    transforms = L.get_train_transforms(size)
    dataset = L.EpochImageDataset(L.table_image_paths(root, table), table.labels, transforms, seed=3)
    per_sample = np.array([int((dataset[i][0] == 0).all(dim=0).sum()) for i in range(count)])
    for zeros in (cached, per_sample):
        assert zeros.max() <= 2 * 8 * 64
        assert 12 <= (zeros == 0).sum() <= 40  # neither dropout: 1/4
        assert (zeros > 8 * 64).sum() >= 12  # both fired (a quarter of the samples), more than one set of holes
    assert abs(cached.mean() - per_sample.mean()) < 0.25 * per_sample.mean()


def test_fmix_mixes_images_and_targets_by_the_mask_share(tmp_path):
    # Black Wake and white REM images: a mixed pixel tells the mask, as in test_fmix.
    root = tmp_path / "root"
    images = [np.full((27, 48, 3), 255 * (i % 2), np.uint8) for i in range(40)]
    table = write_recordings(root, {"BW": images})
    table.labels = np.array([0, 4] * 20)
    dataset, _ = cached_train_batch(table, root, tmp_path / "cache", [0], fmix_enabled=True,
                                    dropout_probability=0.0)
    level = {0: (0.0 - 0.485) / 0.229, 4: (1.0 - 0.485) / 0.229}
    mixed, mixed_with_other, lambdas = 0, 0, []
    for step in range(10):
        batch = dataset[0, step, list(range(40))]
        mixed += len(batch.plan.fmix_rows)
        lambdas += batch.plan.fmix_lams.tolist()
        images_out, targets = batch_augment.finish_batch(batch, CPU)
        torch.testing.assert_close(targets.sum(1), torch.ones(40))
        for index in range(40):
            own = int(table.labels[index])
            if targets[index, own] == 1.0:
                continue
            mask = (images_out[index, 0] - level[4 - own]) / (level[own] - level[4 - own])
            assert mask.min() >= -1e-5 and mask.max() <= 1 + 1e-5
            assert float(targets[index, own]) == pytest.approx(float(mask.mean()), abs=1e-5)
            assert 0.6 - 1e-3 <= float(targets[index, own]) <= 0.7 + 1e-3
            mixed_with_other += 1
    assert 0.4 <= mixed / 400 <= 0.6  # p = 0.5 per sample
    assert 0.15 <= mixed_with_other / 400 <= 0.35  # and a partner of the other class half of the time
    # Beta(1, 1) clipped to [0.6, 0.7]: 60 % at 0.6, 30 % at 0.7, 10 % between.
    lambdas = np.array(lambdas)
    assert lambdas.min() >= 0.6 and lambdas.max() <= 0.7
    assert (lambdas == 0.6).mean() == pytest.approx(0.6, abs=0.12) and (lambdas == 0.7).mean() == pytest.approx(0.3, abs=0.1)


@pytest.mark.slow
def test_mixed_targets_and_shares_match_the_per_sample_path(tiny_data, tmp_path):
    table = L.read_train_table(tiny_data)
    rows = np.arange(len(table))

    def own_shares(loader):
        """Each sample's target weight on its own row's stage (1 unless mixed with another stage)."""
        shares = []
        for epoch in range(2):
            L.set_loader_epoch(loader, epoch)
            keys = list(loader.sampler)  # per-sample path: row indices; cached path: (epoch, step, indices)
            own = np.array([int(i) for key in keys for i in (key[2] if isinstance(key, tuple) else [key])])
            targets = torch.cat([t for _, t in finished(loader)])
            assert torch.allclose(targets.sum(1), torch.ones(len(targets)))
            shares += targets[torch.arange(len(own)), torch.from_numpy(table.labels[rows[own]])].tolist()
        return np.array(shares)

    options = dict(batch_size=32, workers=0, seed=72)
    per_sample = own_shares(L.make_train_loader(tiny_data, table, rows, SHAPE, cache_dir=None, **options))
    cached = own_shares(L.make_train_loader(tiny_data, table, rows, SHAPE, cache_dir=tmp_path, **options))
    for shares in (per_sample, cached):
        mixed = shares[shares < 1]  # the own image keeps lambda in [0.6, 0.7] of the pixels, not 1 - lambda
        assert len(mixed) > 10 and 0.6 - 1e-3 <= mixed.min() and mixed.max() <= 0.7 + 1e-3
    # Share of samples mixed with another stage: about 1/2 x P(partner's stage differs) (~0.38 here).
    assert abs((cached < 1).mean() - (per_sample < 1).mean()) < 0.08


@pytest.mark.slow
def test_batches_depend_on_seed_and_epoch_only(tiny_data, tmp_path):
    table = L.read_train_table(tiny_data)
    rows = np.arange(0, len(table), 2)

    def epoch(workers, device, number):
        loader = L.make_train_loader(tiny_data, table, rows, SHAPE, 16, workers, 72, cutmix_enabled=True,
                                     cache_dir=tmp_path, device=device)
        L.set_loader_epoch(loader, number)
        return finished(loader)

    reference = epoch(0, "cpu", 1)
    for other in (epoch(2, "cpu", 1), epoch(1, "cuda", 1)):  # workers; finished in workers or "on the device"
        for (images_a, targets_a), (images_b, targets_b) in zip(reference, other):
            torch.testing.assert_close(images_a, images_b, rtol=0, atol=0)
            torch.testing.assert_close(targets_a, targets_b, rtol=0, atol=0)
    assert not torch.equal(reference[0][0], epoch(0, "cpu", 2)[0][0])


@pytest.mark.slow
def test_worker_blocks_are_refilled_only_once_the_training_process_lets_go(tiny_data, tmp_path):
    # Batches finished in 2 workers arrive in shared blocks that the workers reuse: every 5th batch is
    # held to the end (2 or 3 of each worker's, within its blocks) and must keep its numbers while
    # later batches are made. (Holding more falls back to new blocks: test_batches_depend_on_seed_and_epoch_only.)
    table = L.read_train_table(tiny_data)
    rows = np.arange(len(table))

    def loader_of(workers):
        loader = L.make_train_loader(tiny_data, table, rows, SHAPE, 16, workers, 72, cache_dir=tmp_path)
        L.set_loader_epoch(loader, 0)
        return loader

    reference = [images for images, _ in finished(loader_of(0))]
    loader = loader_of(2)
    held, blocks = [], set()
    for step, (images, _) in enumerate(worker_transport.iterate_batches(loader)):
        fd, _ = images.untyped_storage()._share_fd_cpu_()
        blocks.add(os.fstat(fd).st_ino)  # the shared-memory file behind the batch
        torch.testing.assert_close(images, reference[step], rtol=0, atol=0)
        if step % 5 == 0:
            held.append(images)
    assert len(reference) == step + 1 > 20
    for images, expected in zip(held, reference[::5]):
        torch.testing.assert_close(images, expected, rtol=0, atol=0)
    assert len(blocks) <= 2 * worker_transport.WorkerBlocks.SLOTS < len(reference)  # reused, not one per batch
    assert loader.dataset.blocks.flags.sum() > 0
    del images, held
    gc.collect()
    assert loader.dataset.blocks.flags.sum() == 0  # all let go: every block free again
