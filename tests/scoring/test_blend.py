"""blend.py: every method against hand-computed numbers, tuning, and bad input."""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from sklearn.metrics import f1_score

from sleepstaging.data import psg_layout
from sleepstaging import script_io
from sleepstaging.scoring.blend import METHODS, blend_probabilities, blend_scores, class_ranks, effective_vit_weight, macro_f1, predict_stages, raw_weight, row_scales, tune_blend
from sleepstaging.output_names import dump_path, valid_csv_path
import oracles
from conftest import run_script

# Squares of 0.7, 0.5, 0.4, 0.3, 0.1 (they sum to 1), and the same reversed,
# so that square roots and squares are easy to do by hand.
P1 = np.array([[0.49, 0.25, 0.16, 0.09, 0.01]])
P2 = P1[:, ::-1].copy()


def test_avg_by_hand():
    # 0.25 * P1 + 0.75 * P2
    expected = [[0.1225 + 0.0075, 0.0625 + 0.0675, 0.04 + 0.12, 0.0225 + 0.1875, 0.0025 + 0.3675]]
    np.testing.assert_allclose(blend_scores(P1, P2, "avg", 0.25), expected)
    np.testing.assert_allclose(expected, [[0.13, 0.13, 0.16, 0.21, 0.37]])


def test_sqrt_by_hand():
    # 0.25 * [0.7, 0.5, 0.4, 0.3, 0.1] + 0.75 * [0.1, 0.3, 0.4, 0.5, 0.7]
    np.testing.assert_allclose(blend_scores(P1, P2, "sqrt", 0.25), [[0.25, 0.35, 0.4, 0.45, 0.55]])


def test_square_by_hand():
    # power 0.5 is the square root; power 2 squares: 0.49**2 = 0.2401, 0.25**2 = 0.0625 ...
    np.testing.assert_allclose(blend_scores(P1, P2, "square", 0.25, power=0.5), [[0.25, 0.35, 0.4, 0.45, 0.55]])
    np.testing.assert_allclose(blend_scores(P1, P2, "square", 0.5, power=2.0),
                               [[0.1201, 0.0353, 0.0256, 0.0353, 0.1201]])


def test_log1p_and_expm1_by_hand():
    pairs = [(0.49, 0.01), (0.25, 0.09), (0.16, 0.16), (0.09, 0.25), (0.01, 0.49)]
    log1p = [[0.3 * math.log(1 + a) + 0.7 * math.log(1 + b) for a, b in pairs]]
    expm1 = [[0.3 * (math.exp(a) - 1) + 0.7 * (math.exp(b) - 1) for a, b in pairs]]
    np.testing.assert_allclose(blend_scores(P1, P2, "log1p", 0.3), log1p)
    np.testing.assert_allclose(blend_scores(P1, P2, "expm1", 0.3), expm1)


def test_rank_by_hand_with_ties():
    # P1 ranks 4 3 2 1 0, P2 ranks 0 1 2 3 4: every class sums to 4, whatever w is.
    for weight in (0.0, 0.06, 1.0):
        np.testing.assert_array_equal(blend_scores(P1, P2, "rank", weight), [[4, 4, 4, 4, 4]])
    # Ties: the lower class index gets the lower rank. Sorted (stably):
    # class 0 (0.1), class 4 (0.1), class 3 (0.2), class 1 (0.3), class 2 (0.3).
    tied = np.array([[0.1, 0.3, 0.3, 0.2, 0.1], [0.2, 0.2, 0.2, 0.2, 0.2]])
    np.testing.assert_array_equal(class_ranks(tied), [[0, 3, 4, 2, 1], [0, 1, 2, 3, 4]])
    other = np.array([[0.5, 0.2, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.1, 0.6]])  # ranks 4 3 0 1 2 / 0 1 2 3 4
    np.testing.assert_array_equal(blend_scores(tied, other, "rank", 0.5), [[4, 6, 4, 3, 3], [0, 2, 4, 6, 8]])
    np.testing.assert_array_equal(predict_stages(blend_scores(tied, other, "rank", 0.5)), [1, 4])


