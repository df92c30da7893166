"""bench/errors_by_subject.py and error_persistence.py: the subject's traits drawn again as the generator drew them,
errors counted by hand, each answer paired with its line of the stage file."""
from __future__ import annotations

import csv

import numpy as np
import pytest

import errors_by_subject
from error_persistence import nights_true_and_predicted
from sleepstaging.data import psg_layout
from sleepstaging.script_io import InputError
from sleepstaging.synthetic.recording import recording_id, synthesize_recording


def test_the_subject_is_the_one_the_generator_drew_for_the_recording():
    for seed, index in ((0, 0), (5, 17)):
        drawn = synthesize_recording(seed, index, 0.25).subject
        assert errors_by_subject.subject_of(seed, recording_id(index)) == drawn
    assert errors_by_subject.subject_of(0, recording_id(1)) != errors_by_subject.subject_of(0, recording_id(0))
    with pytest.raises(InputError, match="not an ID of make_synthetic.py"):
        errors_by_subject.subject_of(0, "A2019-NX-01-1451")


def test_n2_read_as_rem_and_the_night_macro_f1_by_hand():
    truth = np.array([2, 2, 2, 2, 4, 4])  # four N2, two REM
    predicted = np.array([2, 4, 4, 2, 4, 4])  # two of the N2 called REM
    # N2: precision 2/2, recall 2/4 -> F1 2/3; REM: precision 2/4, recall 2/2 -> F1 2/3; macro over both 0.667
    assert errors_by_subject.night_errors(truth, predicted) == {"n2_epochs": 4, "n2_called_rem": 2, "macro_f1": 0.667}


def test_test_nights_pair_each_answer_with_its_line_of_the_stage_file(tiny_data, tmp_path):
    with open(tiny_data / psg_layout.TEST_LABELS_CSV, newline="") as handle:
        answers = [row for row in csv.reader(handle) if row]
    answers = [row for row in answers if row[-1] in psg_layout.STAGES]  # the labelled rows (no header)
    # a stage file with N3 everywhere but REM on each night's third row, in the answers' order (that of the test CSV)
    by_night: dict = {}
    for rec, *_ in answers:
        by_night[rec] = by_night.get(rec, 0) + 1
    lines, seen = [], {}
    for rec, *_ in answers:
        seen[rec] = seen.get(rec, 0) + 1
        lines.append("REM" if seen[rec] == 3 else "N3")
    pred = tmp_path / "pred.csv"
    pred.write_text("\n".join(lines) + "\n")
    nights = nights_true_and_predicted(tiny_data, pred)
    assert {rec: len(truth) for rec, (truth, _) in nights.items()} == by_night
    for rec, (truth, predicted) in nights.items():
        expected_truth = [psg_layout.STAGE_TO_INT[row[-1]] for row in answers if row[0] == rec]
        np.testing.assert_array_equal(truth, expected_truth)
        assert predicted[2] == psg_layout.STAGE_TO_INT["REM"] and (np.delete(predicted, 2) == 3).all()
