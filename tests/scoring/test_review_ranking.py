"""What the review page orders by and the confidence it shows: the hmm's posterior, calibrated tables, yield.

hmm.py's forward-backward against brute-force enumeration of every stage
path; its argmax against Viterbi; the page's hmm ordering; the post-processing
that writes the posterior and the calibrated tables; postprocess.py
--review-pages; evaluate.py's calibration section; the review yield bench's
choice of ordering.
"""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from sleepstaging.scoring import calibration
from sleepstaging.scoring import hmm
from sleepstaging.scoring import review_page
from sleepstaging.data import psg_layout
from sleepstaging import script_io
from sleepstaging.output_names import posterior_path
from conftest import run_script
from review_night import trace_image


def brute_force_posterior(probabilities, transition, initial, priors, weight):
    """P(stage_t | all epochs) by summing the joint probability of every one of the 5 ** T stage paths."""
    evidence = probabilities / probabilities.sum(axis=1, keepdims=True) / priors
    steps = transition ** weight
    steps /= steps.sum(axis=1, keepdims=True)
    marginals = np.zeros_like(evidence)
    for path in itertools.product(range(5), repeat=len(evidence)):
        joint = initial[path[0]] * evidence[0, path[0]]
        for t in range(1, len(path)):
            joint *= steps[path[t - 1], path[t]] * evidence[t, path[t]]
        marginals[np.arange(len(path)), path] += joint
    return marginals / marginals.sum(axis=1, keepdims=True)


def test_posterior_equals_brute_force_enumeration_per_recording():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 5, 300)
    model = hmm.estimate_hmm(labels, ["T"] * 300, stage_balance=0.5)
    probabilities = rng.dirichlet(np.ones(5), 7)
    probabilities[2, 3] = 0.0  # an impossible stage: log 0 in the emissions
    ids = ["a", "b", "a", "a", "b", "a", "b"]  # a: 4 epochs, b: 3, interleaved in CSV order
    for weight in (1.0, 0.4):
        posterior = hmm.hmm_posterior(probabilities, ids, *model, transition_weight=weight)
        for recording in ("a", "b"):
            rows = [i for i, r in enumerate(ids) if r == recording]
            np.testing.assert_allclose(posterior[rows], brute_force_posterior(probabilities[rows], *model, weight),
                                       rtol=1e-9, atol=1e-12)
        assert posterior[2, 3] == 0.0
    np.testing.assert_allclose(posterior.sum(axis=1), 1.0)


def test_posterior_argmax_agrees_with_viterbi_on_a_clear_night():
    truth = np.repeat([0, 1, 2, 3, 2, 4, 2, 0], [6, 2, 8, 5, 4, 6, 5, 3])
    model = hmm.estimate_hmm(np.tile(truth, 4), ["T"] * len(truth) * 4)
    probabilities = np.full((len(truth), 5), 0.05)
    probabilities[np.arange(len(truth)), truth] = 0.8
    probabilities[10] = [0.05, 0.05, 0.45, 0.4, 0.05]  # one unsure epoch inside the N2 run
    posterior = hmm.hmm_posterior(probabilities, ["n"] * len(truth), *model, transition_weight=0.5)
    decoded = hmm.hmm_decode(probabilities, ["n"] * len(truth), *model, transition_weight=0.5)
    assert posterior.argmax(axis=1).tolist() == decoded.tolist() == truth.tolist()
    # the unsure epoch is the one the hmm doubts most in its run of N2 (epochs 8 to 15)
    assert posterior[8:16, 2].argmin() == 2


