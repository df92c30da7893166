"""The training run's recipe, watched from inside: which rows it reads, its schedule, its log.

Short in-process runs of engine.train on a small copy of the tiny data set
(4 recordings of 12 epochs, 2 folds: 24 training and 24 validation rows),
with the image cache's reads recorded: training must read the training
fold's rows only (a leak into it would pass every other test), validation
exactly the validation fold's. The learning rate follows
CosineAnnealingWarmRestarts, restarting inside the run with the defaults
(T_0 = 10 steps, two per epoch: epoch 5 starts a new cycle) and with
``--sched-steps-per-epoch 1``; the logged validation loss is the label-smoothed
cross entropy of the saved checkpoint, computed here independently; a
resumed run rewrites the log from the epoch it resumes at.
"""
from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

from sleepstaging.data import cached_batches
from sleepstaging.training import engine
from sleepstaging.scoring import models
from sleepstaging.scoring import model_set
from sleepstaging.data import loaders
import main_eff
import main_vit_rgb
from conftest import copy_subset, one_thread, trainer_args

LR, MIN_LR = 3e-3, 1e-6
FOLDS, IMG_SIZE = 2, 32


class RecordedCache:
    """An ImageCache that notes every table row read through it."""

    def __init__(self, cache, rows_read: set):
        self.cache, self.rows_read = cache, rows_read

    def read(self, rows):
        self.rows_read.update(int(row) for row in rows)
        return self.cache.read(rows)

    def __getattr__(self, name):
        return getattr(self.cache, name)


def record_reads(patcher, batches_class, rows_read: set) -> None:
    """Make ``batches_class`` (CachedTrainBatches or CachedEvalBatches) read through a RecordedCache."""
    prepare = batches_class.prepare

    def recorded_prepare(self):
        prepare(self)
        if not isinstance(self.cache, RecordedCache):
            self.cache = RecordedCache(self.cache, rows_read)

    patcher.setattr(batches_class, "prepare", recorded_prepare)


def read_log(weights):
    with open(engine.log_path(weights, "test_efficientnet", 0), newline="") as handle:
        return list(csv.DictReader(handle))


def cosine_lr(epoch: int, steps_per_epoch: int, t0: int) -> float:
    """CosineAnnealingWarmRestarts(T_0=t0, T_mult=1, eta_min=MIN_LR) after ``steps_per_epoch * epoch`` steps."""
    step = (steps_per_epoch * epoch) % t0
    return MIN_LR + (LR - MIN_LR) * (1 + math.cos(math.pi * step / t0)) / 2


@pytest.fixture(scope="module")
def small_data(tiny_data, tmp_path_factory):
    return copy_subset(tiny_data, tmp_path_factory.mktemp("recipe") / "DATA", train_recordings=4, train_rows=12,
                       test_recordings=1, test_rows=4)


@pytest.fixture(scope="module")
def default_run(small_data, tmp_path_factory):
    """main_eff's defaults for the schedule (T_0 10, two steps per epoch) over 6 epochs, reads recorded."""
    weights = tmp_path_factory.mktemp("default_run") / "weights"
    train_reads, valid_reads = set(), set()
    with one_thread(), pytest.MonkeyPatch.context() as patcher:
        record_reads(patcher, cached_batches.CachedTrainBatches, train_reads)
        record_reads(patcher, cached_batches.CachedEvalBatches, valid_reads)
        engine.train(trainer_args(main_eff, small_data, weights, "--model-arch", "test_efficientnet",
                                  "--img-size", IMG_SIZE, "--lr", LR, "--epochs", 6, "--folds", FOLDS,
                                  "--batch-size", 8))
    return weights, train_reads, valid_reads


