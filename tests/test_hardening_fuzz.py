"""Hardening: property tests with hypothesis.

- The challenge-CSV reader: random rows and garbage bytes either read into a
  table that obeys the contract, or raise InputError with one line naming the
  file; nothing else (no other exception, so no traceback from a script).
- Post-processing (rules and hmm): length preserved, only stage names out, a
  recording's result independent of the other recordings in the file; the
  command writes what the library functions give (the input for none).
- Blending: one valid stage per row, probabilities that are probabilities
  with the blend's argmax; swapping the models with w <-> 1-w changes no
  label; scaling the dumps' rows changes no rank label; the command writes
  what the library functions compute.
"""
from __future__ import annotations

from sleepstaging import output_names

import csv
import io
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

import blend

from sleepstaging.scoring import blend as blend_lib
from sleepstaging.scoring import hmm
import oracles
import postprocess
from sleepstaging.scoring import postprocess as postprocess_lib
from sleepstaging.data import psg_layout
from sleepstaging.scoring import rules
from sleepstaging import script_io
from sleepstaging.data.psg_layout import NUM_CLASSES, STAGES
from sleepstaging.script_io import InputError

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def scratch():
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder)


# --------------------------------------------------------------------------
# The CSV reader
# --------------------------------------------------------------------------
def read_or_refuse(path: Path, with_labels: bool):
    """The table, or None after checking the InputError's message; any other exception fails the test."""
    try:
        return psg_layout.read_epoch_csv(path, with_labels)
    except InputError as err:
        message = str(err)
        assert message and not message.splitlines()[1:], repr(message)  # one line
        assert f"({path})" in message or f"({path}:" in message, message
        return None


def contract_rows(rows: list, with_labels: bool) -> list | None:
    """The oracle: the rows (ID, IDnum[, label], stripped) the contract keeps, or None if it must refuse."""
    kept = [r for r in rows if any(f.strip() for f in r)]  # blank lines are skipped
    if kept and [f.strip().lower() for f in kept[0][:2]] == ["id", "idnum"]:
        kept = kept[1:]  # a header, the first line with text, is skipped

    def plain(name):
        return name not in ("", ".", "..") and not set(name) & {"/", "\\", "\0"}

    kept = [[f.strip() for f in r] for r in kept]
    valid = (kept and all(len(r) == (3 if with_labels else 2) for r in kept)
             and all(plain(r[0]) and plain(r[1]) for r in kept)
             and (not with_labels or all(r[2] in STAGES for r in kept))
             and len({r[1] for r in kept}) == len(kept))
    return kept if valid else None


def table_rows(table) -> list | None:
    if table is None:
        return None
    labels = [] if table.labels is None else [[STAGES[s]] for s in table.labels]
    return [[r, i, *label] for r, i, label in zip(table.recording_ids, table.idnums, labels or [[]] * len(table))]


# Bytes over a small alphabet hit the parser's corner cases (quotes, CR, NUL, a byte-order mark) far more often.
CSV_BYTES = st.one_of(st.binary(max_size=200),
                      st.lists(st.sampled_from(list(b'AB_01.pngN2,"\r\n \t\x00/\xef\xbb\xbf')), max_size=60).map(bytes),
                      st.lists(st.sampled_from([b"A", b"B_1.png", b"N2", b",", b"\r", b"\n", b"\r\n", b'"', b" ",
                                                b"\xef\xbb\xbf"]), max_size=20).map(b"".join))


@FUZZ
@given(data=CSV_BYTES, with_labels=st.booleans())
@example(data=b"\r\r,A_0001.png,N2", with_labels=False)  # pandas alone read this as 2 columns (a leading '' lost)
@example(data=b"\xef\xbb\xbfID,IDnum\rA,A_0001.png\r", with_labels=False)  # byte-order mark, CR line ends
def test_garbage_bytes_are_read_exactly_or_refused_with_one_line(scratch, data, with_labels):
    """Whatever the bytes: the table the csv module and the contract give (UTF-8, a byte-order mark
    dropped), or a one-line InputError naming the file; never another exception."""
    path = scratch / "garbage.csv"
    path.write_bytes(data)
    table = read_or_refuse(path, with_labels)
    try:
        expected = contract_rows(list(csv.reader(io.StringIO(data.decode("utf-8-sig"), newline=""))), with_labels)
    except (UnicodeDecodeError, csv.Error):
        expected = None
    assert table_rows(table) == expected


