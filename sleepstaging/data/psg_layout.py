"""The challenge's data contract in one place.

What a MAIC 2021 Sleep epoch image is (21 signals in 15 groups, each in a
fixed pixel band of a 480 x 270 RGB PNG that was rendered at 1920 x 1080),
the five stages and their ints, how files are named, and how the challenge
CSVs are read and written. The synthetic generator, the EDF renderer, the
loaders and every script that reads a CSV use this module, so the layout is
defined exactly once.

It imports only NumPy and the standard library, so light scripts (blend,
post-processing, evaluation) stay light.
"""
from __future__ import annotations

import csv
import functools
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sleepstaging.script_io import InputError, atomic_path, where

# --------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------
STAGES = ("Wake", "N1", "N2", "N3", "REM")
STAGE_TO_INT = {name: index for index, name in enumerate(STAGES)}
NUM_CLASSES = len(STAGES)

# --------------------------------------------------------------------------
# Image geometry
# --------------------------------------------------------------------------
EPOCH_SECONDS = 30
IMAGE_WIDTH, IMAGE_HEIGHT = 480, 270  # what the challenge ships
RENDER_WIDTH, RENDER_HEIGHT = 1920, 1080  # what the organisers drew at
RENDER_SCALE = RENDER_HEIGHT // IMAGE_HEIGHT  # 4


@dataclass(frozen=True)
class Signal:
    """One row of the image.

    Attributes
    ----------
    name : str
        The organisers' signal name (``"C3-M2"``, ``"SpO2 (85-100 %)"``...).
    group : int
        1-based group number; signals of one group may overlap each other's
        band, signals of different groups never do (drawing is clipped to
        the group's band).
    top_1080, height_1080 : int
        The signal's own band in rows of the 1080-row rendering.
    unit : str
        Physical unit of the raw signal.
    fs : float
        Native sampling rate in Hz used by the synthetic generator (and
        written to its EDF files).
    low, high : float
        Physical values drawn at the bottom and at the top edge of the
        signal's band (the fixed gain of the channel). Values outside are
        drawn beyond the band, up to the group's edge, then clipped.
    """

    name: str
    group: int
    top_1080: int
    height_1080: int
    unit: str
    fs: float
    low: float
    high: float

    @property
    def top_270(self) -> float:
        return self.top_1080 / RENDER_SCALE

    @property
    def height_270(self) -> float:
        return self.height_1080 / RENDER_SCALE

    @property
    def centre_1080(self) -> float:
        return self.top_1080 + self.height_1080 / 2


def _build_signals():
    # (name, group, height at 1080, unit, fs, low, high), top to bottom.
    table = [
        ("X Axis", 1, 43, "g", 25, -1.0, 1.0),
        ("Y Axis", 1, 43, "g", 25, -1.0, 1.0),
        ("Z Axis", 1, 43, "g", 25, -1.0, 1.0),
        ("C3-M2", 2, 43, "uV", 100, -75.0, 75.0),
        ("C4-M1", 2, 43, "uV", 100, -75.0, 75.0),
        ("O1-M2", 2, 43, "uV", 100, -75.0, 75.0),
        ("O2-M1", 2, 43, "uV", 100, -75.0, 75.0),
        ("E1-M2", 3, 43, "uV", 100, -150.0, 150.0),
        ("E2-M1", 3, 43, "uV", 100, -150.0, 150.0),
        ("Chin EMG", 4, 43, "uV", 200, -50.0, 50.0),
        ("ECG", 5, 43, "mV", 200, -1.5, 1.5),
        ("Flow", 6, 129, "a.u.", 25, -1.0, 1.0),
        ("Thermistor", 7, 43, "a.u.", 25, -1.0, 1.0),
        ("Thorax", 8, 43, "a.u.", 25, -1.0, 1.0),
        ("Abdomen", 9, 43, "a.u.", 25, -1.0, 1.0),
        ("Snore", 10, 43, "a.u.", 200, -1.0, 1.0),
        ("Audio Volume", 11, 43, "dB", 25, 30.0, 90.0),
        ("Left Leg EMG", 12, 43, "uV", 200, -50.0, 50.0),
        ("Right Leg EMG", 12, 43, "uV", 200, -50.0, 50.0),
        ("SpO2 (85-100 %)", 13, 86, "%", 1, 85.0, 100.0),
        ("SpO2 (40-100 %)", 14, 86, "%", 1, 40.0, 100.0),
    ]
    signals, top = [], 0
    for name, group, height, unit, fs, low, high in table:
        signals.append(Signal(name, group, top, height, unit, fs, low, high))
        top += height
    return tuple(signals)


