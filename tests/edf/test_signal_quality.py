"""signal_quality.py: flat, clipped and missing rows per epoch, from render_edf.py to the hypnogram table.

The EDF files are written with edfio and read by render_edf.py with MNE.
"""
from __future__ import annotations

import csv
import datetime
import json
from pathlib import Path

import edfio
import numpy as np
import pytest

from sleepstaging.scoring import night_outputs
from sleepstaging.scoring import postprocess
from sleepstaging.data import psg_layout
import render_edf
from sleepstaging import script_io
from sleepstaging.edf import signal_quality
from sleepstaging.script_io import InputError
from sleepstaging.edf.signal_quality import EpochQuality, QualityRecorder, check_epoch, row_limits

EPOCHS = 10
RATE = 100  # Hz, every channel
START = datetime.datetime(2024, 5, 6, 22, 15, 0)
MONTAGE = {"rows": {
    "C3-M2": {"channel": "EEG C3"},
    "E1-M2": {"channel": "EOG L"},
    "Chin EMG": {"channel": "EMG chin"},
    "Thorax": {"channel": "Effort THO", "optional": True},  # not in the files: missing
}}


# --------------------------------------------------------------------------
# One epoch against its limits: the thresholds at their edges
# --------------------------------------------------------------------------
def alternating(amplitude: float, count: int = 200) -> np.ndarray:
    """+a, -a, +a, ...: mean 0, standard deviation exactly ``amplitude``."""
    return amplitude * np.where(np.arange(count) % 2 == 0, 1.0, -1.0)


def test_flat_is_a_standard_deviation_under_two_resolution_steps():
    limits = row_limits((-100.0, 100.0), (-1000, 1000), to_row=1.0, volts_per_row_value=None)
    assert (limits.low, limits.high) == (-100.0, 100.0)
    assert limits.step == pytest.approx(0.1)  # 200 / 2000
    assert limits.flat_below == pytest.approx(0.2)  # two steps; no floor for a row in arbitrary units
    assert check_epoch(alternating(0.199), limits) == (True, False)
    assert check_epoch(alternating(0.201), limits) == (False, False)
    assert check_epoch(np.full(200, 3.0), limits) == (True, False)  # a constant: std 0


def test_voltage_rows_have_an_absolute_floor_in_the_rows_values():
    # 16 bits over +-200 uV: a step of 400 / 65535 = 0.0061 uV, two steps 0.0122 uV; the 0.1-uV floor is higher.
    limits = row_limits((-200.0, 200.0), (-32768, 32767), to_row=1.0, volts_per_row_value=1e-6)
    assert limits.step == pytest.approx(400 / 65535)
    assert limits.flat_below == pytest.approx(0.1)
    assert check_epoch(alternating(0.099), limits)[0] and not check_epoch(alternating(0.101), limits)[0]
    # A uV channel on an mV row, halved and inverted: the header's +-5000 uV become -2.5..2.5 mV; one step is
    # 10000 / 65535 uV * 0.5e-3; the floor, 0.1 uV at the electrode, is 0.05 uV = 5e-5 mV, under two steps.
    limits = row_limits((-5000.0, 5000.0), (-32768, 32767), to_row=-0.5e-3, volts_per_row_value=1e-3 / 0.5)
    assert (limits.low, limits.high) == pytest.approx((-2.5, 2.5))
    assert limits.step == pytest.approx(10000 / 65535 * 0.5e-3)
    assert limits.flat_below == pytest.approx(2 * 10000 / 65535 * 0.5e-3)


def test_clipped_is_five_percent_of_samples_within_one_step_of_a_limit():
    limits = row_limits((-100.0, 100.0), (-1000, 1000), to_row=1.0, volts_per_row_value=None)  # step 0.1
    samples = alternating(10.0)  # 200 samples, far from both limits
    samples[:10] = 99.95  # 10 of 200 = 5 %: within one step of the maximum
    assert check_epoch(samples, limits) == (False, True)
    samples[9] = 99.85  # 9 of 200 = 4.5 %; 99.85 is more than one step below 100
    assert check_epoch(samples, limits) == (False, False)
    samples[9] = -99.95  # the minimum counts as well: 5 % again
    assert check_epoch(samples, limits) == (False, True)