def test_argmax_takes_the_first_class_on_ties():
    assert predict_stages(np.array([[0.13, 0.13, 0.3, 0.3, 0.14]])).tolist() == [2]
    assert predict_stages(blend_scores(P1, P2, "rank", 0.5)).tolist() == [0]


def test_weight_zero_and_one_pick_one_model():
    rng = np.random.default_rng(1)
    p1, p2 = rng.dirichlet(np.ones(5), 50), rng.dirichlet(np.ones(5), 50)
    for method in ("avg", "sqrt", "log1p", "square", "expm1"):
        assert np.array_equal(predict_stages(blend_scores(p1, p2, method, 1.0)), p1.argmax(1))
        assert np.array_equal(predict_stages(blend_scores(p1, p2, method, 0.0)), p2.argmax(1))


def test_blend_probabilities_undo_the_transform():
    # sqrt: (0.25*0.7 + 0.75*0.1)^2 = 0.0625 ... then rows normalised
    raw = np.array([0.25, 0.35, 0.4, 0.45, 0.55]) ** 2
    np.testing.assert_allclose(blend_probabilities(P1, P2, "sqrt", 0.25), [raw / raw.sum()])
    # two identical models: every method but rank gives the model back
    for method in ("avg", "sqrt", "log1p", "square", "expm1"):
        np.testing.assert_allclose(blend_probabilities(P1, P1, method, 0.3), P1)
    # rank: the plain mean of the two unit-sum rows, whatever the weight
    np.testing.assert_allclose(blend_probabilities(P1, P2, "rank", 0.3), (P1 + P2) / 2)


@pytest.mark.parametrize("method, weight, power", [("avg", 1.01, 0.25), ("sqrt", -0.1, 0.25),
                                                   ("median", 0.5, 0.25), ("square", 0.5, 0.0)])
def test_bad_settings_are_errors(method, weight, power):
    with pytest.raises(script_io.InputError):
        blend_scores(P1, P2, method, weight, power)


def test_macro_f1_equals_scikit_learn():
    rng = np.random.default_rng(0)
    for size in (1, 7, 300):
        for classes in (2, 4, 5):  # some stages absent from both, or from one side only
            y_true, y_pred = rng.integers(0, classes, size), rng.integers(0, 5, size)
            assert macro_f1(y_true, y_pred) == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    # by hand: true [0, 1], predicted [1, 1] -> F1(Wake) 0, F1(N1) 2/3 -> 1/3
    assert macro_f1([0, 1], [1, 1]) == pytest.approx(1 / 3)


def two_row_problem():
    """Row A (Wake) is right when w > 0.3/1.1 = 0.2727; row B (N1) when w < 0.7/0.9 = 0.7778 (avg)."""
    p1 = np.array([[0.9, 0.1, 0, 0, 0], [0.6, 0.4, 0, 0, 0]])
    p2 = np.array([[0.35, 0.65, 0, 0, 0], [0.15, 0.85, 0, 0, 0]])
    return p1, p2, np.array([0, 1])


def test_tune_finds_the_hand_computed_window():
    p1, p2, labels = two_row_problem()
    result = tune_blend(p1, p2, labels)
    assert result["per_method"]["avg"] == {"ens_weight": 0.28, "val_macro_f1": 1.0}
    assert result["curves"]["avg"][10] == pytest.approx(1 / 3)  # w = 0.1: both rows called N1
    assert result["curves"]["avg"][80] == pytest.approx(1 / 3)  # w = 0.8: both rows called Wake
    assert result["method"] == "avg" and result["ens_weight"] == 0.28 and result["val_macro_f1"] == 1.0
    assert len(result["curves"]["sqrt"]) == 101 and len(result["curves"]["rank"]) == 1


