"""Render EDF polysomnography into the challenge layout.

Real public recordings (Sleep-EDF Expanded, the NSRR cohorts such as SHHS, a
clinic's own exports) are EDF files with separate hypnograms. This script
maps each file's channels onto the 21 rows of ``psg_layout.py`` (a montage),
cuts the recording into 30-s epochs aligned to the hypnogram, draws every
epoch with the shared renderer (``psg_layout.render_epoch``, the same code
as ``make_synthetic.py``) and appends the labelled epochs to the split's CSV:

    python render_edf.py --edf sleep-cassette/ --out DATA --split train --montage sleep-edf

writes ``DATA/<ID>/<ID>_NNNN.png`` (NNNN = epoch number counted from the
recording start, so a file maps back to its time even after trimming),
``DATA/<ID>/render_edf.json`` (the resolved configuration and what was
done to that recording), ``DATA/<ID>/<ID>.timing.json`` (the timing sidecar:
the recording's start date and clock time from the EDF header, the epoch
length, the start of epoch 1, the epoch number of every image, lights off
and lights on; see ``psg_layout.EpochTiming``), ``DATA/<ID>/<ID>.quality.json``
(the signal quality sidecar: flat, clipped and missing rows per epoch and
the recording's warnings, which are also printed as ``warning: <ID>: ...``;
see ``signal_quality.py``) and appends ``ID,IDnum,label`` rows to
``DATA/trainset-for_user.csv`` (``--split test``: ``ID,IDnum`` to
``testset-for_user.csv`` and the answers to ``testset-labels.csv``).

Recordings no one has scored yet (``--split test --unscored``) need no
hypnogram: every whole 30-s epoch from the first sample on is drawn and
listed in ``testset-for_user.csv``, with no answers. ``--trim-wake`` does
not apply to them: without stages there is no sleep period to trim around,
so the whole recording is kept (trim the scored hypnogram afterwards).

Lights off and lights on (the time in bed of the sleep statistics) come
from ``--lights-off``/``--lights-on`` (a clock time ``HH:MM[:SS]`` or
seconds from the recording start), else from the recording's own EDF+
annotations (:data:`LIGHTS_LABELS`); see :func:`resolve_lights`.

Everything is checked (montage, channels, units, hypnograms, their length
against the recording, IDs already in the data set) before the first image
is drawn; images are drawn into a hidden folder per recording and moved into
place only when every recording of the run has succeeded, then the CSVs are
rewritten atomically. A failed run leaves ``--out`` as it was.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import queue
import re
import shutil
import sys
import xml.etree.ElementTree as ElementTree
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import Manager
from pathlib import Path

import numpy as np
from tqdm import tqdm

import psg_layout
import script_io
import signal_quality
from psg_layout import EPOCH_SECONDS
from script_io import InputError, where


def parse_trim_wake(text: str) -> float | None:
    """``--trim-wake``: minutes of wake kept around the sleep period, or ``none``."""
    if text.strip().lower() == "none":
        return None
    try:
        minutes = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected minutes or 'none', got {text!r}") from None
    if not math.isfinite(minutes) or minutes < 0:
        raise argparse.ArgumentTypeError(f"expected non-negative minutes or 'none', got {text!r}")
    return minutes


def lights_option(text: str) -> str:
    """``--lights-off``/``--lights-on``: the text as given, once it reads as a clock time or seconds."""
    try:
        lights_value(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Render EDF polysomnography and hypnograms into the challenge's image and CSV layout.",
        formatter_class=script_io.HelpFormatter,
    )
    parser.add_argument("--edf", type=Path, required=True,
                        help="one EDF file, or a folder searched recursively for recordings and their hypnograms")
    parser.add_argument("--hypnogram", type=Path, default=None,
                        help="the hypnogram of a single --edf file (EDF+ annotations, NSRR XML or plain CSV), "
                             "or a folder to search for hypnograms; default: found by the archive's naming "
                             "beside the recordings")
    parser.add_argument("--out", type=Path, required=True, help="data root to add the recordings to")
    parser.add_argument("--split", choices=("train", "test"), required=True,
                        help="train: rows go to trainset-for_user.csv; test: to testset-for_user.csv, "
                             "answers to testset-labels.csv")
    parser.add_argument("--montage", default=AUTO_MONTAGE,
                        help="auto (per recording, the first built-in montage whose channels it has), "
                             "sleep-edf, shhs, synthetic, or a JSON montage file")
    parser.add_argument("--trim-wake", type=parse_trim_wake, default=30.0,
                        help="minutes of wake kept before the first and after the last sleep epoch; "
                             "'none' keeps the whole recording (unscored recordings are always kept whole)")
    parser.add_argument("--unscored", action="store_true",
                        help="the recordings have no hypnogram: render every whole epoch from the recording "
                             "start into testset-for_user.csv (needs --split test; no answers are written)")
    for bound in ("off", "on"):
        parser.add_argument(f"--lights-{bound}", type=lights_option, default=None, metavar="TIME",
                            help=f"lights {bound}: clock time HH:MM[:SS] (the first such moment at or after the "
                                 f"recording start) or seconds from the recording start; default: the recording's "
                                 f"EDF+ 'Lights {bound}' annotation, else the recording's "
                                 f"{'start' if bound == 'off' else 'end'}")
    parser.add_argument("--workers", type=int, default=2, help="recordings rendered in parallel")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be 1 or more, got {args.workers}")
    if args.unscored and args.split != "test":
        parser.error("--unscored recordings have no labels to train on: use --split test")
    if args.unscored and args.hypnogram is not None:
        parser.error("--unscored reads no hypnogram: leave out --hypnogram")
    return args


# --------------------------------------------------------------------------
# Montages: which EDF channel feeds which image row, with what gain
# --------------------------------------------------------------------------
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


AUTO_MONTAGE = "auto"


def detect_montage(edf: Path) -> Montage:
    """The first built-in montage (sleep-edf, shhs, synthetic) whose required channels the EDF has.

    Raises
    ------
    InputError
        An unreadable EDF, or one no built-in montage fits (its labels listed).
    """
    labels = set(_read_edf_header(edf).ch_names)
    for montage in BUILTIN_MONTAGES.values():
        if all(source.optional or any(c in labels for c in source.channels) for source in montage.rows.values()):
            return montage
    raise InputError(f"no built-in montage ({', '.join(BUILTIN_MONTAGES)}) fits the channels "
                     f"{', '.join(map(repr, sorted(labels)))}: name the rows' channels in a JSON montage file "
                     f"(--montage FILE) {where(edf)}")


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


# --------------------------------------------------------------------------
# Hypnograms: EDF+ annotations, NSRR XML, plain CSV -> stage segments
# --------------------------------------------------------------------------
UNSCORED = -1  # rendered, never labelled: unscored and movement epochs

# Accepted stage spellings (case-insensitive): AASM names, R&K names and the
# EDF/NSRR numeric codes (W,1,2,3,4,R,M = 0..6; NSRR unscored = 9).
STAGE_TOKENS = {
    **dict.fromkeys(("wake", "w", "0"), psg_layout.STAGE_TO_INT["Wake"]),
    **dict.fromkeys(("n1", "1"), psg_layout.STAGE_TO_INT["N1"]),
    **dict.fromkeys(("n2", "2"), psg_layout.STAGE_TO_INT["N2"]),
    # R&K stages 3 and 4 together are AASM N3.
    **dict.fromkeys(("n3", "3", "4", "n4"), psg_layout.STAGE_TO_INT["N3"]),
    **dict.fromkeys(("rem", "r", "5"), psg_layout.STAGE_TO_INT["REM"]),
    **dict.fromkeys(("?", "unscored", "movement", "m", "6", "9"), UNSCORED),
}


@dataclass(frozen=True)
class StageSegment:
    """A run of epochs with one stage, as the hypnogram file states it.

    Attributes
    ----------
    onset, duration : float
        Seconds from the start of the recording.
    stage : int
        ``psg_layout.STAGE_TO_INT`` value, or :data:`UNSCORED`.
    row : int
        1-based position in the file for error messages: CSV line, EDF+
        annotation number, or NSRR ``ScoredEvent`` number.
    """

    onset: float
    duration: float
    stage: int
    row: int


def _first_line(err: Exception) -> str:
    """The first line of a library's error message, for a one-line error."""
    text = str(err).strip()
    return text.splitlines()[0] if text else "no details"


