"""hypnogram.py: sleep statistics against hand-counted nights; per-recording files; EDF+ round trip."""
from __future__ import annotations

import csv
import datetime
import json
import math

import numpy as np
import pytest

from sleepstaging.data import psg_layout
from sleepstaging.scoring.hypnogram import (OUTPUT_FILES, QUALITY_COLUMNS, json_ready, sleep_statistics, stage_annotations,
                       write_recording_outputs, write_statistics_table)

W, N1, N2, N3, R = range(5)
NAN_KEYS_WITHOUT_SLEEP = {"SOL", "WASO", "SME", "Lat_N1", "Lat_N2", "Lat_N3", "Lat_REM", "Lat_REM_from_onset",
                          "%N1", "%N2", "%N3", "%REM", "%NREM", "awakenings"}


def test_statistics_of_a_night_counted_by_hand():
    #        0  1  2  3   4   5   6  7   8   9   10  11 12 13 14 15  16 17 18
    night = [W, W, W, N1, N2, N2, W, N2, N3, N3, N2, R, R, W, W, N2, R, W, W]
    stats = sleep_statistics(np.array(night))
    # 19 epochs of 0.5 min; sleep from epoch 3 to epoch 16: 14 epochs, 3 of them Wake (6, 13, 14)
    assert stats["TIB"] == 9.5 and stats["SPT"] == 7.0 and stats["WASO"] == 1.5
    assert stats["TST"] == 5.5  # 11 sleep epochs
    assert stats["SOL"] == 1.5 and stats["Lat_N1"] == 1.5 and stats["Lat_N2"] == 2.0 and stats["Lat_N3"] == 4.0
    assert stats["Lat_REM"] == 5.5 and stats["Lat_REM_from_onset"] == 4.0  # epoch 11: 8 epochs after onset
    assert stats["SE"] == pytest.approx(100 * 5.5 / 9.5) and stats["SME"] == pytest.approx(100 * 5.5 / 7)
    assert (stats["W"], stats["N1"], stats["N2"], stats["N3"], stats["REM"], stats["NREM"]) == (4, 0.5, 2.5, 1, 1.5, 4)
    assert stats["%N2"] == pytest.approx(100 * 5 / 11) and stats["%REM"] == pytest.approx(100 * 3 / 11)
    assert stats["%NREM"] == pytest.approx(100 * 8 / 11)
    assert sum(stats[f"%{s}"] for s in ("N1", "N2", "N3", "REM")) == pytest.approx(100)
    # awakenings: [6] and [13, 14] inside the sleep period; 0-2 (before onset) and 17-18 (after) are not
    assert stats["awakenings"] == 2 and isinstance(stats["awakenings"], int)
    assert stats["stage_shifts"] == 11
    assert list(stats)[:7] == ["TIB", "SPT", "TST", "SOL", "WASO", "SE", "SME"]

    twenty = sleep_statistics(np.array(night), epoch_seconds=20)  # durations scale with the epoch, ratios do not
    assert twenty["TIB"] == pytest.approx(19 / 3) and twenty["WASO"] == pytest.approx(1.0)
    assert twenty["SE"] == pytest.approx(stats["SE"]) and twenty["awakenings"] == 2


def test_a_night_without_sleep_has_undefined_values_not_errors():
    stats = sleep_statistics(np.array([W] * 6))
    assert (stats["TIB"], stats["SPT"], stats["TST"], stats["SE"], stats["W"], stats["stage_shifts"]) == (3, 0, 0, 0, 3, 0)
    assert {key for key, value in stats.items() if isinstance(value, float) and math.isnan(value)} == \
        NAN_KEYS_WITHOUT_SLEEP
    as_json = json.loads(json.dumps(json_ready(stats), allow_nan=False))
    assert as_json["SOL"] is None and as_json["awakenings"] is None and as_json["TST"] == 0
    empty = sleep_statistics(np.zeros(0, dtype=np.int64))
    assert empty["TIB"] == 0 and math.isnan(empty["SE"])