def test_hmm_ordering_puts_the_epochs_the_hmm_doubts_first():
    blend = np.array([[0.9, 0.1, 0, 0, 0]] * 4)
    posterior = np.array([[0.9, 0.1, 0, 0, 0], [0.3, 0.7, 0, 0, 0], [0.6, 0.4, 0, 0, 0], [0.2, 0.8, 0, 0, 0]])
    stages = np.array([0, 0, 0, 1])  # the scoring's stages: the hmm gives them 0.9, 0.3, 0.6, 0.8
    scores = review_page.doubt(blend, ordering="hmm", hmm_confidence=posterior[np.arange(4), stages])
    assert review_page.check_order(scores).tolist() == [1, 2, 3, 0]
    with pytest.raises(ValueError, match="needs the hmm's posterior"):
        review_page.doubt(blend, ordering="hmm")
    assert review_page.usable_ordering("hmm", True, False) == "blend"
    assert review_page.usable_ordering("disagreement", False, True) == "blend"
    assert review_page.usable_ordering("hmm", False, True) == "hmm"


def test_temperature_scaling_by_hand_and_the_assigned_stage_ece():
    p = np.array([[0.6, 0.3, 0.1, 0, 0]])
    # T = 0.5 squares the probabilities before renormalising: 0.36 : 0.09 : 0.01
    np.testing.assert_allclose(calibration.apply_temperature(p, 0.5)[0, :3], np.array([36, 9, 1]) / 46, atol=1e-9)
    posterior = np.array([[0.7, 0.3, 0, 0, 0], [0.3, 0.7, 0, 0, 0], [0.9, 0.1, 0, 0, 0]])
    assigned = np.array([1, 1, 0])  # the first row's assigned stage is not its argmax: confidence 0.3
    result = calibration.assigned_reliability(posterior, assigned, np.array([0, 1, 0]))
    # bins (0.267, 0.333]: 0.3, wrong; (0.667, 0.733]: 0.7, right; (0.867, 0.933]: 0.9, right
    assert result["ece"] == pytest.approx((0.3 + 0.3 + 0.1) / 3)
    assert result["count"][4] == 1 and result["count"][10] == 1 and result["count"][13] == 1


# --------------------------------------------------------------------------
# postprocess.py: the posterior beside the submission, calibrated tables, review pages
# --------------------------------------------------------------------------
STAGES_A = [0, 0, 1, 2, 2, 2, 3, 3, 2, 4, 4, 0]
STAGES_B = [0, 2, 2, 2, 4, 4, 0]


def write_layout(root, with_images=True):
    """A data root (test CSV, images), a blend CSV with its probabilities, both models' dumps and blend.py's record."""
    data, out = root / "DATA", root / "outputs"
    rows, truth = [], []
    for recording_id, stages in (("A", STAGES_A), ("B", STAGES_B)):
        rows += [(recording_id, psg_layout.image_name(recording_id, n + 1)) for n in range(len(stages))]
        truth += stages
    script_io.write_csv_rows(data / psg_layout.TEST_CSV, rows)
    rng = np.random.default_rng(1)
    if with_images:
        import cv2
        for recording_id, idnum in rows:
            path = psg_layout.image_path(data, recording_id, idnum)
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), trace_image(rng))
    truth = np.array(truth)
    blend = np.full((len(truth), 5), 0.1)
    blend[np.arange(len(truth)), truth] = 0.6  # 0.6 on the true stage, 0.1 on each other
    blend[3] = [0.1, 0.1, 0.35, 0.1, 0.35]  # A's epoch 4: N2 or REM, the blend's argmax N2 (first)
    blend_csv = out / "filesblend_avg_[6]_[3].csv"
    script_io.write_lines(blend_csv, [psg_layout.STAGES[s] for s in blend.argmax(axis=1)])
    np.save(blend_csv.with_suffix(".npy"), blend.astype(np.float32))
    vit, eff = "vit_tiny_patch16_224", "tf_efficientnet_b0"
    for arch, epochs, dump in ((vit, [6], blend), (eff, [3], blend[:, ::-1])):
        np.save(out / f"{arch}_fold_0_{epochs}.npy", dump.astype(np.float32))
    blend_csv.with_suffix(".json").write_text(json.dumps({"fold": 0, "vit_arch": vit, "eff_arch": eff,
                                                          "vit_epochs": [6], "eff_epochs": [3]}))
    labelled = [("T", psg_layout.image_name("T", n + 1), psg_layout.STAGES[s]) for n, s in enumerate(truth)]
    script_io.write_csv_rows(data / psg_layout.TRAIN_CSV, labelled)  # the hmm's counts: the true nights, joined
    script_io.write_csv_rows(data / psg_layout.TEST_LABELS_CSV,
                             [(*row, psg_layout.STAGES[s]) for row, s in zip(rows, truth)])
    return data, blend_csv, blend, truth


