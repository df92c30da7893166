"""Scorers' hypnogram files, read onto the recording's 30-s epoch grid.

A hypnogram file (Sleep-EDF's EDF+ annotations, NSRR XML, a plain CSV with
one stage per line) is read into :class:`StageSegment` runs
(:func:`read_hypnogram`); :func:`stages_on_epoch_grid` places them on the
recording's 30-s epochs (epoch 1 the first whole epoch on the scorer's
grid) and :func:`epochs_to_keep` trims the wake around the sleep period.
A recording no one has scored gets every whole epoch from its first sample
(:func:`unscored_epoch_grid`). Stage spellings accepted are those of
:data:`STAGE_TOKENS`; unscored and movement epochs are :data:`UNSCORED`.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sleepstaging.data import psg_layout
from sleepstaging.data.psg_layout import EPOCH_SECONDS
from sleepstaging.script_io import InputError, first_line, where


# --------------------------------------------------------------------------
# Hypnogram files: EDF+ annotations, NSRR XML, plain CSV -> stage segments
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
        raise InputError(f"cannot read EDF+ annotations: {type(err).__name__}: {first_line(err)} {where(path)}") from None
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
# Epochs: the hypnogram on a 30-s grid, trimmed to the sleep period; the grid without one
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
