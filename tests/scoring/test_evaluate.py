"""evaluate.py: metrics equal scikit-learn's and hand-computed ones; the report; bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score, precision_score, recall_score

import evaluate
from sleepstaging.scoring import hmm
from sleepstaging.data import psg_layout
from sleepstaging import script_io
from sleepstaging.scoring.blend import blend_probabilities, row_scales, tune_blend
from sleepstaging.output_names import dump_path, valid_csv_path
from sleepstaging.scoring import evaluation
from sleepstaging.scoring.evaluation import compute_metrics
from evaluate import main as evaluate_main
from conftest import run_script
from sleepstaging.output_names import infer_config_path, run_config_path


def test_metrics_by_hand():
    # true Wake Wake N1 N2, predicted Wake N1 N1 N2
    metrics = compute_metrics(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 2]), ["a", "a", "b", "b"])
    assert metrics["accuracy"] == 0.75
    # F1 Wake: tp 1, fp 0, fn 1 -> 2/3; N1: tp 1, fp 1, fn 0 -> 2/3; N2: 1
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert metrics["per_class"]["N1"] == {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3), "support": 1}
    assert metrics["per_class"]["REM"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert metrics["confusion_matrix"][:3] == [[1, 1, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 1, 0, 0]]
    assert metrics["confusion_matrix_row_normalised"][0] == [0.5, 0.5, 0, 0, 0]
    assert metrics["confusion_matrix_row_normalised"][4] == [0, 0, 0, 0, 0]
    # recording a: true W W, predicted W N1 -> F1 Wake 2/3, N1 0 -> 1/3; b: all right -> 1
    assert metrics["per_recording_macro_f1"] == {"a": pytest.approx(1 / 3), "b": 1.0}


def test_metrics_equal_scikit_learn():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 5, 500)
    y_pred = np.where(rng.random(500) < 0.6, y_true, rng.integers(0, 5, 500))
    ids = np.repeat(["r1", "r2", "r3", "r4", "r5"], 100).tolist()
    metrics = compute_metrics(y_true, y_pred, ids)
    assert metrics["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert metrics["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert metrics["cohen_kappa"] == pytest.approx(cohen_kappa_score(y_true, y_pred))
    for c, stage in enumerate(psg_layout.STAGES):
        assert metrics["per_class"][stage]["precision"] == pytest.approx(
            precision_score(y_true, y_pred, labels=[c], average="macro"))
        assert metrics["per_class"][stage]["recall"] == pytest.approx(
            recall_score(y_true, y_pred, labels=[c], average="macro"))
        assert metrics["per_class"][stage]["support"] == int((y_true == c).sum())
    assert np.array(metrics["confusion_matrix"]).sum() == 500
    np.testing.assert_allclose(np.array(metrics["confusion_matrix_row_normalised"]).sum(axis=1), 1, atol=1e-5)
    for k, recording in enumerate(["r1", "r2", "r3", "r4", "r5"]):
        rows = slice(100 * k, 100 * (k + 1))
        assert metrics["per_recording_macro_f1"][recording] == pytest.approx(
            f1_score(y_true[rows], y_pred[rows], average="macro"))


# Training CSV: recordings A and C outside the fold, B (the validation fold) between them, with
# transitions (N3 -> REM -> N3) that A and C never make: an HMM that saw B would count them.
VALIDATION_CASE = {"A": [0, 0, 1, 2, 2, 3, 3, 2, 4, 4, 0], "B": [3, 4, 3, 4, 3, 4, 3, 4],
                   "C": [0, 1, 2, 2, 3, 2, 4, 0]}
VALIDATION_ARCHS = ("vit_base_patch16_224", "tf_efficientnet_b4_ns")  # evaluate.py's defaults, epochs 4 and 1


def write_validation_case(root):
    """VALIDATION_CASE's training CSV, B as fold 0's validation rows and two models' validation dumps of B.

    Returns the data root, the outputs folder and the two dumps (float64; saved as float32).
    """
    rows = [(r, psg_layout.image_name(r, n + 1), psg_layout.STAGES[s]) for r, own in VALIDATION_CASE.items()
            for n, s in enumerate(own)]
    data, out = root / "DATA", root / "outputs"
    script_io.write_csv_rows(data / psg_layout.TRAIN_CSV, rows)
    valid_rows = [row for row in rows if row[0] == "B"]
    script_io.write_csv_rows(valid_csv_path(out, 0), valid_rows)
    rng = np.random.default_rng(5)
    dumps = []
    for arch, epochs in zip(VALIDATION_ARCHS, ([4], [1])):
        p = rng.random((len(valid_rows), 5)) + 0.5 * np.eye(5)[VALIDATION_CASE["B"]]
        dumps.append(p / p.sum(axis=1, keepdims=True))
        np.save(dump_path(out, arch, 0, epochs, "valid"), dumps[-1].astype(np.float32))
    return data, out, dumps


def hmm_row_f1(result, dumps, stage_balance, transition_weight=1.0):
    """Macro-F1 of decoding B's tuned blend with the HMM of A and C for models trained with ``stage_balance``."""
    outside = [(s, r) for r in ("A", "C") for s in VALIDATION_CASE[r]]
    blend = result["blend"]
    model = hmm.estimate_hmm(np.array([s for s, _ in outside]), [r for _, r in outside], stage_balance)
    decoded = hmm.hmm_decode(blend_probabilities(*(dump.astype(np.float32) for dump in dumps),
                                                 blend["method"], blend["ens_weight"], blend["power"],
                                                 row_scales(blend["dump_scale"], blend["tta"])),
                             ["B"] * len(VALIDATION_CASE["B"]), *model, transition_weight=transition_weight)
    return f1_score(VALIDATION_CASE["B"], decoded, average="macro")


