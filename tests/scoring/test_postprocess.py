"""postprocess.py: each rule, their order, recording boundaries, the HMM, and bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest

import postprocess
from sleepstaging.data import epoch_timing
from sleepstaging.data import psg_layout
import oracles
from sleepstaging import script_io
from sleepstaging.scoring.hmm import estimate_hmm, hmm_decode, hmm_from_counts, training_stage_shares, viterbi
from sleepstaging.scoring import rules as context_rules
from sleepstaging.scoring.rules import apply_rules
from conftest import run_script

CODE = {"W": "Wake", "1": "N1", "2": "N2", "3": "N3", "R": "REM"}
CODE_OF = {name: code for code, name in CODE.items()}


def encode(text: str) -> np.ndarray:
    """'W12R' -> stage ints."""
    return np.array([psg_layout.STAGE_TO_INT[CODE[c]] for c in text])


def decode(stages) -> str:
    return "".join("W123R"[s] for s in stages)


def rules(text: str, recordings: str | None = None, across: bool = False) -> str:
    """Apply the rules to a coded sequence; ``recordings`` gives each row's recording as one letter."""
    ids = list(recordings) if recordings else ["a"] * len(text)
    return decode(apply_rules(encode(text), ids, across)[0])


@pytest.mark.parametrize("before, after, rule", [
    ("W13W", "W12W", 1),
    ("22R22", "22222", 2),
    ("33R33", "33333", 3),
    ("1RR", "RRR", 4),
    ("2RR", "RRR", 5),
    ("R1R", "RRR", 6),
    ("R2R", "RRR", 7),
])
def test_each_rule(before, after, rule):
    assert rules(before) == after
    matches = apply_rules(encode(before), ["a"] * len(before))[1]
    assert matches.tolist() == [1 if number == rule else 0 for number in range(1, 8)]


@pytest.mark.parametrize("text", ["31", "2R2", "22R2", "3R33", "R1", "RR1", "WRW", "2R3R2"])
def test_near_misses_are_left_alone(text):
    assert rules(text) == text


def test_patterns_are_matched_on_the_original_sequence():
    # Rule 1 turns position 1 into N2; rewritten in place, [N2, REM, REM]
    # would then match rule 5 and make it REM. Matching on the original does not.
    assert rules("13RR") == "12RR"
    # Rule 1 twice, two positions apart: both match on the original.
    assert rules("1313") == "1212"


def test_overlapping_rules():
    # Rule 7 at i=0 and rule 5 at i=1 both write position 1 (both REM).
    assert rules("R2RR") == "RRRR"
    # Rule 2 at i=0 rewrites position 2; rule 5 at i=4 rewrites position 4.
    assert rules("22R22RR") == "2222RRR"
    # Chains of REM/N2 alternations: every N2 between two REMs becomes REM.
    assert rules("R2R2R") == "RRRRR"


def test_later_write_wins(monkeypatch):
    n1, n2, n3 = 1, 2, 3
    # Rule 0 writes N2 at i; rule 1 writes N3 at i+1. On [N1, N1], position 1
    # gets rule 1 at i=0 (N3), then rule 0 at i=1 (N2): i ascending first.
    monkeypatch.setattr(context_rules, "RULES", (((n1,), 0, n2), ((n1, n1), 1, n3)))
    assert rules("11") == "22"
    # Same i: the later rule wins.
    monkeypatch.setattr(context_rules, "RULES", (((n1,), 0, n2), ((n1,), 0, n3)))
    assert rules("11") == "33"


def test_patterns_never_span_two_recordings():
    # Recording a ends N2 N2, recording b starts REM N2 N2: rule 2 spans them.
    assert rules("W2222" + "R22W", "aaaaa" + "bbbb") == "W2222R22W"
    assert rules("W2222" + "R22W", "aaaaa" + "bbbb", across=True) == "W2222" + "222W"
    # Rule 1 across the boundary: N1 ends a, N3 starts b.
    assert rules("W1" + "3W", "aabb") == "W13W"
    assert rules("W1" + "3W", "aabb", across=True) == "W12W"


def test_a_recording_is_its_rows_in_csv_order_even_when_interleaved():
    # Rows of a and b alternate: a reads R 2 R, b reads W W W.
    assert rules("RW2WRW", "ababab") == "RWRWRW"