@pytest.mark.slow
def test_postprocess_review_pages_order_by_the_hmm_and_show_calibrated_tables(tmp_path):
    data, blend_csv, blend, truth = write_layout(tmp_path)
    submission = blend_csv.parent / "files_hmm.csv"
    run_script("postprocess.py", "--data-root", data, "--in", blend_csv, "--out", submission, "--method", "hmm",
               "--stage-balance", 0, "--transition-weight", 0.5, "--temperature", 0.5, "--review-pages")
    stages = np.array([psg_layout.STAGE_TO_INT[line] for line in submission.read_text().split()])
    model = hmm.estimate_hmm(truth, ["T"] * len(truth))
    ids = ["A"] * len(STAGES_A) + ["B"] * len(STAGES_B)
    expected = hmm.hmm_posterior(blend.astype(np.float32).astype(np.float64), ids, *model, transition_weight=0.5)
    np.testing.assert_allclose(np.load(posterior_path(submission)), expected, atol=1e-6)
    recordings = submission.parent / "recordings"
    table = review_page.read_hypnogram_table(recordings / "A" / "A-hypnogram.csv")
    np.testing.assert_allclose(table["probabilities"][0], np.array([36, 1, 1, 1, 1]) / 40, atol=1e-6)  # T = 0.5
    page = review_page.read_page_data(recordings / "A" / review_page.PAGE_NAME)
    assert page["stage"] == stages[:len(STAGES_A)].tolist() and page["temperature"] == 0.5
    assert page["blend"][0] == pytest.approx([0.9, 0.025, 0.025, 0.025, 0.025], abs=1e-3)
    assert list(page["models"]) == ["model 1 (vit_tiny_patch16_224)", "model 2 (tf_efficientnet_b0)"]
    assert page["ordering"] == review_page.DEFAULT_ORDERING
    np.testing.assert_allclose(page["hmm"], expected[:len(STAGES_A)], atol=6e-4)  # shown to 3 decimals
    assert all(uri.startswith("data:image/webp;base64,") for uri in page["images"])
    b_page = review_page.read_page_data(recordings / "B" / review_page.PAGE_NAME)
    assert b_page["epoch"] == list(range(1, len(STAGES_B) + 1)) and len(b_page["images"]) == len(STAGES_B)
    # the hmm ordering, and a rules run afterwards leaves no stale posterior
    pages = review_page.write_layout_pages(data, recordings, review_page.blend_model_dumps(blend_csv), 0.5, "hmm",
                                           posterior_path(submission))
    ranked = review_page.read_page_data(pages[0])
    confidence = expected[np.arange(len(STAGES_A)), stages[:len(STAGES_A)]]
    assert ranked["ordering"] == "hmm" and ranked["order"] == review_page.check_order(1 - confidence).tolist()
    run_script("postprocess.py", "--data-root", data, "--in", blend_csv, "--out", submission, "--no-recordings")
    assert not posterior_path(submission).exists()
    # the default ordering (the hmm's doubt) on nights scored without the hmm: the blend's, and the page says so
    assert review_page.DEFAULT_ORDERING == "hmm"
    pages = review_page.write_layout_pages(data, recordings, review_page.blend_model_dumps(blend_csv), 0.5)
    assert review_page.read_page_data(pages[0])["ordering"] == "blend"