def test_the_validation_tables_hmm_is_estimated_without_the_validation_rows(tmp_path, monkeypatch):
    data, out, dumps = write_validation_case(tmp_path)

    counted, smoothed = [], []
    count, from_counts = hmm.count_stage_sequences, hmm.hmm_from_counts

    def recorded_count(labels, recording_ids):
        counted.append((np.asarray(labels).tolist(), list(recording_ids)))
        return count(labels, recording_ids)

    def recorded_from_counts(counts, stage_balance):
        smoothed.append(stage_balance)
        return from_counts(counts, stage_balance)

    monkeypatch.setattr(hmm, "count_stage_sequences", recorded_count)
    monkeypatch.setattr(evaluation, "hmm_from_counts", recorded_from_counts)
    result = evaluate.validation_table(evaluate.parser.parse_args(["--data-root", str(data), "--outputs", str(out),
                                                                   "--weights-dir", str(tmp_path / "none")]),
                                       quiet=True)
    outside = [(s, r) for r in ("A", "C") for s in VALIDATION_CASE[r]]
    # No training configurations: the models are taken as trained with each row once per epoch.
    assert counted == [([s for s, _ in outside], [r for _, r in outside])] and smoothed == [0.0]
    # The table's hmm row is the decoding with that HMM of the tuned blend's probabilities (the original's row
    # scales, tta 1: no inference configuration here).
    hmm_row = [row for row in result["table"] if row["step"] == "post-processing hmm"]
    assert len(hmm_row) == 1 and hmm_row[0]["setting"].endswith("stage balance 0")
    assert hmm_row[0]["macro_f1"] == pytest.approx(hmm_row_f1(result, dumps, 0.0))


