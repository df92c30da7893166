"""edf_signals.py: each EDF opened once per night, and what it reads from MNE's private fields.

The EDF files here are written with edfio (and one rearranged by hand), read
with MNE; MNE's own public reading of one channel is the oracle for the
samples.
"""
from __future__ import annotations

import datetime
import json
from pathlib import Path

import edfio
import mne
import numpy as np
import pytest

import render_edf
from sleepstaging.edf import edf_signals, render

START = datetime.datetime(2024, 5, 6, 22, 15, 0)
SECONDS = 20  # ten 2-s data records
# label, rate Hz, unit, physical range, digital range, value(t)
SIGNALS = [
    ("EEG", 64, "uV", (-250.0, 250.0), (-32768, 32767), lambda t: 100 * np.sin(2 * np.pi * 3 * t)),
    ("ECG", 5, "mV", (-2.0, 2.0), (-2048, 2047), lambda t: np.linspace(-0.5, 0.5, len(t))),
    ("SpO2", 0.5, "%", (0.0, 100.0), (0, 1000), lambda t: 90 + t / 4),
    ("EMG env", 5, "uV-mrs", (0.0, 100.0), (-32768, 32767), lambda t: 12 + np.cos(t)),
]


def write_edf(path: Path, annotations=((4.0, "Lights off"), (16.0, "Lights on"))) -> Path:
    """An EDF+ of :data:`SIGNALS` in 2-s data records, with ``annotations`` (onset s, text)."""
    signals = [edfio.EdfSignal(value(np.arange(int(SECONDS * rate)) / rate), rate, label=label,
                               physical_dimension=unit, physical_range=physical, digital_range=digital)
               for label, rate, unit, physical, digital, value in SIGNALS]
    edfio.Edf(signals, starttime=START.time(), recording=edfio.Recording(startdate=START.date()),
              data_record_duration=2, annotations=[edfio.EdfAnnotation(o, None, t) for o, t in annotations]).write(path)
    return path


def move_last_signal_first(source: Path, target: Path) -> None:
    """Rewrite an EDF with its last signal (edfio's annotation signal) first, header fields and data records alike.

    An EDF header holds, after 256 fixed bytes, one block per field with
    that field for every signal; a data record holds every signal's
    samples in header order (2 bytes each).
    """
    content = source.read_bytes()
    signals, header_bytes = int(content[252:256]), int(content[184:192])
    order = [signals - 1, *range(signals - 1)]
    fields, position = [], 256
    for width in (16, 80, 8, 8, 8, 8, 8, 80, 8, 32):
        block = content[position:position + width * signals]
        fields.append(b"".join(block[i * width:(i + 1) * width] for i in order))
        position += width * signals
    samples = [int(content[position - 40 * signals + 8 * i:position - 40 * signals + 8 * (i + 1)])
               for i in range(signals)]
    starts = np.concatenate([[0], np.cumsum(samples)]) * 2
    data = content[header_bytes:]
    record_bytes = int(starts[-1])
    records = [data[r:r + record_bytes] for r in range(0, len(data), record_bytes)]
    target.write_bytes(content[:256] + b"".join(fields) + b"".join(
        b"".join(record[starts[i]:starts[i + 1]] for i in order) for record in records))


# --------------------------------------------------------------------------
# MNE's private fields: one place, and what each one means
# --------------------------------------------------------------------------
def test_mne_private_fields_mean_what_the_header_says(tmp_path):
    edf = tmp_path / "moved.edf"
    move_last_signal_first(write_edf(tmp_path / "plain.edf"), edf)
    raw = mne.io.read_raw_edf(edf, preload=False, stim_channel=None, verbose="error")
    assert raw.ch_names == [label for label, *_ in SIGNALS]  # the rearranged file still reads as written
    fields = edf_signals.mne_header_fields(raw)

    assert fields["file_units"] == {"EEG": "µV", "ECG": "mV", "SpO2": "n/a", "EMG env": "n/a"}
    np.testing.assert_array_equal(fields["mne_gains"], [1e-6, 1e-3, 1.0, 1.0])
    np.testing.assert_array_equal(fields["physical_min"], [s[3][0] for s in SIGNALS])
    np.testing.assert_array_equal(fields["physical_max"], [s[3][1] for s in SIGNALS])
    np.testing.assert_array_equal(fields["digital_min"], [s[4][0] for s in SIGNALS])
    np.testing.assert_array_equal(fields["digital_max"], [s[4][1] for s in SIGNALS])
    # the annotation signal is now the file's first: each channel sits one place further on
    np.testing.assert_array_equal(fields["signal_index"], [1, 2, 3, 4])
    assert fields["samples_per_record"][1:].tolist() == [128, 10, 1, 10]  # 2-s records at 64, 5, 0.5, 5 Hz
    assert fields["record_seconds"] == 2.0 and fields["records"] == SECONDS // 2
    assert fields["data_offset"] == 256 * (1 + len(SIGNALS) + 1)  # fixed part + one 256-byte part per signal
    # a stored code maps to the physical value linearly: the digital range's ends to the physical range's ends
    for i, (_, _, _, (low, high), (code_low, code_high), _) in enumerate(SIGNALS):
        ends = np.array([code_low, code_high]) * fields["calibration"][i] + fields["offset"][i]
        np.testing.assert_allclose(ends, [low, high], rtol=0, atol=1e-9 * (high - low))