def stage_from_token(token: str, path: Path, row: int) -> int:
    """Stage int (or :data:`UNSCORED`) of one stage spelling; unknown spellings are an error."""
    stage = STAGE_TOKENS.get(token.strip().lower())
    if stage is None:
        raise InputError(
            f"unknown sleep stage {token.strip()!r} (expected Wake/W/0, N1/1, N2/2, N3/3/4, REM/R/5, "
            f"?/unscored/movement) {where(path, row)}"
        )
    return stage


def read_csv_stages(path: Path) -> list[StageSegment]:
    """A plain hypnogram: one stage per line, one line per 30-s epoch from the recording start."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise InputError(f"hypnogram is not a text file: {err} {where(path)}") from None
    while lines and not lines[-1].strip():
        lines.pop()
    segments = []
    for row, line in enumerate(lines, start=1):
        if "," in line:
            raise InputError(f"expected one stage per line, got {line.strip()!r} {where(path, row)}")
        segments.append(StageSegment((row - 1) * EPOCH_SECONDS, EPOCH_SECONDS, stage_from_token(line, path, row), row))
    return segments


SLEEP_STAGE_PREFIX = "sleep stage "


def read_edf_annotation_stages(path: Path) -> list[StageSegment]:
    """Stages from EDF+ annotations (Sleep-EDF: ``Sleep stage W/1/2/3/4/R/?``, ``Movement time``).

    Onsets are taken relative to the start of the hypnogram file, which in
    Sleep-EDF starts with its recording. Annotations that are not stages
    (lights, arousals...) are ignored.
    """
    import mne

    try:
        annotations = mne.read_annotations(path)
    except Exception as err:  # MNE raises many kinds on a malformed file
        raise InputError(f"cannot read EDF+ annotations: {type(err).__name__}: {_first_line(err)} {where(path)}") from None
    segments = []
    for row, (onset, duration, text) in enumerate(
            zip(annotations.onset, annotations.duration, annotations.description), start=1):
        lowered = text.strip().lower()
        if lowered == "movement time":
            stage = UNSCORED
        elif lowered.startswith(SLEEP_STAGE_PREFIX):
            stage = stage_from_token(lowered[len(SLEEP_STAGE_PREFIX):], path, row)
        else:
            continue
        segments.append(StageSegment(float(onset), float(duration), stage, row))
    return segments


def read_nsrr_xml_stages(path: Path) -> list[StageSegment]:
    """Stages from an NSRR XML file: ``ScoredEvent`` elements of type ``Stages|Stages``.

    ``EventConcept`` is ``<name>|<code>`` (``Wake|0``, ``Stage 1 sleep|1`` ...
    ``REM sleep|5``); the code decides the stage. Other events (arousals,
    desaturations...) are ignored.
    """
    content = path.read_bytes()
    # ElementTree expands internal entities; a hypnogram never needs them.
    if re.search(rb"<!\s*(DOCTYPE|ENTITY)", content, re.IGNORECASE):
        raise InputError(f"refusing an XML hypnogram with DOCTYPE or ENTITY declarations {where(path)}")
    try:
        root = ElementTree.fromstring(content)
    except ElementTree.ParseError as err:
        raise InputError(f"hypnogram is not valid XML: {err} {where(path, err.position[0])}") from None
    segments = []
    for row, event in enumerate(root.iter("ScoredEvent"), start=1):
        if not (event.findtext("EventType") or "").strip().lower().startswith("stages"):
            continue
        concept = (event.findtext("EventConcept") or "").strip()
        code = concept.rsplit("|", 1)[-1].strip().lower()
        if code not in STAGE_TOKENS:
            raise InputError(f"unknown sleep stage {concept!r} in ScoredEvent {row} {where(path, row)}")
        stage = STAGE_TOKENS[code]
        try:
            onset, duration = float(event.findtext("Start")), float(event.findtext("Duration"))
        except (TypeError, ValueError):
            raise InputError(f"ScoredEvent {row} needs numeric Start and Duration {where(path, row)}") from None
        segments.append(StageSegment(onset, duration, stage, row))
    return segments


def read_hypnogram(path: Path) -> list[StageSegment]:
    """Stage segments of a hypnogram file, by its format (``.edf``, ``.xml``, ``.csv``/``.txt``)."""
    readers = {".edf": read_edf_annotation_stages, ".xml": read_nsrr_xml_stages,
               ".csv": read_csv_stages, ".txt": read_csv_stages}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise InputError(f"unknown hypnogram format {path.suffix!r} (expected .edf, .xml, .csv) {where(path)}")
    segments = reader(path)
    if not segments:
        raise InputError(f"no sleep stages found in the hypnogram {where(path)}")
    return segments


# --------------------------------------------------------------------------
# Epochs: the hypnogram on a 30-s grid, trimmed to the sleep period
# --------------------------------------------------------------------------
GRID_TOLERANCE_SECONDS = 0.01


def stages_on_epoch_grid(segments: list[StageSegment], path: Path, recording_seconds: float):
    """Place stage segments on the recording's 30-s epoch grid.

    The grid starts at the first scored onset modulo 30 s, so epoch 1 is the
    first whole epoch of the recording on the scorer's grid; epochs are
    numbered from the recording start. Unscored segments change nothing and
    may run past the end of the recording (Sleep-EDF hypnograms end in a
    long ``?``); a scored one may not.

    Parameters
    ----------
    segments : list of StageSegment
    path : Path
        The hypnogram, for error messages.
    recording_seconds : float
        Length of the recording, s.

    Returns
    -------
    origin : float
        Start of epoch 1, s from the recording start, in [0, 30).
    stages : np.ndarray of int64, shape (epochs,)
        Stage int per whole epoch of the recording; :data:`UNSCORED` where
        the hypnogram says so or says nothing.

    Raises
    ------
    InputError
        No scored segment; a scored segment after the recording's end, off
        the 30-s grid, at a negative time, without duration, or overlapping
        another.
    """
    scored_segments = [s for s in segments if s.stage != UNSCORED]
    if not scored_segments:
        raise InputError(f"the hypnogram scores no epoch (all unscored) {where(path)}")
    origin = min(s.onset for s in scored_segments) % EPOCH_SECONDS
    epoch_count = max(int((recording_seconds - origin + GRID_TOLERANCE_SECONDS) // EPOCH_SECONDS), 0)
    stages = np.full(epoch_count, UNSCORED, dtype=np.int64)
    scored = np.zeros(epoch_count, dtype=bool)
    for segment in scored_segments:
        if segment.onset < 0:
            raise InputError(f"stage starts before the recording ({segment.onset:g} s) {where(path, segment.row)}")
        first, count = (segment.onset - origin) / EPOCH_SECONDS, segment.duration / EPOCH_SECONDS
        off_grid = [x for x in (first, count) if abs(x - round(x)) * EPOCH_SECONDS > GRID_TOLERANCE_SECONDS]
        if off_grid or round(count) < 1:
            raise InputError(
                f"stage at {segment.onset:g} s lasting {segment.duration:g} s is not whole 30-s epochs "
                f"on the grid starting at {origin:g} s {where(path, segment.row)}"
            )
        first, stop = round(first), round(first) + round(count)
        if stop > epoch_count:
            raise InputError(
                f"hypnogram longer than the recording: a stage runs to {origin + stop * EPOCH_SECONDS:g} s, "
                f"the recording has {epoch_count} whole epochs ({recording_seconds:g} s) {where(path, segment.row)}"
            )
        if scored[first:stop].any():
            raise InputError(f"stage overlaps an earlier one at epoch {first + 1 + int(np.argmax(scored[first:stop]))} "
                             f"{where(path, segment.row)}")
        stages[first:stop] = segment.stage
        scored[first:stop] = True
    return origin, stages


def epochs_to_keep(stages: np.ndarray, trim_minutes: float | None, path: Path) -> np.ndarray:
    """0-based indices of the epochs to render.

    ``None`` keeps every epoch; otherwise the sleep period (first to last
    N1/N2/N3/REM epoch) plus ``trim_minutes`` of whatever precedes and
    follows it, within the recording.
    """
    if trim_minutes is None:
        return np.arange(len(stages))
    sleep = np.flatnonzero(stages > psg_layout.STAGE_TO_INT["Wake"])
    if not sleep.size:
        raise InputError(f"no sleep epoch in the hypnogram, nothing to trim wake around "
                         f"(use --trim-wake none to keep it all) {where(path)}")
    margin = int(trim_minutes * 60 // EPOCH_SECONDS)
    return np.arange(max(sleep[0] - margin, 0), min(sleep[-1] + margin, len(stages) - 1) + 1)


# --------------------------------------------------------------------------
# Finding recordings and pairing them with hypnograms
# --------------------------------------------------------------------------
RECORDING_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class RecordingSource:
    """One recording to render: its ID, EDF file and hypnogram file (None: unscored)."""

    recording_id: str
    edf: Path
    hypnogram: Path | None


def is_hypnogram_file(path: Path) -> bool:
    """Hypnogram files by the archives' naming: Sleep-EDF, NSRR and the synthetic generator."""
    name = path.name.lower()
    return name.endswith(("-hypnogram.edf", "-nsrr.xml", ".hypnogram.csv"))


