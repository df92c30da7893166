"""Data-parallel training: torchrun with two CPU processes (gloo) trains and writes from rank 0."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import engine
import loader_vit_rgb
from conftest import REPO

ARCH = "test_efficientnet"


def test_two_process_torchrun_with_gloo_writes_checkpoints(tiny_data, tmp_path):
    weights = tmp_path / "weights"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "main_eff.py", "--data-root", str(tiny_data), "--weights-dir", str(weights), "--model-arch", ARCH,
               "--img-size", "32", "--batch-size", "16", "--epochs", "2", "--workers", "0", "--quiet",
               "--device", "cpu", "--cache-dir", str(tmp_path / "cache"), "--pretrained", "none"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("epoch 1: lr") == 1  # rank 0 alone reports

    for epoch in range(2):
        model = engine.create_model(ARCH, 32)
        engine.load_weights(model, engine.checkpoint_path(weights, ARCH, 0, epoch))
    config = engine.read_run_config(weights, ARCH, 0)
    assert config["world_size"] == 2

    # Validation metrics are reduced over both ranks: every validation image counted once.
    table = loader_vit_rgb.read_train_table(tiny_data)
    valid_labels = table.labels[loader_vit_rgb.make_folds(table) == 0]
    with open(engine.log_path(weights, ARCH, 0), newline="") as handle:
        log = list(csv.DictReader(handle))
    assert len(log) == 2
    confusion = np.array(json.loads(log[-1]["confusion"]))
    np.testing.assert_array_equal(confusion.sum(1), np.bincount(valid_labels, minlength=5))
    assert float(log[-1]["valid_accuracy"]) == pytest.approx(np.trace(confusion) / confusion.sum(), abs=1e-6)