def test_samples_are_mnes_to_the_bit_at_each_channels_own_rate(tmp_path):
    edf = tmp_path / "moved.edf"
    move_last_signal_first(write_edf(tmp_path / "plain.edf"), edf)
    recording = edf_signals.open_edf(edf)
    samples = recording.read_channels(recording.labels)
    for label, rate, unit, physical, digital, value in SIGNALS:
        alone = mne.io.read_raw_edf(edf, include=[label], preload=True, stim_channel=None, verbose="error")
        assert recording.channels[label].fs == alone.info["sfreq"] == rate
        assert samples[label].dtype == np.float64
        np.testing.assert_array_equal(samples[label], alone.get_data()[0])  # bit-equal, no resampling
        # and, in the file's unit, what was written, within one resolution step
        step = (physical[1] - physical[0]) / (digital[1] - digital[0])
        written = value(np.arange(int(SECONDS * rate)) / rate)
        np.testing.assert_allclose(samples[label] / recording.channels[label].mne_gain, written, rtol=0, atol=step)


def test_the_recording_carries_start_length_and_annotations(tmp_path):
    recording = edf_signals.open_edf(write_edf(tmp_path / "n.edf", [(16.0, "Lights on"), (4.0, "Lights off")]))
    assert recording.start == START and recording.duration == SECONDS
    assert recording.annotations == ((4.0, "Lights off"), (16.0, "Lights on"))  # in time order
    assert recording.labels == [label for label, *_ in SIGNALS]
    assert recording.channels["SpO2"].file_unit == "n/a" and recording.channels["ECG"].mne_gain == 1e-3


def test_a_renamed_private_field_fails_loudly(tmp_path, monkeypatch):
    raw = mne.io.read_raw_edf(write_edf(tmp_path / "n.edf"), preload=False, stim_channel=None, verbose="error")
    extras = dict(raw._raw_extras[0])
    extras["samples_per_record"] = extras.pop("n_samps")  # as if an MNE upgrade renamed it
    monkeypatch.setattr(raw, "_raw_extras", [extras])
    with pytest.raises(RuntimeError, match=r"MNE .* changed its EDF reader's private fields \(KeyError: 'n_samps'\)"):
        edf_signals.mne_header_fields(raw)


# --------------------------------------------------------------------------
# One open per night
# --------------------------------------------------------------------------
def sleep_edf_like(path: Path, epochs: int = 3, annotations=((30.0, "Lights off"), (75.0, "Lights on"))) -> Path:
    """A small EDF+ the ``sleep-edf`` montage fits: EEG and EOG at 100 Hz, the EMG envelope and airflow at 1 Hz."""
    seconds = epochs * 30

    def signal(label, rate, unit, physical_range):
        times = np.arange(seconds * rate) / rate
        return edfio.EdfSignal(20 * np.sin(2 * np.pi * times / 7), rate, label=label, physical_dimension=unit,
                               physical_range=physical_range)

    signals = [signal("EEG Fpz-Cz", 100, "uV", (-200, 200)), signal("EEG Pz-Oz", 100, "uV", (-200, 200)),
               signal("EOG horizontal", 100, "uV", (-500, 500)), signal("Resp oro-nasal", 1, "", (-50, 50)),
               signal("EMG submental", 1, "uV-mrs", (-50, 50))]
    marks = [edfio.EdfAnnotation(onset, None, text) for onset, text in annotations]
    edfio.Edf(signals, starttime=START.time(), recording=edfio.Recording(startdate=START.date()),
              data_record_duration=30, annotations=marks).write(path)
    return path


@pytest.fixture
def mne_opens(monkeypatch) -> list:
    """Every EDF MNE opens from here on (``read_raw_edf`` and ``read_annotations``), as (function, file name)."""
    opened = []
    for module, name in ((mne.io, "read_raw_edf"), (mne, "read_annotations")):
        def counted(path, *args, _real=getattr(module, name), _name=name, **kwargs):
            opened.append((_name, Path(path).name))
            return _real(path, *args, **kwargs)
        monkeypatch.setattr(module, name, counted)
    return opened


def test_an_unscored_night_opens_its_edf_once(tmp_path, mne_opens):
    edf = sleep_edf_like(tmp_path / "NIGHT.edf")
    source = render.find_recordings(edf, None, unscored=True)[0]
    record = render.render_unscored_night(source, "auto", tmp_path / "DATA", {})
    assert mne_opens == [("read_raw_edf", "NIGHT.edf")]
    # and every step got what it needed from that one open: the montage, rates, start, lights, the samples
    assert record["montage"] == "sleep-edf" and record["epochs_rendered"] == 3
    assert record["rows"]["C3-M2"]["fs_hz"] == 100.0 and record["rows"]["Chin EMG"]["fs_hz"] == 1.0
    assert (record["lights_off_s"], record["lights_on_s"]) == (30.0, 75.0)
    timing = json.loads((tmp_path / "DATA" / "NIGHT" / "NIGHT.timing.json").read_text())
    assert timing["start"] == START.isoformat()
    assert sorted(p.name for p in (tmp_path / "DATA" / "NIGHT").glob("*.png")) == [
        f"NIGHT_{n:04d}.png" for n in (1, 2, 3)]


def test_render_edf_opens_each_recording_once(tmp_path, mne_opens):
    (tmp_path / "edf").mkdir()
    for name in ("A", "B"):
        sleep_edf_like(tmp_path / "edf" / f"{name}.edf")
        (tmp_path / "edf" / f"{name}.hypnogram.csv").write_text("W\nN1\nN2\n")
    render_edf.main(["--edf", str(tmp_path / "edf"), "--out", str(tmp_path / "DATA"), "--split", "train",
                     "--trim-wake", "none", "--workers", "1", "--quiet"])
    assert sorted(mne_opens) == [("read_raw_edf", "A.edf"), ("read_raw_edf", "B.edf")]
    assert len(list((tmp_path / "DATA").glob("*/*.png"))) == 6