def recording_id_of(edf: Path) -> str:
    """The recording ID: the file stem, without Sleep-EDF's ``-PSG`` suffix."""
    stem = edf.stem
    return stem[:-len("-PSG")] if stem.upper().endswith("-PSG") else stem


def hypnogram_key(path: Path) -> str:
    """The name part a recording and its hypnogram share, by the archives' naming.

    Sleep-EDF: the first 6 characters (``SC4001E0-PSG.edf`` with
    ``SC4001EC-Hypnogram.edf``); NSRR: ``<stem>.edf`` with
    ``<stem>-nsrr.xml``; synthetic: ``<ID>.edf`` with ``<ID>.hypnogram.csv``.
    """
    name = path.name
    lowered = name.lower()
    if lowered.endswith(("-psg.edf", "-hypnogram.edf")):
        return name[:6]
    for suffix in ("-nsrr.xml", ".hypnogram.csv", ".edf"):
        if lowered.endswith(suffix):
            return name[:-len(suffix)]
    return name


def _files_under(folder: Path, recursive: bool) -> list[Path]:
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if p.is_file() and not p.name.startswith("."))


def find_recordings(edf: Path, hypnogram: Path | None, unscored: bool = False) -> list[RecordingSource]:
    """Recordings to render with their hypnograms, sorted by ID.

    Parameters
    ----------
    edf : Path
        One EDF file, or a folder searched recursively for ``*.edf``
        (hypnogram EDFs excluded).
    hypnogram : Path or None
        For one EDF: its hypnogram file, or a folder to look in; for an EDF
        folder: a folder to search recursively. None: beside the recordings.
    unscored : bool
        The recordings have no hypnograms: none is looked for (hypnogram
        EDFs in a folder are still skipped).

    Raises
    ------
    InputError
        Missing paths, a recording without a hypnogram or with several
        (all listed), two recordings with the same ID, an ID that is not a
        plain name.
    """
    if not edf.exists():
        raise InputError(f"--edf not found {where(edf)}")
    if hypnogram is not None and not hypnogram.exists():
        raise InputError(f"--hypnogram not found {where(hypnogram)}")
    if edf.is_file():
        edfs = [edf]
    else:
        edfs = [p for p in _files_under(edf, True) if p.suffix.lower() == ".edf" and not is_hypnogram_file(p)]
        if not edfs:
            raise InputError(f"no EDF recordings in the folder {where(edf)}")
        if hypnogram is not None and hypnogram.is_file():
            raise InputError(f"--hypnogram must be a folder when --edf is a folder {where(hypnogram)}")

    if unscored:
        pairs = [(p, [None]) for p in edfs]
    elif hypnogram is not None and hypnogram.is_file():
        pairs = [(edfs[0], [hypnogram])]
    else:
        search_root = hypnogram if hypnogram is not None else (edf if edf.is_dir() else edf.parent)
        candidates = {}
        for path in _files_under(search_root, recursive=edf.is_dir() or hypnogram is not None):
            if is_hypnogram_file(path):
                candidates.setdefault(hypnogram_key(path), []).append(path)
        pairs = [(p, candidates.get(hypnogram_key(p), [])) for p in edfs]

    unpaired = [str(p) for p, found in pairs if not found]
    if unpaired:
        raise InputError(
            f"no hypnogram found for {len(unpaired)} recording(s): {', '.join(unpaired[:5])}"
            f"{' ...' if len(unpaired) > 5 else ''} (expected <ID>-Hypnogram.edf sharing the first 6 characters, "
            f"<stem>-nsrr.xml or <stem>.hypnogram.csv; or give --hypnogram) {where(unpaired[0])}"
        )
    ambiguous = [(p, found) for p, found in pairs if len(found) > 1]
    if ambiguous:
        p, found = ambiguous[0]
        raise InputError(f"several hypnograms match {p.name}: {', '.join(map(str, found))} {where(p)}")

    recordings, seen = [], {}
    for path, (hypnogram_path,) in pairs:
        recording_id = recording_id_of(path)
        if not RECORDING_ID_PATTERN.fullmatch(recording_id):
            raise InputError(f"recording ID {recording_id!r} is not a plain name (letters, digits, . _ -) {where(path)}")
        if recording_id in seen:
            raise InputError(f"two recordings with ID {recording_id!r}: {seen[recording_id]} and {path} {where(path)}")
        seen[recording_id] = path
        recordings.append(RecordingSource(recording_id, path, hypnogram_path))
    return sorted(recordings, key=lambda r: r.recording_id)