# --------------------------------------------------------------------------
# HMM
# --------------------------------------------------------------------------
def test_viterbi_by_hand():
    """Two states, sticky transitions, a one-epoch blip in the emissions.

    Sequence 1, emissions [.8 .2], [.4 .6], [.8 .2], initial [.5 .5],
    transitions [[.9 .1], [.1 .9]]:
      d0 = [.4, .1]
      d1 = [max(.4*.9, .1*.1)*.4, max(.4*.1, .1*.9)*.6] = [.144 (from 0), .054 (from 1)]
      d2 = [max(.144*.9, .054*.1)*.8, max(.144*.1, .054*.9)*.2] = [.10368 (from 0), .00972 (from 1)]
      best path 0 0 0 (the per-epoch argmax would say 0 1 0).
    Sequence 2 (length 2, padded), emissions [.2 .8], [.6 .4]:
      d0 = [.1, .4]; d1 = [max(.09, .04)*.6, max(.01, .36)*.4] = [.054, .144 (from 1)] -> 1 1.
    """
    emissions = np.array([[[.8, .2], [.4, .6], [.8, .2]], [[.2, .8], [.6, .4], [.5, .5]]])
    transition = np.array([[.9, .1], [.1, .9]])
    path = viterbi(np.log(emissions), np.array([3, 2]), np.log(transition), np.log([.5, .5]))
    assert path[0].tolist() == [0, 0, 0]
    assert path[1, :2].tolist() == [1, 1]
    # A weaker pull to stay lets the blip through. Transitions [[.55 .45], [.45 .55]]:
    #   d1 = [max(.22, .045)*.4, max(.18, .055)*.6] = [.088 (from 0), .108 (from 0)]
    #   d2 = [max(.0484, .0486)*.8, max(.0396, .0594)*.2] = [.03888 (from 1), .01188 (from 1)] -> 0 1 0
    loose = np.log([[.55, .45], [.45, .55]])
    assert viterbi(np.log(emissions[:1]), np.array([3]), loose, np.log([.5, .5]))[0].tolist() == [0, 1, 0]


def test_viterbi_ignores_whatever_fills_the_padding():
    """Sequences of 1 to 12 steps decoded in one padded batch, the padding filled with random
    log-emissions, equal each sequence decoded alone without padding."""
    rng = np.random.default_rng(5)
    for _ in range(20):
        lengths = rng.integers(1, 13, size=4)
        lengths[0] = 12
        transition = rng.dirichlet(np.ones(5) * 0.3, 5)  # uneven rows: a tail of padding would move the end
        initial = rng.dirichlet(np.ones(5))
        emissions = np.log(rng.dirichlet(np.ones(5) * 0.5, (4, 12)))  # the padding too: not neutral
        together = viterbi(emissions, lengths, np.log(transition), np.log(initial))
        for k, length in enumerate(lengths):
            alone = viterbi(emissions[k:k + 1, :length], np.array([length]), np.log(transition), np.log(initial))
            assert together[k, :length].tolist() == alone[0].tolist()
            assert (together[k, length:] == together[k, length - 1]).all()  # padding: the last state, held


@pytest.mark.parametrize("across", [False, True])
def test_the_rules_equal_a_plain_loop_over_the_originals_rule_table(across):
    rng = np.random.default_rng(3)
    stages = rng.integers(0, 5, 3000)  # every pattern of the table occurs many times
    ids = [f"R{k}" for k in rng.integers(0, 7, 3000)]  # seven recordings, interleaved
    assert apply_rules(stages, ids, across_recordings=across)[0].tolist() == oracles.rules_by_loop(stages, ids, across)


@pytest.mark.parametrize("stage_balance, transition_weight", [(0.0, 1.0), (0.5, 0.5), (1.0, 0.2)])
def test_hmm_decode_equals_a_plain_loop_viterbi(stage_balance, transition_weight):
    rng = np.random.default_rng(4)
    train_labels = rng.integers(0, 5, 400).tolist()
    train_ids = [f"T{k // 50}" for k in range(400)]
    probabilities = rng.dirichlet(np.ones(5) * 0.7, 150)
    ids = [f"R{k}" for k in rng.integers(0, 3, 150)]
    model = estimate_hmm(np.array(train_labels), train_ids, stage_balance=stage_balance)
    decoded = hmm_decode(probabilities, ids, *model, transition_weight=transition_weight)
    assert decoded.tolist() == oracles.hmm_by_loop(probabilities.tolist(), ids, train_labels, train_ids,
                                                   stage_balance, transition_weight)


