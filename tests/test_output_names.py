"""output_names.py: every output name equals the original's, and the module loads without torch."""
from __future__ import annotations

import subprocess
import sys

from sleepstaging import output_names as names
from conftest import REPO


def test_imports_without_torch():
    check = "import sys; from sleepstaging import output_names; assert 'torch' not in sys.modules, sorted(sys.modules)"
    result = subprocess.run([sys.executable, "-c", check], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_training_names_are_the_originals(tmp_path):
    assert names.checkpoint_path("weights", "vit_base_patch16_224", 0, 4).as_posix() == \
        "weights/vit_base_patch16_224_fold_0_4"
    assert names.checkpoint_path(tmp_path, "tf_efficientnet_b4_ns", 0, 1) == tmp_path / "tf_efficientnet_b4_ns_fold_0_1"
    assert names.last_state_path("w", "a", 2).as_posix() == "w/a_fold_2_last.pt"
    assert names.run_config_path("w", "a", 2).as_posix() == "w/a_fold_2_config.json"
    assert names.log_path("w", "a", 2).as_posix() == "w/a_fold_2_log.csv"
    assert names.log_path("w", "a", 2).match(names.TRAINING_LOG_GLOB)


def test_dump_and_blend_names_are_the_originals():
    assert names.dump_path("outputs", "vit_base_patch16_224", 0, [4]).as_posix() == \
        "outputs/vit_base_patch16_224_fold_0_[4].npy"
    assert names.dump_path("o", "tf_efficientnet_b4_ns", 1, (3, 4), "valid").as_posix() == \
        "o/tf_efficientnet_b4_ns_fold_1_[3, 4]_valid.npy"
    assert names.valid_csv_path("o", 2).as_posix() == "o/fold_2_valid.csv"
    assert names.infer_config_path("o", 3).as_posix() == "o/infer_blend_fold_3.json"
    blend_csv = names.blend_csv_path("outputs", "sqrt", [4], [1])
    assert blend_csv.as_posix() == "outputs/filesblend_sqrt_[4]_[1].csv"
    assert names.blend_csv_path("o", "avg", (0, 1), [2]).as_posix() == "o/filesblend_avg_[0, 1]_[2].csv"
    assert names.probabilities_path(blend_csv).as_posix() == "outputs/filesblend_sqrt_[4]_[1].npy"
    assert names.tune_json_path("outputs").as_posix() == "outputs/blend_tune.json"


def test_submission_and_report_names_are_the_originals():
    submission = names.submission_path("outputs")
    assert submission.as_posix() == "outputs/files_post.csv"
    assert names.recordings_dir(submission).as_posix() == "outputs/recordings"
    assert names.report_dir("outputs").as_posix() == "outputs/report"