SIGNALS = _build_signals()
SIGNAL_NAMES = tuple(s.name for s in SIGNALS)
SIGNAL_BY_NAME = {s.name: s for s in SIGNALS}
BLANK_HEIGHT_1080 = 5  # group 15: an empty strip at the bottom
assert SIGNALS[-1].top_1080 + SIGNALS[-1].height_1080 + BLANK_HEIGHT_1080 == RENDER_HEIGHT


def group_band_1080(group: int) -> tuple[int, int]:
    """Return ``(top, height)`` of a group's band in rows of the 1080 rendering."""
    members = [s for s in SIGNALS if s.group == group]
    if not members:
        raise ValueError(f"no signal group {group}")
    top = members[0].top_1080
    bottom = members[-1].top_1080 + members[-1].height_1080
    return top, bottom - top


def group_band_270(group: int) -> tuple[float, float]:
    """Return ``(top, height)`` of a group's band in rows of the 270-row image."""
    top, height = group_band_1080(group)
    return top / RENDER_SCALE, height / RENDER_SCALE


# --------------------------------------------------------------------------
# Rendering one epoch the way the organisers did
# --------------------------------------------------------------------------
SUBPIXEL_BITS = 4  # cv2 draws at 1/16-pixel precision (its `shift` argument)
# A trace far outside its group is invisible either way; bounding its rows
# keeps fixed-point coordinates inside int32 without bending visible segments.
_FAR_ROWS = 10_000.0
# The real challenge images draw every trace this many rows (of 1080) below the band arithmetic: the
# zero lines of the chin and leg EMG, the ECG and the four EEG traces of the organisers' four sample
# images sit 1.5-2 rows lower than the centres of their bands (measured on their mean row profile).
TRACE_OFFSET_1080 = 1.5
# Fixed encoder settings, so the same pixels give the same bytes. Mostly black
# images compress best unfiltered, and zlib level 1 is the fastest.
PNG_COMPRESSION = 1


def _groups():
    groups = {}
    for signal in SIGNALS:
        groups.setdefault(signal.group, []).append(signal)
    return tuple((group, group_band_1080(group), tuple(members)) for group, members in groups.items())


SIGNAL_GROUPS = _groups()  # ((group, (top, height) at 1080, (Signal, ...)), ...) top to bottom


@functools.lru_cache(maxsize=32)
def _trace_columns(n_samples: int, rate: float) -> np.ndarray:
    """Fixed-point columns of ``n_samples`` samples at ``rate`` Hz plus the held end, int32 (n_samples + 1,)."""
    columns = np.arange(n_samples + 1, dtype=np.float64) * (RENDER_WIDTH / (rate * EPOCH_SECONDS))
    return np.rint(columns * (1 << SUBPIXEL_BITS)).astype(np.int32)


def _trace_points(signal: Signal, samples: np.ndarray, rate: float, group_top: int) -> np.ndarray:
    """Fixed-point cv2 polyline vertices of one trace inside its group's strip, int32 (samples + 1, 2).

    Sample ``i`` sits at ``i / rate`` seconds, i.e. column ``i * 64 / rate``
    of the 1920-wide canvas; the last value is held to the epoch's end, so a
    slow channel reaches the right edge as a fast one does. A value maps
    linearly from ``high`` (top edge of the signal's band) to ``low`` (bottom
    edge), shifted down by ``TRACE_OFFSET_1080`` rows as in the real images;
    row ``r`` is the centre of pixel row ``r``, so the band's edges are half
    a pixel outside its first and last rows.
    """
    scale = 1 << SUBPIXEL_BITS
    rows_per_unit = signal.height_1080 / (signal.high - signal.low)
    top_row = signal.top_1080 - group_top - 0.5 + TRACE_OFFSET_1080
    rows = samples * (-rows_per_unit * scale) + (top_row + signal.high * rows_per_unit) * scale
    np.clip(rows, -_FAR_ROWS * scale, _FAR_ROWS * scale, out=rows)
    points = np.empty((len(samples) + 1, 2), dtype=np.int32)
    points[:, 0] = _trace_columns(len(samples), rate)
    np.rint(rows, out=rows)
    points[:-1, 1] = rows
    points[-1, 1] = points[-2, 1]  # hold the last sample to the epoch's end (matters for 1-Hz SpO2)
    return points