def test_estimate_hmm_counts_by_hand():
    labels = encode("W12" + "22" + "W")
    ids = list("aaa" + "bb" + "c")
    transition, initial, priors = estimate_hmm(labels, ids)
    # transitions: W->N1, N1->N2 (a), N2->N2 (b); nothing across recordings; +1 everywhere
    np.testing.assert_allclose(transition[0], [1, 2, 1, 1, 1] / np.float64(6))
    np.testing.assert_allclose(transition[1], [1, 1, 2, 1, 1] / np.float64(6))
    np.testing.assert_allclose(transition[2], [1, 1, 2, 1, 1] / np.float64(6))
    np.testing.assert_allclose(transition[4], [0.2] * 5)
    # first stages W (a), N2 (b), W (c)
    np.testing.assert_allclose(initial, [3, 1, 2, 1, 1] / np.float64(8))
    # stage counts W 2, N1 1, N2 3
    np.testing.assert_allclose(priors, [3, 2, 4, 1, 1] / np.float64(11))
    # Models trained with --stage-balance 1 saw every stage equally often; with 0.5, the counts' square roots.
    np.testing.assert_allclose(estimate_hmm(labels, ids, stage_balance=1.0)[2], [0.2] * 5)
    roots = np.sqrt([3, 2, 4, 1, 1])
    np.testing.assert_allclose(estimate_hmm(labels, ids, stage_balance=0.5)[2], roots / roots.sum())


def test_training_stage_shares_by_hand_and_as_the_trainers_sampler_draws():
    counts = np.array([100.0, 25.0, 400.0, 100.0, 25.0])
    np.testing.assert_allclose(training_stage_shares(counts, 0.0), counts / 650)
    np.testing.assert_allclose(training_stage_shares(counts, 0.5), [0.2, 0.1, 0.4, 0.2, 0.1])  # 10 5 20 10 5 / 50
    np.testing.assert_allclose(training_stage_shares(counts, 1.0), [0.2] * 5)

    from sleepstaging.data import loaders  # torch: only here, postprocess itself imports none

    labels = np.repeat(np.arange(5), counts.astype(int))
    for power in (0.0, 0.5, 1.0, 2.0):
        sampler = loaders.StageBalancedSampler(labels, power, seed=0)
        drawn = np.bincount(labels, weights=sampler.probabilities, minlength=5)  # each stage's share of a draw
        np.testing.assert_allclose(training_stage_shares(counts, power), drawn)


def test_hmm_decode_divides_by_priors_and_keeps_recordings_apart():
    uniform_transition, uniform_initial = np.full((5, 5), 0.2), np.full(5, 0.2)
    priors = np.array([0.1, 0.05, 0.6, 0.15, 0.1])
    # posterior / prior = [3, 2, 0.67, 0.67, 1]: Wake, although N2 has the largest posterior
    row = np.array([[0.3, 0.1, 0.4, 0.1, 0.1]])
    assert hmm_decode(row, ["a"], uniform_transition, uniform_initial, priors).tolist() == [0]
    # Sticky transitions: decoding two recordings together equals decoding each alone.
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(5) * 0.5, 40)
    sticky = np.full((5, 5), 0.02) + np.eye(5) * 0.9
    ids = ["a"] * 25 + ["b"] * 15
    together = hmm_decode(probabilities, ids, sticky, uniform_initial, np.full(5, 0.2))
    alone = [hmm_decode(probabilities[s], ids[s], sticky, uniform_initial, np.full(5, 0.2))
             for s in (slice(0, 25), slice(25, 40))]
    assert together.tolist() == np.concatenate(alone).tolist()
    assert len(np.unique(together)) < len(np.unique(probabilities.argmax(1)))  # smoothed