def test_a_night_that_starts_asleep():
    stats = sleep_statistics(np.array([N2, N2, R, W, N1]))
    assert stats["SOL"] == 0 and stats["Lat_N2"] == 0 and stats["Lat_N1"] == 2.0
    assert stats["Lat_REM"] == 1.0 and stats["Lat_REM_from_onset"] == 1.0
    assert stats["SPT"] == 2.5 and stats["TST"] == 2.0 and stats["WASO"] == 0.5 and stats["awakenings"] == 1
    assert stats["SE"] == 80 and stats["SME"] == 80 and stats["stage_shifts"] == 3
    assert math.isnan(stats["Lat_N3"]) and stats["%N3"] == 0
    single = sleep_statistics(np.array([N3]))
    assert (single["SPT"], single["TST"], single["SOL"], single["%N3"], single["awakenings"]) == (0.5, 0.5, 0, 100, 0)


@pytest.mark.parametrize("stages, message", [
    ([0, 5], "0..4"), ([-1, 2], "0..4"), ([[0, 1]], "one-dimensional"), ([0.0, 1.5], "integers"),
])
def test_bad_stages_are_refused(stages, message):
    with pytest.raises(ValueError, match=message):
        sleep_statistics(np.array(stages))


def test_statistics_table(tmp_path):
    table = tmp_path / "statistics.csv"
    write_statistics_table(table, {"night1": sleep_statistics(np.array([W, N2, N2, W, R])),
                                   "awake": sleep_statistics(np.array([W, W]))})
    with open(table, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0])[:4] == ["recording_id", "TIB", "SPT", "TST"]
    assert [row["recording_id"] for row in rows] == ["night1", "awake"]
    assert rows[0]["SE"] == "60" and rows[0]["SOL"] == "0.5" and rows[0]["awakenings"] == "1"
    assert rows[0]["%REM"] == "33.3333" and rows[1]["SOL"] == "" and rows[1]["TST"] == "0"
    with pytest.raises(ValueError, match="has statistics"):
        write_statistics_table(table, {"a": {"TIB": 1.0}, "b": {"TST": 1.0}})


# --------------------------------------------------------------------------
# Per-recording outputs
# --------------------------------------------------------------------------
EPOCHS = np.array([1, 2, 3, 5, 6, 7, 8])  # epoch 4 unscored: drawn, not listed
STAGES_AFTER = np.array([W, W, N1, N2, N2, R, W])
ORIGIN = 12.5  # the scorer's grid starts 12.5 s into the recording
START = datetime.datetime(2026, 11, 29, 23, 59, 40)


def recording_inputs():
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(5), size=len(EPOCHS))
    before = probabilities.argmax(axis=1)
    onsets = ORIGIN + (EPOCHS - 1) * 30.0
    return onsets, before, probabilities


def test_annotations_merge_runs_and_skip_gaps():
    onsets, _, _ = recording_inputs()
    assert stage_annotations(onsets, STAGES_AFTER, 30.0) == [
        (12.5, 60.0, "Sleep stage W"), (72.5, 30.0, "Sleep stage 1"),  # epochs 1-2, 3; then the gap at epoch 4
        (132.5, 60.0, "Sleep stage 2"), (192.5, 30.0, "Sleep stage R"), (222.5, 30.0, "Sleep stage W")]


