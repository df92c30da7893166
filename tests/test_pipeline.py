"""The original's whole flow through the real scripts, on tiny data and tiny models.

make_synthetic (fixture) -> main_vit_rgb -> main_eff -> infer_blend ->
blend --tune -> blend --from-tune -> postprocess -> evaluate, each as a
subprocess, then every artefact checked: the original's names, shapes, row
order, probabilities, the blend CSV and the submission against the library
functions applied to the dumps, the report and its figures.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

import blend

from sleepstaging.scoring import blend as blend_lib
import oracles
from sleepstaging.data import psg_layout
from sleepstaging.scoring import rules
from conftest import run_script

pytestmark = pytest.mark.slow  # every test here launches a script or trains

VIT, EFF = "test_vit", "test_efficientnet"
THREADS = {"OMP_NUM_THREADS": "1"}


def tuned_blend_of_dumps(out, tune_json, vit_epochs, eff_epochs, rows: int):
    """(stages, probabilities) of the test dumps blended with blend_tune.json's settings, by blend.py's functions.

    The one place that turns tuned settings into the expected blend: a setting
    added to blend_tune.json is passed on here.
    """
    settings = blend_lib.read_tune_json(tune_json)
    p1, p2 = (blend_lib.load_probabilities(blend.dump_path(out, arch, 0, epochs), rows, "test CSV", "infer_blend.py")
              for arch, epochs in ((VIT, vit_epochs), (EFF, eff_epochs)))
    blended = (p1, p2, settings["method"], settings["ens_weight"], settings["power"],
               blend_lib.row_scales(settings["dump_scale"], settings["tta"]))
    return blend_lib.predict_stages(blend_lib.blend_scores(*blended)), blend_lib.blend_probabilities(*blended)


def rules_per_recording(stages, recording_ids):
    """The post-processing rules applied to each recording's rows alone (CSV order kept)."""
    result = np.empty_like(stages)
    for recording in dict.fromkeys(recording_ids):
        rows = np.flatnonzero(np.array(recording_ids) == recording)
        result[rows] = rules.apply_rules(stages[rows], [recording] * rows.size)[0]
    return result


def test_whole_flow_writes_every_artefact_as_the_seed_names_it(tiny_data, tmp_path):
    weights, out, cache = tmp_path / "weights", tmp_path / "outputs", tmp_path / "cache"
    common = ["--data-root", tiny_data, "--weights-dir", weights, "--cache-dir", cache, "--img-size", 32,
              "--epochs", 2, "--folds", 3, "--batch-size", 16, "--workers", 0, "--pretrained", "none", "--quiet"]
    run_script("main_vit_rgb.py", *common, "--model-arch", VIT, "--lr", 1e-3, env=THREADS)
    run_script("main_eff.py", *common, "--model-arch", EFF, "--lr", 1e-3, env=THREADS)
    for arch in (VIT, EFF):
        for epoch in (0, 1):
            assert (weights / f"{arch}_fold_0_{epoch}").is_file()
        assert json.loads((weights / f"{arch}_fold_0_config.json").read_text())["model_arch"] == arch

    models = ["--vit-arch", VIT, "--eff-arch", EFF, "--vit-epochs", 0, 1, "--eff-epochs", 1]
    run_script("infer_blend.py", "--data-root", tiny_data, "--weights-dir", weights, "--out", out,
               "--cache-dir", cache, "--workers", 0, "--quiet", *models, env=THREADS)
    test = psg_layout.read_epoch_csv(tiny_data / psg_layout.TEST_CSV, with_labels=False)
    valid = psg_layout.read_epoch_csv(out / "fold_0_valid.csv", with_labels=True)
    for name, rows in ((f"{VIT}_fold_0_[0, 1].npy", len(test)), (f"{EFF}_fold_0_[1].npy", len(test)),
                       (f"{VIT}_fold_0_[0, 1]_valid.npy", len(valid)), (f"{EFF}_fold_0_[1]_valid.npy", len(valid))):
        probabilities = np.load(out / name, allow_pickle=False)
        assert probabilities.dtype == np.float32 and probabilities.shape == (rows, psg_layout.NUM_CLASSES)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    # Validation rows are whole recordings of the training CSV, in its order.
    train = psg_layout.read_epoch_csv(tiny_data / psg_layout.TRAIN_CSV, with_labels=True)
    in_valid = [idnum for idnum in train.idnums if idnum in set(valid.idnums)]
    assert valid.idnums == in_valid
    assert not set(valid.recording_ids) & {r for r, i in zip(train.recording_ids, train.idnums) if i not in in_valid}

    run_script("blend.py", "--data-root", tiny_data, "--out", out, *models, "--tune", "--quiet")
    tuned = json.loads((out / "blend_tune.json").read_text())
    assert tuned["method"] in ("avg", "sqrt", "log1p", "square", "expm1", "rank")
    run_script("blend.py", "--data-root", tiny_data, "--out", out, *models, "--from-tune", out / "blend_tune.json",
               "--quiet")
    blend_csv = out / f"filesblend_{tuned['method']}_[0, 1]_[1].csv"
    expected_stages, expected_probabilities = tuned_blend_of_dumps(out, out / "blend_tune.json", [0, 1], [1], len(test))
    blended = blend_csv.read_text().splitlines()
    assert blended == [psg_layout.STAGES[s] for s in expected_stages]
    # The same stages by an independent re-statement of the original's blend (plain loops over the dumps).
    dumps = [np.load(out / name).astype(np.float64).tolist()
             for name in (f"{VIT}_fold_0_[0, 1].npy", f"{EFF}_fold_0_[1].npy")]
    by_loop = oracles.blend_by_loop(*dumps, tuned["method"], tuned["ens_weight"], tuned["power"],
                                    tuned["dump_scale"], tuned["tta"])
    assert blended == [psg_layout.STAGES[s] for s in by_loop]
    np.testing.assert_allclose(np.load(blend.probabilities_path(blend_csv)), expected_probabilities, atol=1e-6)

    run_script("postprocess.py", "--data-root", tiny_data, "--in", blend_csv, "--out", out / "files_post.csv")
    submission = (out / "files_post.csv").read_text().splitlines()
    assert submission == [psg_layout.STAGES[s] for s in rules_per_recording(expected_stages, test.recording_ids)]
    assert submission == [psg_layout.STAGES[s] for s in oracles.rules_by_loop(by_loop, test.recording_ids)]

    report = out / "report"
    run_script("evaluate.py", "--data-root", tiny_data, "--pred", out / "files_post.csv", "--out", report,
               "--outputs", out, "--weights-dir", weights, *models, "--quiet")
    metrics = json.loads((report / "metrics.json").read_text())
    answers = psg_layout.read_epoch_csv(tiny_data / psg_layout.TEST_LABELS_CSV, with_labels=True)
    predicted = np.array([psg_layout.STAGE_TO_INT[s] for s in submission])
    assert metrics["rows"] == len(test)
    assert np.isclose(metrics["accuracy"], float(np.mean(predicted == answers.labels)))
    markdown = (report / "report.md").read_text()
    for figure in ("confusion_matrix.png", "hypnograms.png", "training_curves.png"):
        assert (report / figure).stat().st_size > 1000 and figure in markdown
