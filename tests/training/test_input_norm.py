"""--input-norm data: the training images' own statistics, and the model that rescales its input to them."""
from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from conftest import run_script
from sleepstaging import recipe
from sleepstaging.data import image_cache, loaders
from sleepstaging.script_io import InputError
from sleepstaging.scoring import inference, model_set, models
from sleepstaging.training import engine


def test_pixel_statistics_by_hand(tmp_path):
    dark, bright = tmp_path / "dark.png", tmp_path / "bright.png"
    cv2.imwrite(str(dark), np.full((4, 6, 3), 51, np.uint8))
    cv2.imwrite(str(bright), np.full((4, 6, 3), 153, np.uint8))
    mean, std = image_cache.pixel_statistics([dark, bright], (4, 6), "area")
    # half the pixels 0.2, half 0.6: mean 0.4, standard deviation 0.2, in every channel
    np.testing.assert_allclose(mean, [0.4] * 3)
    np.testing.assert_allclose(std, [0.2] * 3)


def test_the_rescaled_model_on_imagenet_input_is_the_plain_model_on_data_normalised_input():
    torch.manual_seed(0)
    plain = models.create_model("test_efficientnet", (32, 32), pretrained="none").eval()
    rescaled = models.create_model("test_efficientnet", (32, 32), pretrained="none").eval()
    rescaled.load_state_dict(plain.state_dict())
    mean, std = [0.05, 0.06, 0.07], [0.1, 0.11, 0.12]
    models.rescale_input(rescaled, mean, std)
    # the checkpoints stay plain timm weights: the two constants are not saved
    assert list(rescaled.state_dict()) == list(plain.state_dict())
    pixels = torch.rand(2, 3, 32, 32, dtype=torch.float64) * 0.5  # as a share of 255
    channel = (1, 3, 1, 1)
    imagenet = (pixels - torch.tensor(recipe.IMAGENET_MEAN, dtype=torch.float64).view(channel)) / torch.tensor(
        recipe.IMAGENET_STD, dtype=torch.float64).view(channel)
    own = (pixels - torch.tensor(mean, dtype=torch.float64).view(channel)) / torch.tensor(
        std, dtype=torch.float64).view(channel)
    with torch.no_grad():
        np.testing.assert_allclose(rescaled(imagenet.float()).numpy(), plain(own.float()).numpy(), atol=1e-4)
        assert not np.allclose(plain(imagenet.float()).numpy(), plain(own.float()).numpy(), atol=1e-3)


def test_a_spread_of_zero_is_refused():
    model = models.create_model("test_efficientnet", (32, 32), pretrained="none")
    with pytest.raises(InputError, match="the spreads above 0"):
        models.rescale_input(model, [0.1, 0.1, 0.1], [0.1, 0.0, 0.1])


def test_a_configuration_without_input_norm_builds_the_plain_model():
    config = {"img_size": (32, 32), "num_classes": 5}
    assert not hasattr(models.model_for_run("test_efficientnet", config), "input_scale")
    config.update(input_norm="data", input_mean=[0.1] * 3, input_std=[0.2] * 3)
    assert models.model_for_run("test_efficientnet", config).input_scale.shape == (1, 3, 1, 1)


@pytest.mark.slow
def test_a_run_records_the_statistics_and_inference_rebuilds_its_model(tiny_data, tmp_path):
    weights = tmp_path / "weights"
    run_script("main_vit_rgb.py", "--data-root", tiny_data, "--weights-dir", weights, "--model-arch", "test_vit",
               "--img-size", 32, "--epochs", 1, "--t0", 2, "--folds", 3, "--batch-size", 16, "--workers", 0,
               "--quiet", "--cache-dir", tmp_path / "cache", "--pretrained", "none", "--resize", "area",
               "--input-norm", "data", env={"OMP_NUM_THREADS": "1"})
    config = model_set.read_run_config(weights, "test_vit", 0)
    assert config["input_norm"] == "data"
    # the tiny set's images are mostly black: a small mean and spread, alike in the three channels (grey)
    assert all(0 < value < 0.3 for value in config["input_mean"] + config["input_std"])
    assert config["input_mean"][0] == pytest.approx(config["input_mean"][2])
    # inference builds the model as trained: its validation macro-F1 is the trainer's logged one
    table = loaders.read_train_table(tiny_data)
    rows = np.flatnonzero(loaders.make_folds(table, n_folds=3, seed=config["seed"], cv="subject") == 0)
    loader = loaders.make_eval_loader(tiny_data, table, config["img_size"], 64, 0, rows=rows,
                                      cache_dir=tmp_path / "cache", resize="area")
    model = next(inference.load_checkpoints("test_vit", [0], config, weights, 0, torch.device("cpu")))
    predicted = models.predict(model, loader, torch.device("cpu")).argmax(axis=1)
    with open(engine.log_path(weights, "test_vit", 0), newline="") as handle:
        logged = float(next(csv.DictReader(handle))["valid_macro_f1"])
    assert f1_score(table.labels[rows], predicted, average="macro") == pytest.approx(logged, abs=1e-6)