def test_recording_outputs_and_edf_round_trip(tmp_path):
    import edfio
    import mne

    from sleepstaging.edf.scored_hypnograms import UNSCORED, read_hypnogram, stages_on_epoch_grid

    onsets, before, probabilities = recording_inputs()
    shuffled = np.array([3, 0, 6, 1, 5, 2, 4])  # the outputs come out in epoch order whatever the input order
    stats = write_recording_outputs(tmp_path, "night1", onsets[shuffled], before[shuffled], STAGES_AFTER[shuffled],
                                    probabilities[shuffled], START, EPOCHS[shuffled])
    folder = tmp_path / "night1"
    files = {key: folder / pattern.format(name="night1") for key, pattern in OUTPUT_FILES.items()}
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in files.values())  # no temporary left

    with open(files["table"], newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["epoch"]) for row in rows] == EPOCHS.tolist()
    assert rows[2] == {"epoch": "3", "onset_s": "72.500", "clock_time": "2026-11-30 00:00:52", "in_lights_period": "1",
                       "stage_before": psg_layout.STAGES[before[2]], "stage_after": "N1",
                       **{f"p_{name}": f"{probabilities[2, k]:.6f}" for k, name in enumerate(psg_layout.STAGES)},
                       **dict.fromkeys(QUALITY_COLUMNS, "")}  # no signal quality given: empty

    # statistics of the listed epochs in order: W W N1 N2 N2 R W; no lights times: the whole recording
    assert stats == {**sleep_statistics(STAGES_AFTER), "period": "whole recording", "lights_off_s": None,
                     "lights_on_s": None, "lights_off_clock": None, "lights_on_clock": None, "lights_source": None,
                     "epochs_outside_lights": 0, "epochs_flagged": None, "quality_warnings": ""}
    assert json.loads(files["statistics"].read_text()) == json_ready(stats)
    assert stats["SOL"] == 1.0 and stats["TST"] == 2.0 and stats["Lat_REM"] == 2.5

    annotations = mne.read_annotations(files["edf"])
    np.testing.assert_allclose(annotations.onset, [12.5, 72.5, 132.5, 192.5, 222.5])
    np.testing.assert_allclose(annotations.duration, [60, 30, 60, 30, 30])
    header = edfio.read_edf(files["edf"])
    assert (header.startdate, header.starttime, header.num_signals) == (START.date(), START.time(), 0)
    assert header.patient.code == "night1"

    # scored_hypnograms reads it back onto the same 30-s grid: the listed stages, epoch 4 unscored
    origin, grid = stages_on_epoch_grid(read_hypnogram(files["edf"]), files["edf"], recording_seconds=ORIGIN + 8 * 30)
    assert origin == pytest.approx(ORIGIN)
    expected = np.full(8, UNSCORED)
    expected[EPOCHS - 1] = STAGES_AFTER
    np.testing.assert_array_equal(grid, expected)
    assert files["figure"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_recording_outputs_without_a_start_time(tmp_path):
    import edfio
    import mne

    onsets, before, probabilities = recording_inputs()
    write_recording_outputs(tmp_path, "syn-001", onsets, before, STAGES_AFTER, probabilities, None, EPOCHS)
    folder = tmp_path / "syn-001"
    with open(folder / "syn-001-hypnogram.csv", newline="") as handle:
        assert {row["clock_time"] for row in csv.DictReader(handle)} == {""}
    annotations = mne.read_annotations(folder / "syn-001-Hypnogram.edf")
    assert list(annotations.description) == ["Sleep stage W", "Sleep stage 1", "Sleep stage 2", "Sleep stage R",
                                             "Sleep stage W"]
    stats = json.loads((folder / "syn-001-statistics.json").read_text())
    assert stats["Lat_N3"] is None and stats["awakenings"] == 0

    name = "nuit 1 é" + "x" * 90  # the folder keeps the ID; the EDF header gets printable ASCII that fits
    write_recording_outputs(tmp_path, name, onsets[:1], before[:1], STAGES_AFTER[:1], probabilities[:1], None, EPOCHS[:1])
    header = edfio.read_edf(tmp_path / name / f"{name}-Hypnogram.edf")
    assert header.patient.code == "nuit_1__" + "x" * 56  # space and é: _, 64 characters


def test_recording_outputs_refuse_inconsistent_arrays(tmp_path):
    onsets, before, probabilities = recording_inputs()
    with pytest.raises(ValueError, match=r"probabilities need shape \(7, 5\)"):
        write_recording_outputs(tmp_path, "x", onsets, before, STAGES_AFTER, probabilities[:, :4], None, EPOCHS)
    with pytest.raises(ValueError, match="unique"):
        write_recording_outputs(tmp_path, "x", onsets, before, STAGES_AFTER, probabilities, None, np.ones(7, int))
    with pytest.raises(ValueError, match="increase"):
        write_recording_outputs(tmp_path, "x", onsets[::-1], before, STAGES_AFTER, probabilities, None, EPOCHS)
    assert not (tmp_path / "x").exists()