# --------------------------------------------------------------------------
# Reading EDF signals in the rows' physical units
# --------------------------------------------------------------------------
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


def _read_edf_header(path: Path, include=None):
    import mne

    try:
        return mne.io.read_raw_edf(path, include=include, preload=False, stim_channel=None, verbose="error")
    except Exception as err:  # MNE raises many kinds on a malformed file
        raise InputError(f"cannot read EDF: {type(err).__name__}: {_first_line(err)} {where(path)}") from None


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
    header = _read_edf_header(edf)
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
        rates[channel] = float(_read_edf_header(edf, include=[channel]).info["sfreq"])
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
            raise InputError(f"cannot read EDF data: {type(err).__name__}: {_first_line(err)} {where(edf)}") from None
        channels.update(zip(raw.ch_names, raw.get_data()))
    return channels


# --------------------------------------------------------------------------
# Rendering one recording
# --------------------------------------------------------------------------
@dataclass
class RenderJob:
    """Everything a worker needs to draw one recording (checked beforehand).

    Attributes
    ----------
    source : RecordingSource
    rows : dict
        Row name -> :class:`RowChannel`.
    origin : float
        Start of epoch 1, s from the recording start.
    epoch_numbers : np.ndarray of int64, shape (epochs,)
        1-based epoch numbers to draw, counted from the recording start.
    stages : np.ndarray of int64, shape (epochs,)
        Stage int per drawn epoch, :data:`UNSCORED` for unlabelled ones.
    staging : Path
        Hidden folder the images go to until the run succeeds.
    timing : psg_layout.EpochTiming
        Saved as the recording's timing sidecar.
    record : dict
        The resolved configuration and facts saved as ``render_edf.json``.
    missing : tuple of str
        Rows the montage names whose channels the EDF lacks (drawn empty).
    """

    source: RecordingSource
    rows: dict
    origin: float
    epoch_numbers: np.ndarray
    stages: np.ndarray
    staging: Path
    timing: psg_layout.EpochTiming
    record: dict = field(default_factory=dict)
    missing: tuple = ()


