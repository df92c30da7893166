"""Non-square model inputs (``--img-size HEIGHT WIDTH``): one (height, width) through the command line, the
image cache, the batch augmentation, the trainers and inference."""
from __future__ import annotations

from sleepstaging import output_names

import json
import math

import cv2
import numpy as np
import pytest
import torch

from sleepstaging import recipe
from sleepstaging.data import batch_augment
from sleepstaging.training import engine
from sleepstaging.scoring import models
from sleepstaging.scoring import model_set as model_set_lib
from sleepstaging.data import fmix
from sleepstaging.data import image_cache
import infer_blend
from sleepstaging.data import loaders as L
import main_eff
import main_vit_rgb
from sleepstaging.data import psg_layout
from sleepstaging.output_names import dump_path
from conftest import one_thread, trainer_args
from sleepstaging.script_io import InputError
from test_augment_paths import hand_plan, normalised
from test_cache import cached_train_batch, write_recordings
from test_train_run import run_in_process

CPU = torch.device("cpu")
HEIGHT, WIDTH = 40, 24  # taller than wide, as the demo's 128 x 32; neither a multiple of the other
PIXELS = HEIGHT * WIDTH
VIT, EFF = "test_vit", "test_efficientnet"  # test_vit: 16 x 16 patches
VIT_SHAPE, EFF_SHAPE = (32, 16), (HEIGHT, WIDTH)


# --------------------------------------------------------------------------
# The one (height, width) form, and the cache's names for it
# --------------------------------------------------------------------------
def test_input_shape_reads_one_size_as_square_and_two_as_height_width():
    assert psg_layout.input_shape(64) == psg_layout.input_shape([64]) == (64, 64)
    assert psg_layout.input_shape([128, 32]) == (128, 32) and psg_layout.input_shape((np.int64(5), 7)) == (5, 7)
    for bad, shown in ((0, "0"), ([64, 32, 16], "64 32 16"), ([64, 0], "64 0"), ([], ""), ([64.0], "64.0")):
        with pytest.raises(InputError) as error:
            psg_layout.input_shape(bad)
        assert str(error.value) == ("--img-size takes one size in pixels (square) or two (HEIGHT WIDTH), each at "
                                    f"least 1, got {shown}")


def test_cache_folder_and_manifest_keep_square_names_and_name_both_sides_otherwise(tmp_path):
    root, cache_dir = tmp_path / "root", tmp_path / "cache"
    table = write_recordings(root, {"R": [np.full((27, 48, 3), 90, np.uint8)] * 3})
    assert image_cache.cache_folder(cache_dir, root, (32, 32)).name == "32px"  # the name square caches always had
    for size, name, saved in (((32, 32), "32px", 32), ((HEIGHT, WIDTH), "40x24px", [HEIGHT, WIDTH]),
                              ((WIDTH, HEIGHT), "24x40px", [WIDTH, HEIGHT])):
        cache = image_cache.open_cache(root, table, size, cache_dir)
        folder = image_cache.cache_folder(cache_dir, root, size)
        assert folder.name == name
        assert json.loads((folder / "R.json").read_text())["img_size"] == saved
        shape = psg_layout.input_shape(size)
        assert np.load(folder / "R.npy", mmap_mode="r").shape == (3, 1, *shape)
        assert cache.read([0, 2]).shape == (2, 1, *shape)


# --------------------------------------------------------------------------
# Batch augmentation over (height, width): holes, FMix masks, CutMix boxes by hand
# --------------------------------------------------------------------------
def test_dropout_holes_are_clipped_at_the_bottom_by_the_height_and_at_the_right_by_the_width():
    corners = torch.zeros((1, 2, recipe.DROPOUT_HOLES, 2), dtype=torch.int64)
    corners[0, 1, 0] = torch.tensor([HEIGHT - 4, WIDTH - 4])  # bottom-right corner: 4 x 4 remain
    corners[0, 1, 1] = torch.tensor([0, WIDTH - 6])  # right border: 8 rows x 6 columns, nothing wraps
    corners[0, 1, 2:] = torch.tensor([HEIGHT - 5, 10])  # bottom border: 5 rows x 8 columns
    keep = batch_augment.dropout_keep(corners, torch.tensor([[False, True]]), (HEIGHT, WIDTH))[0, 0]
    expected = torch.ones(HEIGHT, WIDTH)
    expected[HEIGHT - 4:, WIDTH - 4:] = 0
    expected[:8, WIDTH - 6:] = 0
    expected[HEIGHT - 5:, 10:18] = 0
    torch.testing.assert_close(keep, expected, rtol=0, atol=0)