def test_the_hmm_divides_by_the_stage_shares_to_the_power_one_exactly():
    """Each one-epoch recording decodes to the argmax of posterior / share (uniform first stages).

    Two pairs of rows sit 1 % either side of a tie between Wake and N1 at
    power 1; shares to another power than 1 (even 0.99 or 1.01: the Wake /
    N1 share ratio q to the power 1 +- 0.01 moves the comparison by
    q ** 0.01, more than 1 %) flip one of each pair.
    """
    uniform = np.full(5, 0.2)
    shares = np.array([0.4, 0.1, 0.3, 0.1, 0.1])  # Wake four times as common as N1
    # 404 / 0.4 = 1010 against 100 / 0.1 = 1000: Wake; 396 / 0.4 = 990: N1 (the rest: at most 10)
    rows = np.array([[404, 100, 1, 1, 1], [396, 100, 1, 1, 1]], dtype=np.float64)
    assert hmm_decode(rows, ["a", "b"], np.full((5, 5), 0.2), uniform, shares).tolist() == [0, 1]
    # The same through the counts a model set records, for models trained with --stage-balance 0.5:
    # smoothed stage counts 8, 2, 6, 2, 2 give shares in proportion to their square roots, Wake / N1 = 2.
    counts = {"stages": [7, 1, 5, 1, 1], "first_stages": [0] * 5, "transitions": [[0] * 5] * 5}
    transition, initial, priors = hmm_from_counts(counts, stage_balance=0.5)
    np.testing.assert_allclose(priors, np.sqrt([8, 2, 6, 2, 2]) / np.sqrt([8, 2, 6, 2, 2]).sum(), rtol=1e-12)
    rows = np.array([[202, 100, 1, 1, 1], [198, 100, 1, 1, 1]], dtype=np.float64)
    assert hmm_decode(rows, ["a", "b"], transition, initial, priors).tolist() == [0, 1]


# --------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------
def write_case(root, stages_text, recordings_text):
    """A test CSV (one recording per letter) and a blend CSV of the coded stages."""
    data, out = root / "DATA", root / "outputs"
    counters = {}
    rows = []
    for rec in recordings_text:
        counters[rec] = counters.get(rec, 0) + 1
        rows.append((f"REC{rec}", psg_layout.image_name(f"REC{rec}", counters[rec])))
    script_io.write_csv_rows(data / psg_layout.TEST_CSV, rows)
    blend_csv = out / "filesblend_sqrt_[4]_[1].csv"
    script_io.write_lines(blend_csv, [CODE[c] for c in stages_text])
    return data, blend_csv


@pytest.mark.slow
def test_command_rules_and_across(tmp_path):
    data, blend_csv = write_case(tmp_path, "W2222" + "R22W", "aaaaa" + "bbbb")
    out = tmp_path / "outputs" / "files_post.csv"
    result = run_script("postprocess.py", "--data-root", data, "--in", blend_csv, "--out", out)
    assert out.read_text().split() == [CODE[c] for c in "W2222R22W"]
    assert "0 rows changed" in result.stdout
    run_script("postprocess.py", "--data-root", data, "--in", blend_csv, "--out", out, "--across-recordings")
    assert out.read_text().split() == [CODE[c] for c in "W2222222W"]
    assert (tmp_path / "outputs" / "files_post.json").is_file()
    run_script("postprocess.py", "--data-root", data, "--in", blend_csv, "--out", out, "--method", "none")
    assert out.read_text() == blend_csv.read_text()


def test_the_submission_is_whole_before_any_per_recording_output_starts(tmp_path, monkeypatch):
    from sleepstaging.scoring import night_outputs
    data, blend_csv = write_case(tmp_path, "W2222" + "R22W", "aaaaa" + "bbbb")
    np.save(blend_csv.with_suffix(".npy"), np.full((9, 5), 0.2, dtype=np.float32))
    out = tmp_path / "outputs" / "files_post.csv"

    def broken(*args, **options):
        assert out.read_text().split() == [CODE[c] for c in "W2222R22W"]  # already written, whole
        raise RuntimeError("a recording's output failed")

    monkeypatch.setattr(night_outputs, "write_recording_outputs", broken)
    with pytest.raises(RuntimeError, match="a recording's output failed"):
        postprocess.main(["--data-root", str(data), "--in", str(blend_csv), "--out", str(out), "--quiet"])
    assert out.read_text().split() == [CODE[c] for c in "W2222R22W"]