def test_the_validation_table_also_scores_the_hmm_at_the_model_sets_transition_weight(tmp_path, monkeypatch):
    data, out, dumps = write_validation_case(tmp_path)
    args = evaluate.parser.parse_args(["--data-root", str(data), "--outputs", str(out),
                                       "--weights-dir", str(tmp_path / "none")])
    steps = lambda result: [row["step"] for row in result["table"]]  # noqa: E731
    assert steps(evaluate.validation_table(args, quiet=True))[-1] == "post-processing hmm"  # no model set
    for weight, balance, rows in ((0.1, 0.0, 1), (1.0, 0.0, 0), (0.1, 1.0, 0)):  # another balance: not comparable
        monkeypatch.setattr(evaluate, "read_model_set",
                            lambda _: {"hmm": {"transition_weight": weight, "stage_balance": balance}})
        result = evaluate.validation_table(args, quiet=True)
        extra = [row for row in result["table"] if row["step"].startswith("post-processing hmm at")]
        assert len(extra) == rows
    monkeypatch.setattr(evaluate, "read_model_set", lambda _: {"hmm": {"transition_weight": 0.1, "stage_balance": 0}})
    result = evaluate.validation_table(args, quiet=True)
    row = result["table"][-1]
    assert row["step"] == "post-processing hmm at the model set's transition weight 0.1"
    assert row["setting"].endswith("the weight chosen on these rows")
    assert row["macro_f1"] == pytest.approx(hmm_row_f1(result, dumps, 0.0, transition_weight=0.1))
    assert row["macro_f1"] != pytest.approx(hmm_row_f1(result, dumps, 0.0))  # the weight matters on this case


def test_the_validation_tables_hmm_divides_by_the_stage_shares_the_models_were_trained_on(tmp_path):
    data, out, dumps = write_validation_case(tmp_path)
    weights = tmp_path / "weights"
    weights.mkdir()

    def table(balances):
        for arch in VALIDATION_ARCHS:  # their cv; the stage balance comes from infer_blend.py's record
            run_config_path(weights, arch, 0).write_text(json.dumps({"cv": "subject"}))
        infer_config_path(out, 0).write_text(json.dumps({"tta": 1, "stage_balance": balances}))
        return evaluate.validation_table(evaluate.parser.parse_args(
            ["--data-root", str(data), "--outputs", str(out), "--weights-dir", str(weights)]), quiet=True)

    result = table([1.0, 1.0])
    hmm_row = [row for row in result["table"] if row["step"] == "post-processing hmm"]
    assert len(hmm_row) == 1 and hmm_row[0]["setting"] == f"on blend {result['blend']['method']}, HMM from the " \
                                                          f"other folds, stage balance 1"
    assert hmm_row[0]["macro_f1"] == pytest.approx(hmm_row_f1(result, dumps, 1.0))
    assert result["context_note"] is None
    # Models trained with different stage shares: no one prior to divide their blend by, so no hmm row.
    result = table([1.0, 0.0])
    assert [row["step"] for row in result["table"]][-3:] == [
        "post-processing none", "post-processing rules", "post-processing rules across recordings (the original's)"]
    assert result["context_note"] == ("post-processing hmm left out: the models were trained with different "
                                      "--stage-balance (vit_base_patch16_224 1, tf_efficientnet_b4_ns 0), so their "
                                      "blend has no one set of training stage shares to divide by")
    for bad in ("x", -1.0):
        with pytest.raises(script_io.InputError, match=rf"stage_balance must be a list of two finite numbers, 0 or "
                                                       rf"more \(one per model\), got \[1.0, {bad!r}\] \(.*infer_blend"):
            table([1.0, bad])


def corrupt(labels, every, shift=1):
    """Labels with every ``every``-th one moved to the next stage."""
    predicted = labels.copy()
    predicted[::every] = (predicted[::every] + shift) % 5
    return predicted