def epoch_signals(channels: dict, rows: dict, origin: float, epoch_number: int, edf: Path) -> dict:
    """Each row's samples over one epoch, in the row's physical unit: row name -> array of shape (30 * fs,)."""
    signals = {}
    for row, row_channel in rows.items():
        count = round(row_channel.fs * EPOCH_SECONDS)
        start = round((origin + (epoch_number - 1) * EPOCH_SECONDS) * row_channel.fs)
        samples = channels[row_channel.channel][start:start + count]
        if len(samples) != count:
            raise InputError(f"channel {row_channel.channel!r} ends inside epoch {epoch_number} {where(edf)}")
        signals[row] = samples * row_channel.gain
    return signals


def render_recording(job: RenderJob, progress=None) -> list[str]:
    """Draw every planned epoch of one recording into ``job.staging``, with its ``render_edf.json`` and sidecars.

    The sidecars are the timing and the signal quality; returns the
    recording's signal quality warnings (``signal_quality``).
    """
    channels = load_channels(job.source.edf, job.rows)
    fs = {row: row_channel.fs for row, row_channel in job.rows.items()}
    quality = signal_quality.QualityRecorder(job.source.recording_id,
                                             {row: rc.limits for row, rc in job.rows.items()}, job.missing)
    shutil.rmtree(job.staging, ignore_errors=True)  # debris of a run that was killed
    job.staging.mkdir(parents=True)
    for epoch_number in job.epoch_numbers:
        signals = epoch_signals(channels, job.rows, job.origin, int(epoch_number), job.source.edf)
        quality.add_epoch(int(epoch_number), signals)
        image = psg_layout.render_epoch(signals, fs)
        psg_layout.write_png(job.staging / psg_layout.image_name(job.source.recording_id, int(epoch_number)), image)
        if progress is not None:
            progress.put(1)
    with script_io.atomic_path(job.staging / "render_edf.json") as tmp:
        tmp.write_text(json.dumps(job.record, indent=2) + "\n")
    psg_layout.write_epoch_timing(job.staging, job.timing)
    found = quality.result()
    signal_quality.write_quality(job.staging, found)
    return list(found.warnings)


def render_unscored_night(source: RecordingSource, montage_spec: str, out: Path, config: dict,
                          **plan_options) -> dict:
    """Check, plan and draw one unscored night into ``out/<ID>/`` on its own; return its record.

    ``stage_edf.py``'s way through a cohort: each night is checked only when
    its turn comes, so a bad one stops only itself. The folder appears whole
    (drawn under a hidden name, then renamed) or not at all. ``montage_spec``
    is a :func:`load_montage` spec or ``auto``; ``plan_options`` go to
    :func:`plan_recording`.

    Raises
    ------
    InputError
        As :func:`plan_recording` and :func:`render_recording`.
    """
    montage = detect_montage(source.edf) if montage_spec == AUTO_MONTAGE else load_montage(montage_spec)
    job = plan_recording(source, montage, None, out, config, **plan_options)
    try:
        render_recording(job)
        os.replace(job.staging, out / source.recording_id)
    except BaseException:
        shutil.rmtree(job.staging, ignore_errors=True)
        raise
    return job.record