def ece_by_loop(confidence, correct, bins=15):
    """The ECE as its definition reads: per bin (lo, hi], |accuracy - mean confidence| weighted by the bin's share."""
    total = 0.0
    for b in range(bins):
        inside = [i for i, c in enumerate(confidence) if b / bins < c <= (b + 1) / bins or (b == 0 and c == 0)]
        if inside:
            gap = np.mean([correct[i] for i in inside]) - np.mean([confidence[i] for i in inside])
            total += len(inside) / len(confidence) * abs(gap)
    return total


@pytest.mark.slow
def test_evaluate_reports_the_hmm_posteriors_calibration_in_its_one_report(tmp_path):
    data, blend_csv, blend, truth = write_layout(tmp_path, with_images=False)
    submission = blend_csv.parent / "files_hmm.csv"
    run_script("postprocess.py", "--data-root", data, "--in", blend_csv, "--out", submission, "--method", "hmm",
               "--stage-balance", 0, "--transition-weight", 0.5, "--no-recordings")
    report = tmp_path / "report"
    run_script("evaluate.py", "--data-root", data, "--pred", submission, "--out", report, "--outputs", tmp_path / "no",
               "--weights-dir", tmp_path / "no", "--quiet")
    stages = np.array([psg_layout.STAGE_TO_INT[line] for line in submission.read_text().split()])
    posterior = np.load(posterior_path(submission))
    confidence = posterior[np.arange(len(stages)), stages].astype(np.float64)
    expected = ece_by_loop(confidence.tolist(), (stages == truth).tolist())
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["calibration"]["hmm posterior of the stage assigned"]["ece"] == pytest.approx(expected)
    text = (report / "report.md").read_text()
    assert text.startswith("# Evaluation report") and text.count("## Calibration") == 1
    assert f"hmm posterior of the stage assigned {expected:.4f}" in text and "files_hmm.posterior.npy" in text
    assert "The hmm's posterior as postprocess.py calibrated it: 1: no model set." in text
    assert (report / "reliability.png").stat().st_size > 0


# --------------------------------------------------------------------------
# bench/review_yield.py
# --------------------------------------------------------------------------
def test_the_bench_chooses_the_ordering_that_removes_most_errors_at_ten_percent():
    import review_yield

    row = lambda share: {"0.1": {"errors_removed_share": share}}  # noqa: E731
    table = {"blend": row(0.4), "disagreement": row(0.55), "blend+disagreement": row(0.55), "hmm": row(0.5),
             "random": row(0.9)}
    assert review_yield.choose_ordering(table) == "disagreement"  # the tie goes to the first; random is no ordering
    table["hmm"] = row(0.61)
    assert review_yield.choose_ordering(table) == "hmm"


