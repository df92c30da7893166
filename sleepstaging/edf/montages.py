"""Montages: which EDF channel feeds which image row, with what gain.

A montage maps the image rows of ``psg_layout.SIGNAL_NAMES`` to EDF channel
labels (:class:`RowSource`: labels in order of preference, scale,
inversion, optional, unit). This module holds the montage types, the
built-in montages (``sleep-edf``, ``shhs``, ``synthetic``) and the reading
of JSON montage files (:func:`load_montage`). Finding a montage's channels
in one EDF file is ``edf_signals.resolve_channels``; the built-in montage
that fits a file is ``edf_signals.detect_montage``.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from sleepstaging.data import psg_layout
from sleepstaging.script_io import InputError, where

AUTO_MONTAGE = "auto"  # --montage auto: per recording, the first built-in montage whose channels it has
# Voltage units a file or a montage row may name, in volts.
VOLTS_PER_UNIT = {"nV": 1e-9, "uV": 1e-6, "µV": 1e-6, "mV": 1e-3, "V": 1.0}


@dataclass(frozen=True)
class RowSource:
    """Where one image row takes its samples from.

    The row's value is ``(-1 if invert else 1) * scale * x``, where ``x`` is
    the channel in the row's physical unit (``psg_layout.Signal.unit``):
    voltages are converted (a channel in V, mV or uV feeds a uV row
    correctly); other units are taken as they are in the file.

    Attributes
    ----------
    channels : tuple of str
        EDF channel labels to look for, in order of preference; the first
        one present in the file is used.
    scale : float
        Extra gain on top of the unit conversion (dimensionless).
    invert : bool
        Draw the channel upside down (E2 from a horizontal E1-E2 EOG).
    optional : bool
        Leave the row empty when no listed channel is in the file, instead
        of refusing the recording.
    unit : str or None
        Voltage unit (nV, uV, mV, V) of the channel's values when the file's
        header names none that MNE recognises (Sleep-EDF's EMG envelope is
        in "uV-mrs"); ignored when the header names a voltage unit.
    """

    channels: tuple[str, ...]
    scale: float = 1.0
    invert: bool = False
    optional: bool = False
    unit: str | None = None


@dataclass(frozen=True)
class Montage:
    """A named mapping from image rows (``psg_layout.SIGNAL_NAMES``) to EDF channels."""

    name: str
    rows: dict  # row name -> RowSource; rows not listed are drawn empty


SLEEP_EDF_MONTAGE = Montage("sleep-edf", {
    # Sleep-EDF SC has one frontal and one parietal EEG derivation: Fpz-Cz
    # stands in for both central rows, Pz-Oz for both occipital rows (alpha
    # is strongest there, as at O1/O2).
    "C3-M2": RowSource(("EEG Fpz-Cz",)),
    "C4-M1": RowSource(("EEG Fpz-Cz",)),
    "O1-M2": RowSource(("EEG Pz-Oz",)),
    "O2-M1": RowSource(("EEG Pz-Oz",)),
    # A horizontal EOG is the E1-E2 difference; E1-M2 and E2-M1 deflect in
    # opposite directions for the same eye movement, so E2 is drawn inverted.
    "E1-M2": RowSource(("EOG horizontal",)),
    "E2-M1": RowSource(("EOG horizontal",), invert=True),
    # SC files store the chin EMG as a 1 Hz envelope in "uV-mrs" (ST files:
    # the 100 Hz signal in uV).
    "Chin EMG": RowSource(("EMG submental",), unit="uV"),
    # The oro-nasal channel is a thermistor airflow signal (1 Hz in SC files,
    # absent from ST files).
    "Thermistor": RowSource(("Resp oro-nasal",), optional=True),
})

SHHS_MONTAGE = Montage("shhs", {
    "C3-M2": RowSource(("EEG(sec)", "EEG2", "EEG 2", "EEG sec")),  # C3-A2
    "C4-M1": RowSource(("EEG",)),  # C4-A1
    "E1-M2": RowSource(("EOG(L)",)),
    "E2-M1": RowSource(("EOG(R)",)),
    "Chin EMG": RowSource(("EMG",)),
    "ECG": RowSource(("ECG",)),
    # Nasal pressure joined SHHS1 part-way through the study.
    "Flow": RowSource(("NEW AIR", "new A/F", "NEWAIR", "New Air"), optional=True),
    "Thermistor": RowSource(("AIRFLOW",)),
    "Thorax": RowSource(("THOR RES",)),
    "Abdomen": RowSource(("ABDO RES",)),
    "SpO2 (85-100 %)": RowSource(("SaO2",)),
    "SpO2 (40-100 %)": RowSource(("SaO2",)),
})

# make_synthetic.py --edf writes every row under its own name, except the
# two SpO2 rows, which are one saturation channel drawn at two gains.
SYNTHETIC_MONTAGE = Montage("synthetic", {
    name: RowSource(("SpO2",) if name.startswith("SpO2") else (name,)) for name in psg_layout.SIGNAL_NAMES
})

BUILTIN_MONTAGES = {m.name: m for m in (SLEEP_EDF_MONTAGE, SHHS_MONTAGE, SYNTHETIC_MONTAGE)}
MONTAGE_ROW_KEYS = {"channel", "scale", "invert", "optional", "unit"}


def _montage_row_from_json(row_name: str, entry, path: Path) -> RowSource:
    """One ``rows`` entry of a JSON montage, checked; errors name the row and the file."""
    if not isinstance(entry, dict):
        raise InputError(f"montage row {row_name!r} must be an object with a 'channel' {where(path)}")
    unknown_keys = sorted(set(entry) - MONTAGE_ROW_KEYS)
    if unknown_keys:
        raise InputError(
            f"montage row {row_name!r} has unknown keys {unknown_keys}; allowed: {sorted(MONTAGE_ROW_KEYS)} {where(path)}"
        )
    channels = entry.get("channel")
    channels = [channels] if isinstance(channels, str) else channels
    if not channels or not isinstance(channels, list) or not all(isinstance(c, str) and c.strip() for c in channels):
        raise InputError(f"montage row {row_name!r}: 'channel' must be a label or a list of labels {where(path)}")
    scale = entry.get("scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale) or scale == 0:
        raise InputError(f"montage row {row_name!r}: 'scale' must be a non-zero number, got {scale!r} {where(path)}")
    for flag in ("invert", "optional"):
        if not isinstance(entry.get(flag, False), bool):
            raise InputError(f"montage row {row_name!r}: {flag!r} must be true or false {where(path)}")
    unit = entry.get("unit")
    if unit is not None and unit not in VOLTS_PER_UNIT:
        raise InputError(
            f"montage row {row_name!r}: 'unit' must be one of {sorted(VOLTS_PER_UNIT)}, got {unit!r} {where(path)}"
        )
    return RowSource(tuple(c.strip() for c in channels), float(scale), entry.get("invert", False),
                     entry.get("optional", False), unit)


def load_montage(spec: str) -> Montage:
    """A built-in montage by name, or a JSON montage file.

    The JSON file holds ``{"rows": {ROW: {"channel": LABEL or [LABEL, ...],
    "scale": 1.0, "invert": false, "optional": false, "unit": "uV"}}}``;
    only ``channel`` is required, ROW is a name from
    ``psg_layout.SIGNAL_NAMES``, rows not listed are drawn empty.

    Raises
    ------
    InputError
        Neither a built-in name nor a readable JSON file; unknown row names
        (all listed); a malformed row.
    """
    if spec in BUILTIN_MONTAGES:
        return BUILTIN_MONTAGES[spec]
    path = Path(spec)
    if not path.is_file():
        raise InputError(f"--montage must be one of {', '.join(BUILTIN_MONTAGES)} or a JSON file, got {spec!r}")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"montage is not valid JSON: {err} {where(path)}") from None
    if not isinstance(document, dict) or not isinstance(document.get("rows"), dict) or not document["rows"]:
        raise InputError(f'montage JSON must be {{"rows": {{ROW: {{"channel": ...}}, ...}}}} {where(path)}')
    unknown_rows = sorted(set(document["rows"]) - set(psg_layout.SIGNAL_NAMES))
    if unknown_rows:
        raise InputError(
            f"montage names rows that the image does not have: {', '.join(map(repr, unknown_rows))}; "
            f"rows are {', '.join(psg_layout.SIGNAL_NAMES)} {where(path)}"
        )
    rows = {name: _montage_row_from_json(name, entry, path) for name, entry in document["rows"].items()}
    return Montage(str(path), rows)