@pytest.mark.slow
def test_command_hmm(tmp_path):
    data, blend_csv = write_case(tmp_path, "22R22", "aaaaa")
    # training labels: long N2 runs, REM runs; the N2 -> REM -> N2 blip is unlikely
    train = [("T1", psg_layout.image_name("T1", n), "N2") for n in range(1, 41)]
    train += [("T2", psg_layout.image_name("T2", n), "REM") for n in range(1, 41)]
    script_io.write_csv_rows(data / psg_layout.TRAIN_CSV, train)
    probabilities = np.array([[0, 0, .9, 0, .1], [0, 0, .9, 0, .1], [0, 0, .4, 0, .6], [0, 0, .9, 0, .1],
                              [0, 0, .9, 0, .1]], dtype=np.float32)
    np.save(blend_csv.with_suffix(".npy"), probabilities)
    out = tmp_path / "outputs" / "files_post.csv"
    run_script("postprocess.py", "--data-root", data, "--in", blend_csv, "--out", out, "--method", "hmm")
    assert out.read_text().split() == ["N2"] * 5


def write_shares_case(root):
    """One test row whose hmm stage depends on the models' stage shares (hand-computed below); the blend CSV."""
    data, blend_csv = write_case(root, "2", "a")
    # Training labels: T1 90 x N2, T2 10 x N1. Smoothed counts W 1, N1 11, N2 91, N3 1, REM 1 (of 105);
    # first stages N2 and N1: initial W 1, N1 2, N2 2, N3 1, REM 1 (of 7).
    train = [("T1", psg_layout.image_name("T1", n), "N2") for n in range(1, 91)]
    train += [("T2", psg_layout.image_name("T2", n), "N1") for n in range(1, 11)]
    script_io.write_csv_rows(data / psg_layout.TRAIN_CSV, train)
    np.save(blend_csv.with_suffix(".npy"), np.array([[0, 0.3, 0.7, 0, 0]], dtype=np.float32))
    return data, blend_csv


@pytest.mark.slow
def test_command_hmm_divides_by_the_stage_shares_the_models_were_trained_on(tmp_path):
    data, blend_csv = write_shares_case(tmp_path)
    out = tmp_path / "outputs" / "files_post.csv"
    # Stage balance 0 (the labels' shares): N1 2/7 * 0.3 / (11/105) = 0.82 beats N2 2/7 * 0.7 / (91/105) = 0.23.
    result = run_script("postprocess.py", "--data-root", data, "--in", blend_csv, "--out", out, "--method", "hmm")
    assert out.read_text().split() == ["N1"]
    assert "is missing; taken as 0, the original's" in result.stdout  # no record beside the blend: said
    # Models trained with --stage-balance 1 saw equal shares: N2 2/7 * 0.7 / 0.2 = 1.0 beats N1 2/7 * 0.3 / 0.2.
    run_script("postprocess.py", "--data-root", data, "--in", blend_csv, "--out", out, "--method", "hmm",
               "--stage-balance", "1")
    assert out.read_text().split() == ["N2"]
    assert json.loads(out.with_suffix(".json").read_text())["stage_balance"] == 1.0


@pytest.mark.slow
def test_command_hmm_counts_its_transitions_from_the_train_csv_named(tmp_path):
    data, blend_csv = write_shares_case(tmp_path)
    elsewhere = tmp_path / "labels.csv"
    (data / psg_layout.TRAIN_CSV).rename(elsewhere)  # scoring new nights: the labels live with the models' data
    out = tmp_path / "outputs" / "files_post.csv"
    result = run_script("postprocess.py", "--data-root", data, "--in", blend_csv, "--out", out, "--method", "hmm",
                        check=False)
    assert result.returncode == 2 and "no training CSV" in result.stderr and "--train-csv" in result.stderr
    run_script("postprocess.py", "--data-root", data, "--in", blend_csv, "--out", out, "--method", "hmm",
               "--train-csv", elsewhere)
    assert out.read_text().split() == ["N1"]  # as with the data root's own training CSV


