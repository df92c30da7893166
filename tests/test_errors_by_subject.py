"""bench/errors_by_subject.py: the subject's traits drawn again as the generator drew them, errors counted by hand."""
from __future__ import annotations

import numpy as np
import pytest

import errors_by_subject
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