@pytest.mark.slow
def test_the_bench_runs_on_a_demos_outputs(tmp_path):
    """A fabricated demo (validation dumps as test_model_set writes them, a model set, 2 test nights): every
    ordering measured, the choice is the table's best at 10 %, calibration figures written."""
    import review_yield
    from test_model_set import CODE, EFF, VIT, write_outputs
    from sleepstaging.output_names import dump_path

    demo = tmp_path / "demo"
    data, out = write_outputs(demo)
    weights = demo / "weights"
    weights.mkdir()
    run_script("model_set.py", "--data-root", data, "--weights-dir", weights, "--outputs", out)
    fitted = json.loads((weights / "model_set.json").read_text())["calibration"]
    assert fitted["hmm_temperature"] > 0 and len(fitted["hmm_stage_temperatures"]) == 5
    nights = {"X": "WWW1222222333322RRRR22W222", "Y": "W12222233RR2222WW2222RRRW"}
    rows = [(night, psg_layout.image_name(night, n + 1), CODE[c]) for night, text in nights.items()
            for n, c in enumerate(text)]
    script_io.write_csv_rows(data / psg_layout.TEST_CSV, [row[:2] for row in rows])
    script_io.write_csv_rows(data / psg_layout.TEST_LABELS_CSV, rows)
    truth = np.array([psg_layout.STAGE_TO_INT[row[2]] for row in rows])
    rng = np.random.default_rng(3)
    for arch, epochs in ((VIT, [6]), (EFF, [3])):
        noisy = rng.dirichlet(np.ones(5), len(truth)) + 1.5 * np.eye(5)[truth] * (rng.random(len(truth)) < 0.8)[:, None]
        np.save(dump_path(out, arch, 0, epochs), (noisy / noisy.sum(1, keepdims=True)).astype(np.float32))
    p1, p2 = (np.load(dump_path(out, arch, 0, e)) for arch, e in ((VIT, [6]), (EFF, [3])))
    np.save(out / "filesblend_square_[6]_[3].npy", (0.5 * p1 + 0.5 * p2).astype(np.float32))
    review_yield.main(["--demo", str(demo), "--seeds", "3", "--result", str(tmp_path / "yield")])
    result = json.loads((tmp_path / "yield.json").read_text())
    assert set(result["table"]) == {*review_page.ORDERINGS, "random"} and result["epochs"] == len(truth)
    best = max(result["table"][name]["0.1"]["errors_removed_share"] for name in review_page.ORDERINGS)
    assert result["table"][result["chosen_ordering"]]["0.1"]["errors_removed_share"] == best
    assert "decoded here" in result["scoring"] and result["calibration"]["test_hmm_ece_after"] >= 0
    by_stage = result["calibration"]["test_hmm_by_stage_assigned"]
    assert sum(row["epochs"] for row in by_stage.values()) == len(truth)
    text = (tmp_path / "yield.md").read_text()
    assert "| hmm | 10% |" in text and "Chosen ordering" in text and "with a temperature per stage assigned" in text


def test_the_posterior_temperatures_are_the_model_sets_only_for_the_model_sets_own_hmm():
    from sleepstaging.scoring import postprocess

    record = {"path": "weights/model_set.json",
              "calibration": {"temperature": 0.6, "hmm_temperature": 0.7,
                              "hmm_stage_temperatures": [0.5, 0.25, 2.0, 1.0, 1.5]}}
    own = dict.fromkeys(("counts", "stage_balance", "transition_weight"), record["path"])
    temperatures, said = postprocess.posterior_calibration(record, own)
    assert temperatures == [0.5, 0.25, 2.0, 1.0, 1.5]
    assert said == ("weights/model_set.json, hmm_stage_temperatures: one per stage assigned: "
                    "Wake 0.500, N1 0.250, N2 2.000, N3 1.000, REM 1.500")
    flagged = {**own, "transition_weight": "--transition-weight"}
    assert postprocess.posterior_calibration(record, flagged)[0] == [1.0] * 5
    assert postprocess.posterior_calibration(None, own) == ([1.0] * 5, "1: no model set")
    assert postprocess.posterior_calibration({"path": "x", "calibration": {"temperature": 0.6}},
                                             dict.fromkeys(own, "x")) == ([1.0] * 5, "1: the model set records none")


def test_a_model_set_written_before_the_stage_temperatures_reads_as_then_and_says_so():
    from sleepstaging.scoring import postprocess

    old = {"path": "w/model_set.json", "calibration": {"temperature": 0.6, "hmm_temperature": 0.7}}
    temperatures, said = postprocess.posterior_calibration(old, dict.fromkeys(("counts", "stage_balance",
                                                                                "transition_weight"), old["path"]))
    assert temperatures == [0.7] * 5  # its one temperature for every stage: the posterior as it was written then
    assert said.startswith("w/model_set.json, hmm_temperature for every stage: the model set records no "
                           "hmm_stage_temperatures (written before them)")
    posterior = np.array([[0.6, 0.4, 0, 0, 0], [0.2, 0.8, 0, 0, 0]])
    np.testing.assert_allclose(calibration.apply_stage_temperatures(posterior, np.array([0, 1]), temperatures),
                               calibration.apply_temperature(posterior, 0.7), atol=1e-12)