@pytest.mark.slow
def test_command_hmm_reads_the_models_stage_balance_recorded_beside_the_blend(tmp_path):
    data, blend_csv = write_shares_case(tmp_path)
    out = tmp_path / "outputs" / "files_post.csv"
    blend_csv.with_suffix(".json").write_text(json.dumps({"fold": 2}))  # blend.py's record names the fold
    record = blend_csv.parent / "infer_blend_fold_2.json"  # infer_blend.py's, beside the dumps
    record.write_text(json.dumps({"stage_balance": [1.0, 1.0]}))
    run_script("postprocess.py", "--data-root", data, "--in", blend_csv, "--out", out, "--method", "hmm")
    assert out.read_text().split() == ["N2"]  # as with --stage-balance 1
    written = json.loads(out.with_suffix(".json").read_text())
    assert (written["stage_balance"], written["hmm_sources"]["stage_balance"]) == (1.0, str(record))
    # --stage-balance wins over the record.
    run_script("postprocess.py", "--data-root", data, "--in", blend_csv, "--out", out, "--method", "hmm",
               "--stage-balance", "0")
    assert out.read_text().split() == ["N1"]
    # Models trained with different values: no one prior for their blend, so the hmm asks for one.
    out.unlink()
    record.write_text(json.dumps({"stage_balance": [1.0, 0.0]}))
    result = run_script("postprocess.py", "--data-root", data, "--in", blend_csv, "--out", out, "--method", "hmm",
                        check=False)
    assert (result.returncode, result.stderr) == (2, (
        "error: the models were trained with different --stage-balance (1.0, 0.0), so their blend has no one set "
        f"of training stage shares for the hmm; choose one with --stage-balance ({record})\n"))
    assert not out.exists()
    # A value no trainer accepts.
    record.write_text(json.dumps({"stage_balance": [1.0, -1.0]}))
    result = run_script("postprocess.py", "--data-root", data, "--in", blend_csv, "--out", out, "--method", "hmm",
                        check=False)
    assert result.returncode == 2 and "stage_balance must be a list of two finite numbers, 0 or more" in result.stderr
    # A record older than the entry: 0, and the output says so.
    record.write_text(json.dumps({"tta": 1}))
    result = run_script("postprocess.py", "--data-root", data, "--in", blend_csv, "--out", out, "--method", "hmm")
    assert out.read_text().split() == ["N1"] and "records no stage_balance" in result.stdout


