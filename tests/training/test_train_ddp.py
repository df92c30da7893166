"""Data-parallel training: torchrun with two CPU processes (gloo) trains and writes from rank 0.

Each process runs the trainer through a small launcher that records, per
epoch, the table rows its training batches hold and its weights after the
epoch: the two ranks' shards must partition the training rows (up to the
sampler's padding of an odd count), and the ranks' weights must stay equal
to each other while they move away from the initial ones.
"""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from sleepstaging.training import engine
from sleepstaging.scoring import models
from sleepstaging.scoring import model_set
from sleepstaging.data import loaders
from conftest import REPO

pytestmark = pytest.mark.slow  # every test here launches a script or trains

ARCH = "test_efficientnet"

# Runs a script (argv[1:]) as torchrun would, noting per epoch the rows of this rank's training
# batches (not their FMix partners) and a fingerprint of its weights after training: per tensor,
# the sum and the sum of squares (float64).
RECORDING_LAUNCHER = r'''
import atexit, json, os, runpy, sys
import numpy as np
from sleepstaging.data import cached_batches
from sleepstaging.training import engine

shards, weights = {}, []
get_batch, train_one_epoch = cached_batches.CachedTrainBatches.__getitem__, engine.train_one_epoch


def recorded_get_batch(self, key):
    epoch, _, indices = key
    shards.setdefault(str(epoch), []).extend(int(row) for row in self.rows[np.asarray(indices)])
    return get_batch(self, key)


def recorded_train_one_epoch(model, *args, **kwargs):
    result = train_one_epoch(model, *args, **kwargs)
    weights.append([[float(p.double().sum()), float((p.double() ** 2).sum())] for p in model.parameters()])
    return result


cached_batches.CachedTrainBatches.__getitem__ = recorded_get_batch
engine.train_one_epoch = recorded_train_one_epoch
out = os.path.join(os.environ["RECORD_DIR"], "rank_" + os.environ["RANK"] + ".json")
atexit.register(lambda: open(out, "w").write(json.dumps({"shards": shards, "weights": weights})))
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
'''


def test_two_process_torchrun_with_gloo_writes_checkpoints(tiny_data, tmp_path):
    weights = tmp_path / "weights"
    launcher = tmp_path / "record_rank.py"
    launcher.write_text(RECORDING_LAUNCHER)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(launcher), "main_eff.py", "--data-root", str(tiny_data), "--weights-dir", str(weights), "--model-arch", ARCH,
               "--img-size", "32", "--batch-size", "16", "--epochs", "2", "--workers", "0", "--quiet",
               "--device", "cpu", "--cache-dir", str(tmp_path / "cache"), "--pretrained", "none"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO),
                                     RECORD_DIR=str(tmp_path)))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("epoch 1: lr") == 1  # rank 0 alone reports

    for epoch in range(2):
        model = models.create_model(ARCH, (32, 32))
        models.load_weights(model, engine.checkpoint_path(weights, ARCH, 0, epoch))
    config = model_set.read_run_config(weights, ARCH, 0)
    assert config["world_size"] == 2

    # Validation metrics are reduced over both ranks: every validation image counted once.
    table = loaders.read_train_table(tiny_data)
    valid_labels = table.labels[loaders.make_folds(table) == 0]
    with open(engine.log_path(weights, ARCH, 0), newline="") as handle:
        log = list(csv.DictReader(handle))
    assert len(log) == 2
    confusion = np.array(json.loads(log[-1]["confusion"]))
    np.testing.assert_array_equal(confusion.sum(1), np.bincount(valid_labels, minlength=5))
    assert float(log[-1]["valid_accuracy"]) == pytest.approx(np.trace(confusion) / confusion.sum(), abs=1e-6)

    # The two shards of every epoch cover the training rows; they overlap only where
    # DistributedSampler pads an odd count to an even one (one row, twice).
    train_rows = set(np.flatnonzero(loaders.make_folds(table) != 0).tolist())
    records = [json.loads((tmp_path / f"rank_{rank}.json").read_text()) for rank in (0, 1)]
    for epoch in ("0", "1"):
        first, second = (record["shards"][epoch] for record in records)
        assert len(first) == len(second) == math.ceil(len(train_rows) / 2)
        assert len(set(first)) == len(first) and len(set(second)) == len(second)
        assert set(first) | set(second) == train_rows
        assert len(set(first) & set(second)) == len(train_rows) % 2
    assert records[0]["shards"]["0"] != records[0]["shards"]["1"]  # reshuffled each epoch

    # Gradients are averaged over the ranks: equal weights on both after every epoch, and they moved.
    assert records[0]["weights"] == records[1]["weights"] and len(records[0]["weights"]) == 2
    # Parameters, not buffers: batch-norm statistics move without any optimizer step.
    torch.manual_seed(72)
    initial = dict(models.create_model(ARCH, (32, 32)).named_parameters())
    trained = [dict(models.load_weights(models.create_model(ARCH, (32, 32)),
                                        engine.checkpoint_path(weights, ARCH, 0, epoch)).named_parameters())
               for epoch in (0, 1)]
    for before, after in ((initial, trained[0]), (trained[0], trained[1])):
        assert any(not torch.equal(before[name], after[name]) for name in before)
