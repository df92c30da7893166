"""Lights off and lights on of a recording: the command line's times, else its own EDF+ annotations.

:func:`resolve_lights` gives both bounds of an opened recording
(``edf_signals.EdfRecording``) in seconds from its start, and where they came from: ``--lights-off``/``--lights-on``
(:func:`lights_value`: a clock time ``HH:MM[:SS]`` or seconds; a clock time
is placed by :func:`lights_seconds`), else the recording's annotations
whose text is one of :data:`LIGHTS_LABELS` (:func:`lights_annotations`).
They go into the timing sidecar (``epoch_timing.EpochTiming``); the epochs
between them are ``night_outputs.in_lights_period``.
"""
from __future__ import annotations

import datetime
import math
import re
from pathlib import Path

from sleepstaging.edf.edf_signals import EdfRecording
from sleepstaging.script_io import InputError, read_csv_with_header, where

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


def lights_annotations(annotations) -> dict:
    """The recording's own lights marks: ``{"off": (onset s, text), "on": (onset s, text)}``, each when found.

    ``annotations`` are ``EdfRecording.annotations``: (onset s, text) in
    time order, only those inside the recording. Texts match
    :data:`LIGHTS_LABELS`. With several matches the first lights off and the
    last lights on count: lights switched on and off again in the night (a
    trip to the bathroom) stay inside the time in bed.
    """
    found = {}
    for onset, text in annotations:
        key = re.sub(r"[\s_-]+", "", text).lower()
        if key in LIGHTS_LABELS["off"]:
            found.setdefault("off", (onset, text.strip()))
        elif key in LIGHTS_LABELS["on"]:
            found["on"] = (onset, text.strip())
    return found


def resolve_lights(recording: EdfRecording, lights_off_text: str | None = None, lights_on_text: str | None = None,
                   given_by: str | None = None) -> tuple[float | None, float | None, str | None]:
    """Lights off and lights on of one recording, s from its start, and where they came from.

    A flag wins over an annotation (:func:`lights_annotations`) for its
    bound; a bound with neither is None (the recording's start, or end,
    stands in for it). A clock time is placed after ``recording.start``;
    every time must lie within ``recording.duration``.

    ``given_by`` names where the texts came from when not from the two
    flags (``stage_edf.py --lights-table``: ``"lights table nights.csv"``).

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
    edf, start, duration = recording.path, recording.start, recording.duration
    texts = {"off": lights_off_text, "on": lights_on_text}
    marks = {} if None not in texts.values() else lights_annotations(recording.annotations)
    seconds, flags, labels = {}, [], []
    for bound, text in texts.items():
        seconds[bound], origin = None, None
        if text is not None:
            flag = f"lights {bound} of the {given_by}" if given_by else f"--lights-{bound}"
            seconds[bound], origin = lights_seconds(text, start, edf, flag), f"{flag} {text}"
            flags.append(flag if given_by is None else given_by)
        elif bound in marks:
            seconds[bound], label = marks[bound]
            origin = f"EDF+ annotation {label!r}"
            labels.append(repr(label))
        if origin is not None and not 0 <= seconds[bound] <= duration:
            raise InputError(f"lights {bound} ({origin}) at {seconds[bound]:g} s is outside the recording "
                             f"(0 to {duration:g} s) {where(edf)}")
    parts = ["/".join(dict.fromkeys(flags))] if flags else []
    if labels:
        parts.append(f"EDF+ annotation{'s' if len(labels) > 1 else ''} {'/'.join(labels)}")
    source = ", ".join(parts) or None
    off, on = seconds["off"] or 0.0, duration if seconds["on"] is None else seconds["on"]
    if off >= on:
        raise InputError(f"lights off at {off:g} s is at or after lights on at {on:g} s from the recording start "
                         f"({source}) {where(edf)}")
    return seconds["off"], seconds["on"], source


LIGHTS_TABLE_COLUMNS = ("recording_id", "lights_off", "lights_on")


def read_lights_table(path: Path) -> dict:
    """``--lights-table``: recording ID -> (lights off text or None, lights on text or None), checked.

    Raises
    ------
    InputError
        A missing or unreadable file, another header, a value that is neither
        a clock time nor seconds, a recording listed twice (each with the file and row).
    """
    rows = read_csv_with_header(path, LIGHTS_TABLE_COLUMNS, "the lights table")
    table = {}
    for number, row in enumerate(rows, start=2):
        if len(row) != len(LIGHTS_TABLE_COLUMNS):
            raise InputError(f"expected {len(LIGHTS_TABLE_COLUMNS)} cells, found {len(row)} {where(path, number)}")
        recording_id, *texts = (cell.strip() for cell in row)
        if recording_id in table:
            raise InputError(f"recording {recording_id!r} is listed twice {where(path, number)}")
        for text in filter(None, texts):
            try:
                lights_value(text)
            except ValueError as err:
                raise InputError(f"{err} {where(path, number)}") from None
        table[recording_id] = tuple(text or None for text in texts)
    return table