def test_the_batch_plan_draws_hole_rows_over_the_height_and_columns_over_the_width(tmp_path):
    root = tmp_path / "root"
    table = write_recordings(root, {"R": [np.full((27, 48, 3), 255, np.uint8)] * 8})
    dataset, _ = cached_train_batch(table, root, tmp_path / "cache", [0], size=(HEIGHT, WIDTH))
    corners = np.concatenate([dataset[0, step, list(range(8))].plan.corners.numpy() for step in range(200)])
    coarse, cutout = corners[:, 0].reshape(-1, 2), corners[:, 1].reshape(-1, 2)  # (top, left) pairs
    # CoarseDropout (albumentations 1.0): top uniform over 0..H-8, left over 0..W-8, each value drawn.
    assert set(coarse[:, 0].tolist()) == set(range(HEIGHT - 8 + 1))
    assert set(coarse[:, 1].tolist()) == set(range(WIDTH - 8 + 1))
    # Cutout: centres uniform over 0..H and 0..W, corner max(centre - 4, 0): 0 five times in H + 1 or W + 1.
    assert cutout[:, 0].max() == HEIGHT - 4 and cutout[:, 1].max() == WIDTH - 4
    assert (cutout[:, 0] == 0).mean() == pytest.approx(5 / (HEIGHT + 1), abs=0.02)
    assert (cutout[:, 1] == 0).mean() == pytest.approx(5 / (WIDTH + 1), abs=0.02)


def test_fmix_mask_of_a_non_square_batch_is_height_by_width_with_its_pixel_share():
    lam = 0.63  # 0.63 x 960 = 604.8: the mask sums to 605 pixels
    pixels = np.stack([np.full((1, HEIGHT, WIDTH), 200), np.full((1, HEIGHT, WIDTH), 50)])
    no_holes = np.zeros((2, 2, recipe.DROPOUT_HOLES, 2))
    for spectrum in fmix.SPECTRA:
        batch = hand_plan(pixels, [0, 4], [[False, False], [False, False]], no_holes, fmix_rows=[0],
                          fmix_lams=[lam], fmix_spectrum=spectrum)
        images, targets = batch_augment.finish_batch(batch, CPU)
        assert images.shape == (1, 3, HEIGHT, WIDTH)
        mask = fmix.sample_masks_torch(torch.tensor([lam], dtype=torch.float64), recipe.FMIX_DECAY_POWER,
                                       (HEIGHT, WIDTH), recipe.FMIX_MAX_SOFT,
                                       torch.Generator().manual_seed(11), spectrum=spectrum)[0].numpy()
        assert mask.shape == (HEIGHT, WIDTH) and mask.sum(dtype=np.float64) == pytest.approx(605, abs=1e-3)
        expected = mask[None] * normalised(200)[:, None, None] + (1 - mask)[None] * normalised(50)[:, None, None]
        np.testing.assert_allclose(images[0].numpy(), expected, rtol=0, atol=2e-5)
        np.testing.assert_allclose(targets[0].numpy(), [605 / PIXELS, 0, 0, 0, 1 - 605 / PIXELS], rtol=0, atol=1e-7)


def test_cutmix_box_of_a_non_square_batch_and_its_share():
    box = [30, 40, 4, 20]  # top, bottom, left, right: 10 rows x 16 columns of the partner
    pixels = np.stack([np.full((1, HEIGHT, WIDTH), 255), np.zeros((1, HEIGHT, WIDTH))])
    batch = hand_plan(pixels, [1, 3], [[False, False], [False, False]], np.zeros((2, 2, 8, 2)), cutmix_rows=[0],
                      cutmix_boxes=[box])
    images, targets = batch_augment.finish_batch(batch, CPU)
    expected = np.broadcast_to(normalised(255)[:, None, None], (3, HEIGHT, WIDTH)).copy()
    expected[:, 30:40, 4:20] = normalised(0)[:, None, None]
    np.testing.assert_allclose(images[0].numpy(), expected, rtol=0, atol=1e-6)
    share = 1 - 10 * 16 / PIXELS
    np.testing.assert_allclose(targets[0].numpy(), [0, share, 0, 1 - share, 0], rtol=0, atol=1e-7)