@pytest.mark.slow
def test_report_on_tiny_data(tiny_data, tmp_path):
    answers = psg_layout.read_epoch_csv(tiny_data / psg_layout.TEST_LABELS_CSV, with_labels=True)
    test = psg_layout.read_epoch_csv(tiny_data / psg_layout.TEST_CSV, with_labels=False)
    assert answers.idnums == test.idnums
    predicted = corrupt(answers.labels, 4)
    pred = tmp_path / "files_post.csv"
    script_io.write_lines(pred, [psg_layout.STAGES[s] for s in predicted])

    # validation dumps for the first training recording, and a training log
    train = psg_layout.read_epoch_csv(tiny_data / psg_layout.TRAIN_CSV, with_labels=True)
    valid_rows = [i for i, r in enumerate(train.recording_ids) if r == train.recording_ids[0]]
    outputs = tmp_path / "outputs"
    script_io.write_csv_rows(valid_csv_path(outputs, 0), [
        (train.recording_ids[i], train.idnums[i], psg_layout.STAGES[train.labels[i]]) for i in valid_rows])
    valid_labels = train.labels[valid_rows]
    rows = np.arange(len(valid_rows))
    # model 1: right and sure (0.6), except every 3rd row: wrong and unsure (0.3 wrong, 0.25 right);
    # model 2: 0.4 on its stage, wrong every 5th row. avg gets both right for 1/3 < w < 5/6.
    p1 = np.full((len(rows), 5), 0.1, dtype=np.float32)
    p1[rows, valid_labels] = 0.6
    p1[::3] = 0.15
    p1[rows[::3], valid_labels[::3]] = 0.25
    p1[rows[::3], corrupt(valid_labels, 3)[::3]] = 0.3
    p2 = np.full((len(rows), 5), 0.15, dtype=np.float32)
    p2[rows, corrupt(valid_labels, 5, 2)] = 0.4
    np.save(dump_path(outputs, "vit_base_patch16_224", 0, [4], "valid"), p1)
    np.save(dump_path(outputs, "tf_efficientnet_b4_ns", 0, [1], "valid"), p2)
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "vit_base_patch16_224_fold_0_log.csv").write_text(
        "epoch,lr,train_loss,valid_loss,valid_accuracy,valid_macro_f1,extra\n"
        "0,1e-4,1.5,1.4,0.4,0.3,x\n1,1e-4,1.2,1.1,0.5,0.45,y\n")
    (weights / "broken_log.csv").write_text("no,useful\ncolumns,here\n")

    report = tmp_path / "report"
    result = run_script("evaluate.py", "--data-root", tiny_data, "--pred", pred, "--out", report,
                        "--outputs", outputs, "--weights-dir", weights, "--hypnograms", 2)
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["macro_f1"] == pytest.approx(f1_score(answers.labels, predicted, average="macro"))
    assert metrics["accuracy"] == pytest.approx(accuracy_score(answers.labels, predicted))
    assert metrics["rows"] == len(test) and metrics["recordings"] == len(set(test.recording_ids))
    assert f"test macro-F1 {metrics['macro_f1']:.4f}" in result.stdout

    table = {entry["step"]: entry for entry in metrics["validation"]["table"]}
    assert table["model 1 alone"]["macro_f1"] == pytest.approx(
        f1_score(valid_labels, p1.argmax(1), average="macro"))
    assert table["model 2 alone"]["accuracy"] == pytest.approx(accuracy_score(valid_labels, p2.argmax(1)))
    # the two models err on different rows, and model 1 is unsure where it errs: the blend beats both
    best = max(entry["macro_f1"] for step, entry in table.items() if step.startswith("blend"))
    assert best > max(table["model 1 alone"]["macro_f1"], table["model 2 alone"]["macro_f1"])
    assert {"post-processing none", "post-processing rules", "post-processing hmm"} <= set(table)
    assert table["post-processing none"]["macro_f1"] == pytest.approx(best)

    for figure in ("confusion_matrix.png", "hypnograms.png", "training_curves.png"):
        assert (report / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (report / "report.md").read_text()
    assert f"| {metrics['macro_f1']:.4f} | {metrics['accuracy']:.4f} |" in text
    assert "![training curves](training_curves.png)" in text and "what each step buys" in text
    assert (report / "config.json").is_file()


@pytest.mark.slow
def test_bad_input_ends_with_one_line_and_exit_2(tiny_data, tmp_path):
    test = psg_layout.read_epoch_csv(tiny_data / psg_layout.TEST_CSV, with_labels=False)
    pred = tmp_path / "files_post.csv"
    report = tmp_path / "report"
    result = run_script("evaluate.py", "--data-root", tiny_data, "--pred", pred, "--out", report, check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: no stage file") and "postprocess.py" in result.stderr

    def evaluate(*args):  # in process: the same main, without paying the imports again
        with pytest.raises(script_io.InputError) as error:
            evaluate_main([str(a) for a in ("--data-root", tiny_data, "--pred", pred, "--out", report,
                                            "--outputs", tmp_path, "--quiet", *args)])
        return str(error.value)

    script_io.write_lines(pred, ["N2"] * (len(test) - 1))
    assert f"has {len(test) - 1} lines, " in evaluate()
    script_io.write_lines(pred, ["N2"] * len(test))
    assert "make_synthetic.py" in evaluate("--labels", tmp_path / "nothing.csv")
    answers = (tiny_data / psg_layout.TEST_LABELS_CSV).read_text().splitlines()
    short = tmp_path / "short.csv"
    short.write_text("\n".join(answers[1:]) + "\n")
    assert "has no answer" in evaluate("--labels", short)
    longer = tmp_path / "longer.csv"
    longer.write_text("\n".join(answers + ["X,X_0001.png,N2"]) + "\n")
    assert "X_0001.png is not a test row" in evaluate("--labels", longer)
    assert not report.exists()
    with pytest.raises(script_io.InputError, match="make_synthetic.py"):
        evaluate_main(["--data-root", str(tmp_path / "none")])


@pytest.mark.slow
@pytest.mark.parametrize("cv", ["stratified", "subject", None])
def test_context_rows_need_consecutive_validation_epochs(tiny_data, tmp_path, cv):
    """--cv stratified validation rows are a random fifth of each night: no rules or hmm rows on them."""
    test = psg_layout.read_epoch_csv(tiny_data / psg_layout.TEST_CSV, with_labels=False)
    pred = tmp_path / "files_post.csv"
    script_io.write_lines(pred, ["N2"] * len(test))
    train = psg_layout.read_epoch_csv(tiny_data / psg_layout.TRAIN_CSV, with_labels=True)
    outputs, weights, report = tmp_path / "outputs", tmp_path / "weights", tmp_path / "report"
    script_io.write_csv_rows(valid_csv_path(outputs, 0), [
        (train.recording_ids[i], train.idnums[i], psg_layout.STAGES[train.labels[i]]) for i in range(0, 40, 2)])
    rng = np.random.default_rng(0)
    for arch, epochs in (("vit_base_patch16_224", [4]), ("tf_efficientnet_b4_ns", [1])):
        np.save(dump_path(outputs, arch, 0, epochs, "valid"), rng.dirichlet(np.ones(5), 20).astype(np.float32))
    weights.mkdir()
    config_path = weights / "vit_base_patch16_224_fold_0_config.json"
    if cv is not None:
        config_path.write_text(json.dumps({"model_arch": "vit_base_patch16_224", "cv": cv}))
    evaluate_main([str(a) for a in ("--data-root", tiny_data, "--pred", pred, "--out", report, "--outputs", outputs,
                                    "--weights-dir", weights, "--quiet")])
    validation = json.loads((report / "metrics.json").read_text())["validation"]
    steps = {entry["step"]: entry["setting"] for entry in validation["table"]}
    text = (report / "report.md").read_text()
    assert validation["cv"] == cv and "post-processing none" in steps
    if cv == "stratified":
        assert not any(step.startswith(("post-processing rules", "post-processing hmm")) for step in steps)
        assert "--cv stratified" in validation["context_note"] and str(config_path) in validation["context_note"]
        assert f"Note: {validation['context_note']}." in text
    else:
        assert {"post-processing rules", "post-processing hmm"} <= set(steps)
        marked = [step for step, setting in steps.items() if setting.endswith("(cv unknown)")
                  or "(cv unknown)," in setting]
        assert len(marked) == (0 if cv == "subject" else 3)
        assert (validation["context_note"] is None) == (cv == "subject")
    # the table's blend is blend.py --tune's: the same search on the same (original) row scales
    labels = train.labels[0:40:2]
    p1, p2 = (np.load(dump_path(outputs, arch, 0, epochs, "valid")).astype(np.float64)
              for arch, epochs in (("vit_base_patch16_224", [4]), ("tf_efficientnet_b4_ns", [1])))
    tuned = tune_blend(p1, p2, labels, 0.25, True, row_scales("original", 1))
    assert validation["blend"] == {"method": tuned["method"], "ens_weight": tuned["ens_weight"], "power": 0.25,
                                   "dump_scale": "original", "tta": 1}