def unscored_epoch_grid(edf: Path, recording_seconds: float) -> tuple[float, np.ndarray]:
    """The grid of a recording without hypnogram: every whole 30-s epoch from the first sample.

    Returns
    -------
    origin : float
        0.0 (epoch 1 starts with the recording).
    stages : np.ndarray of int64, shape (epochs,)
        :data:`UNSCORED` for each whole epoch.

    Raises
    ------
    InputError
        A recording shorter than one epoch.
    """
    epoch_count = int((recording_seconds + GRID_TOLERANCE_SECONDS) // EPOCH_SECONDS)
    if epoch_count < 1:
        raise InputError(f"recording is {recording_seconds:g} s long, shorter than one {EPOCH_SECONDS}-s epoch "
                         f"{where(edf)}")
    return 0.0, np.full(epoch_count, UNSCORED, dtype=np.int64)


def recording_start(edf: Path) -> datetime.datetime | None:
    """Start date and clock time of a recording as its EDF header states them (no time zone), or None."""
    start = _read_edf_header(edf).info["meas_date"]
    return None if start is None else start.replace(tzinfo=None)


# --------------------------------------------------------------------------
# Lights off and lights on: the flags, else the recording's EDF+ annotations
# --------------------------------------------------------------------------
# Annotation texts taken as lights off / lights on, compared after lower-casing and dropping spaces,
# underscores and hyphens: "Lights Off", "lights_off", "LIGHTS-OUT" all match.
LIGHTS_LABELS = {"off": ("lightsoff", "lightoff", "lightsout", "lightout"), "on": ("lightson", "lighton")}
CLOCK_PATTERN = re.compile(r"([0-9]{1,2}):([0-9]{2})(?::([0-9]{2}))?")


def lights_value(text: str) -> float | datetime.time:
    """What a ``--lights-off``/``--lights-on`` text says: seconds from the recording start, or a time of day.

    Raises
    ------
    ValueError
        Neither ``HH:MM``/``HH:MM:SS`` (a valid time of day) nor a finite number.
    """
    match = CLOCK_PATTERN.fullmatch(text.strip())
    try:
        value = datetime.time(*(int(part or 0) for part in match.groups())) if match else float(text)
    except ValueError:
        value = math.nan
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"expected a clock time HH:MM or HH:MM:SS, or seconds from the recording start, got {text!r}")
    return value


def lights_seconds(text: str, start: datetime.datetime | None, edf: Path, flag: str) -> float:
    """Seconds from the recording start of a lights option; a clock time is the first such moment at or after ``start``.

    07:00 after a 22:30 start is the next morning (30,600 s).

    Raises
    ------
    InputError
        A text that is neither form; a clock time when the EDF header gives no start date and time.
    """
    try:
        value = lights_value(text)
    except ValueError as err:
        raise InputError(f"{flag}: {err} {where(edf)}") from None
    if not isinstance(value, datetime.time):
        return value
    if start is None:
        raise InputError(f"{flag} {text} is a clock time, but the EDF header has no start date and time: "
                         f"give seconds from the recording start {where(edf)}")
    moment = datetime.datetime.combine(start.date(), value)
    if moment < start:
        moment += datetime.timedelta(days=1)
    return (moment - start).total_seconds()


def lights_annotations(edf: Path) -> dict:
    """The recording's own lights marks: ``{"off": (onset s, text), "on": (onset s, text)}``, each when found.

    Texts match :data:`LIGHTS_LABELS`. With several matches the first lights
    off and the last lights on count: lights switched on and off again in
    the night (a trip to the bathroom) stay inside the time in bed. MNE's
    reader keeps only annotations inside the recording.
    """
    annotations = _read_edf_header(edf).annotations
    found = {}
    for onset, text in sorted(zip(annotations.onset, annotations.description)):
        key = re.sub(r"[\s_-]+", "", text).lower()
        if key in LIGHTS_LABELS["off"]:
            found.setdefault("off", (float(onset), text.strip()))
        elif key in LIGHTS_LABELS["on"]:
            found["on"] = (float(onset), text.strip())
    return found