def test_the_batch_plan_draws_cutmix_boxes_over_height_and_width(tmp_path):
    root = tmp_path / "root"
    table = write_recordings(root, {"R": [np.full((27, 48, 3), 255, np.uint8)] * 8})
    dataset, _ = cached_train_batch(table, root, tmp_path / "cache", [0], size=(HEIGHT, WIDTH), cutmix_enabled=True)
    boxes = np.concatenate([dataset[0, step, list(range(8))].plan.cutmix_boxes.numpy() for step in range(100)])
    top, bottom, left, right = boxes.T
    assert len(boxes) > 100 and bottom.max() <= HEIGHT and right.max() <= WIDTH
    # lambda in [0.3, 0.4]: a whole box is 2 * (int(side * sqrt(1 - lambda)) // 2) pixels along each side.
    tallest = 2 * (int(HEIGHT * math.sqrt(0.7)) // 2)
    widest = 2 * (int(WIDTH * math.sqrt(0.7)) // 2)
    assert (bottom - top).max() == tallest and (right - left).max() == widest


def test_per_sample_training_images_are_height_by_width(tiny_data):
    # The original's path with everything on: Resize, the two dropouts, FMix and CutMix on every image.
    table = L.read_train_table(tiny_data)
    dataset = L.EpochImageDataset(L.table_image_paths(tiny_data, table)[:20], table.labels[:20],
                                  L.get_train_transforms((HEIGHT, WIDTH)), seed=1, cutmix_enabled=True)
    mixed = 0
    for index in range(len(dataset)):
        image, target = dataset[index]
        assert image.shape == (3, HEIGHT, WIDTH)
        mixed += int(target.max() < 1)
    assert mixed >= 3


def test_create_model_builds_the_vit_for_height_by_width():
    vit = models.create_model(VIT, VIT_SHAPE)
    assert vit.patch_embed.img_size == VIT_SHAPE and vit.patch_embed.grid_size == (2, 1)
    assert models.create_model(VIT, (32, 32)).patch_embed.img_size == (32, 32)


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------
def test_help_names_height_width_and_the_originals_224(monkeypatch, capsys):
    status, out, _ = run_in_process(main_eff, ["--help"], monkeypatch, capsys)
    help_text = " ".join(out.split())
    assert status == 0 and "--img-size PIXELS [PIXELS ...]" in help_text
    assert "HEIGHT WIDTH" in help_text and "(default: 224)" in help_text


@pytest.mark.parametrize("sizes, shown", [([0], "0"), ([64, 32, 16], "64 32 16"), ([32, -1], "32 -1")])
def test_bad_sizes_are_one_line_errors(monkeypatch, capsys, tmp_path, sizes, shown):
    status, _, err = run_in_process(main_vit_rgb, ["--img-size", *sizes, "--weights-dir", tmp_path / "w",
                                                "--pretrained", "none"], monkeypatch, capsys)
    assert (status, err) == (2, "error: --img-size takes one size in pixels (square) or two (HEIGHT WIDTH), each "
                                f"at least 1, got {shown}\n")
    assert not (tmp_path / "w").exists()


def test_a_size_the_vit_patches_do_not_divide_is_one_line(tiny_data, monkeypatch, capsys, tmp_path):
    argv = ["--data-root", tiny_data, "--weights-dir", tmp_path / "w", "--cache-dir", tmp_path / "cache",
            "--model-arch", VIT, "--img-size", 40, 32, "--pretrained", "none", "--workers", 0, "--quiet"]
    status, _, err = run_in_process(main_vit_rgb, argv, monkeypatch, capsys)
    assert (status, err) == (2, "error: --img-size 40 32 does not suit test_vit: its height and width must be "
                                "multiples of the patch size 16 x 16\n")
    assert not (tmp_path / "w").exists() and not (tmp_path / "cache").exists()


# --------------------------------------------------------------------------
# Each trainer at a non-square size, its checkpoint used by infer_blend.py
# --------------------------------------------------------------------------
def train(module, data_root, weights, arch, shape, *extra):
    engine.train(trainer_args(module, data_root, weights, "--model-arch", arch, "--img-size", *shape,
                              "--folds", 3, "--batch-size", 16, "--lr", 1e-3, *extra))


@pytest.fixture(scope="module")
def non_square_runs(tiny_data, tmp_path_factory):
    """One epoch of main_vit_rgb.py (test_vit at 32 x 16) and main_eff.py (test_efficientnet at 40 x 24,
    shrunk with --resize area)."""
    weights = tmp_path_factory.mktemp("geometry") / "weights"
    with one_thread():
        train(main_vit_rgb, tiny_data, weights, VIT, VIT_SHAPE, "--epochs", 1)
        train(main_eff, tiny_data, weights, EFF, EFF_SHAPE, "--epochs", 1, "--resize", RESIZES[EFF])
    return weights


RESIZES = {VIT: "linear", EFF: "area"}  # the interpolation each run of non_square_runs shrinks its images with
INTERPOLATIONS = {"linear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA}


@pytest.mark.slow
def test_each_trainer_records_its_geometry_and_caches_at_it(tiny_data, non_square_runs):
    weights = non_square_runs
    for arch, shape in ((VIT, VIT_SHAPE), (EFF, EFF_SHAPE)):
        config = model_set_lib.read_run_config(weights, arch, 0)
        saved = json.loads(output_names.run_config_path(weights, arch, 0).read_text())
        assert saved["img_size"] == list(shape) and config["img_size"] == tuple(shape)  # saved [h, w], read (h, w)
        assert config["resize"] == RESIZES[arch]
        folder = image_cache.cache_folder(weights.parent / "cache", tiny_data, shape, RESIZES[arch])
        arrays = sorted(folder.glob("*.npy"))
        suffix = "-area" if RESIZES[arch] == "area" else ""
        assert folder.name == f"{shape[0]}x{shape[1]}px{suffix}" and arrays
        assert np.load(arrays[0], mmap_mode="r").shape[2:] == shape


def by_hand(weights, arch, shape, image_path) -> np.ndarray:
    """Softmax of epoch 0 of ``arch`` on one image resized by OpenCV to ``shape`` (height, width) as it trained."""
    model = models.load_weights(models.create_model(arch, shape), engine.checkpoint_path(weights, arch, 0, 0))
    image = cv2.cvtColor(cv2.imread(str(image_path)), cv2.COLOR_BGR2RGB)
    image = cv2.resize(image, (shape[1], shape[0]), interpolation=INTERPOLATIONS[RESIZES[arch]]).astype(np.float32) / 255.0
    image = (image - np.array(recipe.IMAGENET_MEAN)) / np.array(recipe.IMAGENET_STD)
    with torch.no_grad():
        return torch.softmax(model.eval()(torch.from_numpy(image.transpose(2, 0, 1)[None].astype(np.float32))),
                             dim=1)[0].numpy()


@pytest.mark.slow
def test_infer_blend_rebuilds_each_model_at_its_geometry(tiny_data, non_square_runs, tmp_path):
    weights, out = non_square_runs, tmp_path / "outputs"
    with one_thread():
        infer_blend.main(["--data-root", str(tiny_data), "--weights-dir", str(weights), "--out", str(out),
                          "--vit-arch", VIT, "--eff-arch", EFF, "--vit-epochs", "0", "--eff-epochs", "0",
                          "--workers", "0", "--batch-size", "32", "--cache-dir", str(tmp_path / "cache"),
                          "--quiet"])
    test = psg_layout.read_epoch_csv(tiny_data / psg_layout.TEST_CSV, with_labels=False)
    for arch, shape in ((VIT, VIT_SHAPE), (EFF, EFF_SHAPE)):
        dump = np.load(dump_path(out, arch, 0, [0]))
        assert dump.shape == (len(test), 5)
        for row in (0, len(test) - 1):
            image = psg_layout.image_path(tiny_data, test.recording_ids[row], test.idnums[row])
            np.testing.assert_allclose(dump[row], by_hand(weights, arch, shape, image), atol=2e-4)


def test_a_configuration_with_a_bad_size_is_one_line(tmp_path):
    path = engine.run_config_path(tmp_path, VIT, 0)
    path.write_text(json.dumps({"model_arch": VIT, "img_size": [32, 16, 8], "num_classes": 5}))
    with pytest.raises(InputError, match=r"configuration's img_size is not one or two sizes in pixels: \[32, 16, 8\]"):
        model_set_lib.read_run_config(tmp_path, VIT, 0)


@pytest.mark.slow
def test_resume_refuses_another_geometry(tiny_data, non_square_runs):
    with pytest.raises(InputError, match=r"differ from the saved run: img_size \(32, 16\) -> \(16, 32\)"):
        train(main_vit_rgb, tiny_data, non_square_runs, VIT, VIT_SHAPE[::-1], "--epochs", 2, "--resume")


@pytest.mark.slow
def test_resume_reads_an_older_configs_int_size_as_square(tiny_data, tmp_path, capsys):
    weights = tmp_path / "weights"
    with one_thread():
        train(main_vit_rgb, tiny_data, weights, VIT, (16,), "--epochs", 1)
        path = engine.run_config_path(weights, VIT, 0)
        config = json.loads(path.read_text())
        assert config["img_size"] == [16, 16]
        before = {key: value for key, value in config.items() if key not in model_set_lib.ADDED_SETTINGS}
        path.write_text(json.dumps({**before, "img_size": 16}))  # as configurations were written before
        train(main_vit_rgb, tiny_data, weights, VIT, (16,), "--epochs", 2, "--resume")
    assert "resuming after epoch 0" in capsys.readouterr().out
    assert engine.checkpoint_path(weights, VIT, 0, 1).is_file()
