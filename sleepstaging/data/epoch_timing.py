"""Where a rendered recording's epochs lie in time: the timing sidecar ``<ID>/<ID>.timing.json``.

``render_edf.py`` writes one beside each recording's images: the EDF's start
date and clock time, the epoch length, the start of epoch 1, the epoch
number of every image, and the lights off / lights on times. The
per-recording outputs (``postprocess.py``, ``stage_edf.py``) read it to put
clock times and the lights period on the hypnogram; data without one (the
synthetic challenge layout) get the challenge's plain 30-s grid.
"""
from __future__ import annotations

import datetime
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sleepstaging.data.psg_layout import EPOCH_SECONDS
from sleepstaging.script_io import InputError, atomic_path, where


TIMING_SUFFIX = ".timing.json"  # <root>/<ID>/<ID>.timing.json, beside the images


@dataclass(frozen=True)
class EpochTiming:
    """Where a recording's epochs lie in time (the sidecar ``<ID>/<ID>.timing.json``).

    Attributes
    ----------
    recording_id : str
    start : datetime.datetime or None
        Start date and clock time of the recording, from the EDF header
        (local time as the header states it, no time zone); None when
        unknown.
    epoch_seconds : float
        Length of one epoch, s.
    origin_seconds : float
        Start of epoch 1, s from the recording start (the scorer's grid may
        begin after the first sample).
    epoch_numbers : tuple of int
        1-based epoch numbers (the ``NNNN`` of ``<ID>_NNNN.png``) of the
        rendered images, ascending.
    lights_off, lights_on : float or None
        Lights off and lights on, s from the recording start; None: not
        known, the recording's start (lights off) or end (lights on) stands
        in for it.
    lights_source : str or None
        Where the lights times came from, for people
        (``"--lights-off/--lights-on"``, ``"EDF+ annotations 'Lights off'/'Lights on'"``);
        None without lights times.
    """

    recording_id: str
    start: datetime.datetime | None
    epoch_seconds: float
    origin_seconds: float
    epoch_numbers: tuple
    lights_off: float | None = None
    lights_on: float | None = None
    lights_source: str | None = None

    def onsets(self, epoch_numbers) -> np.ndarray:
        """Onsets of epochs, s from the recording start: float64 array, shape of ``epoch_numbers``."""
        return self.origin_seconds + (np.asarray(epoch_numbers, dtype=np.float64) - 1.0) * self.epoch_seconds


def timing_path(folder: Path | str, recording_id: str) -> Path:
    """``<folder>/<ID>.timing.json``; ``folder`` is the recording's image folder (``<root>/<ID>``)."""
    return Path(folder) / f"{recording_id}{TIMING_SUFFIX}"


def write_epoch_timing(folder: Path | str, timing: EpochTiming) -> Path:
    """Save a recording's timing sidecar in its image folder, atomically; return its path."""
    document = {
        "recording_id": timing.recording_id,
        "start": None if timing.start is None else timing.start.isoformat(),
        "epoch_seconds": float(timing.epoch_seconds),
        "origin_seconds": float(timing.origin_seconds),
        "epoch_numbers": [int(n) for n in timing.epoch_numbers],
        "lights_off": None if timing.lights_off is None else float(timing.lights_off),
        "lights_on": None if timing.lights_on is None else float(timing.lights_on),
        "lights_source": timing.lights_source,
    }
    path = timing_path(folder, timing.recording_id)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(document) + "\n")
    return path


def _sidecar_lights(document: dict) -> tuple:
    """``(lights_off, lights_on, lights_source)`` of a sidecar's document; absent keys are None.

    Raises ValueError or TypeError (the caller names the file) for times that
    are not finite seconds >= 0, lights off not before lights on, or a
    source that is not text.
    """
    off, on, source = (document.get(key) for key in ("lights_off", "lights_on", "lights_source"))
    for value in (off, on):
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if value is not None and not (is_number and 0 <= value < math.inf):
            raise ValueError(f"lights times must be seconds >= 0 or null, got {value!r}")
    if off is not None and on is not None and not float(off) < float(on):
        raise ValueError(f"lights off ({off} s) must come before lights on ({on} s)")
    if source is not None and not isinstance(source, str):
        raise TypeError(f"lights_source must be text or null, got {source!r}")
    return (None if off is None else float(off), None if on is None else float(on), source)


def read_epoch_timing(data_root: Path | str, recording_id: str, epoch_numbers) -> EpochTiming:
    """The timing of a recording's images: its sidecar, or the challenge's plain grid without one.

    Data without a sidecar (the synthetic challenge layout) put epoch ``n``
    at ``(n - 1) * 30`` s from the recording start, clock time unknown.
    Sidecars written before lights times were recorded (no ``lights_*``
    keys) read as lights unknown (None).

    Parameters
    ----------
    data_root : path-like
    recording_id : str
    epoch_numbers : sequence of int
        Epoch numbers of the images in use (from the CSV); each must be in
        the sidecar when there is one.

    Raises
    ------
    InputError
        An unreadable or malformed sidecar (lights times that are not
        non-negative seconds with lights off before lights on included), one
        of another recording, or one that lacks an image's epoch.
    """
    path = timing_path(Path(data_root) / recording_id, recording_id)
    wanted = tuple(int(n) for n in epoch_numbers)
    if not path.is_file():
        return EpochTiming(recording_id, None, float(EPOCH_SECONDS), 0.0, wanted)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        start = None if document["start"] is None else datetime.datetime.fromisoformat(document["start"])
        timing = EpochTiming(str(document["recording_id"]), start, float(document["epoch_seconds"]),
                             float(document["origin_seconds"]), tuple(int(n) for n in document["epoch_numbers"]),
                             *_sidecar_lights(document))
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise InputError(f"not an epoch timing file ({type(err).__name__}: {err}) {where(path)}") from None
    if timing.recording_id != recording_id or not timing.epoch_seconds > 0:
        raise InputError(f"timing file of recording {timing.recording_id!r} with {timing.epoch_seconds:g}-s epochs, "
                         f"expected {recording_id!r} with positive epochs {where(path)}")
    missing = sorted(set(wanted) - set(timing.epoch_numbers))
    if missing:
        raise InputError(f"timing file lacks epoch(s) {missing[:5]} of the recording's images {where(path)}")
    return timing