# --------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------
def write_test_set(root, recordings=(("R1", 3), ("R2", 2))):
    rows = [(rec, psg_layout.image_name(rec, n)) for rec, count in recordings for n in range(1, count + 1)]
    script_io.write_csv_rows(root / psg_layout.TEST_CSV, rows)
    return rows


def test_command_writes_the_blend_csv_and_probabilities(tmp_path):
    data, out = tmp_path / "DATA", tmp_path / "outputs"
    write_test_set(data)
    p1 = np.array([[0.49, 0.25, 0.16, 0.09, 0.01]] * 2 + [[0.2] * 5] * 3, dtype=np.float32)
    p2 = np.array([[0.01, 0.09, 0.16, 0.25, 0.49]] * 3 + [[0.0, 0.0, 1.0, 0.0, 0.0]] * 2, dtype=np.float32)
    save_dumps(out, p1, p2)
    result = run_script("blend.py", "--data-root", data, "--out", out, "--ens-weight", 0.25, "--dump-scale", "unit")
    # rows 1-2: sqrt scores 0.25 0.35 0.4 0.45 0.55 -> REM; row 3: P2 alone wins -> REM; rows 4-5: N2
    blend_csv = out / "filesblend_sqrt_[4]_[1].csv"
    assert blend_csv.read_text() == "REM\nREM\nREM\nN2\nN2\n"
    probabilities = np.load(out / "filesblend_sqrt_[4]_[1].npy")
    assert probabilities.shape == (5, 5) and probabilities.dtype == np.float32
    # rows 1-2: the scores squared, 0.0625 0.1225 0.16 0.2025 0.3025 (sum 0.85), over their sum
    np.testing.assert_allclose(probabilities[:2], [[0.0625 / 0.85, 0.1225 / 0.85, 0.16 / 0.85, 0.2025 / 0.85,
                                                    0.3025 / 0.85]] * 2, rtol=1e-6)
    # row 3: 0.25*sqrt(0.2) + 0.75*[0.1 0.3 0.4 0.5 0.7], squared; rows 4-5: 0.25*sqrt(0.2) + 0.75*[0 0 1 0 0]
    row3 = (0.25 * math.sqrt(0.2) + 0.75 * np.array([0.1, 0.3, 0.4, 0.5, 0.7])) ** 2
    low, high = (0.25 * math.sqrt(0.2)) ** 2, (0.25 * math.sqrt(0.2) + 0.75) ** 2
    np.testing.assert_allclose(probabilities[2], row3 / row3.sum(), rtol=1e-6)
    np.testing.assert_allclose(probabilities[3:], [np.array([low, low, high, low, low]) / (4 * low + high)] * 2,
                               rtol=1e-6)
    saved = json.loads((out / "filesblend_sqrt_[4]_[1].json").read_text())
    assert (saved["ens_weight"], saved["dump_scale"], saved["row_scales"]) == (0.25, "unit", [1.0, 1.0])
    assert '"method": "sqrt"' in result.stdout
    assert "effective ViT weight on unit-sum dumps: 0.250" in result.stdout


def test_raw_weight_inverts_the_effective_weight():
    scales = (1 / 4, 1 / 800)  # the original's row scales, tta 1
    # the original's sqrt blend: w = 0.06 is w' = 0.06 * 1/2 / (0.06 * 1/2 + 0.94 * sqrt(1/800)) = 0.4744
    effective = 0.03 / (0.03 + 0.94 * math.sqrt(1 / 800))
    assert raw_weight("sqrt", effective, 0.25, scales) == pytest.approx(0.06, rel=1e-12)
    assert raw_weight("avg", 0.5, 0.25, scales) == pytest.approx(1 / 201, rel=1e-12)  # 200w = 1 - w
    for method in ("avg", "sqrt", "square"):
        for effective in (0.0, 0.01, 0.28, 0.99, 1.0):
            assert effective_vit_weight(method, raw_weight(method, effective, 0.25, scales), 0.25, scales) \
                == pytest.approx(effective, abs=1e-12)
    # no effective weight: avg's grid; equal scales and rank: w itself
    assert raw_weight("log1p", 0.5, 0.25, scales) == raw_weight("expm1", 0.5, 0.25, scales) == raw_weight("avg", 0.5,
                                                                                                       0.25, scales)
    assert raw_weight("sqrt", 0.37) == raw_weight("rank", 0.37, 0.25, scales) == 0.37