def test_a_temperature_per_stage_assigned_by_hand():
    """Rows alike in a group make the fit exact: with every row [q, 1 - q] and a share r of them right, the NLL is
    least where the top probability becomes r, so (q / (1 - q)) ** (1 / T) = r / (1 - r)."""
    stage0 = [[0.6, 0.4, 0, 0, 0]] * 13  # odds 1.5; 9 of 13 right, odds 2.25 = 1.5 ** 2: T = 1 / 2
    stage2 = [[0, 0.2, 0.8, 0, 0]] * 6   # odds 4; 4 of 6 right, odds 2 = 4 ** (1 / 2): T = 2
    stage3 = [[0, 0, 0.1, 0.9, 0]] * 3   # too few rows: the fallback
    posterior = np.array(stage0 + stage2 + stage3)
    assigned = np.array([0] * 13 + [2] * 6 + [3] * 3)
    labels = np.array([0] * 9 + [1] * 4 + [2] * 4 + [1] * 2 + [3] * 3)
    fitted = calibration.fit_stage_temperatures(posterior, assigned, labels, fallback=0.8, min_rows=5)
    # N1 none assigned, N3 3 rows: 0.8. (The zeros are calibration.FLOOR, 1e-12: at T = 2 they are 1e-6 each,
    # which the fit offsets by a little under 2.)
    assert fitted == pytest.approx([0.5, 0.8, 2.0, 0.8, 0.8], rel=1e-3)
    scaled = calibration.apply_stage_temperatures(posterior, assigned, [0.5, 0.8, 2.0, 0.8, 0.8])
    np.testing.assert_allclose(scaled[0, :2], [9 / 13, 4 / 13], atol=1e-9)  # 0.36 : 0.16
    np.testing.assert_allclose(scaled[13, 1:3], [1 / 3, 2 / 3], atol=1e-5)  # sqrt(0.2) : sqrt(0.8) = 1 : 2 (+ floors)
    np.testing.assert_allclose(scaled[19, 2:4], np.array([0.1, 0.9]) ** 1.25 / (0.1 ** 1.25 + 0.9 ** 1.25),
                               atol=1e-9)  # T 0.8: each probability to the power 1 / 0.8
    # each group's confidence is its accuracy: the first two groups' ECE is 0; one temperature for both cannot
    groups = slice(0, 19)
    after = calibration.assigned_reliability(scaled[groups], assigned[groups], labels[groups])["ece"]
    one = calibration.fit_temperature(posterior[groups], labels[groups])
    single = calibration.assigned_reliability(calibration.apply_temperature(posterior[groups], one),
                                              assigned[groups], labels[groups])["ece"]
    assert after == pytest.approx(0.0, abs=1e-5) and single > 0.05


def test_the_model_sets_calibration_record_holds_the_stage_temperatures_fitted_on_validation():
    posterior = np.array([[0.6, 0.4, 0, 0, 0]] * 13 + [[0, 0.2, 0.8, 0, 0]] * 6)
    assigned = np.array([0] * 13 + [2] * 6)
    labels = np.array([0] * 9 + [1] * 4 + [2] * 4 + [1] * 2)
    record = calibration.calibration_record(posterior, labels, posterior, assigned)
    assert record["hmm_stage_rows"] == [13, 0, 6, 0, 0]
    # 19 rows: fewer than MIN_STAGE_ROWS in every stage, so each stage keeps the one temperature
    assert record["hmm_stage_temperatures"] == [record["hmm_temperature"]] * 5
    assert record["validation_hmm_ece_after"] == pytest.approx(record["validation_hmm_ece_after_one_temperature"])
    assert calibration.MIN_STAGE_ROWS == 50 and "fewer than 50 rows" in record["hmm_stage_fitted_on"]