def render_epoch(epoch_signals, fs=None) -> np.ndarray:
    """Draw one 30-s epoch as the challenge's 480 x 270 RGB image.

    Every trace is an anti-aliased 1-pixel polyline on a black 1920 x 1080
    canvas, placed by its signal's ``low``/``high`` over the signal's own band
    and clipped to its group's band (each group is drawn on its own strip,
    so a large wave never leaks into another group). The canvas is then
    shrunk to 480 x 270 with area interpolation, as the organisers did.

    Parameters
    ----------
    epoch_signals : Mapping[str, np.ndarray | None]
        Keys are names from :data:`SIGNAL_NAMES`; each value holds that row's
        samples over the 30-s epoch in the signal's physical unit, shape
        ``(round(fs * 30),)``. Missing names or ``None`` leave the row empty.
        Both SpO2 rows take the same saturation samples.
    fs : Mapping[str, float] or None
        Sampling rate in Hz per signal name; names not given use the table's
        ``Signal.fs``.

    Returns
    -------
    np.ndarray of uint8, shape (270, 480, 3)
        Grey image (R = G = B), white traces on black.

    Raises
    ------
    ValueError
        Unknown signal name, a sample count that is not 30 s at the rate, or
        non-finite samples.
    """
    import cv2

    fs = fs or {}
    unknown = set(epoch_signals) - set(SIGNAL_BY_NAME)
    if unknown:
        raise ValueError(f"unknown signal names {sorted(unknown)}; expected names from psg_layout.SIGNAL_NAMES")
    canvas = np.zeros((RENDER_HEIGHT, RENDER_WIDTH), dtype=np.uint8)
    for _, (group_top, group_height), members in SIGNAL_GROUPS:
        strip = canvas[group_top:group_top + group_height]  # a view: drawing is clipped to it
        traces = []
        for signal in members:
            samples = epoch_signals.get(signal.name)
            if samples is None:
                continue
            rate = float(fs.get(signal.name, signal.fs))
            samples = np.asarray(samples, dtype=np.float64)
            if samples.ndim != 1 or len(samples) != round(rate * EPOCH_SECONDS):
                raise ValueError(
                    f"{signal.name}: expected {round(rate * EPOCH_SECONDS)} samples (30 s at {rate:g} Hz), "
                    f"got shape {samples.shape}"
                )
            if not np.isfinite(samples).all():
                raise ValueError(f"{signal.name}: non-finite samples")
            traces.append(_trace_points(signal, samples, rate, group_top))
        if traces:
            cv2.polylines(strip, traces, False, 255, 1, cv2.LINE_AA, SUBPIXEL_BITS)
    small = cv2.resize(canvas, (IMAGE_WIDTH, IMAGE_HEIGHT), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(small, cv2.COLOR_GRAY2BGR)


def write_png(path: Path | str, image: np.ndarray) -> None:
    """Write an image as PNG with fixed encoder settings (same pixels, same bytes), atomically.

    Parameters
    ----------
    path : path-like
        Destination ``.png`` file.
    image : np.ndarray of uint8, shape (H, W) or (H, W, 3)
        Pixels; 3-channel images are taken as BGR, as cv2 does (grey images
        are the same either way).
    """
    import cv2

    params = [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]
    ok, encoded = cv2.imencode(".png", image, params)
    if not ok:
        raise ValueError(f"cv2 could not encode an image of shape {image.shape} as PNG")
    with atomic_path(path) as tmp:
        tmp.write_bytes(encoded.tobytes())


# --------------------------------------------------------------------------
# File naming
# --------------------------------------------------------------------------
TRAIN_CSV = "trainset-for_user.csv"
TEST_CSV = "testset-for_user.csv"
TEST_LABELS_CSV = "testset-labels.csv"  # synthetic/rendered answers, scoring only


def image_name(recording_id: str, epoch_number: int) -> str:
    """``<ID>_NNNN.png`` with a 1-based, zero-padded 4-digit epoch number."""
    if epoch_number < 1:
        raise ValueError(f"epoch numbers are 1-based, got {epoch_number}")
    return f"{recording_id}_{epoch_number:04d}.png"


def image_path(data_root: Path | str, recording_id: str, idnum: str) -> Path:
    """``<root>/<ID>/<IDnum>``, the challenge's image location."""
    return Path(data_root) / recording_id / idnum


IMAGE_NAME_PATTERN = re.compile(r"(?P<recording>.+)_(?P<epoch>[0-9]{4})\.png")


def epoch_number_of(idnum: str) -> int:
    """The epoch number ``NNNN`` of an image name ``<ID>_NNNN.png``.

    Raises
    ------
    InputError
        A name not of that form.
    """
    match = IMAGE_NAME_PATTERN.fullmatch(idnum)
    if match is None:
        raise InputError(f"image name {idnum!r} is not <ID>_NNNN.png, so its epoch is unknown")
    return int(match["epoch"])


# --------------------------------------------------------------------------
# Values every script checks the same way
# --------------------------------------------------------------------------
def is_stage_balance(value) -> bool:
    """A usable ``--stage-balance`` (the trainers' sampling power): a finite number, 0 or more."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < math.inf


def input_shape(img_size) -> tuple[int, int]:
    """The model input's ``(height, width)`` in pixels: the one form every module works with.

    Parameters
    ----------
    img_size : int or sequence of int
        ``--img-size`` as given: one size (square) or two, height then
        width; or a run configuration's ``img_size`` (an int in those
        written before inputs could be non-square, ``[height, width]`` since).

    Returns
    -------
    (int, int)
        Height and width, each at least 1.

    Raises
    ------
    InputError
        Not one or two whole numbers, or one below 1.
    """
    sizes = list(img_size) if isinstance(img_size, (list, tuple)) else [img_size]
    whole = all(isinstance(size, (int, np.integer)) and not isinstance(size, bool) for size in sizes)
    if not 1 <= len(sizes) <= 2 or not whole or min(sizes) < 1:
        raise InputError(f"--img-size takes one size in pixels (square) or two (HEIGHT WIDTH), each at least 1, "
                         f"got {' '.join(map(str, sizes))}")
    return int(sizes[0]), int(sizes[-1])



# --------------------------------------------------------------------------
# Reading the challenge CSVs
# --------------------------------------------------------------------------
@dataclass
class EpochTable:
    """The rows of a challenge CSV, in file order.

    Attributes
    ----------
    path : Path
        The CSV it came from.
    recording_ids : list of str
        ``ID`` column: the recording each row belongs to.
    idnums : list of str
        ``IDnum`` column: the image file name, ``<ID>_NNNN.png``.
    labels : np.ndarray of int64, shape (rows,) or None
        Stage ints (Wake=0 ... REM=4) when the CSV has a label column.
    """

    path: Path
    recording_ids: list
    idnums: list
    labels: np.ndarray | None

    def __len__(self) -> int:
        return len(self.idnums)


def _looks_like_header(fields: list[str]) -> bool:
    return [f.strip().lower() for f in fields[:2]] == ["id", "idnum"]


def _list_rows(problems: list[tuple[str, int]], limit: int = 10) -> str:
    shown = ", ".join(f"{text} at row {row}" for text, row in problems[:limit])
    more = f" and {len(problems) - limit} more" if len(problems) > limit else ""
    return shown + more


def _safe_component(text: str) -> bool:
    """A plain file or folder name: no separators, no '..', not absolute."""
    return bool(text) and text not in (".", "..") and "/" not in text and "\\" not in text and "\0" not in text


def _columns_fast(path: Path, expected: int) -> list | None:
    """Stripped columns of a well-formed CSV, or None when it needs a closer look."""
    import pandas as pd  # only here: psg_layout stays light for everything else

    data = path.read_bytes()
    if data.count(b"\r") != data.count(b"\r\n"):
        return None  # a bare CR: pandas' parser then drops a leading empty field; the csv module decides
    try:
        frame = pd.read_csv(io.BytesIO(data), header=None, dtype=str, na_filter=False, skip_blank_lines=True,
                            encoding="utf-8")
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return None
    if frame.shape[1] != expected or frame.shape[0] == 0:
        return None
    columns = [[value.strip() for value in frame[column].tolist()] for column in frame.columns]
    if _looks_like_header([columns[0][0], columns[1][0]]):
        columns = [column[1:] for column in columns]
    return columns if columns[0] else None


def _columns_clean(columns: list, with_labels: bool) -> bool:
    recording_ids, idnums = columns[0], columns[1]
    names = set(recording_ids) | set(idnums)
    joined = "\n".join(names)
    return (
        not (names & {"", ".", ".."} or "/" in joined or "\\" in joined or "\0" in joined)
        and len(set(idnums)) == len(idnums)
        and (not with_labels or set(columns[2]) <= STAGE_TO_INT.keys())
    )


def _columns_careful(path: Path, expected: int, with_labels: bool) -> list:
    """Read row by row and raise an InputError naming the first bad row(s)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:  # -sig: as pandas, drop a byte-order mark
            rows = list(csv.reader(handle))
    except (UnicodeDecodeError, csv.Error) as err:
        raise InputError(f"not a readable CSV file: {err} {where(path)}") from None
    numbered = [(n, fields) for n, fields in enumerate(rows, start=1) if "".join(fields).strip()]
    if numbered and _looks_like_header(numbered[0][1]):
        numbered = numbered[1:]
    if not numbered:
        raise InputError(f"CSV file has no rows {where(path)}")
    for row_number, fields in numbered:
        if len(fields) != expected:
            raise InputError(
                f"expected {expected} columns (ID,IDnum{',label' if with_labels else ''}), "
                f"found {len(fields)} {where(path, row_number)}"
            )
    row_numbers = [n for n, _ in numbered]
    columns = [[value.strip() for value in column] for column in zip(*(f for _, f in numbered))]
    for row_number, recording_id, idnum in zip(row_numbers, columns[0], columns[1]):
        if not (_safe_component(recording_id) and _safe_component(idnum)):
            raise InputError(
                f"ID and IDnum must be plain names inside the data root, got {recording_id!r}, {idnum!r} "
                f"{where(path, row_number)}"
            )
    if with_labels:
        bad = [(repr(name), n) for n, name in zip(row_numbers, columns[2]) if name not in STAGE_TO_INT]
        if bad:
            raise InputError(
                f"unknown stage labels (expected one of {', '.join(STAGES)}): {_list_rows(bad)} "
                f"{where(path, bad[0][1])}"
            )
    seen, duplicates = set(), []
    for row_number, idnum in zip(row_numbers, columns[1]):
        if idnum in seen:
            duplicates.append((repr(idnum), row_number))
        seen.add(idnum)
    if duplicates:
        raise InputError(f"IDnum listed twice: {_list_rows(duplicates)} {where(path, duplicates[0][1])}")
    return columns