FIELDS = st.one_of(
    st.sampled_from(["A", "A_0001.png", "A_0002.png", "B_0001.png", "ID", "IDnum", "label", "..", ".", "../x.png",
                     "/abs", "a/b", "a\\b", "", " ", *STAGES, "N4", "Sleep stage 4", "wake", "REM "]),
    st.text(max_size=6),
)


@st.composite
def csv_rows(draw, with_labels: bool):
    """Rows that mostly fit the contract (so both outcomes are common), some random."""
    names = [f"A_{n:04d}.png" for n in range(1, 40)]
    well_formed = st.tuples(st.sampled_from(["A", "B", " A"]), st.sampled_from(names),
                            st.sampled_from([*STAGES, " N2 "])).map(lambda row: list(row[:3 if with_labels else 2]))
    row = st.integers(0, 9).flatmap(lambda k: st.lists(FIELDS, max_size=4) if k == 0 else well_formed)
    rows = draw(st.lists(row, max_size=8))
    if draw(st.booleans()):
        rows.insert(0, ["ID", "IDnum", "label"][:3 if with_labels else 2])
    return rows


@pytest.mark.slow
@FUZZ
@given(data=st.data(), with_labels=st.booleans())
def test_random_rows_are_read_exactly_or_refused(scratch, data, with_labels):
    rows = data.draw(csv_rows(with_labels))
    path = scratch / "rows.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)
    table = read_or_refuse(path, with_labels)
    assert table_rows(table) == contract_rows(rows, with_labels)


# --------------------------------------------------------------------------
# Post-processing
# --------------------------------------------------------------------------
# A file of recordings: each a list of stage ints; recording k is named "R<k>".
RECORDINGS = st.lists(st.lists(st.integers(0, NUM_CLASSES - 1), min_size=1, max_size=40), min_size=1, max_size=5)


def flatten(recordings, interleave: bool):
    """Rows (stage, recording id) of all recordings, contiguous or dealt out round-robin."""
    rows = [(stage, f"R{k}", position) for k, stages in enumerate(recordings) for position, stage in enumerate(stages)]
    if interleave:
        rows.sort(key=lambda row: (row[2], row[1]))
    return np.array([r[0] for r in rows], dtype=np.int64), [r[1] for r in rows]


@FUZZ
@given(recordings=RECORDINGS, interleave=st.booleans())
def test_rules_keep_length_and_stages_and_treat_each_recording_alone(recordings, interleave):
    stages, ids = flatten(recordings, interleave)
    result, _ = rules.apply_rules(stages, ids)
    assert result.shape == stages.shape and set(result.tolist()) <= set(range(NUM_CLASSES))
    for k, own in enumerate(recordings):
        rows = [i for i, r in enumerate(ids) if r == f"R{k}"]
        alone, _ = rules.apply_rules(np.array(own), [f"R{k}"] * len(own))
        assert result[rows].tolist() == alone.tolist()


PROBABILITY_ROWS = st.lists(st.lists(st.floats(0, 1), min_size=NUM_CLASSES, max_size=NUM_CLASSES)
                            .filter(lambda row: sum(row) > 1e-3), min_size=1, max_size=30)


@pytest.mark.slow
@FUZZ
@given(rows=PROBABILITY_ROWS, cut=st.data(), labels=st.lists(st.integers(0, 4), min_size=2, max_size=60))
def test_hmm_keeps_length_and_stages_and_treats_each_recording_alone(rows, cut, labels):
    probabilities = np.array(rows) / np.array(rows).sum(axis=1, keepdims=True)
    boundaries = sorted(set(cut.draw(st.lists(st.integers(1, max(1, len(rows) - 1)), max_size=3))))
    boundaries = [b for b in boundaries if 0 < b < len(rows)]
    parts = np.split(np.arange(len(rows)), boundaries)
    ids = [f"R{k}" for k, part in enumerate(parts) for _ in part]
    model = hmm.estimate_hmm(np.array(labels), ["T"] * len(labels))
    result = hmm.hmm_decode(probabilities, ids, *model)
    assert result.shape == (len(rows),) and set(result.tolist()) <= set(range(NUM_CLASSES))
    for k, part in enumerate(parts):
        alone = hmm.hmm_decode(probabilities[part], [f"R{k}"] * len(part), *model)
        assert result[part].tolist() == alone.tolist()


def write_test_set(data: Path, recordings) -> None:
    rows = [(f"R{k}", psg_layout.image_name(f"R{k}", n + 1)) for k, stages in enumerate(recordings)
            for n in range(len(stages))]
    script_io.write_csv_rows(data / psg_layout.TEST_CSV, rows)


