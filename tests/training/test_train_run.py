"""The trainers end to end on the tiny synthetic data set: learning, files written, command line."""
from __future__ import annotations

from sleepstaging import output_names

import csv
import json
import math
import sys

import numpy as np
import pytest
import torch

from sleepstaging.training import engine
from sleepstaging.scoring import models
from sleepstaging.scoring import model_set as model_set_lib
from sleepstaging.data import loaders
import main_eff
import main_vit_rgb
from sleepstaging import script_io
from conftest import run_script

# One BLAS thread per process: on a busy 2-core machine, more threads spin
# against each other and training runs several times slower.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
# 6 epochs: after 4, macro-F1 passes the bar below for only about half of the seeds (either data path).
# 3 folds: validation then holds two recordings (about 120 epochs); with one
# (5 folds), macro-F1 swings with a handful of images.
ARCH, IMG_SIZE, EPOCHS, FOLDS = "test_efficientnet", 48, 6, 3


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    """main_eff.py for EPOCHS epochs on the tiny data set (one cosine cycle: --t0 2 x EPOCHS, two steps per epoch)."""
    weights = tmp_path_factory.mktemp("trained") / "weights"
    result = run_script(
        "main_eff.py", "--data-root", tiny_data, "--weights-dir", weights, "--model-arch", ARCH,
        "--img-size", IMG_SIZE, "--lr", 3e-3, "--epochs", EPOCHS, "--t0", 2 * EPOCHS, "--folds", FOLDS,
        "--batch-size", 16, "--workers", 0, "--quiet", "--cache-dir", weights.parent / "cache", "--pretrained", "none",
        env=ONE_THREAD,
    )
    with open(engine.log_path(weights, ARCH, 0), newline="") as handle:
        log = list(csv.DictReader(handle))
    return weights, log, result.stdout


@pytest.mark.slow
def test_a_tiny_model_learns(trained):
    _, log, _ = trained
    assert [int(row["epoch"]) for row in log] == list(range(EPOCHS))
    losses = [float(row["train_loss"]) for row in log]
    assert losses[-1] < losses[0] - 0.3, losses
    # Chance macro-F1 of five classes is about 0.2; always predicting the
    # commonest stage scores below 0.1.
    best_f1 = max(float(row["valid_macro_f1"]) for row in log)
    assert best_f1 > 0.45 and float(log[-1]["valid_macro_f1"]) > 0.4, [row["valid_macro_f1"] for row in log]


@pytest.mark.slow
def test_the_schedule_is_the_originals_two_steps_per_epoch(trained):
    _, log, _ = trained
    # CosineAnnealingWarmRestarts(T_0=2 x EPOCHS, eta_min=1e-6) stepped twice per epoch:
    # epoch e trains at step 2 e of the cycle.
    for row in log:
        step = 2 * int(row["epoch"])
        expected = 1e-6 + (3e-3 - 1e-6) * (1 + math.cos(math.pi * step / (2 * EPOCHS))) / 2
        assert float(row["lr"]) == pytest.approx(expected, rel=1e-4)