def read_epoch_csv(path: Path | str, with_labels: bool) -> EpochTable:
    """Read and validate a challenge CSV (``ID,IDnum[,label]``, no header).

    A header row (``ID,IDnum...``) is recognised and skipped. Every problem
    of one kind is reported at once (all bad labels, all duplicates), with
    1-based row numbers of the file.

    Parameters
    ----------
    path : path-like
        ``trainset-for_user.csv``, ``testset-for_user.csv`` or a file of the
        same shape.
    with_labels : bool
        True for three columns ending in a stage name, False for two.

    Raises
    ------
    InputError
        Missing or empty file, wrong column count, unknown stage name,
        an ``IDnum`` listed twice, or an ``ID``/``IDnum`` that is not a plain
        file name (it could lead outside the data root).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"CSV file not found {where(path)}")
    expected = 3 if with_labels else 2
    # A clean file is read by pandas' C parser and checked on whole columns;
    # anything unusual goes through the row-by-row reader, which names the row.
    # (A challenge-sized training CSV has 585,000 rows.)
    columns = _columns_fast(path, expected)
    if columns is None or not _columns_clean(columns, with_labels):
        columns = _columns_careful(path, expected, with_labels)
    recording_ids, idnums = columns[0], columns[1]
    labels = np.array([STAGE_TO_INT[s] for s in columns[2]], dtype=np.int64) if with_labels else None
    return EpochTable(path, recording_ids, idnums, labels)