@pytest.mark.parametrize("options, message", [
    (["--stage-balance", "1"], "error: --stage-balance is read by --method hmm only, not by --method rules\n"),
    (["--train-csv", "labels.csv", "--method", "none"],
     "error: --train-csv is read by --method hmm only, not by --method none\n"),
    (["--method", "hmm", "--stage-balance", "-1"],
     "error: --stage-balance must be a finite number, 0 or more (the models' --stage-balance), got -1.0\n"),
])
def test_a_stage_balance_the_hmm_cannot_use_is_one_line_and_exit_2(tmp_path, options, message):
    data, blend_csv = write_case(tmp_path, "22R22", "aaaaa")
    out = tmp_path / "outputs" / "files_post.csv"
    result = run_script("postprocess.py", "--data-root", data, "--in", blend_csv, "--out", out, *options,
                        check=False)
    assert (result.returncode, result.stderr) == (2, message)
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize("blend_lines, message", [
    (["N2"] * 4, "has 4 lines, "),
    (["N2", "N2", "REM", "Stage 2", "N2"], "'Stage 2' at line 4"),
])
def test_bad_blend_csv_ends_with_one_line_and_exit_2(tmp_path, blend_lines, message):
    data, blend_csv = write_case(tmp_path, "22R22", "aaaaa")
    script_io.write_lines(blend_csv, blend_lines)
    out = tmp_path / "outputs" / "files_post.csv"
    result = run_script("postprocess.py", "--data-root", data, "--in", blend_csv, "--out", out, check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert message in result.stderr and "filesblend_sqrt_[4]_[1].csv" in result.stderr
    assert not out.exists()


@pytest.mark.slow
def test_missing_inputs_say_how_to_make_them(tmp_path):
    result = run_script("postprocess.py", "--data-root", tmp_path / "none", check=False)
    assert result.returncode == 2 and "make_synthetic.py" in result.stderr and result.stderr.count("\n") == 1
    data, blend_csv = write_case(tmp_path, "22R22", "aaaaa")
    result = run_script("postprocess.py", "--data-root", data, "--in", tmp_path / "x.csv", check=False)
    assert result.returncode == 2 and "blend.py" in result.stderr
    result = run_script("postprocess.py", "--data-root", data, "--in", blend_csv, "--method", "hmm",
                        "--out", tmp_path / "post.csv", check=False)
    assert result.returncode == 2 and "filesblend_sqrt_[4]_[1].npy" in result.stderr and "blend.py" in result.stderr
    wrong = np.full((4, 5), 0.2, dtype=np.float32)
    np.save(blend_csv.with_suffix(".npy"), wrong)
    result = run_script("postprocess.py", "--data-root", data, "--in", blend_csv, "--method", "hmm",
                        "--out", tmp_path / "post.csv", check=False)
    assert result.returncode == 2 and "has 4 rows, " in result.stderr
    result = run_script("postprocess.py", "--method", "smooth", check=False)
    assert result.returncode == 2 and "unknown post-processing method 'smooth'" in result.stderr
    assert not (tmp_path / "post.csv").exists()


@pytest.mark.slow
def test_rules_on_tiny_data_stop_at_the_recording_boundary(tiny_data, tmp_path):
    test = psg_layout.read_epoch_csv(tiny_data / psg_layout.TEST_CSV, with_labels=False)
    first = test.recording_ids[0]
    boundary = sum(1 for r in test.recording_ids if r == first)
    assert 5 < boundary < len(test) - 5
    # ... N2 N2 | REM N2 N2 ...: rule 2 would span the boundary; N1 REM REM inside recording 2 is fixed.
    stages = ["N2"] * len(test)
    stages[boundary:boundary + 6] = ["REM", "N2", "N2", "N1", "REM", "REM"]
    blend_csv = tmp_path / "blend.csv"
    script_io.write_lines(blend_csv, stages)
    out = tmp_path / "files_post.csv"
    run_script("postprocess.py", "--data-root", tiny_data, "--in", blend_csv, "--out", out)
    after = out.read_text().split()
    assert after[boundary:boundary + 6] == ["REM", "N2", "N2", "REM", "REM", "REM"]
    assert after[:boundary] == stages[:boundary] and after[boundary + 6:] == stages[boundary + 6:]
    run_script("postprocess.py", "--data-root", tiny_data, "--in", blend_csv, "--out", out, "--across-recordings")
    assert out.read_text().split()[boundary] == "N2"


# --------------------------------------------------------------------------
# Per-recording outputs beside the submission
# --------------------------------------------------------------------------
def two_timed_recordings(tmp_path):
    """(data root, blend CSV, its probabilities (9, 5)) of two recordings: RECa rendered from an EDF (sidecar:
    start 23:59:40, grid origin 10 s, epochs 3-7 listed), RECb in the synthetic challenge layout (no sidecar)."""
    import datetime

    data, out_dir = tmp_path / "DATA", tmp_path / "outputs"
    rows = [("RECa", psg_layout.image_name("RECa", n)) for n in (3, 4, 5, 6, 7)]
    rows += [("RECb", psg_layout.image_name("RECb", n)) for n in (1, 2, 3, 4)]
    script_io.write_csv_rows(data / psg_layout.TEST_CSV, rows)
    epoch_timing.write_epoch_timing(data / "RECa", epoch_timing.EpochTiming(
        "RECa", datetime.datetime(2023, 12, 31, 23, 59, 40), 30.0, 10.0, tuple(range(1, 10))))
    blend_csv = out_dir / "filesblend_sqrt_[4]_[1].csv"
    before = "22R22" + "W12R"  # rule 2 makes a's REM N2; nothing matches in b
    script_io.write_lines(blend_csv, [CODE[c] for c in before])
    probabilities = np.random.default_rng(0).dirichlet(np.ones(5), len(rows)).astype(np.float32)
    np.save(blend_csv.with_suffix(".npy"), probabilities)
    return data, blend_csv, probabilities


@pytest.mark.slow
def test_per_recording_outputs_map_epochs_to_time(tmp_path):
    import csv

    data, blend_csv, probabilities = two_timed_recordings(tmp_path)
    out_dir = blend_csv.parent
    submission = out_dir / "files_post.csv"
    run_script("postprocess.py", "--data-root", data, "--in", blend_csv, "--out", submission, "--no-recordings")
    alone = submission.read_bytes()
    assert not (out_dir / "recordings").exists()
    result = run_script("postprocess.py", "--data-root", data, "--in", blend_csv, "--out", submission, "--figures")
    assert submission.read_bytes() == alone  # the submission stays the challenge's format, byte for byte
    assert "2 recording(s)" in result.stdout

    def table(recording):
        with open(out_dir / "recordings" / recording / f"{recording}-hypnogram.csv", newline="") as handle:
            return list(csv.DictReader(handle))

    a, b = table("RECa"), table("RECb")
    assert [r["epoch"] for r in a] == ["3", "4", "5", "6", "7"]
    assert [float(r["onset_s"]) for r in a] == [70.0, 100.0, 130.0, 160.0, 190.0]  # 10 + (n - 1) * 30
    # start 23:59:40 + 70 s: the clock passes midnight into the next day
    assert [r["clock_time"] for r in a] == [f"2024-01-01 00:0{m}:{s}" for m, s in
                                            (("0", "50"), ("1", "20"), ("1", "50"), ("2", "20"), ("2", "50"))]
    assert "".join(CODE_OF[r["stage_before"]] for r in a) == "22R22"
    assert "".join(CODE_OF[r["stage_after"]] for r in a) == "22222"
    np.testing.assert_allclose([float(r["p_REM"]) for r in a], probabilities[:5, 4], atol=1e-6)
    assert [float(r["onset_s"]) for r in b] == [0.0, 30.0, 60.0, 90.0] and {r["clock_time"] for r in b} == {""}
    assert "".join(CODE_OF[r["stage_after"]] for r in b) == "W12R"
    for recording in ("RECa", "RECb"):
        files = {p.name for p in (out_dir / "recordings" / recording).iterdir()}
        assert {f"{recording}-Hypnogram.edf", f"{recording}-hypnogram.png", f"{recording}-statistics.json"} <= files
    with open(out_dir / "recordings" / "sleep_statistics.csv", newline="") as handle:
        statistics = {row["recording_id"]: row for row in csv.DictReader(handle)}
    assert float(statistics["RECa"]["TST"]) == 2.5 and float(statistics["RECb"]["TST"]) == 1.5

    # the bare command: the same outputs without the (slow) figures
    run_script("postprocess.py", "--data-root", data, "--in", blend_csv, "--out", submission,
               "--recordings-out", tmp_path / "plain")
    assert sorted(p.name for p in (tmp_path / "plain" / "RECa").iterdir()) == [
        "RECa-Hypnogram.edf", "RECa-hypnogram.csv", "RECa-statistics.json"]
    assert (tmp_path / "plain" / "RECa" / "RECa-hypnogram.csv").read_bytes() == \
        (out_dir / "recordings" / "RECa" / "RECa-hypnogram.csv").read_bytes()

    # a blend CSV without its probabilities: the submission, and one line saying why nothing else
    blend_csv.with_suffix(".npy").unlink()
    result = run_script("postprocess.py", "--data-root", data, "--in", blend_csv, "--out", submission)
    assert "per-recording outputs skipped: no blended probabilities" in result.stdout
    assert submission.read_bytes() == alone

    # a broken timing sidecar is found before anything is written
    np.save(blend_csv.with_suffix(".npy"), probabilities)
    epoch_timing.timing_path(data / "RECa", "RECa").write_text("{}")
    broken = run_script("postprocess.py", "--data-root", data, "--in", blend_csv, "--out", tmp_path / "new.csv",
                        "--recordings-out", tmp_path / "new", check=False)
    assert broken.returncode == 2 and broken.stderr.count("\n") == 1 and "not an epoch timing file" in broken.stderr
    assert not (tmp_path / "new.csv").exists() and not (tmp_path / "new").exists()
