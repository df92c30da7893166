"""--resume continues a run exactly: stopping after epoch 0 and resuming gives the uninterrupted result."""
from __future__ import annotations

import csv

import pytest
import torch

from sleepstaging.training import engine
import main_vit_rgb
from conftest import one_thread, trainer_args
from sleepstaging.script_io import InputError

pytestmark = pytest.mark.slow  # every test here launches a script or trains

ARCH = "test_vit"


@pytest.fixture
def one_thread_here():
    """One BLAS thread while training in this process (fastest on a busy 2-core machine)."""
    with one_thread():
        yield


def train(data_root, weights, epochs, *extra):
    engine.train(trainer_args(main_vit_rgb, data_root, weights, "--model-arch", ARCH, "--img-size", 32,
                              "--lr", 1e-3, "--batch-size", 16, "--epochs", epochs, *extra))


def log_without_timing(weights):
    with open(engine.log_path(weights, ARCH, 0), newline="") as handle:
        return [{k: v for k, v in row.items() if k != "train_images_per_s"} for row in csv.DictReader(handle)]


@pytest.mark.parametrize("data_path", [[], ["--no-cache"]], ids=["cache", "per-sample"])
def test_resume_reproduces_an_uninterrupted_run(tiny_data, tmp_path, one_thread_here, capsys, data_path):
    uninterrupted, resumed = tmp_path / "uninterrupted", tmp_path / "resumed"
    train(tiny_data, uninterrupted, 2, "--workers", "0", *data_path)
    train(tiny_data, resumed, 1, "--workers", "0", *data_path)
    # Resumed with another number of workers: the augmentations do not depend on it.
    train(tiny_data, resumed, 2, "--workers", "2", "--resume", *data_path)
    assert "resuming after epoch 0" in capsys.readouterr().out
    for epoch in range(2):
        a = engine.checkpoint_path(uninterrupted, ARCH, 0, epoch).read_bytes()
        b = engine.checkpoint_path(resumed, ARCH, 0, epoch).read_bytes()
        assert a == b, f"epoch {epoch} weights differ"
    assert log_without_timing(uninterrupted) == log_without_timing(resumed)
    state_a = torch.load(engine.last_state_path(uninterrupted, ARCH, 0), weights_only=True)
    state_b = torch.load(engine.last_state_path(resumed, ARCH, 0), weights_only=True)
    assert state_a["epoch"] == state_b["epoch"] == 1
    for key, value in state_a["optimizer"]["state"].items():
        torch.testing.assert_close(state_b["optimizer"]["state"][key]["exp_avg"], value["exp_avg"], rtol=0, atol=0)
    assert state_a["scheduler"] == state_b["scheduler"]

    # Changing the recipe on resume is refused; so is resuming nothing.
    with pytest.raises(InputError, match=r"differ from the saved run: lr 0.001 -> 0.002"):
        train(tiny_data, resumed, 3, "--resume", "--lr", "2e-3")
    with pytest.raises(InputError, match=r"differ from the saved run: fmix_spectrum 'original' -> 'isotropic'"):
        train(tiny_data, resumed, 3, "--resume", "--fmix-spectrum", "isotropic")
    with pytest.raises(InputError, match="nothing to resume|train it first"):
        train(tiny_data, tmp_path / "empty", 2, "--resume")