def test_postprocess_writes_each_rows_posterior_at_its_assigned_stages_temperature(tmp_path):
    """postprocess_test in this process with a model set's hmm: row i of the posterior saved is the hmm's
    posterior at the temperature of the stage written for row i; a model set without stage temperatures
    gives its one temperature to every row, and the JSON beside says so."""
    from sleepstaging.scoring import postprocess

    data, blend_csv, blend, truth = write_layout(tmp_path, with_images=False)
    ids = ["A"] * len(STAGES_A) + ["B"] * len(STAGES_B)
    counts = hmm.count_stage_sequences(truth, ["T"] * len(truth))
    weights = tmp_path / "weights"
    weights.mkdir()
    stage_temperatures = [0.5, 0.25, 2.0, 1.0, 1.5]
    raw = hmm.hmm_posterior(blend.astype(np.float32).astype(np.float64), ids, *hmm.hmm_from_counts(counts, 0.0),
                            transition_weight=0.5)
    for calibration_entry, expected_of in (
            ({"hmm_temperature": 0.7, "hmm_stage_temperatures": stage_temperatures},
             lambda stages: np.array([calibration.apply_temperature(raw[i:i + 1], stage_temperatures[s])[0]
                                      for i, s in enumerate(stages)])),
            ({"hmm_temperature": 0.7}, lambda stages: calibration.apply_temperature(raw, 0.7))):
        record = {"fold": 0, "vit": {"arch": "v", "epochs": [6]}, "eff": {"arch": "e", "epochs": [3]},
                  "blend": {"method": "avg", "ens_weight": 0.5, "power": 0.25, "dump_scale": "unit", "tta": 1},
                  "postprocess": "hmm", "hmm": {"counts": counts, "stage_balance": 0.0, "transition_weight": 0.5},
                  "calibration": {"temperature": 0.6, **calibration_entry}}
        (weights / "model_set.json").write_text(json.dumps(record))
        inputs, sources = postprocess.hmm_settings("hmm", data, blend_csv, model_set_dir=weights)
        out = blend_csv.parent / "files_hmm.csv"
        stages = postprocess.postprocess_test(data, blend_csv, out, "hmm", inputs, blend_csv.with_suffix(".npy"),
                                              None, {"hmm_sources": sources}, quiet=True)
        np.testing.assert_allclose(np.load(posterior_path(out)), expected_of(stages), atol=1e-6)
        said = json.loads(out.with_suffix(".json").read_text())["hmm_sources"]["posterior_temperature"]
        assert ("one per stage assigned" in said) == ("hmm_stage_temperatures" in calibration_entry)
        assert calibration.posterior_calibration_said(out) == said
    assert len(set(stages.tolist())) >= 3  # the test means something: rows of several stages, several temperatures
    assert calibration.posterior_calibration_said(tmp_path / "none.csv").startswith("not recorded")


def test_held_out_night_calibration_scales_each_night_by_the_other_nights_temperatures():
    """Night A always right, night B always wrong, both at posterior 0.9 for the stage assigned: fitted on the
    other night alone, A's temperature makes B's posterior near 1 and B's makes A's near uniform. By hand:
    unscaled, the four rows share one bin (confidence 0.9, half right): ECE 0.4; scaled, A at confidence c_A
    (right) and B at c_B (wrong) fall in two bins: ECE = (|1 - c_A| + |0 - c_B|) / 2."""
    import review_yield

    posterior = np.tile([0.9, 0.025, 0.025, 0.025, 0.025], (4, 1))
    assigned, labels, ids = np.zeros(4, int), np.array([0, 0, 1, 1]), ["A", "A", "B", "B"]
    ece = review_yield.held_out_night_ece(posterior, assigned, labels, ids)
    assert ece["none"] == pytest.approx(0.4)
    t_from_a = calibration.fit_temperature(posterior[:2], labels[:2])  # all right: as sharp as the range allows
    t_from_b = calibration.fit_temperature(posterior[2:], labels[2:])  # all wrong: as flat as the range allows
    c_a = calibration.apply_temperature(posterior[:1], t_from_b)[0, 0]
    c_b = calibration.apply_temperature(posterior[:1], t_from_a)[0, 0]
    assert c_a < 0.3 and c_b > 0.99
    assert ece["one"] == pytest.approx(0.5 * ((1 - c_a) + c_b))
    # two rows per night: under MIN_STAGE_ROWS, so the stage temperatures fall back to the one temperature
    assert ece["per stage"] == pytest.approx(ece["one"])
    assert review_yield.held_out_night_ece(posterior, assigned, labels, ["A"] * 4) is None  # no other night