# --------------------------------------------------------------------------
# A recording's verdicts and warnings
# --------------------------------------------------------------------------
def test_recorder_flags_key_rows_and_warns_above_half_the_epochs():
    limits = row_limits((-100.0, 100.0), (-1000, 1000), to_row=1.0, volts_per_row_value=None)
    rows = {"C3-M2": limits, "Chin EMG": limits, "Thorax": limits, "Snore": limits}
    recorder = QualityRecorder("R", rows, missing=("Flow", "O1-M2"))
    for number in range(1, 11):
        signals = {row: alternating(10.0) for row in rows}
        if number <= 5:  # Chin EMG flat in 5 of 10 epochs: half, not more than half
            signals["Chin EMG"] = np.zeros(200)
        if number <= 6:  # Thorax flat in 6 of 10: more than half, but not a key row
            signals["Thorax"] = np.zeros(200)
        signals["Snore"] = np.zeros(200)  # not checked: silent snore is no fault
        recorder.add_epoch(number, signals)
    quality = recorder.result()
    assert quality.rows_checked == ("C3-M2", "Chin EMG", "Thorax")
    assert quality.key_rows == ("C3-M2", "O1-M2", "Chin EMG")  # key rows the montage names, present or not
    assert quality.missing == ("O1-M2", "Flow")  # in image order
    assert quality.flat[1] == ("Chin EMG", "Thorax") and quality.flat[6] == ("Thorax",) and 7 not in quality.flat
    assert quality.warnings == ("O1-M2 missing (no channel in the EDF) in 100 % of epochs",)
    # a missing key row flags every epoch
    assert [cells[0] for cells in quality.epoch_columns([1, 6, 10])] == ["flagged"] * 3

    recorder = QualityRecorder("R", {"Chin EMG": limits}, missing=())
    for number in range(1, 11):
        recorder.add_epoch(number, {"Chin EMG": np.zeros(200) if number <= 6 else alternating(10.0)})
    assert recorder.result().warnings == ("Chin EMG flat in 60.0 % of epochs",)