def write_train_set(data: Path, labels) -> list[str]:
    """A training CSV of ``labels`` in recordings of up to 20 rows; returns the rows' recording ids."""
    ids = [f"T{n // 20}" for n in range(len(labels))]
    script_io.write_csv_rows(data / psg_layout.TRAIN_CSV, [(recording, psg_layout.image_name(recording, n + 1),
                                                            STAGES[label]) for n, (recording, label)
                                                           in enumerate(zip(ids, labels))])
    return ids


@SLOW
@given(data=st.data(), recordings=RECORDINGS, method=st.sampled_from(postprocess_lib.POSTPROCESS_METHODS),
       across=st.booleans())
def test_the_submission_is_the_library_result_on_the_blend_csv(scratch, data, recordings, method, across):
    """rules: apply_rules on the blend CSV's stages; hmm: hmm_decode of the blend's probabilities with the
    HMM estimated from the training CSV; none: the blend CSV itself."""
    base, out = scratch / "post_data", scratch / "post_out"
    write_test_set(base, recordings)
    stages = np.array([s for own in recordings for s in own], dtype=np.int64)
    ids = [f"R{k}" for k, own in enumerate(recordings) for _ in own]
    script_io.write_lines(out / "blend.csv", (STAGES[s] for s in stages))
    (out / "blend.npy").unlink(missing_ok=True)  # hypothesis reuses the folder: no earlier example's probabilities
    if method == "rules":
        expected = rules.apply_rules(stages, ids, across_recordings=across)[0]
        assert expected.tolist() == oracles.rules_by_loop(stages, ids, across)  # the library, by a plain loop
    elif method == "hmm":
        rows = np.array(data.draw(probability_rows(len(stages))))
        probabilities = (rows / rows.sum(axis=1, keepdims=True)).astype(np.float32)
        np.save(out / "blend.npy", probabilities)  # beside the blend CSV, where blend.py writes it
        train_labels = data.draw(st.lists(st.integers(0, NUM_CLASSES - 1), min_size=2, max_size=60))
        train_ids = write_train_set(base, train_labels)
        model = hmm.estimate_hmm(np.array(train_labels), train_ids)
        expected = hmm.hmm_decode(probabilities.astype(np.float64), ids, *model)
        assert expected.tolist() == oracles.hmm_by_loop(probabilities.astype(np.float64).tolist(), ids,
                                                        train_labels, train_ids)
    else:
        expected = stages
    postprocess.main(["--data-root", str(base), "--in", str(out / "blend.csv"), "--out", str(out / "post.csv"),
                      "--method", method, "--no-recordings", "--quiet"] + (["--across-recordings"] if across else []))
    assert (out / "post.csv").read_text().splitlines() == [STAGES[s] for s in expected]


# --------------------------------------------------------------------------
# Blending
# --------------------------------------------------------------------------
def probability_rows(rows: int):
    return st.lists(st.lists(st.floats(0, 1), min_size=NUM_CLASSES, max_size=NUM_CLASSES)
                    .filter(lambda row: sum(row) > 1e-3), min_size=rows, max_size=rows)


def unit_rows(data, rows: int) -> np.ndarray:
    p = np.array(data.draw(probability_rows(rows)))
    return p / p.sum(axis=1, keepdims=True)


def clear_winners(scores: np.ndarray, margin: float = 1e-9) -> np.ndarray:
    """Rows whose top score beats the runner-up by more than ``margin`` (relative): no tie rounding can flip them."""
    top_two = np.sort(scores, axis=1)[:, -2:]
    return top_two[:, 1] - top_two[:, 0] > margin * np.abs(top_two).max(axis=1)


@pytest.mark.slow
@FUZZ
@given(data=st.data(), rows=st.integers(1, 40), method=st.sampled_from(blend_lib.METHODS), weight=st.floats(0, 1),
       power=st.floats(0.05, 4), dump_scale=st.sampled_from(blend_lib.DUMP_SCALES), tta=st.integers(1, 8))
def test_blend_gives_one_valid_stage_per_row(data, rows, method, weight, power, dump_scale, tta):
    p1, p2 = unit_rows(data, rows), unit_rows(data, rows)
    settings = (method, weight, power, blend_lib.row_scales(dump_scale, tta))
    scores = blend_lib.blend_scores(p1, p2, *settings)
    stages = blend_lib.predict_stages(scores)
    assert stages.shape == (rows,) and set(stages.tolist()) <= set(range(NUM_CLASSES))
    probabilities = blend_lib.blend_probabilities(p1, p2, *settings)
    assert probabilities.shape == (rows, NUM_CLASSES) and np.isfinite(probabilities).all()
    assert (probabilities >= 0).all()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-9)
    # the probabilities are the blend's: the same argmax wherever the blend has a clear winner (rank's are the two
    # models' plain mean: its rank sums are no probabilities)
    expected = (p1 + p2) / 2 if method == "rank" else scores
    clear = clear_winners(expected)
    assert np.array_equal(probabilities[clear].argmax(axis=1), expected[clear].argmax(axis=1))