# The avg window of two_row_problem at each dump scale: the ViT's effective weight w' must lie in
# (0.2727, 0.7778); the grid's first point there is w' = 0.28. original: w' = 200w / (199w + 1) (rows scaled
# 1/4 and 1/800), so w = 0.28 / (0.28 + 0.72 * 200) = 0.00194 (a grid in w itself would find only w = 0.01).
@pytest.mark.slow
@pytest.mark.parametrize("dump_scale, best_weight", [("unit", 0.28), ("original", 0.28 / (0.28 + 0.72 * 200))])
def test_tune_then_from_tune(tmp_path, dump_scale, best_weight):
    data, out = tmp_path / "DATA", tmp_path / "outputs"
    rows = write_test_set(data, (("R1", 2),))
    p1, p2, labels = two_row_problem()
    valid_rows = [(rec, idnum, psg_layout.STAGES[label]) for (rec, idnum), label in zip(rows, labels)]
    script_io.write_csv_rows(valid_csv_path(out, 0), valid_rows)  # also makes the folder
    for arch, epochs, p in (("vit_base_patch16_224", [4], p1), ("tf_efficientnet_b4_ns", [1], p2)):
        np.save(dump_path(out, arch, 0, epochs, "valid"), p)
        np.save(dump_path(out, arch, 0, epochs), p)
    result = run_script("blend.py", "--out", out, "--tune", "--dump-scale", dump_scale)
    printed = re.search(r"best: --method avg --ens-weight (\S+) \(power 0.25, --dump-scale (\w+), tta 1\)", result.stdout)
    assert float(printed.group(1)) == pytest.approx(best_weight, rel=1e-12) and printed.group(2) == dump_scale
    tuned = json.loads((out / "blend_tune.json").read_text())
    assert (tuned["method"], tuned["power"], tuned["val_macro_f1"]) == ("avg", 0.25, 1.0)
    assert tuned["ens_weight"] == pytest.approx(best_weight, rel=1e-12)
    assert tuned["effective_vit_weight"] == pytest.approx(0.28, abs=1e-12)
    assert (tuned["dump_scale"], tuned["tta"]) == (dump_scale, 1)
    # from-tune blends at the tuned scale whatever the command line says: the weight keeps its meaning
    run_script("blend.py", "--data-root", data, "--out", out, "--from-tune", out / "blend_tune.json",
               "--dump-scale", "unit" if dump_scale == "original" else "original")
    assert (out / "filesblend_avg_[4]_[1].csv").read_text() == "Wake\nN1\n"
    assert json.loads((out / "filesblend_avg_[4]_[1].json").read_text())["dump_scale"] == dump_scale
    # in process, main says which CSV it wrote (stage_edf.py hands it to postprocess.py); --tune writes none
    import blend

    written = blend.main(["--data-root", str(data), "--out", str(out), "--from-tune", str(out / "blend_tune.json"),
                          "--quiet"])
    assert written == out / "filesblend_avg_[4]_[1].csv"
    assert blend.main(["--out", str(out), "--tune", "--dump-scale", dump_scale, "--quiet"]) is None


def save_dumps(out, p1, p2):
    out.mkdir(parents=True, exist_ok=True)
    np.save(dump_path(out, "vit_base_patch16_224", 0, [4]), p1, allow_pickle=True)
    np.save(dump_path(out, "tf_efficientnet_b4_ns", 0, [1]), p2, allow_pickle=True)


