"""render_edf.py: EDF + hypnogram -> challenge layout.

The EDF files here are written with edfio and read by render_edf.py with
MNE, so writer and reader are different libraries.
"""
from __future__ import annotations

import datetime
import json
from pathlib import Path

import cv2
import edfio
import numpy as np
import pytest

from sleepstaging.edf import edf_signals
from sleepstaging.edf import montages
from sleepstaging.data import epoch_timing
from sleepstaging.data import psg_layout
import render_edf
from sleepstaging.edf import render
from sleepstaging import script_io
from conftest import run_script
from sleepstaging.edf.scored_hypnograms import UNSCORED, StageSegment, epochs_to_keep, read_hypnogram, stages_on_epoch_grid
from sleepstaging.script_io import InputError

START = datetime.time(23, 0, 0)
START_DATE = datetime.date(1989, 4, 24)

# Sleep-EDF SC hypnogram of a 20-epoch recording: (stage text, onset s, duration s).
# Epochs 1-4 W, 5 N1, 6-8 N2, 9-10 stage 3, 11 stage 4, 12-13 REM, 14 unscored,
# 15-17 W, 18 movement, 19-20 W, then a long "?" past the end, as in Sleep-EDF.
SLEEP_EDF_STAGES = [
    ("Sleep stage W", 0, 120), ("Sleep stage 1", 120, 30), ("Sleep stage 2", 150, 90),
    ("Sleep stage 3", 240, 60), ("Sleep stage 4", 300, 30), ("Sleep stage R", 330, 60),
    ("Sleep stage ?", 390, 30), ("Sleep stage W", 420, 90), ("Movement time", 510, 30),
    ("Sleep stage W", 540, 60), ("Sleep stage ?", 600, 3000),
]
EEG_MICROVOLTS = 37.5  # constant EEG: a flat line a quarter band above the C3-M2 centre
EOG_MICROVOLTS = 75.0


def write_sleep_edf_like(folder: Path, epochs: int = 20, stages=SLEEP_EDF_STAGES, name: str = "SC4001",
                         eeg=None) -> Path:
    """A Sleep-EDF SC-style pair: ``<name>E0-PSG.edf`` (its 7 channels and rates) and ``<name>EC-Hypnogram.edf``.

    ``eeg``: function of the time (s) giving EEG Fpz-Cz in uV (default a constant EEG_MICROVOLTS).
    """
    folder.mkdir(parents=True, exist_ok=True)
    seconds = epochs * 30
    fast, slow = np.arange(seconds * 100) / 100, np.arange(seconds)
    eeg_values = np.full(len(fast), EEG_MICROVOLTS) if eeg is None else eeg(fast)

    def signal(values, rate, label, unit, physical_range):
        return edfio.EdfSignal(values, rate, label=label, physical_dimension=unit, physical_range=physical_range)

    signals = [
        signal(eeg_values, 100, "EEG Fpz-Cz", "uV", (-200, 200)),
        signal(10 * np.sin(2 * np.pi * 10 * fast), 100, "EEG Pz-Oz", "uV", (-200, 200)),
        signal(np.full(len(fast), EOG_MICROVOLTS), 100, "EOG horizontal", "uV", (-500, 500)),
        signal(0.5 * np.sin(2 * np.pi * slow / 4), 1, "Resp oro-nasal", "", (-2, 2)),
        signal(np.full(seconds, 20.0), 1, "EMG submental", "uV-mrs", (0, 100)),
        signal(np.full(seconds, 37.0), 1, "Temp rectal", "DegC", (30, 40)),
        signal(np.zeros(seconds), 1, "Event marker", "", (-1, 1)),
    ]
    recording = edfio.Recording(startdate=START_DATE)
    edfio.Edf(signals, starttime=START, recording=recording, data_record_duration=30).write(folder / f"{name}E0-PSG.edf")
    annotations = [edfio.EdfAnnotation(onset, duration, text) for text, onset, duration in stages]
    edfio.Edf([], annotations=annotations, starttime=START, recording=recording).write(folder / f"{name}EC-Hypnogram.edf")
    return folder / f"{name}E0-PSG.edf"