def test_training_reads_only_the_training_folds_rows_and_the_config_counts_them(small_data, default_run):
    weights, train_reads, valid_reads = default_run
    table = loaders.read_train_table(small_data)
    recordings = np.array(table.recording_ids)
    fold_zero = loaders.make_folds(table, n_folds=FOLDS, seed=72, cv="subject") == 0
    valid_recordings = set(recordings[fold_zero])
    valid_rows = {int(r) for r in np.flatnonzero(np.isin(recordings, list(valid_recordings)))}
    train_rows = set(range(len(table))) - valid_rows
    assert len(valid_recordings) == 2 and len(valid_rows) == len(train_rows) == 24
    assert train_reads == train_rows  # every training row (6 epochs), no validation row
    assert valid_reads == valid_rows
    config = model_set.read_run_config(weights, "test_efficientnet", 0)
    assert (config["train_images"], config["valid_images"]) == (24, 24)
    assert set(config["valid_recordings"]) == valid_recordings


def test_the_defaults_restart_the_cosine_inside_the_run(default_run):
    weights, _, _ = default_run
    log = read_log(weights)
    assert [int(row["epoch"]) for row in log] == list(range(6))
    # Two steps per epoch, T_0 = 10: epochs 0-4 descend, epoch 5 starts the next cycle at the top.
    for row in log:
        assert float(row["lr"]) == pytest.approx(cosine_lr(int(row["epoch"]), 2, 10), rel=1e-5), row["epoch"]
    assert float(log[5]["lr"]) == pytest.approx(LR, rel=1e-5) and float(log[4]["lr"]) < LR / 5


def test_the_logged_validation_loss_is_the_smoothed_cross_entropy_of_the_checkpoint(small_data, default_run):
    weights, _, _ = default_run
    table = loaders.read_train_table(small_data)
    valid_rows = np.flatnonzero(loaders.make_folds(table, n_folds=FOLDS, seed=72, cv="subject") == 0)
    model = models.create_model("test_efficientnet", (IMG_SIZE, IMG_SIZE))
    models.load_weights(model, engine.checkpoint_path(weights, "test_efficientnet", 0, 5)).eval()
    # The per-sample path (no cache): the same pixels by another route.
    loader = loaders.make_eval_loader(small_data, table, (IMG_SIZE, IMG_SIZE), 64, 0, rows=valid_rows, cache_dir=None)
    with torch.no_grad():
        logits = torch.cat([model(images) for images, _ in loader]).double().numpy()
    log_probabilities = logits - logits.max(axis=1, keepdims=True)
    log_probabilities -= np.log(np.exp(log_probabilities).sum(axis=1, keepdims=True))
    targets = np.full(logits.shape, 0.1 / 4)  # label smoothing 0.1: 0.9 on the stage, 0.025 on the others
    targets[np.arange(len(valid_rows)), table.labels[valid_rows]] = 0.9
    expected = float(np.mean(-(targets * log_probabilities).sum(axis=1)))
    assert float(read_log(weights)[5]["valid_loss"]) == pytest.approx(expected, abs=2e-5)


def test_one_step_per_epoch_and_resume_rewrites_the_log_from_its_epoch(small_data, tmp_path):
    weights = tmp_path / "weights"
    def run(epochs, *extra):
        with one_thread():
            engine.train(trainer_args(main_vit_rgb, small_data, weights, "--model-arch", "test_efficientnet",
                                      "--img-size", IMG_SIZE, "--lr", LR, "--epochs", epochs, "--folds", FOLDS,
                                      "--batch-size", 8, "--sched-steps-per-epoch", 1, "--t0", 3, *extra))

    run(2)
    first_rows = read_log(weights)
    # Rows of epochs 2-4 left by an earlier, longer run of this fold: resuming after epoch 1 must drop them.
    stale = [{**first_rows[1], "epoch": str(epoch), "lr": "9"} for epoch in (2, 3, 4)]
    with open(engine.log_path(weights, "test_efficientnet", 0), "a", newline="") as handle:
        csv.DictWriter(handle, fieldnames=engine.LOG_COLUMNS).writerows(stale)
    run(4, "--resume")
    log = read_log(weights)
    assert [int(row["epoch"]) for row in log] == [0, 1, 2, 3]
    assert log[:2] == first_rows
    # One step per epoch, T_0 = 3: epochs 0-2 descend, epoch 3 restarts at the top.
    for row in log:
        assert float(row["lr"]) == pytest.approx(cosine_lr(int(row["epoch"]), 1, 3), rel=1e-5), row["epoch"]
    assert float(log[3]["lr"]) == pytest.approx(LR, rel=1e-5)
