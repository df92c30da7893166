"""bench/walk.py: a candidate walk read, checked and applied to the generator's nights."""
from __future__ import annotations

import json

import numpy as np
import pytest

import walk
from sleepstaging.synthetic import hypnogram


@pytest.fixture
def restored(monkeypatch):
    """The generator's tables put back after the test, whatever it applied."""
    for name in walk.TABLES:
        monkeypatch.setattr(hypnogram, name, getattr(hypnogram, name))


def write(tmp_path, tables: dict):
    path = tmp_path / "walk.json"
    path.write_text(json.dumps(tables))
    return path


def test_the_generators_own_tables_draw_the_same_night_and_other_tables_another(tmp_path, restored):
    before = hypnogram.recording_hypnogram(1, 0, 2.0)
    own = {name: np.asarray(getattr(hypnogram, name)).tolist() for name in walk.TABLES}
    assert walk.apply_walk(write(tmp_path, own))["EXIT_AWAY"] == np.round(hypnogram.EXIT_AWAY, 4).tolist()
    np.testing.assert_array_equal(hypnogram.recording_hypnogram(1, 0, 2.0), before)
    # N1 left at 0.2 an epoch away from home instead of 0.6: longer N1 bouts, another night
    slower = hypnogram.EXIT_AWAY.copy()
    slower[1] = 0.2
    walk.apply_walk(write(tmp_path, {"EXIT_AWAY": slower.tolist()}))
    assert hypnogram.EXIT_AWAY[1] == 0.2 and hypnogram.EXIT_AT_HOME[1] == own["EXIT_AT_HOME"][1]
    assert not np.array_equal(hypnogram.recording_hypnogram(1, 0, 2.0), before)


def test_no_walk_leaves_the_generator_as_it_is(restored):
    assert walk.apply_walk(None)["EXIT_SHARES"] == np.round(hypnogram.EXIT_SHARES, 4).tolist()


@pytest.mark.parametrize("tables, message", [
    ({"EXIT_SPEED": [1, 2]}, "expected a JSON object of some of"),
    ({"EXIT_AWAY": [0.5, 0.5]}, "EXIT_AWAY has shape (2,), the generator's (5,)"),
    ({"EXIT_AWAY": [0.5, 0.0, 0.5, 0.5, 0.5]}, "EXIT_AWAY needs rates in (0, 1]"),
    ({"EXIT_SHARES": (np.ones((5, 5)) / 5).tolist()}, "EXIT_SHARES needs a zero diagonal"),
    ({"EXIT_SHARES": ((np.ones((5, 5)) - np.eye(5)) / 5).tolist()}, "rows that sum to 1"),
])
def test_a_bad_walk_is_refused_naming_the_file(tmp_path, restored, tables, message):
    path = write(tmp_path, tables)
    with pytest.raises(ValueError, match="walk.json") as raised:
        walk.read_walk(path)
    assert message in str(raised.value)


def test_the_night_wake_exponent_is_read_and_changes_the_night(tmp_path, restored):
    before = hypnogram.recording_hypnogram(1, 0, 7.0)
    # a steeper power law: night-time wake bouts shorter, another night
    assert walk.apply_walk(write(tmp_path, {"NIGHT_WAKE_EXPONENT": 3.0}))["NIGHT_WAKE_EXPONENT"] == 3.0
    assert hypnogram.night_wake_leaving(1) == pytest.approx(hypnogram.EXIT_AWAY[0])
    assert not np.array_equal(hypnogram.recording_hypnogram(1, 0, 7.0), before)
    with pytest.raises(ValueError, match="walk.json: NIGHT_WAKE_EXPONENT needs a power law's exponent above 0"):
        walk.read_walk(write(tmp_path, {"NIGHT_WAKE_EXPONENT": 0}))
    with pytest.raises(ValueError, match=r"NIGHT_WAKE_EXPONENT has shape \(2,\), the generator's \(\)"):
        walk.read_walk(write(tmp_path, {"NIGHT_WAKE_EXPONENT": [1.0, 2.0]}))
