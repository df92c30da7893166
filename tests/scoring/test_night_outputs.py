"""night_outputs.py: the statistics table; per-recording files; EDF+ round trip."""
from __future__ import annotations

import csv
import datetime
import json

import numpy as np
import pytest

from sleepstaging.data import psg_layout
from sleepstaging.scoring import night_outputs
from sleepstaging.scoring.night_outputs import (OUTPUT_FILES, QUALITY_COLUMNS, stage_annotations, write_recording_outputs,
                                                write_statistics_table)
from sleepstaging.scoring.sleep_statistics import json_ready, sleep_statistics

W, N1, N2, N3, R = range(5)


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


def test_the_figure_marks_a_lone_rem_epoch_and_every_stage_band(tmp_path):
    # 40 epochs of N2 with one REM epoch in the middle: the hypnogram's REM bar must show it (a lone
    # epoch is the case where a step patch with gaps drew next to nothing)
    import cv2

    stages = np.full(40, 2)
    stages[20] = 4
    probabilities = np.full((40, 5), 0.05)
    probabilities[np.arange(40), stages] = 0.8
    statistics = {"TST": 20.0, "SE": 100.0, "SOL": 0.0, "WASO": 0.0}
    path = tmp_path / "night.png"
    night_outputs.plot_recording(path, "X", np.arange(40) * 30.0, stages, probabilities, None, 30.0, statistics)
    image = cv2.imread(str(path))[:, :, ::-1].astype(int)  # RGB
    red = np.array([0xd6, 0x45, 0x45])
    is_red = np.abs(image - red).sum(axis=2) < 40
    top_half = is_red[: image.shape[0] // 2]
    columns = np.flatnonzero(top_half.any(axis=0))
    # the probability panel: N2's blue fills 80 % of its height across the whole time axis
    n2_blue = np.abs(image - np.array([0x3b, 0x8b, 0xd9])).sum(axis=2) < 40
    blue_columns = np.flatnonzero(n2_blue[image.shape[0] // 2:].sum(axis=0) > 20)
    axis_columns = np.arange(blue_columns[0], blue_columns[-1] + 1)  # (the REM epoch's column holds little blue)
    assert n2_blue[image.shape[0] // 2:].sum() > 20 * top_half.sum()
    # one bar as wide as one epoch of the 40 on the axis (3 points thick), not scattered dots
    assert np.all(np.diff(columns) == 1) and top_half.sum() >= 3 * len(columns)
    assert abs(len(columns) - len(axis_columns) / 40) <= 2
    # where the epoch is: the 21st of 40
    assert abs((columns.mean() - axis_columns[0]) / len(axis_columns) - 20.5 / 40) < 0.01