# --------------------------------------------------------------------------
# render_edf.py: planted faults end up in the sidecar
# --------------------------------------------------------------------------
def write_recording(path: Path, flat_emg_epochs, clipped_eeg_epochs) -> Path:
    """10 epochs at 100 Hz of EEG C3, EOG L and EMG chin; the EMG is 0 in ``flat_emg_epochs``, the EEG a
    +-400 uV sine cut at its +-200 uV range in ``clipped_eeg_epochs`` (a third of the time at each limit)."""
    t = np.arange(EPOCHS * 30 * RATE) / RATE
    epoch_of = (t // 30).astype(int) + 1
    eeg = 30 * np.sin(2 * np.pi * 10 * t)
    clipped = np.isin(epoch_of, clipped_eeg_epochs)
    eeg[clipped] = np.clip(400 * np.sin(2 * np.pi * t[clipped]), -200, 200)
    emg = 20 * np.random.default_rng(0).standard_normal(len(t))
    emg[np.isin(epoch_of, flat_emg_epochs)] = 0.0
    signals = [edfio.EdfSignal(eeg, RATE, label="EEG C3", physical_dimension="uV", physical_range=(-200, 200)),
               edfio.EdfSignal(50 * np.sin(2 * np.pi * 0.3 * t), RATE, label="EOG L", physical_dimension="uV",
                               physical_range=(-500, 500)),
               edfio.EdfSignal(emg, RATE, label="EMG chin", physical_dimension="uV", physical_range=(-200, 200))]
    edfio.Edf(signals, starttime=START.time(), recording=edfio.Recording(startdate=START.date())).write(path)
    return path


def test_render_writes_the_planted_faults_and_warns_about_most_of_the_night(tmp_path, capsys):
    (tmp_path / "edf").mkdir()
    write_recording(tmp_path / "edf" / "RECA.edf", flat_emg_epochs=[2, 3], clipped_eeg_epochs=[5, 6])
    write_recording(tmp_path / "edf" / "RECB.edf", flat_emg_epochs=range(1, 8), clipped_eeg_epochs=[])
    montage = tmp_path / "montage.json"
    montage.write_text(json.dumps(MONTAGE))
    out = tmp_path / "DATA"
    render_edf.main(["--edf", str(tmp_path / "edf"), "--out", str(out), "--split", "test", "--unscored",
                     "--montage", str(montage), "--workers", "2", "--quiet"])  # in worker processes
    printed = capsys.readouterr().out

    assert (out / "RECA" / "RECA.quality.json").is_file() and (out / "RECA" / "RECA.timing.json").is_file()
    document = json.loads((out / "RECA" / "RECA.quality.json").read_text())
    assert document["thresholds"] == signal_quality.THRESHOLDS
    assert sorted(document["epochs"], key=int) == ["2", "3", "5", "6"]  # only epochs with something to report
    quality = signal_quality.read_quality(out, "RECA")
    assert quality.rows_checked == ("C3-M2", "E1-M2", "Chin EMG") and quality.missing == ("Thorax",)
    assert quality.flat == {2: ("Chin EMG",), 3: ("Chin EMG",)}
    assert quality.clipped == {5: ("C3-M2",), 6: ("C3-M2",)}
    assert quality.epochs_checked == EPOCHS and quality.warnings == ()
    # the EEG's limits: its header range in uV, one step 400 / 65535 uV
    assert (quality.limits["C3-M2"].low, quality.limits["C3-M2"].high) == pytest.approx((-200.0, 200.0))
    assert quality.limits["C3-M2"].step == pytest.approx(400 / 65535)
    columns = quality.epoch_columns(range(1, EPOCHS + 1))
    assert columns[0] == ("ok", "", "", "Thorax")  # Thorax is missing, but it is not a key row
    assert columns[1] == ("flagged", "Chin EMG", "", "Thorax")
    assert columns[4] == ("flagged", "", "C3-M2", "Thorax")
    assert [c[0] for c in columns] == ["ok", "flagged", "flagged", "ok", "flagged", "flagged", "ok", "ok", "ok", "ok"]

    assert signal_quality.read_quality(out, "RECB").flat == {n: ("Chin EMG",) for n in range(1, 8)}
    warnings = [line for line in printed.splitlines() if line.startswith("warning: ")]
    assert warnings == ["warning: RECB: Chin EMG flat in 70.0 % of epochs"]
    record = json.loads((out / "RECA" / "render_edf.json").read_text())
    assert record["rows_missing"] == ["Thorax"]


# --------------------------------------------------------------------------
# The sidecar
# --------------------------------------------------------------------------
def planted_quality(recording_id: str = "NIGHT") -> EpochQuality:
    """Epoch 2: Chin EMG flat; epoch 3: Thorax clipped (not a key row); Flow missing all night."""
    limits = signal_quality.RowLimits(-200.0, 200.0, 0.5, 1.0)
    return EpochQuality(recording_id, ("C3-M2", "Chin EMG", "Thorax"), ("C3-M2", "Chin EMG"), ("Flow",),
                        {2: ("Chin EMG",)}, {3: ("Thorax",)}, 4, ("Chin EMG flat in 60.0 % of epochs",),
                        {"C3-M2": limits, "Chin EMG": limits, "Thorax": limits})


def test_sidecar_round_trip_and_broken_sidecars(tmp_path):
    assert signal_quality.read_quality(tmp_path, "NIGHT") is None  # no sidecar: the synthetic layout
    path = signal_quality.write_quality(tmp_path / "NIGHT", planted_quality())
    assert path == tmp_path / "NIGHT" / "NIGHT.quality.json"
    assert signal_quality.read_quality(tmp_path, "NIGHT") == planted_quality()
    path.write_text('{"recording_id": "NIGHT", "epochs": {"2": {"flat": ["Chin EMG"]}}}')
    with pytest.raises(InputError, match=rf"not a signal quality file \(KeyError.*\({path}\)"):
        signal_quality.read_quality(tmp_path, "NIGHT")
    signal_quality.write_quality(tmp_path / "NIGHT", planted_quality("OTHER"))
    (tmp_path / "NIGHT" / "OTHER.quality.json").rename(path)
    with pytest.raises(InputError, match=r"of recording 'OTHER', expected 'NIGHT'"):
        signal_quality.read_quality(tmp_path, "NIGHT")


# --------------------------------------------------------------------------
# The hypnogram table and the statistics
# --------------------------------------------------------------------------
def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_hypnogram_table_gets_the_quality_columns_at_the_end(tmp_path):
    onsets, numbers = np.arange(4) * 30.0, np.arange(1, 5)
    stages, probabilities = np.array([0, 1, 2, 2]), np.full((4, 5), 0.2)
    statistics = night_outputs.write_recording_outputs(tmp_path, "NIGHT", onsets, stages, stages, probabilities, None,
                                                   numbers, figure=False, quality=planted_quality())
    table = tmp_path / "NIGHT" / "NIGHT-hypnogram.csv"
    header = table.read_text().splitlines()[0].split(",")
    assert header[-4:] == ["quality", "flat_signals", "clipped_signals", "missing_signals"]
    assert header[:6] == ["epoch", "onset_s", "clock_time", "in_lights_period", "stage_before", "stage_after"]
    rows = read_rows(table)
    assert [(r["quality"], r["flat_signals"], r["clipped_signals"], r["missing_signals"]) for r in rows] == [
        ("ok", "", "", "Flow"), ("flagged", "Chin EMG", "", "Flow"), ("ok", "", "Thorax", "Flow"), ("ok", "", "", "Flow")]
    # after the sleep statistics: one flagged epoch of four, the warning
    assert list(statistics)[-2:] == ["epochs_flagged", "quality_warnings"]
    assert statistics["epochs_flagged"] == 1 and statistics["quality_warnings"] == "Chin EMG flat in 60.0 % of epochs"
    saved = json.loads((tmp_path / "NIGHT" / "NIGHT-statistics.json").read_text())
    assert saved["epochs_flagged"] == 1 and list(saved)[-2:] == ["epochs_flagged", "quality_warnings"]

    plain = night_outputs.write_recording_outputs(tmp_path, "OLD", onsets, stages, stages, probabilities, None, numbers,
                                              figure=False)
    assert plain["epochs_flagged"] is None and plain["quality_warnings"] == ""
    assert all(r["quality"] == r["flat_signals"] == r["missing_signals"] == "" for r in read_rows(
        tmp_path / "OLD" / "OLD-hypnogram.csv"))
    assert json.loads((tmp_path / "OLD" / "OLD-statistics.json").read_text())["epochs_flagged"] is None
    night_outputs.write_statistics_table(tmp_path / "stats.csv", {"NIGHT": statistics, "OLD": plain})
    cohort = {r["recording_id"]: r for r in read_rows(tmp_path / "stats.csv")}
    assert (cohort["NIGHT"]["epochs_flagged"], cohort["NIGHT"]["quality_warnings"]) == (
        "1", "Chin EMG flat in 60.0 % of epochs")
    assert (cohort["OLD"]["epochs_flagged"], cohort["OLD"]["quality_warnings"]) == ("", "")


def test_postprocess_reads_the_sidecar_where_there_is_one(tmp_path):
    data = tmp_path / "DATA"
    rows = [["NIGHT", psg_layout.image_name("NIGHT", n)] for n in (1, 2, 3)]
    rows += [["SYN", psg_layout.image_name("SYN", n)] for n in (1, 2)]
    script_io.write_csv_rows(data / psg_layout.TEST_CSV, rows)
    signal_quality.write_quality(data / "NIGHT", planted_quality())
    test = psg_layout.read_epoch_csv(data / psg_layout.TEST_CSV, with_labels=False)
    placements = postprocess.place_recordings(str(data), test)
    assert placements["NIGHT"][3] == planted_quality() and placements["SYN"][3] is None

    stages = np.array([0, 1, 2, 0, 0])
    statistics = postprocess.write_recordings(tmp_path / "rec", placements, stages, stages, np.full((5, 5), 0.2),
                                              figures=False)
    assert statistics["NIGHT"]["epochs_flagged"] == 1 and statistics["SYN"]["epochs_flagged"] is None
    assert [r["quality"] for r in read_rows(tmp_path / "rec" / "NIGHT" / "NIGHT-hypnogram.csv")] == [
        "ok", "flagged", "ok"]
    assert [r["quality"] for r in read_rows(tmp_path / "rec" / "SYN" / "SYN-hypnogram.csv")] == ["", ""]
    cohort = {r["recording_id"]: r for r in read_rows(tmp_path / "rec" / postprocess.STATISTICS_TABLE)}
    assert cohort["NIGHT"]["epochs_flagged"] == "1" and cohort["SYN"]["epochs_flagged"] == ""