def resolve_lights(edf: Path, start: datetime.datetime | None, duration: float, lights_off_text: str | None = None,
                   lights_on_text: str | None = None) -> tuple[float | None, float | None, str | None]:
    """Lights off and lights on of one recording, s from its start, and where they came from.

    A flag wins over an annotation (:func:`lights_annotations`) for its
    bound; a bound with neither is None (the recording's start, or end,
    stands in for it).

    Returns
    -------
    (lights_off, lights_on, source)
        Seconds or None each; ``source`` e.g. ``"--lights-off/--lights-on"``,
        ``"EDF+ annotations 'Lights off'/'Lights on'"``, None without either.

    Raises
    ------
    InputError
        A malformed flag, a clock time without a start in the header, a time
        outside 0..``duration``, lights off at or after lights on.
    """
    texts = {"off": lights_off_text, "on": lights_on_text}
    marks = {} if None not in texts.values() else lights_annotations(edf)
    seconds, flags, labels = {}, [], []
    for bound, text in texts.items():
        seconds[bound], origin = None, None
        if text is not None:
            seconds[bound], origin = lights_seconds(text, start, edf, f"--lights-{bound}"), f"--lights-{bound} {text}"
            flags.append(f"--lights-{bound}")
        elif bound in marks:
            seconds[bound], label = marks[bound]
            origin = f"EDF+ annotation {label!r}"
            labels.append(repr(label))
        if origin is not None and not 0 <= seconds[bound] <= duration:
            raise InputError(f"lights {bound} ({origin}) at {seconds[bound]:g} s is outside the recording "
                             f"(0 to {duration:g} s) {where(edf)}")
    parts = ["/".join(flags)] if flags else []
    if labels:
        parts.append(f"EDF+ annotation{'s' if len(labels) > 1 else ''} {'/'.join(labels)}")
    source = ", ".join(parts) or None
    off, on = seconds["off"] or 0.0, duration if seconds["on"] is None else seconds["on"]
    if off >= on:
        raise InputError(f"lights off at {off:g} s is at or after lights on at {on:g} s from the recording start "
                         f"({source}) {where(edf)}")
    return seconds["off"], seconds["on"], source


def plan_recording(source: RecordingSource, montage: Montage, trim_minutes: float | None, out: Path,
                   config: dict, lights_off: str | None = None, lights_on: str | None = None) -> RenderJob:
    """Check one recording completely (header, channels, units, hypnogram, lights) and plan its epochs.

    A recording without hypnogram (``source.hypnogram`` None) keeps every
    whole epoch from its first sample, all unlabelled. ``lights_off`` and
    ``lights_on`` are the texts of ``--lights-off``/``--lights-on`` (None:
    absent); the resolved times (:func:`resolve_lights`) go into the timing
    sidecar and ``render_edf.json``.
    """
    rows, duration = resolve_channels(source.edf, montage)
    start = recording_start(source.edf)
    lights = resolve_lights(source.edf, start, duration, lights_off, lights_on)
    if source.hypnogram is None:
        origin, stages = unscored_epoch_grid(source.edf, duration)
        keep = np.arange(len(stages))
    else:
        segments = read_hypnogram(source.hypnogram)
        origin, stages = stages_on_epoch_grid(segments, source.hypnogram, duration)
        keep = epochs_to_keep(stages, trim_minutes, source.hypnogram)
        if not (stages[keep] != UNSCORED).any():
            raise InputError(f"no scored epoch to label in the recording {where(source.hypnogram)}")
    epoch_numbers = keep + 1
    missing = tuple(row for row in montage.rows if row not in rows)
    if epoch_numbers[-1] > 9999:
        raise InputError(f"more than 9999 epochs; file names have 4 digits {where(source.edf)}")
    labelled = int((stages[keep] != UNSCORED).sum())
    record = {
        **config,
        "recording_id": source.recording_id,
        "montage": montage.name,
        "edf": str(source.edf),
        "hypnogram": None if source.hypnogram is None else str(source.hypnogram),
        "recording_seconds": duration,
        "epoch1_offset_seconds": origin,
        "epochs_in_recording": len(stages),
        "first_epoch": int(epoch_numbers[0]),
        "last_epoch": int(epoch_numbers[-1]),
        "epochs_rendered": len(keep),
        "epochs_labelled": labelled,
        **dict(zip(("lights_off_s", "lights_on_s", "lights_source"), lights)),
        "rows": {row: {"channel": rc.channel, "fs_hz": rc.fs, "file_unit": rc.file_unit, "gain_from_mne": rc.gain}
                 for row, rc in rows.items()},
        "rows_missing": list(missing),
    }
    staging = out / f".{source.recording_id}.render-partial"
    timing = psg_layout.EpochTiming(source.recording_id, start, float(EPOCH_SECONDS), origin,
                                    tuple(int(n) for n in epoch_numbers), *lights)
    return RenderJob(source, rows, origin, epoch_numbers, stages[keep], staging, timing, record, missing)


# --------------------------------------------------------------------------
# The split's CSVs
# --------------------------------------------------------------------------
def existing_ids(out: Path) -> dict:
    """IDs already in the data root: ID -> where (a CSV or the image folder)."""
    found = {}
    for name, with_labels in ((psg_layout.TRAIN_CSV, True), (psg_layout.TEST_CSV, False),
                              (psg_layout.TEST_LABELS_CSV, True)):
        if (out / name).is_file():
            for recording_id in psg_layout.read_epoch_csv(out / name, with_labels).recording_ids:
                found.setdefault(recording_id, out / name)
    return found


def check_new_ids(out: Path, recordings: list[RecordingSource]) -> None:
    """Refuse IDs that the data root already has (in a CSV or as an image folder): no duplicates, no overwrite."""
    present = existing_ids(out)
    for recording in recordings:
        if recording.recording_id in present:
            raise InputError(f"recording {recording.recording_id!r} is already in the data set "
                             f"{where(present[recording.recording_id])}")
        if (out / recording.recording_id).exists():
            raise InputError(f"recording {recording.recording_id!r} already has a folder {where(out / recording.recording_id)}")


def _rows_of(path: Path, with_labels: bool) -> list[list[str]]:
    if not path.is_file():
        return []
    table = psg_layout.read_epoch_csv(path, with_labels)
    if not with_labels:
        return [[i, n] for i, n in zip(table.recording_ids, table.idnums)]
    return [[i, n, psg_layout.STAGES[s]] for i, n, s in zip(table.recording_ids, table.idnums, table.labels)]