GOOD = np.full((5, 5), 0.2, dtype=np.float32)


@pytest.mark.slow
@pytest.mark.parametrize("p1, message", [
    (np.full((4, 5), 0.2, dtype=np.float32), "has 4 rows, "),
    (np.full((5, 4), 0.25, dtype=np.float32), "expected shape (rows, 5), found (5, 4)"),
    (np.where(np.eye(5, dtype=bool), np.nan, 0.2).astype(np.float32), "NaN or inf"),
    (np.full((5, 5), 0.2, dtype=object), "Object arrays cannot be loaded"),
    (np.ones((5, 5), dtype=np.int64), "dtype int64"),
    (np.full((5, 5), 0.25, dtype=np.float32), "a sum other than 1"),
])
def test_bad_dumps_end_with_one_line_and_exit_2(tmp_path, p1, message):
    data, out = tmp_path / "DATA", tmp_path / "outputs"
    write_test_set(data)
    save_dumps(out, p1, GOOD)
    result = run_script("blend.py", "--data-root", data, "--out", out, check=False)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert message in result.stderr and "vit_base_patch16_224_fold_0_[4].npy" in result.stderr
    assert not list(out.glob("filesblend*"))


@pytest.mark.slow
def test_missing_inputs_say_how_to_make_them(tmp_path):
    result = run_script("blend.py", "--data-root", tmp_path / "none", check=False)
    assert result.returncode == 2 and "make_synthetic.py" in result.stderr and result.stderr.count("\n") == 1
    write_test_set(tmp_path / "DATA")
    result = run_script("blend.py", "--data-root", tmp_path / "DATA", "--out", tmp_path / "outputs", check=False)
    assert result.returncode == 2 and "infer_blend.py" in result.stderr and "[4].npy" in result.stderr
    result = run_script("blend.py", "--out", tmp_path / "outputs", "--tune", check=False)
    assert result.returncode == 2 and "fold_0_valid.csv" in result.stderr and "infer_blend.py" in result.stderr
    result = run_script("blend.py", "--ens-weight", 1.5, check=False)
    assert result.returncode == 2 and result.stderr == "error: blend weight must lie in [0, 1], got 1.5\n"
    tune_json = tmp_path / "blend_tune.json"
    tune_json.write_text('{"method": "sqrt", "ens_weight": "heavy", "power": 0.25}')
    result = run_script("blend.py", "--from-tune", tune_json, check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "not a blend_tune.json" in result.stderr


@pytest.mark.slow
def test_blend_of_tiny_data(tiny_data, tmp_path):
    """The real test CSV of the tiny synthetic set: one line per test row, in order."""
    test = psg_layout.read_epoch_csv(tiny_data / psg_layout.TEST_CSV, with_labels=False)
    rng = np.random.default_rng(3)
    p1 = rng.dirichlet(np.ones(5), len(test)).astype(np.float32)
    p2 = rng.dirichlet(np.ones(5), len(test)).astype(np.float32)
    out = tmp_path / "outputs"
    save_dumps(out, p1, p2)
    run_script("blend.py", "--data-root", tiny_data, "--out", out, "--method", "avg", "--ens-weight", 0.5,
               "--dump-scale", "unit")
    lines = (out / "filesblend_avg_[4]_[1].csv").read_text().splitlines()
    expected = (0.5 * p1.astype(np.float64) + 0.5 * p2).argmax(axis=1)
    assert lines == [psg_layout.STAGES[s] for s in expected]


# --------------------------------------------------------------------------
# The original's scales: its inferblend.py and blend.py restated
# --------------------------------------------------------------------------
def original_inferblend_dump(softmax_rounds: list, tta: int, fold_1000_classes: bool) -> np.ndarray:
    """What the original's inferblend.py saved for one model of one checkpoint epoch.

    Each TTA round's softmax is multiplied by weights[0] / sum(weights) / tta
    with weights [1, 1, 1, 1], the list of rounds is averaged; the
    EfficientNet's 1000 outputs are then folded: 200 slices of 5 added, the
    sum divided by 200.
    """
    weights = [1, 1, 1, 1]
    rounds = [weights[0] / sum(weights) / tta * softmax for softmax in softmax_rounds]
    dump = np.mean(np.array(rounds), axis=0)
    if fold_1000_classes:
        folded = np.zeros((dump.shape[0], 5))
        for art in range(200):
            folded += dump[:, art * 5:(art + 1) * 5]
        dump = folded / 200
    return dump


def original_blend(t1: np.ndarray, t2: np.ndarray, method: str, w: float, power: float) -> np.ndarray:
    """The original's blend.py on its two dumps."""
    if method == "avg":
        return np.average((t1, t2), axis=0, weights=(w, 1 - w))
    if method == "rank":
        return np.sum((t1.argsort().argsort(), t2.argsort().argsort()), axis=0)
    transform = {"sqrt": np.sqrt, "log1p": np.log1p, "square": lambda x: x**power, "expm1": np.expm1}[method]
    return transform(t1) * w + transform(t2) * (1 - w)


def softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def model_outputs(rows: int, tta: int, seed: int):
    """Softmax rounds of a 5-class ViT and a 1000-class EfficientNet, and the project's unit-sum dumps of them.

    The project's EfficientNet has 5 outputs; the original's 1000-output fold
    in effect gave it the sum of the 200 slices (a 5-class distribution), so
    that sum is the project's model 2 dump.
    """
    rng = np.random.default_rng(seed)
    vit_rounds = [softmax(rng.normal(0, 2, (rows, 5))) for _ in range(tta)]
    eff_rounds = [softmax(rng.normal(0, 2, (rows, 1000)) + rng.normal(0, 2, (rows, 1, 5)).repeat(200, 1).reshape(
        rows, 1000)) for _ in range(tta)]
    p1 = np.mean(vit_rounds, axis=0)
    p2 = np.mean([r.reshape(rows, 200, 5).sum(axis=1) for r in eff_rounds], axis=0)
    return vit_rounds, eff_rounds, p1, p2


@pytest.mark.parametrize("tta", [1, 3])
@pytest.mark.parametrize("method", METHODS)
def test_original_scale_equals_the_original_code(method, tta):
    vit_rounds, eff_rounds, p1, p2 = model_outputs(400, tta, seed=tta)
    np.testing.assert_allclose(p1.sum(axis=1), 1)
    np.testing.assert_allclose(p2.sum(axis=1), 1)
    t1 = original_inferblend_dump(vit_rounds, tta, fold_1000_classes=False)
    t2 = original_inferblend_dump(eff_rounds, tta, fold_1000_classes=True)
    np.testing.assert_allclose(t1.sum(axis=1), 1 / (4 * tta))
    np.testing.assert_allclose(t2.sum(axis=1), 1 / (800 * tta))
    assert row_scales("original", tta) == pytest.approx((1 / (4 * tta), 1 / (800 * tta)), rel=1e-15)
    for weight in (0.06, 0.3, 0.9):
        expected = original_blend(t1, t2, method, weight, 0.25)
        ours = blend_scores(p1, p2, method, weight, 0.25, row_scales("original", tta))
        np.testing.assert_allclose(ours, expected, rtol=1e-9, atol=1e-15)
        assert np.array_equal(predict_stages(ours), expected.argmax(axis=1))
        # and the blended probabilities keep the blend's argmax (rank's are the models' plain mean instead)
        if method != "rank":
            assert np.array_equal(blend_probabilities(p1, p2, method, weight, 0.25, row_scales("original", tta))
                                  .argmax(axis=1), expected.argmax(axis=1))
    # the scales change the labels of every weighted method at the original's setting
    unit = predict_stages(blend_scores(p1, p2, method, 0.06, 0.25))
    assert (unit == predict_stages(original_blend(t1, t2, method, 0.06, 0.25))).all() == (method == "rank")


def test_effective_vit_weight_by_hand():
    a, b = row_scales("original", 1)
    # sqrt: 0.06 * sqrt(1/4) / (0.06 * sqrt(1/4) + 0.94 * sqrt(1/800)) = 0.03 / (0.03 + 0.94 / 28.2843) = 0.4744
    assert effective_vit_weight("sqrt", 0.06, 0.25, (a, b)) == pytest.approx(0.03 / (0.03 + 0.94 / math.sqrt(800)))
    assert effective_vit_weight("sqrt", 0.06, 0.25, (a, b)) == pytest.approx(0.4744, abs=1e-4)
    # avg: 200w / (199w + 1); w = 1/201 -> 1/2
    assert effective_vit_weight("avg", 1 / 201, 0.25, (a, b)) == pytest.approx(0.5)
    # square, power 0.25: w 200^0.25 / (w 200^0.25 + 1 - w)
    assert effective_vit_weight("square", 0.06, 0.25, (a, b)) == pytest.approx(
        0.06 * 200**0.25 / (0.06 * 200**0.25 + 0.94))
    assert effective_vit_weight("rank", 0.06, 0.25, (a, b)) == 0.5
    assert effective_vit_weight("log1p", 0.06, 0.25, (a, b)) is None
    assert effective_vit_weight("expm1", 0.06, 0.25, (a, b)) is None
    for method in ("avg", "sqrt", "log1p", "square", "expm1"):
        assert effective_vit_weight(method, 0.06, 0.25, (1.0, 1.0)) == 0.06
    # the definition: with w' the unit-sum blend equals the scaled one up to a factor
    rng = np.random.default_rng(5)
    p1, p2 = rng.dirichlet(np.ones(5), 30), rng.dirichlet(np.ones(5), 30)
    for method in ("avg", "sqrt", "square"):
        scaled = blend_scores(p1, p2, method, 0.06, 0.25, (a, b))
        unit = blend_scores(p1, p2, method, effective_vit_weight(method, 0.06, 0.25, (a, b)), 0.25)
        ratio = scaled / unit
        np.testing.assert_allclose(ratio, ratio[0, 0])


def test_bare_command_reproduces_the_original_blend(tmp_path):
    """``python blend.py`` with no options: the original's sqrt, w = 0.06, on the original's scales."""
    data, out = tmp_path / "DATA", tmp_path / "outputs"
    rows = write_test_set(data, (("R1", 150), ("R2", 150)))
    vit_rounds, eff_rounds, p1, p2 = model_outputs(len(rows), 1, seed=11)
    save_dumps(out, p1.astype(np.float32), p2.astype(np.float32))
    result = run_script("blend.py", "--data-root", data, "--out", out)
    t1 = original_inferblend_dump(vit_rounds, 1, fold_1000_classes=False)
    t2 = original_inferblend_dump(eff_rounds, 1, fold_1000_classes=True)
    original = original_blend(t1, t2, "sqrt", 0.06, 0.25).argmax(axis=1)
    lines = (out / "filesblend_sqrt_[4]_[1].csv").read_text().splitlines()
    assert lines == [psg_layout.STAGES[s] for s in original]
    unit = blend_scores(p1, p2, "sqrt", 0.06).argmax(axis=1)
    assert (unit != original).sum() > 30  # plain 0.06 on unit-sum dumps would not be the original's blend
    assert "effective ViT weight on unit-sum dumps: 0.474" in result.stdout
    probabilities = np.load(out / "filesblend_sqrt_[4]_[1].npy")
    assert np.array_equal(probabilities.argmax(axis=1), original)


def test_original_scale_probabilities_by_hand(tmp_path):
    """avg at w = 1/201 on the original's scales is the 50/50 average of the unit-sum dumps."""
    data, out = tmp_path / "DATA", tmp_path / "outputs"
    write_test_set(data, (("R1", 2),))
    p1 = np.array([[0.49, 0.25, 0.16, 0.09, 0.01], [0.1, 0.1, 0.6, 0.1, 0.1]], dtype=np.float32)
    p2 = np.array([[0.01, 0.09, 0.16, 0.25, 0.49], [0.0, 0.0, 0.0, 0.5, 0.5]], dtype=np.float32)
    save_dumps(out, p1, p2)
    # (1/201)(1/4) p1 + (200/201)(1/800) p2 = (1/804)(p1 + p2): rows 0.25 0.17 0.16 0.17 0.25 and 0.05 0.05 0.3 0.3 0.3
    result = run_script("blend.py", "--data-root", data, "--out", out, "--method", "avg", "--ens-weight", 1 / 201)
    assert (out / "filesblend_avg_[4]_[1].csv").read_text() == "Wake\nN2\n"
    np.testing.assert_allclose(np.load(out / "filesblend_avg_[4]_[1].npy"),
                               [[0.25, 0.17, 0.16, 0.17, 0.25], [0.05, 0.05, 0.3, 0.3, 0.3]], rtol=1e-6)
    assert "effective ViT weight on unit-sum dumps: 0.500" in result.stdout


@pytest.mark.slow
def test_tta_comes_from_infer_blend_configuration(tmp_path):
    """log1p depends on tta: 1/(4*tta) and 1/(800*tta), tta from infer_blend_fold_0.json, --tta wins."""
    data, out = tmp_path / "DATA", tmp_path / "outputs"
    rows = write_test_set(data, (("R1", 200),))
    vit_rounds, eff_rounds, p1, p2 = model_outputs(len(rows), 3, seed=4)
    save_dumps(out, p1, p2)
    (out / "infer_blend_fold_0.json").write_text(json.dumps({"tta": 3}))

    def labels_of(tta):  # the original's dumps of these rounds, had it been told to run tta rounds
        t1 = original_inferblend_dump(vit_rounds, tta, fold_1000_classes=False)
        t2 = original_inferblend_dump(eff_rounds, tta, fold_1000_classes=True)
        return [psg_layout.STAGES[s] for s in original_blend(t1, t2, "expm1", 0.002, 0.25).argmax(axis=1)]

    result = run_script("blend.py", "--data-root", data, "--out", out, "--method", "expm1", "--ens-weight", 0.002)
    assert (out / "filesblend_expm1_[4]_[1].csv").read_text().splitlines() == labels_of(3)
    assert '"tta": 3' in result.stdout and "effective ViT weight on unit-sum dumps: none" in result.stdout
    run_script("blend.py", "--data-root", data, "--out", out, "--method", "expm1", "--ens-weight", 0.002, "--tta", 1)
    assert (out / "filesblend_expm1_[4]_[1].csv").read_text().splitlines() == labels_of(1)
    assert labels_of(1) != labels_of(3)
    (out / "infer_blend_fold_0.json").write_text(json.dumps({"tta": 0}))
    result = run_script("blend.py", "--data-root", data, "--out", out, check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "infer_blend_fold_0.json" in result.stderr


@pytest.mark.parametrize("dump_scale, tta", [("original", 1), ("original", 3), ("unit", 1)])
@pytest.mark.parametrize("method", METHODS)
def test_blended_stages_equal_a_plain_loop_over_the_originals_formula(method, dump_scale, tta):
    rng = np.random.default_rng(6)
    p1, p2 = rng.dirichlet(np.ones(5) * 0.8, 400), rng.dirichlet(np.ones(5) * 0.8, 400)
    for weight in (0.06, 0.5, 0.9):
        scores = blend_scores(p1, p2, method, weight, 0.25, row_scales(dump_scale, tta))
        by_loop = oracles.blend_by_loop(p1.tolist(), p2.tolist(), method, weight, 0.25, dump_scale, tta)
        assert predict_stages(scores).tolist() == by_loop