@pytest.mark.slow
@FUZZ
@given(data=st.data(), rows=st.integers(1, 40), method=st.sampled_from(blend_lib.METHODS), weight=st.floats(0, 1),
       power=st.floats(0.05, 4))
def test_swapping_the_models_and_the_weight_changes_no_label(data, rows, method, weight, power):
    """Under --dump-scale unit the two models play symmetric roles: (p1, p2, w) and (p2, p1, 1-w) agree."""
    p1, p2 = unit_rows(data, rows), unit_rows(data, rows)
    scores = blend_lib.blend_scores(p1, p2, method, weight, power)
    swapped = blend_lib.blend_scores(p2, p1, method, 1.0 - weight, power)
    # 1 - (1 - w) may differ from w in the last bit: compare the rows that rounding cannot flip
    clear = clear_winners(scores) & clear_winners(swapped)
    assert np.array_equal(blend_lib.predict_stages(scores)[clear], blend_lib.predict_stages(swapped)[clear])


@pytest.mark.slow
@FUZZ
@given(data=st.data(), rows=st.integers(1, 40), exponents=st.tuples(st.integers(-30, 30), st.integers(-30, 30)))
def test_scaling_the_rows_changes_no_rank_label(data, rows, exponents):
    """rank depends on each row's order only. Scaling by powers of two is exact, so nothing may change at all."""
    # values far from subnormal numbers, where scaling rounds: 0 or at least 1e-200 before normalising
    p1, p2 = (np.array(data.draw(probability_rows(rows))) for _ in range(2))
    p1, p2 = (np.where(p < 1e-200, 0.0, p) for p in (p1, p2))
    p1, p2 = (p / p.sum(axis=1, keepdims=True) for p in (p1, p2))
    scales = (2.0 ** exponents[0], 2.0 ** exponents[1])
    plain = blend_lib.blend_scores(p1, p2, "rank", 0.5)
    np.testing.assert_array_equal(blend_lib.blend_scores(p1, p2, "rank", 0.5, scales=scales), plain)


@pytest.mark.slow
@SLOW
@given(data=st.data(), recordings=RECORDINGS, method=st.sampled_from(blend_lib.METHODS), weight=st.floats(0, 1),
       dump_scale=st.sampled_from(blend_lib.DUMP_SCALES))
def test_the_blend_command_writes_what_the_library_computes(scratch, data, recordings, method, weight, dump_scale):
    rows = sum(len(own) for own in recordings)
    assume(rows <= 60)
    base, out = scratch / "blend_data", scratch / "blend_out"
    write_test_set(base, recordings)
    out.mkdir(exist_ok=True)
    dumps = []
    for arch, epochs in (("vit_base_patch16_224", [4]), ("tf_efficientnet_b4_ns", [1])):
        dumps.append(unit_rows(data, rows).astype(np.float32))
        np.save(output_names.dump_path(out, arch, 0, epochs), dumps[-1])
    blend.main(["--data-root", str(base), "--out", str(out), "--method", method, "--ens-weight", str(weight),
                "--dump-scale", dump_scale, "--quiet"])
    # no infer_blend_fold_0.json in the folder: tta 1, the original's
    settings = (method, weight, 0.25, blend_lib.row_scales(dump_scale, 1))
    p1, p2 = (dump.astype(np.float64) for dump in dumps)
    lines = output_names.blend_csv_path(out, method, [4], [1]).read_text().splitlines()
    assert lines == [STAGES[s] for s in blend_lib.predict_stages(blend_lib.blend_scores(p1, p2, *settings))]
    by_loop = oracles.blend_by_loop(p1.tolist(), p2.tolist(), method, weight, 0.25, dump_scale, 1)
    assert [STAGES[s] for s in by_loop] == lines
    saved = np.load(output_names.probabilities_path(output_names.blend_csv_path(out, method, [4], [1])))
    assert saved.dtype == np.float32
    np.testing.assert_array_equal(saved, blend_lib.blend_probabilities(p1, p2, *settings).astype(np.float32))