def split_csv_contents(out: Path, split: str, jobs: list[RenderJob], unscored: bool = False) -> dict:
    """The split's CSVs after appending the jobs' epochs: path -> rows (existing rows first).

    Labelled epochs are appended; ``unscored``: every rendered epoch goes to
    the test CSV and the answers file is left alone.
    """
    labelled, listed = [], []
    for job in jobs:
        recording_id = job.source.recording_id
        for epoch_number, stage in zip(job.epoch_numbers, job.stages):
            idnum = psg_layout.image_name(recording_id, int(epoch_number))
            if unscored:
                listed.append([recording_id, idnum])
            elif stage != UNSCORED:
                labelled.append([recording_id, idnum, psg_layout.STAGES[stage]])
    if split == "train":
        path = out / psg_layout.TRAIN_CSV
        return {path: _rows_of(path, True) + labelled}
    test_path, answers_path = out / psg_layout.TEST_CSV, out / psg_layout.TEST_LABELS_CSV
    if unscored:
        return {test_path: _rows_of(test_path, False) + listed}
    return {test_path: _rows_of(test_path, False) + [row[:2] for row in labelled],
            answers_path: _rows_of(answers_path, True) + labelled}


# --------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------
def render_all(jobs: list[RenderJob], workers: int, show_progress: bool) -> list[list[str]]:
    """Render the jobs, ``workers`` recordings at a time, with one progress bar over all images.

    Returns each job's signal quality warnings, in the order of ``jobs``.
    """
    total = sum(len(job.epoch_numbers) for job in jobs)
    with tqdm(total=total, unit="image", disable=not show_progress) as bar:
        if workers == 1 or len(jobs) == 1:
            return [render_recording(job, _BarProgress(bar)) for job in jobs]
        with Manager() as manager, ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
            progress = manager.Queue()
            futures = [pool.submit(render_recording, job, progress) for job in jobs]
            while not all(f.done() for f in futures):
                if any(f.done() and f.exception() is not None for f in futures):
                    break
                try:
                    bar.update(progress.get(timeout=0.2))
                except queue.Empty:
                    pass
            for future in futures:
                future.cancel()
            for future in futures:
                if not future.cancelled():
                    future.result()  # re-raises the first worker error here
            while not progress.empty():
                bar.update(progress.get())
            return [future.result() for future in futures]


class _BarProgress:
    """In-process stand-in for the workers' queue: each ``put`` advances the bar."""

    def __init__(self, bar):
        self.bar = bar

    def put(self, count: int) -> None:
        self.bar.update(count)


def lights_summary(record: dict) -> str:
    """``"; lights off 1800 s, on 27000 s (--lights-off/--lights-on)"`` from a recording's record; empty without lights."""
    bounds = ", ".join(f"{bound} {record[f'lights_{bound}_s']:g} s" for bound in ("off", "on")
                       if record[f"lights_{bound}_s"] is not None)
    return f"; lights {bounds} ({record['lights_source']})" if bounds else ""


def main(argv=None) -> None:
    args = parse_args(argv)
    montage = None if args.montage == AUTO_MONTAGE else load_montage(args.montage)
    config = {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()}
    config["trim_wake"] = "none" if args.trim_wake is None else args.trim_wake

    out = args.out
    if out.exists() and not out.is_dir():
        raise InputError(f"--out is a file, not a folder {where(out)}")
    recordings = find_recordings(args.edf, args.hypnogram, args.unscored)
    check_new_ids(out, recordings)
    montages = {source.recording_id: montage or detect_montage(source.edf) for source in recordings}
    config["montage_rows"] = {chosen.name: {row: vars(source) for row, source in chosen.rows.items()}
                              for chosen in montages.values()}
    print(json.dumps(config, indent=2))
    jobs = [plan_recording(source, montages[source.recording_id], args.trim_wake, out, config,
                           lights_off=args.lights_off, lights_on=args.lights_on)
            for source in recordings]
    for job in jobs:
        record = job.record
        print(f"{record['recording_id']} ({record['montage']} montage): epochs {record['first_epoch']}-"
              f"{record['last_epoch']} of "
              f"{record['epochs_in_recording']}, {record['epochs_labelled']} labelled, "
              f"rows {', '.join(job.rows)}{lights_summary(record)}")

    created_out = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    moved = []
    try:
        warnings = render_all(jobs, args.workers, show_progress=not args.quiet and sys.stderr.isatty())
        csv_contents = split_csv_contents(out, args.split, jobs, args.unscored)
        for job in jobs:
            os.replace(job.staging, out / job.source.recording_id)
            moved.append(out / job.source.recording_id)
    except BaseException:
        for folder in [job.staging for job in jobs] + moved:
            shutil.rmtree(folder, ignore_errors=True)
        if created_out:
            shutil.rmtree(out, ignore_errors=True)
        raise
    for path, rows in csv_contents.items():
        script_io.write_csv_rows(path, rows)
    for job, found in zip(jobs, warnings):
        if found:
            print(f"warning: {job.source.recording_id}: {'; '.join(found)}")
    rendered = sum(len(job.epoch_numbers) for job in jobs)
    labelled = sum(job.record["epochs_labelled"] for job in jobs)
    print(f"rendered {len(jobs)} recording(s), {rendered} images ({labelled} labelled); rows added to "
          f"{', '.join(p.name for p in csv_contents)} in {out}")


if __name__ == "__main__":
    script_io.run_main(main)