def test_no_ordering_removes_more_errors_than_the_epochs_it_checks():
    import review_yield

    assert review_yield.ceiling_share(2955, 541) == pytest.approx(296 / 541)  # 10 % of 2955 is 295.5: 296
    assert review_yield.ceiling_share(1000, 80) == 1.0 and review_yield.ceiling_share(1000, 0) == 0.0


# --------------------------------------------------------------------------
# The page's images: each epoch encoded about once, the answer of the plain greedy rule
# --------------------------------------------------------------------------
def greedy_images(encoded, order, budget):
    """The rule as first written: every epoch at the first level that fits, then raised in check order.

    ``encoded``: level -> every epoch's data URI at it (the encoders are deterministic)."""
    for level in review_page.IMAGE_LEVELS:
        uris = list(encoded[level])
        if sum(map(len, uris)) <= budget:
            break
    full = [False] * len(uris)
    for index in order:
        bigger = encoded[review_page.FULL_LEVEL][index]
        if not bigger:  # no image: passed over
            continue
        if sum(map(len, uris)) - len(uris[index]) + len(bigger) > budget:
            break
        uris[index], full[index] = bigger, True
    return uris, full


@pytest.mark.slow
@pytest.mark.parametrize("guess", ["sample", "estimate", "all"])
def test_images_are_those_of_the_greedy_rule_whatever_the_first_guess(tmp_path, monkeypatch, guess):
    import cv2

    rng = np.random.default_rng(5)
    paths = []
    for n in range(24):
        paths.append(tmp_path / f"E_{n + 1:04d}.png")
        cv2.imwrite(str(paths[-1]), trace_image(rng))
    paths[7] = None  # an epoch without an image
    order = rng.permutation(24)
    encoded = {level: [review_page.file_uri(p, *level) for p in paths]
               for level in (*review_page.IMAGE_LEVELS, review_page.FULL_LEVEL)}
    first, fulls = encoded[review_page.IMAGE_LEVELS[0]], encoded[review_page.FULL_LEVEL]
    ranked = [i for i in order if paths[i] is not None]
    monkeypatch.setattr(review_page, "SIZE_SAMPLE", 4)
    choose = {"sample": lambda uris, r, sample, budget: sample, "estimate": review_page._guess_full_count,
              "all": lambda uris, r, sample, budget: len(r) - sample}[guess]
    monkeypatch.setattr(review_page, "_guess_full_count", choose)
    for start in (0, 1, 11, 23):  # the longest start of the order that fits at full size
        budget = sum(map(len, first)) + sum(len(fulls[i]) - len(first[i]) for i in ranked[:start]) + 5
        expected = greedy_images(encoded, order, budget)
        assert sum(expected[1]) == start
        for workers in (1, 3):
            assert review_page.encode_images(paths, order, budget, workers) == expected
    small = sum(map(len, encoded[review_page.IMAGE_LEVELS[1]])) + 3000  # the second level, and a few raised
    assert review_page.encode_images(paths, order, small) == greedy_images(encoded, order, small)
