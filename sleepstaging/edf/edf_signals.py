"""Opening EDF files: the header, its channels in the image rows' units, the start time.

:func:`read_edf_header` opens a file's header with MNE (one-line errors);
:func:`check_edf_complete` refuses a file shorter than its header says;
:func:`recording_start` is the start date and clock time of the header;
:func:`detect_montage` picks the built-in montage (``montages``) whose
channels a file has; :func:`resolve_channels` finds each montage row's
channel with its native rate, the gain to the row's physical unit and its
quality limits (:class:`RowChannel`); :func:`load_channels` reads their
samples.
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from sleepstaging.data import psg_layout
from sleepstaging.edf import signal_quality
from sleepstaging.edf.montages import BUILTIN_MONTAGES, VOLTS_PER_UNIT, Montage, RowSource
from sleepstaging.script_io import InputError, first_line, where


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


def read_edf_header(path: Path, include=None):
    """The EDF file opened with MNE, samples not loaded (``mne.io.Raw``); ``include``: only those channels.

    Raises
    ------
    InputError
        A file MNE cannot read, with the first line of its reason.
    """
    import mne

    try:
        return mne.io.read_raw_edf(path, include=include, preload=False, stim_channel=None, verbose="error")
    except Exception as err:  # MNE raises many kinds on a malformed file
        raise InputError(f"cannot read EDF: {type(err).__name__}: {first_line(err)} {where(path)}") from None


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


def recording_start(edf: Path) -> datetime.datetime | None:
    """Start date and clock time of a recording as its EDF header states them (no time zone), or None."""
    start = read_edf_header(edf).info["meas_date"]
    return None if start is None else start.replace(tzinfo=None)


# --------------------------------------------------------------------------
# A montage on one file: the built-in one that fits, each row's channel, rate, gain, limits
# --------------------------------------------------------------------------
def detect_montage(edf: Path) -> Montage:
    """The first built-in montage (sleep-edf, shhs, synthetic) whose required channels the EDF has.

    Raises
    ------
    InputError
        An unreadable EDF, or one no built-in montage fits (its labels listed).
    """
    labels = set(read_edf_header(edf).ch_names)
    for montage in BUILTIN_MONTAGES.values():
        if all(source.optional or any(c in labels for c in source.channels) for source in montage.rows.values()):
            return montage
    raise InputError(f"no built-in montage ({', '.join(BUILTIN_MONTAGES)}) fits the channels "
                     f"{', '.join(map(repr, sorted(labels)))}: name the rows' channels in a JSON montage file "
                     f"(--montage FILE) {where(edf)}")


def _row_gain(row: str, source: RowSource, channel: str, mne_gain: float, file_unit: str, edf: Path) -> float:
    """Factor from MNE's values of ``channel`` to the row's physical unit (with scale and inversion)."""
    row_unit = psg_layout.SIGNAL_BY_NAME[row].unit
    # MNE multiplies the file's physical values by mne_gain (1e-6 for uV,
    # 1e-3 for mV, else 1), so dividing by it gives the file's own values.
    unit = file_unit if file_unit in VOLTS_PER_UNIT else source.unit
    if row_unit in VOLTS_PER_UNIT:
        if unit is None:
            raise InputError(
                f"channel {channel!r} for row {row!r} has unit {file_unit!r}, not a voltage; "
                f"give its unit in a JSON montage (\"unit\": \"uV\") {where(edf)}"
            )
        conversion = VOLTS_PER_UNIT[unit] / VOLTS_PER_UNIT[row_unit]
    elif unit is not None and row_unit != "a.u.":
        raise InputError(f"channel {channel!r} is a voltage ({unit}), row {row!r} needs {row_unit} {where(edf)}")
    else:
        conversion = 1.0
    return (-1.0 if source.invert else 1.0) * source.scale * conversion / mne_gain


def _row_limits(row: str, source: RowSource, extras: dict, index: int, to_row: float) -> signal_quality.RowLimits:
    """A row's quality limits from its channel's header fields (MNE keeps them per channel on the reader)."""
    row_unit = psg_layout.SIGNAL_BY_NAME[row].unit
    volts = VOLTS_PER_UNIT[row_unit] / source.scale if row_unit in VOLTS_PER_UNIT else None
    return signal_quality.row_limits((extras["physical_min"][index], extras["physical_max"][index]),
                                     (extras["digital_min"][index], extras["digital_max"][index]), to_row, volts)


def resolve_channels(edf: Path, montage: Montage) -> tuple[dict, float]:
    """Find each montage row's channel in an EDF header, with its rate and gain.

    Returns
    -------
    rows : dict
        Row name -> :class:`RowChannel`; optional rows whose channels are
        absent are left out (drawn empty; the montage's other rows are the
        recording's missing rows).
    duration : float
        Length of the recording, s.

    Raises
    ------
    InputError
        Unreadable EDF; channels of required rows missing (all listed, with
        the labels the file has); units that do not fit the row.
    """
    header = read_edf_header(edf)
    check_edf_complete(edf)
    labels = header.ch_names
    duration = header.n_times / header.info["sfreq"]
    chosen, missing = {}, []
    for row, source in montage.rows.items():
        found = next((c for c in source.channels if c in labels), None)
        if found is not None:
            chosen[row] = (source, found)
        elif not source.optional:
            missing.append(" or ".join(map(repr, source.channels)))
    if missing:
        raise InputError(
            f"montage {montage.name} needs channels the EDF does not have: {', '.join(sorted(set(missing)))} "
            f"(it has {', '.join(map(repr, labels))}) {where(edf)}"
        )
    # MNE keeps the file's unit and the factor it applied only on the reader
    # object; they are the one record of what the header said.
    mne_gains = dict(zip(labels, header._raw_extras[0]["units"]))
    file_units = header._orig_units
    rates = {}
    for channel in sorted({c for _, c in chosen.values()}):
        # Read on its own, a channel comes at its native rate (read together,
        # MNE would resample all channels to the fastest one).
        rates[channel] = float(read_edf_header(edf, include=[channel]).info["sfreq"])
    rows = {}
    for row, (source, channel) in chosen.items():
        mne_gain = float(mne_gains[channel])
        gain = _row_gain(row, source, channel, mne_gain, file_units[channel], edf)
        # MNE's values are the file's physical values times its gain: the header's range times both is the row's.
        limits = _row_limits(row, source, header._raw_extras[0], labels.index(channel), mne_gain * gain)
        rows[row] = RowChannel(channel, rates[channel], gain, file_units[channel], limits)
    return rows, duration


def load_channels(edf: Path, rows: dict) -> dict:
    """The channels the rows use, at their native rates: label -> samples as MNE returns them.

    Channels of equal rate are read together; MNE would resample a mixed set
    to its fastest rate.
    """
    import mne

    by_rate = {}
    for row_channel in rows.values():
        by_rate.setdefault(row_channel.fs, set()).add(row_channel.channel)
    channels = {}
    for labels in by_rate.values():
        try:
            raw = mne.io.read_raw_edf(edf, include=sorted(labels), preload=True, stim_channel=None, verbose="error")
        except Exception as err:  # MNE raises many kinds on a malformed file
            raise InputError(f"cannot read EDF data: {type(err).__name__}: {first_line(err)} {where(edf)}") from None
        channels.update(zip(raw.ch_names, raw.get_data()))
    return channels