@pytest.mark.slow
def test_checkpoints_config_and_state_files(trained, tiny_data):
    weights, log, stdout = trained
    names = sorted(path.name for path in weights.iterdir())
    assert names == sorted([f"{ARCH}_fold_0_{epoch}" for epoch in range(EPOCHS)]
                           + [f"{ARCH}_fold_0_last.pt", f"{ARCH}_fold_0_config.json", f"{ARCH}_fold_0_log.csv"])

    config = model_set_lib.read_run_config(weights, ARCH, 0)
    assert (config["model_arch"], config["img_size"], config["num_classes"]) == (ARCH, (IMG_SIZE, IMG_SIZE), 5)
    saved = json.loads(output_names.run_config_path(weights, ARCH, 0).read_text())
    assert saved["img_size"] == [IMG_SIZE, IMG_SIZE]  # saved as [height, width], read as (height, width)
    assert (config["optimizer"], config["cv"], config["amp"], config["seed"]) == ("adamp", "subject", "off", 72)
    assert json.loads(stdout[:stdout.index("\n}\n") + 2]) == saved  # printed at start as saved

    # The last checkpoint reproduces the logged validation accuracy.
    table = loaders.read_train_table(tiny_data)
    valid_rows = np.flatnonzero(loaders.make_folds(table, n_folds=FOLDS) == 0)
    assert {table.recording_ids[r] for r in valid_rows} == set(config["valid_recordings"])
    model = models.create_model(config["model_arch"], config["img_size"])
    models.load_weights(model, engine.checkpoint_path(weights, ARCH, 0, EPOCHS - 1))
    # Read through the per-sample path: without augmentation it gives the cache path's tensors.
    loader = loaders.make_eval_loader(tiny_data, table, (IMG_SIZE, IMG_SIZE), 64, 0, rows=valid_rows, cache_dir=None)
    probabilities = models.predict(model, loader, torch.device("cpu"), "off")
    accuracy = float((probabilities.argmax(1) == table.labels[valid_rows]).mean())
    assert accuracy == pytest.approx(float(log[-1]["valid_accuracy"]), abs=1e-6)
    confusion = np.array(json.loads(log[-1]["confusion"]))
    assert confusion.sum() == valid_rows.size
    np.testing.assert_array_equal(confusion.sum(1), np.bincount(table.labels[valid_rows], minlength=5))

    state = torch.load(engine.last_state_path(weights, ARCH, 0), weights_only=True)
    assert state["epoch"] == EPOCHS - 1
    assert state["scheduler"]["last_epoch"] == 2 * EPOCHS
    assert state["optimizer"]["state"] and state["optimizer"]["param_groups"][0]["weight_decay"] == 1e-6
    assert set(state["rng"]) >= {"torch", "numpy_keys", "python_internal"}


def run_in_process(module, argv, monkeypatch, capsys):
    """Run a trainer's ``main`` as its command line would, here; return (exit status, out, err)."""
    monkeypatch.setattr(sys, "argv", [module.__file__, *map(str, argv)])
    with pytest.raises(SystemExit) as exit_info:
        script_io.run_main(module.main)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_help_of_both_trainers(monkeypatch, capsys):
    for module, arch in [(main_vit_rgb, "vit_base_patch16_224"), (main_eff, "tf_efficientnet_b4_ns")]:
        status, out, _ = run_in_process(module, ["--help"], monkeypatch, capsys)
        assert status == 0 and arch in out and "--sched-steps-per-epoch" in out and "--resume" in out


def test_bad_options_are_one_line_errors(monkeypatch, capsys, tmp_path):
    status, out, err = run_in_process(main_eff, ["--fold", 5, "--weights-dir", tmp_path / "w", "--pretrained", "none"],
                                      monkeypatch, capsys)
    assert (status, err) == (2, "error: --fold must be in 0..4, got 5\n")
    status, out, err = run_in_process(main_vit_rgb, ["--batch-size", 0, "--pretrained", "none"], monkeypatch, capsys)
    assert (status, err) == (2, "error: --batch-size must be at least 1, got 0\n")
    status, out, err = run_in_process(main_vit_rgb, ["--warmup-epochs", 11, "--pretrained", "none"], monkeypatch,
                                      capsys)
    assert (status, err) == (2, "error: --warmup-epochs must be in 0..--epochs (10), got 11.0\n")
    status, out, err = run_in_process(main_eff, ["--stage-balance", -1, "--pretrained", "none"], monkeypatch, capsys)
    assert (status, err) == (2, "error: --stage-balance must be a finite number, 0 or more, got -1.0\n")
    status, out, err = run_in_process(main_eff, ["--stage-balance", "inf", "--pretrained", "none"], monkeypatch,
                                      capsys)  # every stage's draws would be 0 ** ...: no sampler
    assert (status, err) == (2, "error: --stage-balance must be a finite number, 0 or more, got inf\n")


@pytest.mark.slow
def test_no_data_is_one_line_exit_2_and_writes_nothing(tmp_path):
    weights = tmp_path / "weights"
    result = run_script("main_vit_rgb.py", "--data-root", tmp_path / "DATA", "--weights-dir", weights,
                        "--pretrained", "none", check=False)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: data root not found")
    assert "make_synthetic.py" in result.stderr and str(tmp_path / "DATA") in result.stderr
    assert not weights.exists()