def folder_state(folder: Path) -> dict:
    """Every file under ``folder`` with its bytes (empty when it does not exist)."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def existing_data_root(root: Path) -> Path:
    """A data root that already holds one recording, to check that failed runs leave it untouched."""
    script_io.write_csv_rows(root / psg_layout.TRAIN_CSV, [["OLD", "OLD_0001.png", "N2"]])
    (root / "OLD").mkdir()
    (root / "OLD" / "OLD_0001.png").write_bytes(b"not really a png")
    return root


def brightest_row(image: np.ndarray, top: float, height: float) -> int:
    """Row (of the 270-row image) with the most light between ``top`` and ``top + height``, over all columns."""
    rows = slice(int(top), int(np.ceil(top + height)))
    return int(top) + int(np.argmax(image[rows, :, 0].astype(int).sum(axis=1)))


def expected_row(row_name: str, value: float) -> float:
    """Where the renderer puts a constant ``value`` of a row, in rows of the 270-row image."""
    signal = psg_layout.SIGNAL_BY_NAME[row_name]
    row_1080 = (signal.top_1080 - 0.5 + psg_layout.TRACE_OFFSET_1080
                + (signal.high - value) * signal.height_1080 / (signal.high - signal.low))
    return (row_1080 + 0.5) / psg_layout.RENDER_SCALE - 0.5


# --------------------------------------------------------------------------
# Round trip through the synthetic generator's EDF export
# --------------------------------------------------------------------------
@pytest.mark.slow
def test_synthetic_round_trip_matches_generator(tiny_data, tmp_path):
    train_ids = sorted(set(psg_layout.read_epoch_csv(tiny_data / psg_layout.TRAIN_CSV, True).recording_ids))[:2]
    test_ids = sorted(set(psg_layout.read_epoch_csv(tiny_data / psg_layout.TEST_CSV, False).recording_ids))[:1]
    for split, ids in (("train", train_ids), ("test", test_ids)):
        (tmp_path / split).mkdir()
        for recording_id in ids:
            for name in (f"{recording_id}.edf", f"{recording_id}.hypnogram.csv"):
                (tmp_path / split / name).symlink_to(tiny_data / "edf" / name)
    out = tmp_path / "DATA"
    run_script("render_edf.py", "--edf", tmp_path / "train", "--out", out, "--split", "train",
               "--montage", "synthetic", "--trim-wake", "none", "--workers", 2, "--quiet")
    run_script("render_edf.py", "--edf", tmp_path / "test", "--out", out, "--split", "test",
               "--montage", "synthetic", "--trim-wake", "none", "--workers", 1, "--quiet")

    for name, with_labels, ids in ((psg_layout.TRAIN_CSV, True, train_ids), (psg_layout.TEST_CSV, False, test_ids),
                                   (psg_layout.TEST_LABELS_CSV, True, test_ids)):
        theirs = psg_layout.read_epoch_csv(tiny_data / name, with_labels)
        ours = psg_layout.read_epoch_csv(out / name, with_labels)
        keep = [i for i, r in enumerate(theirs.recording_ids) if r in ids]
        assert ours.idnums == [theirs.idnums[i] for i in keep]
        assert ours.recording_ids == [theirs.recording_ids[i] for i in keep]
        if with_labels:
            assert ours.labels.tolist() == theirs.labels[keep].tolist()

    compared = 0
    for recording_id in train_ids + test_ids:
        generator_images = sorted(p.name for p in (tiny_data / recording_id).glob("*.png"))
        assert sorted(p.name for p in (out / recording_id).glob("*.png")) == generator_images
        for name in generator_images:
            theirs = cv2.imread(str(tiny_data / recording_id / name))
            ours = cv2.imread(str(out / recording_id / name))
            assert np.abs(theirs.astype(int) - ours.astype(int)).max() <= 1, name
            compared += 1
    assert compared > 100  # whole recordings, unlabelled leading epochs included


# --------------------------------------------------------------------------
# A Sleep-EDF-style recording (edfio writes, MNE reads)
# --------------------------------------------------------------------------
@pytest.mark.slow
def test_sleep_edf_style_labels_trimming_and_units(tmp_path):
    write_sleep_edf_like(tmp_path / "sc")
    out = tmp_path / "DATA"
    result = run_script("render_edf.py", "--edf", tmp_path / "sc", "--out", out, "--split", "train",
                        "--montage", "sleep-edf", "--trim-wake", 1, "--quiet")
    assert '"montage": "sleep-edf"' in result.stdout  # resolved configuration printed first

    # Sleep runs from epoch 5 (N1) to 13 (REM); one minute = 2 epochs of margin
    # keeps epochs 3-15. Epoch 14 is unscored: drawn, not listed.
    table = psg_layout.read_epoch_csv(out / psg_layout.TRAIN_CSV, True)
    expected = {3: "Wake", 4: "Wake", 5: "N1", 6: "N2", 7: "N2", 8: "N2", 9: "N3", 10: "N3", 11: "N3",
                12: "REM", 13: "REM", 15: "Wake"}
    assert table.idnums == [f"SC4001E0_{n:04d}.png" for n in expected]
    assert set(table.recording_ids) == {"SC4001E0"}
    assert [psg_layout.STAGES[s] for s in table.labels] == list(expected.values())
    assert sorted(p.name for p in (out / "SC4001E0").glob("*.png")) == [f"SC4001E0_{n:04d}.png" for n in range(3, 16)]

    record = json.loads((out / "SC4001E0" / "render_edf.json").read_text())
    assert (record["epochs_in_recording"], record["first_epoch"], record["last_epoch"]) == (20, 3, 15)
    assert record["rows"]["C3-M2"]["channel"] == "EEG Fpz-Cz" and record["rows"]["C3-M2"]["fs_hz"] == 100
    assert record["rows"]["Chin EMG"]["fs_hz"] == 1  # native rate, not resampled

    # Volts from MNE back to microvolts: a constant 37.5 uV sits a quarter band
    # above the C3-M2 centre; E2 is the inverted horizontal EOG.
    image = cv2.imread(str(out / "SC4001E0" / "SC4001E0_0006.png"))
    for row, value in (("C3-M2", EEG_MICROVOLTS), ("E1-M2", EOG_MICROVOLTS), ("E2-M1", -EOG_MICROVOLTS),
                       ("Chin EMG", 20.0)):
        signal = psg_layout.SIGNAL_BY_NAME[row]
        assert abs(brightest_row(image, signal.top_270, signal.height_270) - expected_row(row, value)) <= 1, row


@pytest.mark.slow
def test_each_image_shows_its_own_epochs_samples_on_a_grid_starting_at_15_s(tmp_path):
    # The scorer's first epoch starts 15 s into the recording: epoch n covers 15 + 30 (n - 1) ... 15 + 30 n s.
    # The EEG steps through +50, 0, -50 uV, one level per scored epoch, so an image that took
    # its samples from the wrong place would show a step, or another level, inside it.
    levels = np.array([50.0, 0.0, -50.0])

    def staircase(seconds):
        return levels[np.floor((seconds - 15) / 30).astype(int) % 3]

    stages = [("Sleep stage W", 15, 120), ("Sleep stage 2", 135, 300), ("Sleep stage R", 435, 150)]
    write_sleep_edf_like(tmp_path / "sc", stages=stages, eeg=staircase)
    out = tmp_path / "DATA"
    run_script("render_edf.py", "--edf", tmp_path / "sc", "--out", out, "--split", "test", "--montage", "sleep-edf",
               "--trim-wake", "none", "--quiet")
    record = json.loads((out / "SC4001E0" / "render_edf.json").read_text())
    assert record["epoch1_offset_seconds"] == 15
    images = sorted((out / "SC4001E0").glob("*.png"))
    assert [p.name for p in images] == [f"SC4001E0_{n:04d}.png" for n in range(1, 20)]  # (600 - 15) // 30 epochs
    signal = psg_layout.SIGNAL_BY_NAME["C3-M2"]
    rows = slice(int(signal.top_270), int(np.ceil(signal.top_270 + signal.height_270)))
    for number, path in enumerate(images, start=1):
        band = cv2.imread(str(path))[rows, :, 0].astype(int)
        expected = expected_row("C3-M2", levels[(number - 1) % 3])
        for columns in (slice(4, 120), slice(360, 476)):  # the epoch's first and last quarter
            brightest = int(signal.top_270) + int(np.argmax(band[:, columns].sum(axis=1)))
            assert abs(brightest - expected) <= 1, (path.name, columns)


@pytest.mark.slow
def test_sleep_edf_style_keeps_everything_without_trimming(tmp_path):
    write_sleep_edf_like(tmp_path / "sc")
    out = tmp_path / "DATA"
    run_script("render_edf.py", "--edf", tmp_path / "sc" / "SC4001E0-PSG.edf", "--out", out, "--split", "test",
               "--trim-wake", "none", "--quiet")
    assert len(list((out / "SC4001E0").glob("*.png"))) == 20
    answers = psg_layout.read_epoch_csv(out / psg_layout.TEST_LABELS_CSV, True)
    questions = psg_layout.read_epoch_csv(out / psg_layout.TEST_CSV, False)
    assert questions.idnums == answers.idnums
    # 20 epochs less the unscored epoch 14 and the movement epoch 18.
    assert [int(n[-8:-4]) for n in answers.idnums] == [n for n in range(1, 21) if n not in (14, 18)]


@pytest.mark.slow
def test_shhs_style_recording_with_nsrr_xml_in_another_folder(tmp_path):
    rates = {"SaO2": 1, "H.R.": 1, "EEG(sec)": 125, "ECG": 125, "EMG": 125, "EOG(L)": 50, "EOG(R)": 50, "EEG": 125,
             "THOR RES": 10, "ABDO RES": 10, "POSITION": 1, "LIGHT": 1, "AIRFLOW": 10, "OX stat": 1}
    units = {"SaO2": "%", "ECG": "mV", "EEG(sec)": "uV", "EEG": "uV", "EMG": "uV", "EOG(L)": "uV", "EOG(R)": "uV"}
    values = {"SaO2": 95.0, "ECG": 0.75}  # ECG 0.75 mV: a quarter band above the ECG centre
    seconds = 6 * 30
    signals = [edfio.EdfSignal(np.full(seconds * rate, values.get(label, 0.0)), rate, label=label,
                               physical_dimension=units.get(label, ""), physical_range=(-100, 100))
               for label, rate in rates.items()]
    (tmp_path / "edfs").mkdir()
    edfio.Edf(signals, starttime=START, recording=edfio.Recording(startdate=START_DATE)).write(
        tmp_path / "edfs" / "shhs1-200001.edf")
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "shhs1-200001-nsrr.xml").write_text(nsrr_xml([
        ("Stages|Stages", "Wake|0", 0, 60), ("Stages|Stages", "Stage 2 sleep|2", 60, 90),
        ("Stages|Stages", "REM sleep|5", 150, 30),
    ]))
    out = tmp_path / "DATA"
    run_script("render_edf.py", "--edf", tmp_path / "edfs", "--hypnogram", tmp_path / "annotations", "--out", out,
               "--split", "train", "--montage", "shhs", "--trim-wake", "none", "--quiet")
    table = psg_layout.read_epoch_csv(out / psg_layout.TRAIN_CSV, True)
    assert [psg_layout.STAGES[s] for s in table.labels] == ["Wake", "Wake", "N2", "N2", "N2", "REM"]
    record = json.loads((out / "shhs1-200001" / "render_edf.json").read_text())
    assert "Flow" not in record["rows"]  # NEW AIR is optional and absent: row drawn empty
    image = cv2.imread(str(out / "shhs1-200001" / "shhs1-200001_0004.png"))
    for row, value in (("ECG", 0.75), ("SpO2 (85-100 %)", 95.0), ("SpO2 (40-100 %)", 95.0)):
        signal = psg_layout.SIGNAL_BY_NAME[row]
        assert abs(brightest_row(image, signal.top_270, signal.height_270) - expected_row(row, value)) <= 1, row


# --------------------------------------------------------------------------
# Units: the EDF's physical values reach each row in the row's unit
# --------------------------------------------------------------------------
def test_channels_arrive_in_the_rows_units(tmp_path):
    seconds = 60
    channels = [  # label, unit in the file, value in that unit, physical range
        ("eeg mV", "mV", 0.05, (-1, 1)), ("eeg V", "V", -4e-5, (-1e-3, 1e-3)), ("ecg uV", "uV", 1200.0, (-5000, 5000)),
        ("sat", "%", 93.0, (0, 100)), ("flow", "", 0.4, (-2, 2)), ("emg env", "uV-mrs", 12.0, (0, 100)),
    ]
    edfio.Edf([edfio.EdfSignal(np.full(seconds * 10, value), 10, label=label, physical_dimension=unit,
                               physical_range=physical_range) for label, unit, value, physical_range in channels],
              starttime=START).write(tmp_path / "units.edf")
    montage_file = tmp_path / "montage.json"
    montage_file.write_text(json.dumps({"rows": {
        "C3-M2": {"channel": "eeg mV"},                      # mV -> uV: 50
        "C4-M1": {"channel": ["absent", "eeg V"], "invert": True},  # V -> uV, inverted: 40
        "ECG": {"channel": "ecg uV", "scale": 0.5},         # uV -> mV, halved: 0.6
        "SpO2 (85-100 %)": {"channel": "sat"},              # as stored: 93
        "Flow": {"channel": "flow", "scale": 2},            # a.u., doubled: 0.8
        "Chin EMG": {"channel": "emg env", "unit": "uV"},   # unit MNE does not know, declared: 12
        "Snore": {"channel": "nowhere", "optional": True},  # absent and optional: empty row
    }}))
    recording = edf_signals.open_edf(tmp_path / "units.edf")
    rows = edf_signals.resolve_channels(recording, montages.load_montage(str(montage_file)))
    assert recording.duration == seconds
    assert set(rows) == {"C3-M2", "C4-M1", "ECG", "SpO2 (85-100 %)", "Flow", "Chin EMG"}
    loaded = recording.read_channels({row_channel.channel for row_channel in rows.values()})
    expected = {"C3-M2": 50.0, "C4-M1": 40.0, "ECG": 0.6, "SpO2 (85-100 %)": 93.0, "Flow": 0.8, "Chin EMG": 12.0}
    for row, value in expected.items():
        samples = loaded[rows[row].channel] * rows[row].gain
        assert samples.shape == (seconds * 10,)
        np.testing.assert_allclose(samples, value, rtol=1e-3, err_msg=row)

    montage_file.write_text(json.dumps({"rows": {"C3-M2": {"channel": "sat"}}}))
    with pytest.raises(InputError, match=r"channel 'sat' for row 'C3-M2' has unit 'n/a', not a voltage"):
        edf_signals.resolve_channels(recording, montages.load_montage(str(montage_file)))


# --------------------------------------------------------------------------
# Hypnogram formats
# --------------------------------------------------------------------------
def nsrr_xml(events) -> str:
    """An NSRR-style XML hypnogram from ``(EventType, EventConcept, Start, Duration)`` tuples."""
    scored = "".join(
        f"<ScoredEvent><EventType>{kind}</EventType><EventConcept>{concept}</EventConcept>"
        f"<Start>{start}</Start><Duration>{duration}</Duration></ScoredEvent>\n"
        for kind, concept, start, duration in events
    )
    return ('<?xml version="1.0" encoding="UTF-8" standalone="no"?>\n<PSGAnnotation>'
            "<SoftwareVersion>Compumedics</SoftwareVersion><EpochLength>30</EpochLength>\n"
            "<ScoredEvents>\n<ScoredEvent><EventType/><EventConcept>Recording Start Time</EventConcept>"
            f"<Start>0</Start><Duration>600.0</Duration><ClockTime>00.00.00 22.00.00</ClockTime></ScoredEvent>\n"
            f"{scored}</ScoredEvents></PSGAnnotation>\n")


def test_nsrr_xml_parses_to_stages(tmp_path):
    path = tmp_path / "shhs1-200002-nsrr.xml"
    path.write_text(nsrr_xml([
        ("Stages|Stages", "Wake|0", 0.0, 60.0), ("Stages|Stages", "Stage 1 sleep|1", 60.0, 30.0),
        ("Arousals|Arousals", "Arousal|Arousal ()", 70.2, 5.1),  # not a stage: ignored
        ("Stages|Stages", "Stage 2 sleep|2", 90.0, 60.0), ("Stages|Stages", "Stage 3 sleep|3", 150.0, 30.0),
        ("Stages|Stages", "Stage 4 sleep|4", 180.0, 30.0), ("Stages|Stages", "REM sleep|5", 210.0, 60.0),
        ("Stages|Stages", "Unscored|9", 270.0, 30.0), ("Stages|Stages", "Movement|6", 300.0, 30.0),
        ("Stages|Stages", "Wake|0", 330.0, 30.0),
    ]))
    origin, stages = stages_on_epoch_grid(read_hypnogram(path), path, recording_seconds=400)
    u = UNSCORED
    assert origin == 0
    assert stages.tolist() == [0, 0, 1, 2, 2, 3, 3, 4, 4, u, u, 0, u]  # 13 whole epochs in 400 s

    path.write_text(nsrr_xml([("Stages|Stages", "Wake|0", 0, 30), ("Stages|Stages", "Stage 7 sleep|7", 30, 30)]))
    with pytest.raises(InputError, match=r"unknown sleep stage 'Stage 7 sleep\|7' in ScoredEvent 3"):
        read_hypnogram(path)
    path.write_text('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xxxxxxxx">]><PSGAnnotation>&x;</PSGAnnotation>')
    with pytest.raises(InputError, match="DOCTYPE or ENTITY"):
        read_hypnogram(path)


def test_plain_csv_parses_every_spelling(tmp_path):
    path = tmp_path / "night.hypnogram.csv"
    path.write_text("?\nW\nwake\n0\nN1\n1\nN2\n2\nN3\n3\n4\nR\nREM\n5\nunscored\n\n")
    origin, stages = stages_on_epoch_grid(read_hypnogram(path), path, recording_seconds=450)
    u = UNSCORED
    assert origin == 0
    assert stages.tolist() == [u, 0, 0, 0, 1, 1, 2, 2, 3, 3, 3, 4, 4, 4, u]


def test_grid_follows_the_scorer_and_trimming_keeps_the_margin(tmp_path):
    path = tmp_path / "h.csv"
    segments = [StageSegment(10.0, 60.0, 0, 1), StageSegment(70.0, 30.0, 2, 2),
                StageSegment(100.0, 90.0, 0, 3)]
    # Epoch 1 starts at 10 s: a 200-s recording holds 6 whole epochs from there.
    origin, stages = stages_on_epoch_grid(segments, path, recording_seconds=200)
    assert origin == 10.0
    assert stages.tolist() == [0, 0, 2, 0, 0, 0]
    assert epochs_to_keep(stages, 0.5, path).tolist() == [1, 2, 3]
    assert epochs_to_keep(stages, None, path).tolist() == [0, 1, 2, 3, 4, 5]
    with pytest.raises(InputError, match="not whole 30-s epochs"):
        stages_on_epoch_grid([StageSegment(0.0, 30.0, 0, 1), StageSegment(45.0, 30.0, 2, 2)], path, 200)
    with pytest.raises(InputError, match="overlaps"):
        stages_on_epoch_grid([StageSegment(0.0, 60.0, 0, 1), StageSegment(30.0, 30.0, 2, 2)], path, 200)


def test_pairing_by_archive_naming(tmp_path):
    for name in ("SC4001E0-PSG.edf", "SC4001EC-Hypnogram.edf", "SC4012E0-PSG.edf", "SC4012EC-Hypnogram.edf",
                 "nsrr/shhs1-200001.edf", "nsrr/shhs1-200001-nsrr.xml", "nsrr/shhs1-200001-profusion.xml",
                 "A2026-SY-01-0001.edf", "A2026-SY-01-0001.hypnogram.csv"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).touch()
    found = render.find_recordings(tmp_path, None)
    assert [(r.recording_id, r.edf.name, r.hypnogram.name) for r in found] == [
        ("A2026-SY-01-0001", "A2026-SY-01-0001.edf", "A2026-SY-01-0001.hypnogram.csv"),
        ("SC4001E0", "SC4001E0-PSG.edf", "SC4001EC-Hypnogram.edf"),
        ("SC4012E0", "SC4012E0-PSG.edf", "SC4012EC-Hypnogram.edf"),
        ("shhs1-200001", "shhs1-200001.edf", "shhs1-200001-nsrr.xml"),
    ]
    (tmp_path / "SC4022E0-PSG.edf").touch()
    with pytest.raises(InputError, match=r"no hypnogram found for 1 recording\(s\): .*SC4022E0-PSG.edf"):
        render.find_recordings(tmp_path, None)


# --------------------------------------------------------------------------
# Bad input: exit 2, one line naming the file, nothing written
# --------------------------------------------------------------------------
def run_failing(tmp_path, *args) -> str:
    """Run render_edf.py into a data root that already holds data; check it refused cleanly; return stderr."""
    out = existing_data_root(tmp_path / "DATA")
    before = folder_state(out)
    result = run_script("render_edf.py", "--out", out, "--split", "train", "--quiet", *args, check=False)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert folder_state(out) == before
    return result.stderr


@pytest.mark.slow
def test_unknown_montage_channel_is_refused(tmp_path):
    edf = write_sleep_edf_like(tmp_path / "sc")
    montage = tmp_path / "clinic.json"
    montage.write_text(json.dumps({"rows": {"C3-M2": {"channel": "C3-A2"}, "E1-M2": {"channel": "LOC"}}}))
    error = run_failing(tmp_path, "--edf", edf, "--montage", montage)
    assert "'C3-A2'" in error and "'LOC'" in error and str(montage) in error and f"({edf})" in error


def test_unknown_montage_row_is_refused(tmp_path):
    edf = write_sleep_edf_like(tmp_path / "sc")
    montage = tmp_path / "clinic.json"
    montage.write_text(json.dumps({"rows": {"C3": {"channel": "EEG Fpz-Cz"}}}))
    error = run_failing(tmp_path, "--edf", edf, "--montage", montage)
    assert "rows that the image does not have: 'C3'" in error and f"({montage})" in error


@pytest.mark.slow
def test_hypnogram_longer_than_the_recording_is_refused(tmp_path):
    stages = [("Sleep stage W", 0, 120), ("Sleep stage 2", 120, 510)]  # to 630 s; the EDF holds 600 s
    edf = write_sleep_edf_like(tmp_path / "sc", stages=stages)
    error = run_failing(tmp_path, "--edf", tmp_path / "sc")
    assert "hypnogram longer than the recording" in error
    assert f"({tmp_path / 'sc' / 'SC4001EC-Hypnogram.edf'}:2)" in error
    assert edf.exists()


@pytest.mark.slow
def test_unknown_stage_name_is_refused(tmp_path):
    edf = write_sleep_edf_like(tmp_path / "sc")
    hypnogram = tmp_path / "scored.csv"
    hypnogram.write_text("W\nN1\nN5\n")
    error = run_failing(tmp_path, "--edf", edf, "--hypnogram", hypnogram)
    assert "unknown sleep stage 'N5'" in error and f"({hypnogram}:3)" in error


@pytest.mark.slow
def test_unreadable_edf_is_refused(tmp_path):
    write_sleep_edf_like(tmp_path / "sc")
    broken = tmp_path / "sc" / "SC4012E0-PSG.edf"
    broken.write_bytes(b"0       this is not an EDF header" * 3)
    (tmp_path / "sc" / "SC4012EC-Hypnogram.edf").write_bytes((tmp_path / "sc" / "SC4001EC-Hypnogram.edf").read_bytes())
    error = run_failing(tmp_path, "--edf", tmp_path / "sc")  # SC4001 is fine, SC4012 is not: neither is written
    assert "cannot read EDF" in error and f"({broken})" in error


@pytest.mark.slow
def test_recording_already_in_the_data_set_is_refused(tmp_path):
    write_sleep_edf_like(tmp_path / "sc", name="SC4001")
    out = tmp_path / "DATA"
    run_script("render_edf.py", "--edf", tmp_path / "sc", "--out", out, "--split", "train", "--quiet")
    before = folder_state(out)
    result = run_script("render_edf.py", "--edf", tmp_path / "sc", "--out", out, "--split", "test", "--quiet",
                        check=False)
    assert result.returncode == 2
    assert f"recording 'SC4001E0' is already in the data set ({out / psg_layout.TRAIN_CSV})" in result.stderr
    assert folder_state(out) == before


def test_failure_while_drawing_removes_every_image_of_the_run(tmp_path, monkeypatch):
    write_sleep_edf_like(tmp_path / "sc", name="SC4001")
    write_sleep_edf_like(tmp_path / "sc", name="SC4002")
    out = existing_data_root(tmp_path / "DATA")
    before = folder_state(out)
    drawn = []

    def render_then_fail(signals, fs=None):
        drawn.append(1)
        if len(drawn) == 30:  # the second recording, half-way
            raise InputError("disk trouble (test)")
        return np.zeros((psg_layout.IMAGE_HEIGHT, psg_layout.IMAGE_WIDTH, 3), np.uint8)

    monkeypatch.setattr(psg_layout, "render_epoch", render_then_fail)
    with pytest.raises(InputError, match="disk trouble"):
        render_edf.main(["--edf", str(tmp_path / "sc"), "--out", str(out), "--split", "train",
                         "--trim-wake", "none", "--workers", "1", "--quiet"])
    assert len(drawn) == 30
    assert folder_state(out) == before
    assert sorted(p.name for p in out.iterdir()) == ["OLD", psg_layout.TRAIN_CSV]


# --------------------------------------------------------------------------
# Unscored recordings and the timing sidecar
# --------------------------------------------------------------------------
LEVEL_MONTAGE = {"rows": {"C3-M2": {"channel": "EEG"}}}


def level(epoch_number: int) -> float:
    """The constant EEG value, uV, of epoch ``epoch_number`` in :func:`write_level_edf` (one level per epoch)."""
    return 4.0 * epoch_number - 40.0


def write_level_edf(path: Path, seconds: int, origin: float, start: datetime.datetime) -> Path:
    """One 100-Hz EEG channel that holds :func:`level` (n) during epoch n of the grid starting at ``origin`` s."""
    times = np.arange(seconds * 100) / 100
    values = level(np.floor((times - origin) / 30) + 1)
    edfio.Edf([edfio.EdfSignal(values, 100, label="EEG", physical_dimension="uV", physical_range=(-200, 200))],
              starttime=start.time(), recording=edfio.Recording(startdate=start.date()),
              data_record_duration=1).write(path)
    return path


def level_montage(folder: Path) -> Path:
    path = folder / "montage.json"
    path.write_text(json.dumps(LEVEL_MONTAGE))
    return path


def drawn_level_row(image_path: Path) -> int:
    signal = psg_layout.SIGNAL_BY_NAME["C3-M2"]
    return brightest_row(cv2.imread(str(image_path)), signal.top_270, signal.height_270)


@pytest.mark.slow
def test_unscored_recording_renders_every_whole_epoch_with_its_timing(tmp_path):
    start = datetime.datetime(2024, 3, 1, 23, 10, 5)
    write_level_edf(tmp_path / "NIGHT1.edf", 615, 0.0, start)  # 20 whole epochs and 15 s
    out = tmp_path / "DATA"
    result = run_script("render_edf.py", "--edf", tmp_path / "NIGHT1.edf", "--out", out, "--split", "test",
                        "--unscored", "--montage", level_montage(tmp_path), "--quiet")
    assert "20 images (0 labelled)" in result.stdout
    table = psg_layout.read_epoch_csv(out / psg_layout.TEST_CSV, with_labels=False)
    assert table.idnums == [f"NIGHT1_{n:04d}.png" for n in range(1, 21)]
    assert not (out / psg_layout.TEST_LABELS_CSV).exists() and not (out / psg_layout.TRAIN_CSV).exists()

    timing = epoch_timing.read_epoch_timing(out, "NIGHT1", range(1, 21))
    assert timing.start == start and timing.origin_seconds == 0 and timing.epoch_seconds == 30
    assert timing.epoch_numbers == tuple(range(1, 21))
    np.testing.assert_array_equal(timing.onsets([1, 2, 20]), [0.0, 30.0, 570.0])
    # each image shows its own epoch's level: epoch n is the recording's seconds (n-1)*30 .. n*30
    for n in (1, 7, 20):
        assert abs(drawn_level_row(out / "NIGHT1" / f"NIGHT1_{n:04d}.png") - expected_row("C3-M2", level(n))) <= 1


@pytest.mark.slow
def test_scorer_grid_that_starts_after_the_first_sample(tmp_path):
    start = datetime.datetime(2023, 12, 31, 23, 59, 40)
    edf = write_level_edf(tmp_path / "late.edf", 300, 10.0, start)
    stages = [("Sleep stage W", 10, 60), ("Sleep stage 2", 70, 120), ("Sleep stage R", 190, 60)]
    edfio.Edf([], annotations=[edfio.EdfAnnotation(o, d, t) for t, o, d in stages], starttime=start.time(),
              recording=edfio.Recording(startdate=start.date())).write(tmp_path / "late-hyp.edf")
    out = tmp_path / "DATA"
    run_script("render_edf.py", "--edf", edf, "--hypnogram", tmp_path / "late-hyp.edf", "--out", out,
               "--split", "test", "--trim-wake", "none", "--montage", level_montage(tmp_path), "--quiet")
    # epoch 1 starts 10 s into the recording; 9 whole epochs fit in the remaining 290 s, 8 of them scored
    answers = psg_layout.read_epoch_csv(out / psg_layout.TEST_LABELS_CSV, with_labels=True)
    assert [psg_layout.epoch_number_of(i) for i in answers.idnums] == list(range(1, 9))
    timing = epoch_timing.read_epoch_timing(out, "late", range(1, 9))
    assert timing.origin_seconds == 10.0 and timing.start == start and timing.epoch_numbers == tuple(range(1, 10))
    np.testing.assert_array_equal(timing.onsets([1, 2, 9]), [10.0, 40.0, 250.0])
    for n in (1, 5, 9):
        assert abs(drawn_level_row(out / "late" / f"late_{n:04d}.png") - expected_row("C3-M2", level(n))) <= 1


def test_timing_without_sidecar_and_broken_sidecars(tmp_path):
    timing = epoch_timing.read_epoch_timing(tmp_path, "SYN", [3, 4, 10])
    assert timing.start is None and timing.epoch_numbers == (3, 4, 10)
    np.testing.assert_array_equal(timing.onsets(timing.epoch_numbers), [60.0, 90.0, 270.0])
    written = epoch_timing.write_epoch_timing(tmp_path / "SYN", epoch_timing.EpochTiming(
        "SYN", datetime.datetime(2020, 1, 2, 3, 4, 5), 30.0, 12.5, (1, 2, 3)))
    assert epoch_timing.read_epoch_timing(tmp_path, "SYN", [2]).onsets([2]).tolist() == [42.5]
    with pytest.raises(InputError, match=r"lacks epoch\(s\) \[4\]"):
        epoch_timing.read_epoch_timing(tmp_path, "SYN", [3, 4])
    written.write_text('{"recording_id": "SYN", "start": "yesterday"}')
    with pytest.raises(InputError, match="not an epoch timing file"):
        epoch_timing.read_epoch_timing(tmp_path, "SYN", [1])
    with pytest.raises(InputError, match="is not <ID>_NNNN.png"):
        psg_layout.epoch_number_of("SYN_12.png")


def test_unscored_bad_recordings_end_with_one_line(tmp_path):
    montage = level_montage(tmp_path)
    write_level_edf(tmp_path / "short.edf", 20, 0.0, datetime.datetime(2024, 1, 1, 22, 0, 0))
    full = write_level_edf(tmp_path / "full.edf", 120, 0.0, datetime.datetime(2024, 1, 1, 22, 0, 0))
    (tmp_path / "cut.edf").write_bytes(full.read_bytes()[:full.stat().st_size - 1000])

    def render_error(edf):
        with pytest.raises(InputError) as error:
            render_edf.main(["--edf", str(edf), "--out", str(tmp_path / "DATA"), "--split", "test", "--unscored",
                             "--montage", str(montage), "--quiet"])
        return str(error.value)

    assert "20 s long, shorter than one 30-s epoch" in render_error(tmp_path / "short.edf")
    assert "EDF is truncated" in render_error(tmp_path / "cut.edf")
    assert not (tmp_path / "DATA").exists()
    result = run_script("render_edf.py", "--edf", full, "--out", tmp_path / "DATA", "--split", "train",
                        "--unscored", "--montage", montage, check=False)
    assert result.returncode == 2 and "use --split test" in result.stderr
