"""Opening EDF files: one :class:`EdfRecording` per night carries the header to every step that reads it.

:func:`open_edf` opens a file once (MNE parses the header and the EDF+
annotations; one-line errors) and refuses one shorter than its header says
(:func:`check_edf_complete`). The :class:`EdfRecording` it returns holds
the channel labels, each channel's header fields (:class:`EdfChannel`),
the start date and clock time, the length and the annotations, and reads
channels' samples at their native rates (:meth:`EdfRecording.read_channels`).
What MNE keeps only on private attributes is read in one place,
:func:`mne_header_fields`. :func:`detect_montage` picks the built-in
montage (``montages``) whose channels a recording has;
:func:`resolve_channels` finds each montage row's channel with its native
rate, the gain to the row's physical unit and its quality limits
(:class:`RowChannel`).
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sleepstaging.data import psg_layout
from sleepstaging.edf import signal_quality
from sleepstaging.edf.montages import BUILTIN_MONTAGES, VOLTS_PER_UNIT, Montage, RowSource
from sleepstaging.script_io import InputError, first_line, where

EDF_SAMPLE_DTYPE = "<i2"  # an EDF data record stores every sample as a little-endian 16-bit integer


@dataclass(frozen=True)
class RowChannel:
    """The resolved source of one row in one EDF file.

    Attributes
    ----------
    channel : str
        EDF channel label.
    fs : float
        The channel's native sampling rate, Hz (handed to the renderer, so
        nothing is resampled).
    gain : float
        Multiplies the values MNE returns to give the row's physical unit
        (unit conversion, montage scale and inversion together).
    file_unit : str
        The channel's unit as MNE reports it (``n/a`` when unrecognised).
    limits : signal_quality.RowLimits
        The channel's header range and resolution in the row's values, for
        the per-epoch quality checks.
    """

    channel: str
    fs: float
    gain: float
    file_unit: str
    limits: signal_quality.RowLimits


# --------------------------------------------------------------------------
# One EDF file, opened once: its header, annotations and samples
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class EdfChannel:
    """One data signal of an EDF header, as MNE reads it.

    Attributes
    ----------
    label : str
        The channel's label (made unique by MNE where the header repeats one).
    fs : float
        Native sampling rate, Hz: samples per data record over the record's length.
    file_unit : str
        The header's unit as MNE reports it (``n/a`` when unrecognised).
    mne_gain : float
        Factor MNE multiplies the physical values by (1e-6 for uV, 1e-3 for
        mV, else 1): MNE's values are volts for voltage channels.
    physical_range, digital_range : (float, float)
        The header's physical minimum and maximum (file unit) and digital
        minimum and maximum (integer codes).
    calibration, offset : float
        MNE's conversion of a stored code to the physical value,
        ``code * calibration + offset`` (file unit).
    record_start, samples_per_record : int
        Where the channel's samples sit in each data record, samples from
        the record's start, and how many there are.
    """

    label: str
    fs: float
    file_unit: str
    mne_gain: float
    physical_range: tuple
    digital_range: tuple
    calibration: float
    offset: float
    record_start: int
    samples_per_record: int


@dataclass(frozen=True)
class EdfRecording:
    """One EDF file, opened once (:func:`open_edf`): everything the night's steps read from it.

    Holds no open file or MNE object, so it travels to the rendering
    workers as it is.

    Attributes
    ----------
    path : Path
    channels : dict of str to EdfChannel
        Label -> channel, in the header's order (EDF+ annotation signals left out).
    start : datetime.datetime or None
        Start date and clock time as the header states them (no time zone).
    duration : float
        Length of the recording, s (MNE's sample count over its rate).
    annotations : tuple of (float, str)
        The EDF+ annotations inside the recording (MNE drops the others),
        in time order: onset s from the start, text.
    data_offset : int
        Bytes before the first data record (the header's size).
    record_samples : int
        Samples in one data record, all signals together (annotation signals included).
    records : int
        Data records MNE reads (from the file's size where the header's count is -1 or wrong).
    """

    path: Path
    channels: dict
    start: datetime.datetime | None
    duration: float
    annotations: tuple
    data_offset: int
    record_samples: int
    records: int

    @property
    def labels(self) -> list[str]:
        """The channel labels, in the header's order."""
        return list(self.channels)

    def read_channels(self, labels) -> dict:
        """Samples of the named channels at their native rates, as MNE returns them (volts for voltages).

        Each channel is read from its slots in the data records and converted
        as MNE converts it (``code * calibration + offset``, times the MNE
        gain, in that order, so the values are MNE's to the bit). MNE itself
        would resample a set of channels of mixed rates to the fastest one.

        Returns
        -------
        dict of str to np.ndarray of float64, shape (records * samples_per_record,)

        Raises
        ------
        InputError
            The data records cannot be read.
        """
        try:
            records = np.memmap(self.path, dtype=EDF_SAMPLE_DTYPE, mode="r", offset=self.data_offset,
                                shape=(self.records, self.record_samples))
        except (OSError, ValueError) as err:
            raise InputError(f"cannot read EDF data: {type(err).__name__}: {first_line(err)} "
                             f"{where(self.path)}") from None
        samples = {}
        for label in labels:
            channel = self.channels[label]
            stop = channel.record_start + channel.samples_per_record
            values = records[:, channel.record_start:stop].astype(np.float64).ravel()
            values *= channel.calibration
            values += channel.offset
            values *= channel.mne_gain
            samples[label] = values
        del records  # closes the mapping
        return samples


def mne_header_fields(raw) -> dict:
    """What MNE's EDF reader keeps only on private attributes: the one place this project reads them.

    Parameters
    ----------
    raw : mne.io.Raw
        An EDF opened with ``mne.io.read_raw_edf`` (all channels, ``stim_channel=None``).

    Returns
    -------
    dict
        ``file_units`` (label -> unit text), per channel in ``raw.ch_names``
        order (arrays of shape (channels,)): ``mne_gains``, ``physical_min``,
        ``physical_max``, ``digital_min``, ``digital_max``, ``calibration``,
        ``offset`` (physical = code * calibration + offset) and
        ``signal_index`` (the channel's position among the file's signals);
        per signal of the file (annotation signals included):
        ``samples_per_record``; and ``record_seconds`` (a data record's
        length, s), ``records`` (data records MNE reads), ``data_offset``
        (bytes before the first record).

    Raises
    ------
    RuntimeError
        This MNE no longer has one of them (an upgrade renamed it): the
        reading here must follow it.
    """
    try:
        extras = raw._raw_extras[0]
        return {
            "file_units": dict(raw._orig_units),
            "mne_gains": np.asarray(extras["units"], dtype=np.float64),
            **{key: np.asarray(extras[key], dtype=np.float64)
               for key in ("physical_min", "physical_max", "digital_min", "digital_max")},
            "calibration": np.asarray(extras["cal"], dtype=np.float64),
            "offset": np.asarray(extras["offsets"], dtype=np.float64),
            "signal_index": np.asarray(extras["sel"], dtype=np.int64),
            "samples_per_record": np.asarray(extras["n_samps"], dtype=np.int64),
            "record_seconds": float(extras["record_length"][0]),
            "records": int(extras["n_records"]),
            "data_offset": int(extras["data_offset"]),
        }
    except (AttributeError, KeyError, IndexError, TypeError) as err:
        import mne

        raise RuntimeError(f"MNE {mne.__version__} changed its EDF reader's private fields "
                           f"({type(err).__name__}: {err}); update edf_signals.mne_header_fields") from None


def open_edf(path: Path) -> EdfRecording:
    """Open one EDF file: its header and annotations through MNE (once), checked complete.

    Raises
    ------
    InputError
        A file MNE cannot read (the first line of its reason); a file
        shorter than its header says (:func:`check_edf_complete`).
    """
    import mne

    try:
        raw = mne.io.read_raw_edf(path, preload=False, stim_channel=None, verbose="error")
    except Exception as err:  # MNE raises many kinds on a malformed file
        raise InputError(f"cannot read EDF: {type(err).__name__}: {first_line(err)} {where(path)}") from None
    check_edf_complete(path)
    fields = mne_header_fields(raw)
    record_starts = np.concatenate([[0], np.cumsum(fields["samples_per_record"])])
    channels = {}
    for i, label in enumerate(raw.ch_names):
        signal = int(fields["signal_index"][i])
        samples_per_record = int(fields["samples_per_record"][signal])
        channels[label] = EdfChannel(
            label, samples_per_record / fields["record_seconds"], fields["file_units"][label],
            float(fields["mne_gains"][i]),
            (float(fields["physical_min"][i]), float(fields["physical_max"][i])),
            (float(fields["digital_min"][i]), float(fields["digital_max"][i])),
            float(fields["calibration"][i]), float(fields["offset"][i]), int(record_starts[signal]), samples_per_record)
    start = raw.info["meas_date"]
    annotations = tuple((float(onset), str(text)) for onset, text in
                        sorted(zip(raw.annotations.onset, raw.annotations.description)))
    return EdfRecording(Path(path), channels, None if start is None else start.replace(tzinfo=None),
                        raw.n_times / raw.info["sfreq"], annotations, fields["data_offset"],
                        int(record_starts[-1]), fields["records"])


def check_edf_complete(path: Path) -> None:
    """Refuse an EDF file shorter than its header says (a copy cut off, an interrupted download).

    MNE reads such a file without complaint and returns the records that
    are there, so the recording would look merely shorter. The fixed EDF
    header gives the header size (bytes 184-192), the record count (236-244,
    -1 while recording), the signal count (252-256) and, per signal, the
    samples per record (2 bytes each).

    Raises
    ------
    InputError
        A header that cannot be parsed, or a file shorter than header plus
        records.
    """
    try:
        with open(path, "rb") as handle:
            fixed = handle.read(256)
            header_bytes, records, signals = int(fixed[184:192]), int(fixed[236:244]), int(fixed[252:256])
            handle.seek(256 + signals * 216)
            samples = [int(handle.read(8)) for _ in range(signals)]
    except ValueError:
        raise InputError(f"cannot read EDF: the header's sizes are not numbers {where(path)}") from None
    if records < 0:
        return
    expected = header_bytes + records * 2 * sum(samples)
    actual = path.stat().st_size
    if actual < expected:
        raise InputError(f"EDF is truncated: its header announces {records} data records ({expected} bytes), "
                         f"the file has {actual} bytes {where(path)}")


# --------------------------------------------------------------------------
# A montage on one file: the built-in one that fits, each row's channel, rate, gain, limits
# --------------------------------------------------------------------------
def detect_montage(recording: EdfRecording) -> Montage:
    """The first built-in montage (sleep-edf, shhs, synthetic) whose required channels the recording has.

    Raises
    ------
    InputError
        No built-in montage fits (the recording's labels listed).
    """
    labels = set(recording.labels)
    for montage in BUILTIN_MONTAGES.values():
        if all(source.optional or any(c in labels for c in source.channels) for source in montage.rows.values()):
            return montage
    raise InputError(f"no built-in montage ({', '.join(BUILTIN_MONTAGES)}) fits the channels "
                     f"{', '.join(map(repr, sorted(labels)))}: name the rows' channels in a JSON montage file "
                     f"(--montage FILE) {where(recording.path)}")


def _row_gain(row: str, source: RowSource, channel: EdfChannel, edf: Path) -> float:
    """Factor from MNE's values of ``channel`` to the row's physical unit (with scale and inversion)."""
    row_unit = psg_layout.SIGNAL_BY_NAME[row].unit
    # MNE multiplies the file's physical values by its gain (1e-6 for uV,
    # 1e-3 for mV, else 1), so dividing by it gives the file's own values.
    unit = channel.file_unit if channel.file_unit in VOLTS_PER_UNIT else source.unit
    if row_unit in VOLTS_PER_UNIT:
        if unit is None:
            raise InputError(
                f"channel {channel.label!r} for row {row!r} has unit {channel.file_unit!r}, not a voltage; "
                f"give its unit in a JSON montage (\"unit\": \"uV\") {where(edf)}"
            )
        conversion = VOLTS_PER_UNIT[unit] / VOLTS_PER_UNIT[row_unit]
    elif unit is not None and row_unit != "a.u.":
        raise InputError(f"channel {channel.label!r} is a voltage ({unit}), row {row!r} needs {row_unit} {where(edf)}")
    else:
        conversion = 1.0
    return (-1.0 if source.invert else 1.0) * source.scale * conversion / channel.mne_gain


def _row_limits(row: str, source: RowSource, channel: EdfChannel, to_row: float) -> signal_quality.RowLimits:
    """A row's quality limits from its channel's header ranges; ``to_row``: file's physical values -> row values."""
    row_unit = psg_layout.SIGNAL_BY_NAME[row].unit
    volts = VOLTS_PER_UNIT[row_unit] / source.scale if row_unit in VOLTS_PER_UNIT else None
    return signal_quality.row_limits(channel.physical_range, channel.digital_range, to_row, volts)


def resolve_channels(recording: EdfRecording, montage: Montage) -> dict:
    """Find each montage row's channel in a recording, with its rate, gain and quality limits.

    Returns
    -------
    dict
        Row name -> :class:`RowChannel`; optional rows whose channels are
        absent are left out (drawn empty; the montage's other rows are the
        recording's missing rows).

    Raises
    ------
    InputError
        Channels of required rows missing (all listed, with the labels the
        recording has); units that do not fit the row.
    """
    chosen, missing = {}, []
    for row, source in montage.rows.items():
        found = next((c for c in source.channels if c in recording.channels), None)
        if found is not None:
            chosen[row] = (source, recording.channels[found])
        elif not source.optional:
            missing.append(" or ".join(map(repr, source.channels)))
    if missing:
        raise InputError(
            f"montage {montage.name} needs channels the EDF does not have: {', '.join(sorted(set(missing)))} "
            f"(it has {', '.join(map(repr, recording.labels))}) {where(recording.path)}"
        )
    rows = {}
    for row, (source, channel) in chosen.items():
        gain = _row_gain(row, source, channel, recording.path)
        # MNE's values are the file's physical values times its gain: the header's range times both is the row's.
        limits = _row_limits(row, source, channel, channel.mne_gain * gain)
        rows[row] = RowChannel(channel.label, channel.fs, gain, channel.file_unit, limits)
    return rows
