"""Signal quality per epoch: flat, clipped and missing rows of a rendered EDF recording.

A disconnected electrode draws a flat line, a saturated amplifier a clipped
one, a channel the recording lacks nothing at all, and the networks still
return a stage for the epoch. ``render_edf.py`` checks every rendered epoch
of the rows below against the channel's EDF header and saves what it found
beside the images, in ``<root>/<ID>/<ID>.quality.json`` (see
:func:`write_quality`); the per-recording outputs carry it into the
hypnogram table and the sleep statistics.

Checks, per epoch and row (all thresholds are the constants below):

* flat: the epoch's standard deviation is below ``FLAT_RESOLUTION_STEPS``
  digital resolution steps of the channel (physical range / digital range,
  from the EDF header), or, for voltage rows, below ``FLAT_FLOOR_VOLTS``;
* clipped: at least ``CLIPPED_SHARE`` of the epoch's samples lie within
  ``CLIP_MARGIN_STEPS`` resolution steps of the channel's physical minimum
  or maximum;
* missing: a row the montage names whose channel the EDF lacks (an optional
  montage row); it is missing in every epoch.

An epoch is "flagged" when a key row (:data:`KEY_ROWS`) is flat, clipped or
missing in it. A recording gets warnings for key rows that are missing, or
flat or clipped in more than ``MOST_EPOCHS_SHARE`` of its epochs.

NumPy and the standard library only.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sleepstaging.data import psg_layout
from sleepstaging import script_io
from sleepstaging.script_io import InputError, where

# --------------------------------------------------------------------------
# Thresholds
# --------------------------------------------------------------------------
# Flat, unit-free: a channel stuck on one digital code has a standard deviation
# of 0; one toggling between two neighbouring codes (quantisation of an
# amplifier's offset) at most half a step. Two steps leave room for a trace
# that wanders over a few codes only, and stay far below real signals: the
# coarsest common EDF channels (SHHS's 8-bit EEG, about 1 uV per step) show
# several uV of standard deviation in any 30 s of sleep.
FLAT_RESOLUTION_STEPS = 2.0  # resolution steps (dimensionless)
# Flat, for voltage rows, whatever the resolution: a file with a fine step
# (16 bits over +-200 uV: 0.006 uV) records an open input's residual
# electronic noise as many steps. Amplifier input noise over the rows'
# bandwidths is about 0.3-1 uV rms, so a voltage channel quieter than this
# is not connected to a body. Rows in arbitrary units (flow, effort) have
# no absolute floor: their scale is the file's own.
FLAT_FLOOR_VOLTS = 0.1e-6  # V (0.1 uV), before the montage's scale
# Clipped: a value beyond the range is stored as the range's end code, and
# rounding puts it within half a step of the physical limit; one step also
# takes in the code next to it.
CLIP_MARGIN_STEPS = 1.0  # resolution steps (dimensionless)
# Clipped: a trace that merely reaches its range's limit at a peak (a large
# K-complex or eye movement) spends a few samples there; a saturated
# amplifier holds the rail for long stretches. 5 % is 1.5 s of a 30-s epoch.
CLIPPED_SHARE = 0.05  # fraction of the epoch's samples, flagged at or above
# Warnings: a key row flat or clipped in more than half of the night's
# epochs makes the recording's hypnogram rest on the other signals.
MOST_EPOCHS_SHARE = 0.5  # fraction of the rendered epochs, warned above
THRESHOLDS = {  # as saved in each sidecar
    "flat_resolution_steps": FLAT_RESOLUTION_STEPS,
    "flat_floor_volts": FLAT_FLOOR_VOLTS,
    "clip_margin_steps": CLIP_MARGIN_STEPS,
    "clipped_share": CLIPPED_SHARE,
    "most_epochs_share": MOST_EPOCHS_SHARE,
}

# --------------------------------------------------------------------------
# Which rows
# --------------------------------------------------------------------------
_EEG_GROUP = psg_layout.SIGNAL_BY_NAME["C3-M2"].group
_EOG_GROUP = psg_layout.SIGNAL_BY_NAME["E1-M2"].group
# What AASM staging rests on: EEG, EOG and chin EMG. A problem with one of
# them flags the epoch and, over most of the night, warns.
KEY_ROWS = tuple(s.name for s in psg_layout.SIGNALS if s.group in (_EEG_GROUP, _EOG_GROUP)) + ("Chin EMG",)
# Rows that are never flat for 30 s in a living subject (electrical activity
# with noise, or breathing). Not checked: the accelerometer axes (constant
# while the body lies still), SpO2 (steady at one value for minutes, and
# often at 100 %, the top of its range, so neither flat nor clipped is a
# fault), audio volume and snore (silent through quiet sleep).
CHECKED_ROWS = tuple(name for name in psg_layout.SIGNAL_NAMES if name in KEY_ROWS or name in (
    "ECG", "Flow", "Thermistor", "Thorax", "Abdomen", "Left Leg EMG", "Right Leg EMG"))

QUALITY_SUFFIX = ".quality.json"  # <root>/<ID>/<ID>.quality.json, beside the timing sidecar
OK, FLAGGED = "ok", "flagged"


@dataclass(frozen=True)
class RowLimits:
    """What one row's samples are checked against, in the row's values (as the renderer draws them).

    Attributes
    ----------
    low, high : float
        The channel's physical minimum and maximum from the EDF header,
        in row values (``low <= high`` also for an inverted row).
    step : float
        One digital resolution step, in row values (positive).
    flat_below : float
        An epoch whose standard deviation is below this is flat, row values.
    """

    low: float
    high: float
    step: float
    flat_below: float


def row_limits(physical_range: tuple[float, float], digital_range: tuple[float, float], to_row: float,
               volts_per_row_value: float | None) -> RowLimits:
    """A row's limits from its channel's EDF header.

    Parameters
    ----------
    physical_range : (float, float)
        Physical minimum and maximum of the channel, in the file's unit.
    digital_range : (float, float)
        Digital minimum and maximum of the channel (integer codes).
    to_row : float
        Factor from the file's physical values to the row's values (unit
        conversion, montage scale and inversion; negative when inverted).
    volts_per_row_value : float or None
        Volts at the electrode per unit of row value (the row's unit in V
        divided by the montage's scale); None for rows not in volts, which
        get no absolute floor.

    Returns
    -------
    RowLimits
    """
    physical_min, physical_max = (float(v) for v in physical_range)
    digital_min, digital_max = (float(v) for v in digital_range)
    step = abs((physical_max - physical_min) / (digital_max - digital_min) * to_row)
    low, high = sorted((physical_min * to_row, physical_max * to_row))
    floor = 0.0 if volts_per_row_value is None else FLAT_FLOOR_VOLTS / abs(volts_per_row_value)
    return RowLimits(low, high, step, max(FLAT_RESOLUTION_STEPS * step, floor))


def check_epoch(samples: np.ndarray, limits: RowLimits) -> tuple[bool, bool]:
    """Whether one row's samples over one epoch are flat, and whether they are clipped.

    Parameters
    ----------
    samples : np.ndarray of float, shape (30 * fs,)
        The row's values over the epoch.
    limits : RowLimits

    Returns
    -------
    flat, clipped : bool
        Standard deviation below ``limits.flat_below``; at least
        :data:`CLIPPED_SHARE` of the samples within :data:`CLIP_MARGIN_STEPS`
        steps of ``limits.low`` or ``limits.high``.
    """
    margin = CLIP_MARGIN_STEPS * limits.step
    at_rail = (samples <= limits.low + margin) | (samples >= limits.high - margin)
    return bool(np.std(samples) < limits.flat_below), bool(at_rail.mean() >= CLIPPED_SHARE)


# --------------------------------------------------------------------------
# One recording's quality
# --------------------------------------------------------------------------
def _joined(rows) -> str:
    return ";".join(rows)


@dataclass(frozen=True)
class EpochQuality:
    """The signal quality of one recording's epochs (the sidecar ``<ID>/<ID>.quality.json``).

    Attributes
    ----------
    recording_id : str
    rows_checked : tuple of str
        Rows checked for flat and clipped epochs (:data:`CHECKED_ROWS` the
        recording has), in image order.
    key_rows : tuple of str
        :data:`KEY_ROWS` the montage names, present or missing.
    missing : tuple of str
        Rows the montage names whose channel the EDF lacks.
    flat, clipped : dict of int to tuple of str
        Epoch number -> rows flat (clipped) in it; only epochs with one.
    epochs_checked : int
        Number of epochs checked (every rendered epoch).
    warnings : tuple of str
        Recording-level warnings, each naming the row and its share of epochs.
    limits : dict of str to RowLimits
        Each checked row's limits.
    thresholds : dict
        The thresholds in force when the epochs were checked.
    """

    recording_id: str
    rows_checked: tuple
    key_rows: tuple
    missing: tuple
    flat: dict
    clipped: dict
    epochs_checked: int
    warnings: tuple
    limits: dict = field(default_factory=dict)
    thresholds: dict = field(default_factory=lambda: dict(THRESHOLDS))

    def epoch_columns(self, epoch_numbers) -> list[tuple[str, str, str, str]]:
        """Per epoch: quality (``ok`` or ``flagged``), and the flat, clipped and missing rows, ``;``-joined.

        Parameters
        ----------
        epoch_numbers : sequence of int
            Epoch numbers (the NNNN of ``<ID>_NNNN.png``).

        Returns
        -------
        list of (str, str, str, str)
            One tuple per epoch number, in their order; rows in image order,
            empty strings where there is none. "flagged" when a key row is
            flat, clipped or missing in the epoch.
        """
        key_missing = any(row in self.key_rows for row in self.missing)
        columns = []
        for number in epoch_numbers:
            flat, clipped = self.flat.get(int(number), ()), self.clipped.get(int(number), ())
            flagged = key_missing or any(row in self.key_rows for row in (*flat, *clipped))
            columns.append((FLAGGED if flagged else OK, _joined(flat), _joined(clipped), _joined(self.missing)))
        return columns


def recording_warnings(key_rows, missing, flat: dict, clipped: dict, epochs: int) -> list[str]:
    """Warnings of one recording: key rows missing, or flat or clipped in more than MOST_EPOCHS_SHARE of epochs."""
    warnings = [f"{row} missing (no channel in the EDF) in 100 % of epochs" for row in key_rows if row in missing]
    for what, by_epoch in (("flat", flat), ("clipped", clipped)):
        for row in key_rows:
            share = sum(row in rows for rows in by_epoch.values()) / epochs if epochs else 0.0
            if share > MOST_EPOCHS_SHARE:
                warnings.append(f"{row} {what} in {100 * share:.1f} % of epochs")
    return warnings


class QualityRecorder:
    """Collects one recording's quality epoch by epoch, as it is rendered.

    Parameters
    ----------
    recording_id : str
    limits : dict of str to RowLimits
        Row name -> limits, for the rows the recording has.
    missing : sequence of str
        Rows the montage names whose channel the EDF lacks.
    """

    def __init__(self, recording_id: str, limits: dict, missing):
        named = set(limits) | set(missing)
        self.recording_id = recording_id
        self.limits = {row: limits[row] for row in CHECKED_ROWS if row in limits}
        self.key_rows = tuple(row for row in KEY_ROWS if row in named)
        self.missing = tuple(row for row in psg_layout.SIGNAL_NAMES if row in missing)
        self.flat, self.clipped, self.epochs = {}, {}, 0

    def add_epoch(self, epoch_number: int, signals: dict) -> None:
        """Check one epoch: ``signals`` maps row name -> samples (shape (30 * fs,)) in row values."""
        self.epochs += 1
        for row, limits in self.limits.items():
            flat, clipped = check_epoch(signals[row], limits)
            if flat:
                self.flat.setdefault(int(epoch_number), []).append(row)
            if clipped:
                self.clipped.setdefault(int(epoch_number), []).append(row)

    def result(self) -> EpochQuality:
        """What was found, with the recording's warnings."""
        flat = {n: tuple(rows) for n, rows in self.flat.items()}
        clipped = {n: tuple(rows) for n, rows in self.clipped.items()}
        warnings = recording_warnings(self.key_rows, self.missing, flat, clipped, self.epochs)
        return EpochQuality(self.recording_id, tuple(self.limits), self.key_rows, self.missing, flat, clipped,
                            self.epochs, tuple(warnings), dict(self.limits))


# --------------------------------------------------------------------------
# The sidecar
# --------------------------------------------------------------------------
def quality_path(folder: Path | str, recording_id: str) -> Path:
    """``<folder>/<ID>.quality.json``; ``folder`` is the recording's image folder (``<root>/<ID>``)."""
    return Path(folder) / f"{recording_id}{QUALITY_SUFFIX}"


def write_quality(folder: Path | str, quality: EpochQuality) -> Path:
    """Save a recording's quality sidecar in its image folder, atomically; return its path.

    The JSON object holds ``recording_id``, ``thresholds``, ``rows_checked``,
    ``key_rows``, ``missing``, ``epochs_checked``, ``limits`` (row ->
    ``low``, ``high``, ``step``, ``flat_below`` in row values), ``epochs``
    (epoch number -> ``{"flat": [...], "clipped": [...]}``, only epochs with
    a flat or clipped row) and ``warnings``.
    """
    numbers = sorted(set(quality.flat) | set(quality.clipped))
    document = {
        "recording_id": quality.recording_id,
        "thresholds": quality.thresholds,
        "rows_checked": list(quality.rows_checked),
        "key_rows": list(quality.key_rows),
        "missing": list(quality.missing),
        "epochs_checked": quality.epochs_checked,
        "limits": {row: vars(limits) for row, limits in quality.limits.items()},
        "epochs": {str(n): {"flat": list(quality.flat.get(n, ())), "clipped": list(quality.clipped.get(n, ()))}
                   for n in numbers},
        "warnings": list(quality.warnings),
    }
    path = quality_path(folder, quality.recording_id)
    with script_io.atomic_path(path) as tmp:
        tmp.write_text(json.dumps(document, indent=1) + "\n")
    return path


def _rows(value, known, what: str) -> tuple:
    """A list of row names from the sidecar, checked against ``known``."""
    if not isinstance(value, list) or not all(isinstance(row, str) and row in known for row in value):
        raise ValueError(f"{what} must be a list of row names, got {value!r}")
    return tuple(value)


def read_quality(data_root: Path | str, recording_id: str) -> EpochQuality | None:
    """A recording's quality sidecar, or None when it has none (the synthetic challenge layout).

    Raises
    ------
    InputError
        An unreadable or malformed sidecar, or one of another recording.
    """
    path = quality_path(Path(data_root) / recording_id, recording_id)
    if not path.is_file():
        return None
    names = set(psg_layout.SIGNAL_NAMES)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        flat, clipped = {}, {}
        for number, found in document["epochs"].items():
            flat[int(number)] = _rows(found["flat"], names, "flat")
            clipped[int(number)] = _rows(found["clipped"], names, "clipped")
        quality = EpochQuality(
            str(document["recording_id"]), _rows(document["rows_checked"], names, "rows_checked"),
            _rows(document["key_rows"], names, "key_rows"), _rows(document["missing"], names, "missing"),
            {n: rows for n, rows in flat.items() if rows}, {n: rows for n, rows in clipped.items() if rows},
            int(document["epochs_checked"]), tuple(str(w) for w in document["warnings"]),
            {row: RowLimits(**limits) for row, limits in document["limits"].items()}, dict(document["thresholds"]))
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as err:
        raise InputError(f"not a signal quality file ({type(err).__name__}: {err}) {where(path)}") from None
    if quality.recording_id != recording_id:
        raise InputError(f"signal quality file of recording {quality.recording_id!r}, expected {recording_id!r} "
                         f"{where(path)}")
    return quality
