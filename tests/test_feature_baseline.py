"""bench/feature_baseline.py: the row statistics by hand, and a run on the tests' data set."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import feature_baseline

REPO = Path(__file__).resolve().parents[1]


def test_row_features_by_hand():
    image = np.zeros((1, 1, 4, 4), dtype=np.uint8)
    image[0, 0, 1] = [0, 255, 0, 255]     # row 1 alternates
    image[0, 0, 2] = [255, 255, 255, 255]  # row 2 is flat white
    features = feature_baseline.row_features(image, block=2)
    assert features.shape == (1, 16)
    mean, std, step, block_spread = features[0].reshape(4, 4)
    np.testing.assert_allclose(mean, [0, 0.5, 1, 0])
    np.testing.assert_allclose(std, [0, 0.5, 0, 0])
    np.testing.assert_allclose(step, [0, 1, 0, 0])         # |diff| of 0,1,0,1 is 1 everywhere
    np.testing.assert_allclose(block_spread, [0, 0.5, 0, 0])  # each block (0, 1) has std 0.5


def test_pixel_features_are_the_first_channel_flattened_in_unit_range():
    images = np.zeros((2, 3, 2, 3), dtype=np.uint8)
    images[1, 0] = [[0, 51, 102], [153, 204, 255]]
    images[1, 1] = 255  # other channels are ignored (the images are grey)
    features = feature_baseline.pixel_features(images)
    assert features.shape == (2, 6) and features.dtype == np.float32
    np.testing.assert_allclose(features[0], 0)
    np.testing.assert_allclose(features[1], [0, 0.2, 0.4, 0.6, 0.8, 1.0], rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("learner, features", [("trees", "rows"), ("logistic", "pixels")])
def test_a_run_scores_the_test_and_validation_rows(tiny_data, tmp_path, learner, features):
    out = tmp_path / "baseline.json"
    result = subprocess.run([sys.executable, str(REPO / "bench" / "feature_baseline.py"), "--data-root",
                             str(tiny_data), "--cache-dir", str(tmp_path / "cache"), "--img-size", "32",
                             "--learner", learner, "--features", features, "--out", str(out)],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    found = json.loads(out.read_text())
    assert found["what"].startswith({"trees": "HistGradientBoostingClassifier on per-row",
                                     "logistic": "LogisticRegression (standardised features) on the pixels"}[learner])
    test_rows = sum(1 for _ in open(tiny_data / "testset-labels.csv"))
    assert found["test"]["rows"] == found["test_fitted_on_fold_0_training"]["rows"] == test_rows
    assert 0 < found["fold_0_validation"]["rows"] < sum(1 for _ in open(tiny_data / "trainset-for_user.csv"))
    # Far above chance (0.2) on the tiny set's clearly drawn stages.
    assert found["test"]["macro_f1"] > 0.4
    assert found["test_fitted_on_fold_0_training"]["macro_f1"] > 0.4  # fitted on fewer nights, it still learns
    assert set(found["test"]["f1"]) == {"Wake", "N1", "N2", "N3", "REM"}


@pytest.mark.slow
def test_a_size_that_is_not_a_multiple_of_the_block_is_refused(tiny_data, tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "bench" / "feature_baseline.py"), "--data-root",
                             str(tiny_data), "--img-size", "30", "--out", str(tmp_path / "x.json")],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --img-size 30 is not a multiple of --block 8"
    assert not (tmp_path / "x.json").exists()
