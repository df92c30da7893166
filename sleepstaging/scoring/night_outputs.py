"""Per-night outputs of scored recordings: the hypnogram table, EDF+ annotations, figure and statistics.

Stage codes are :data:`psg_layout.STAGES` indices: 0 Wake, 1 N1, 2 N2,
3 N3, 4 REM. The module imports NumPy, the standard library and the
package's light modules (``psg_layout``, ``script_io``, ``signal_quality``,
``sleep_statistics``); edfio and matplotlib only when a file is written; no
torch.

:func:`write_recording_outputs` writes, atomically, into
``<out_dir>/<recording_id>/`` the files named in :data:`OUTPUT_FILES`
(``<name>`` = recording ID), epochs in epoch-number order:

* ``<name>-hypnogram.csv``: header ``epoch,onset_s,clock_time,
  in_lights_period,stage_before,stage_after,p_Wake,p_N1,p_N2,p_N3,
  p_REM,quality,flat_signals,clipped_signals,missing_signals``; one row
  per listed epoch: epoch number (the image's NNNN, from 1), onset in s
  from the recording start (3 decimals), clock time ``YYYY-MM-DD
  HH:MM:SS`` (empty when the start is unknown), 1 when the epoch is in the
  lights period (:func:`in_lights_period`) else 0, the blend's stage and
  the post-processed stage as names (Wake, N1, N2, N3, REM), the five
  probabilities given (6 decimals; the blend's, calibrated by the model
  set's temperature where postprocess.py or stage_edf.py write it), then ``ok`` or ``flagged`` (a key
  row flat, clipped or missing in the epoch) and the ``;``-joined rows
  flat, clipped and missing in it (``signal_quality``); these four empty
  without a quality sidecar.
* ``<name>-Hypnogram.edf``: annotations-only EDF+ in the Sleep-EDF
  convention, ``Sleep stage W/1/2/3/R`` of the post-processed stages,
  one annotation per run of contiguous epochs of one stage, onset in s
  from the recording start (the header's start date and time);
  unlisted epochs are not annotated. Readable by MNE
  (``mne.read_annotations``) and ``scored_hypnograms.read_hypnogram``.
* ``<name>-hypnogram.png``: the post-processed hypnogram, REM in red,
  with the stacked stage probabilities under it, epochs outside the
  lights period shaded (only when a figure is asked for).
* ``<name>-statistics.json``: ``sleep_statistics.sleep_statistics`` of the
  post-processed stages of the listed epochs in the lights period (NaN
  as ``null``), then ``period`` (``"lights off to lights on"``, or
  ``"whole recording"`` without lights times), ``lights_off_s``,
  ``lights_on_s`` (s from the recording start or None),
  ``lights_off_clock``, ``lights_on_clock`` (``HH:MM:SS``; None when
  the start or the time is unknown), ``lights_source`` and
  ``epochs_outside_lights`` (listed epochs left out), then
  :func:`quality_statistics`: ``epochs_flagged`` (listed epochs
  flagged, all of them, inside the lights period or not; ``null``
  without a quality sidecar) and ``quality_warnings``.

:func:`write_statistics_table` writes one row of statistics per recording.
"""
from __future__ import annotations

import csv
import datetime
import json
import math
import re
from pathlib import Path

import numpy as np

from sleepstaging.data import psg_layout
from sleepstaging import script_io
from sleepstaging.edf import signal_quality
from sleepstaging.data.psg_layout import NUM_CLASSES, STAGES
from sleepstaging.scoring.sleep_statistics import checked_stages, json_ready, sleep_statistics

REM = psg_layout.STAGE_TO_INT["REM"]
# Hypnograms are drawn with Wake on top and N3 at the bottom, REM between
# Wake and N1 (the clinical convention).
HYPNOGRAM_ORDER = ("N3", "N2", "N1", "REM", "Wake")
# Sleep-EDF's annotation texts ("Sleep stage W/1/2/3/4/R/?"); AASM N3 is written as R&K stage 3.
SLEEP_EDF_STAGE_TEXT = ("Sleep stage W", "Sleep stage 1", "Sleep stage 2", "Sleep stage 3", "Sleep stage R")
STAGE_COLOURS = ("#f2c12e", "#8fd3f4", "#3b8bd9", "#163a73", "#d64545")  # Wake, N1, N2, N3, REM
# Successive onsets this close to one epoch apart are contiguous (as scored_hypnograms' grid tolerance).
CONTIGUOUS_TOLERANCE_SECONDS = 0.01
EDF_PATIENT_CODE_MAX = 64  # the patient field also holds sex, birthdate and name ("X X X")
# {name}: the recording ID
OUTPUT_FILES = {
    "table": "{name}-hypnogram.csv",
    "edf": "{name}-Hypnogram.edf",
    "figure": "{name}-hypnogram.png",
    "statistics": "{name}-statistics.json",
}
# Appended to the hypnogram table: signal_quality.EpochQuality.epoch_columns, in this order.
QUALITY_COLUMNS = ["quality", "flat_signals", "clipped_signals", "missing_signals"]


def _cell(value) -> str:
    """A statistic as a CSV cell: empty when undefined, text and ints as they are, floats to 6 significant digits."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value) if isinstance(value, (str, int, np.integer)) else f"{value:.6g}"


def write_statistics_table(path: Path, statistics: dict[str, dict]) -> None:
    """One row per recording: ``recording_id`` first, then one column per statistic, atomically.

    Parameters
    ----------
    path : Path
        The CSV to write (with a header row).
    statistics : dict of str to dict
        Recording ID to the dict of :func:`sleep_statistics` (or of
        :func:`write_recording_outputs`, with the lights period's keys);
        columns follow the first recording's keys. Undefined values (NaN or
        None) are empty cells, text is written as it is.

    Raises
    ------
    ValueError
        Recordings with different statistics keys.
    """
    rows = list(statistics.items())
    columns = list(rows[0][1]) if rows else [*sleep_statistics(np.zeros(0, dtype=np.int64)),
                                              *lights_period(None, None, None, None, 0),
                                              *quality_statistics(None, ())]
    for recording_id, values in rows:
        if list(values) != columns:
            raise ValueError(f"recording {recording_id} has statistics {list(values)}, expected {columns}")
    with script_io.atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["recording_id", *columns])
        writer.writerows([recording_id, *(_cell(values[key]) for key in columns)] for recording_id, values in rows)


# --------------------------------------------------------------------------
# Per-recording outputs
# --------------------------------------------------------------------------
def contiguous_runs(onsets: np.ndarray, epoch_seconds: float) -> list[slice]:
    """Slices of epochs that follow each other without a gap (next onset one epoch later).

    Parameters
    ----------
    onsets : np.ndarray of float, shape (n,)
        Epoch onsets in increasing order, s.
    epoch_seconds : float

    Returns
    -------
    list of slice
        Covering ``0..n`` in order; a new slice starts after every gap.
    """
    steps = np.diff(onsets)
    breaks = np.flatnonzero(np.abs(steps - epoch_seconds) > CONTIGUOUS_TOLERANCE_SECONDS) + 1
    edges = [0, *breaks.tolist(), len(onsets)]
    return [slice(start, stop) for start, stop in zip(edges[:-1], edges[1:]) if stop > start]


def stage_annotations(onsets: np.ndarray, stages: np.ndarray, epoch_seconds: float) -> list[tuple[float, float, str]]:
    """Sleep-EDF stage annotations: one per run of contiguous epochs of one stage.

    Parameters
    ----------
    onsets : np.ndarray of float, shape (n,)
        Epoch onsets in increasing order, s from the recording start.
    stages : np.ndarray of int, shape (n,)
    epoch_seconds : float

    Returns
    -------
    list of (onset s, duration s, text)
        ``text`` is ``Sleep stage W/1/2/3/R``. Epochs not listed (gaps in
        ``onsets``) get no annotation; a run never spans a gap.
    """
    annotations = []
    for run in contiguous_runs(onsets, epoch_seconds):
        run_onsets, run_stages = onsets[run], stages[run]
        starts = [0, *(np.flatnonzero(np.diff(run_stages)) + 1).tolist()]
        stops = [*starts[1:], len(run_stages)]
        annotations += [(float(run_onsets[a]), (b - a) * epoch_seconds, SLEEP_EDF_STAGE_TEXT[run_stages[a]])
                        for a, b in zip(starts, stops)]
    return annotations


def write_annotation_edf(path: Path, recording_id: str, annotations, start: datetime.datetime | None) -> None:
    """An annotations-only EDF+ file (no signals), atomically.

    Parameters
    ----------
    path : Path
    recording_id : str
        Written as the patient code: EDF+ allows printable ASCII without
        spaces, so other characters become ``_``; cut to
        :data:`EDF_PATIENT_CODE_MAX` characters (the header field has 80).
    annotations : list of (onset s, duration s, text)
    start : datetime.datetime or None
        Recording start, the header's start date and time (whole seconds;
        a time zone is dropped: EDF holds local time). None: EDF+'s
        "unknown" start date (header 01.01.85) and 00:00:00.
    """
    import edfio

    recording = edfio.Recording(startdate=start.date() if start is not None else None)
    starttime = start.time().replace(microsecond=0, tzinfo=None) if start is not None else None
    code = re.sub(r"[^!-~]", "_", recording_id)[:EDF_PATIENT_CODE_MAX] or "X"
    edf = edfio.Edf([], patient=edfio.Patient(code=code), recording=recording,
                    starttime=starttime, annotations=[edfio.EdfAnnotation(*entry) for entry in annotations])
    with script_io.atomic_path(path) as tmp:
        edf.write(tmp)


def in_lights_period(onsets, epoch_seconds: float, lights_off: float | None = None,
                     lights_on: float | None = None) -> np.ndarray:
    """Which epochs belong to the lights period: those whose midpoint lies in ``[lights_off, lights_on)``.

    Parameters
    ----------
    onsets : np.ndarray of float, shape (n,)
        Epoch onsets, s from the recording start.
    epoch_seconds : float
        Epoch length, s.
    lights_off, lights_on : float or None
        Lights off and lights on, s from the recording start; None: the
        recording's start (lights off) or end (lights on), i.e. no bound.

    Returns
    -------
    np.ndarray of bool, shape (n,)

    Examples
    --------
    With 30-s epochs, lights off 10 s after an epoch's onset keeps that
    epoch (its midpoint is 15 s in); 20 s after leaves it out.
    """
    midpoints = np.asarray(onsets, dtype=np.float64) + epoch_seconds / 2.0
    inside = np.ones(midpoints.shape, dtype=bool)
    if lights_off is not None:
        inside &= midpoints >= lights_off
    if lights_on is not None:
        inside &= midpoints < lights_on
    return inside


def lights_period(start: datetime.datetime | None, lights_off: float | None, lights_on: float | None,
                  lights_source: str | None, epochs_outside: int) -> dict:
    """The keys that say which period the statistics cover (see :func:`write_recording_outputs`)."""
    def clock(seconds):
        if start is None or seconds is None:
            return None
        return (start + datetime.timedelta(seconds=seconds)).strftime("%H:%M:%S")

    lit = lights_off is not None or lights_on is not None
    return {
        "period": "lights off to lights on" if lit else "whole recording",
        "lights_off_s": None if lights_off is None else float(lights_off),
        "lights_on_s": None if lights_on is None else float(lights_on),
        "lights_off_clock": clock(lights_off), "lights_on_clock": clock(lights_on),
        "lights_source": lights_source, "epochs_outside_lights": int(epochs_outside),
    }


def _lights_text(period: dict, bound: str) -> str:
    """Lights ``off`` or ``on`` of :func:`lights_period` for people: clock time, else seconds, else start or end."""
    clock, seconds = period[f"lights_{bound}_clock"], period[f"lights_{bound}_s"]
    if clock is not None:
        return clock
    return f"{seconds:g} s" if seconds is not None else ("recording start" if bound == "off" else "recording end")


def _clock_times(start: datetime.datetime | None, onsets: np.ndarray) -> list[str]:
    """ISO date and time (to the second) of each onset; empty strings when the start is unknown."""
    if start is None:
        return [""] * len(onsets)
    return [(start + datetime.timedelta(seconds=float(onset))).replace(tzinfo=None).isoformat(sep=" ", timespec="seconds")
            for onset in onsets]


def write_hypnogram_table(path: Path, epoch_numbers, onsets, clock_times, inside, stages_before, stages_after,
                          probabilities, quality_cells=None) -> None:
    """The per-epoch table (columns in :func:`write_recording_outputs`), atomically.

    ``inside``: per epoch, True in the lights period. ``quality_cells``: per
    epoch, the :data:`QUALITY_COLUMNS` as strings
    (``signal_quality.EpochQuality.epoch_columns``); None leaves them empty.
    """
    header = ["epoch", "onset_s", "clock_time", "in_lights_period", "stage_before", "stage_after",
              *(f"p_{name}" for name in STAGES), *QUALITY_COLUMNS]
    if quality_cells is None:
        quality_cells = [("",) * len(QUALITY_COLUMNS)] * len(epoch_numbers)
    with script_io.atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        for number, onset, clock, lit, before, after, row, cells in zip(
                epoch_numbers, onsets, clock_times, inside, stages_before, stages_after, probabilities, quality_cells):
            writer.writerow([int(number), f"{onset:.3f}", clock, int(lit), STAGES[before], STAGES[after],
                             *(f"{p:.6f}" for p in row), *cells])


def quality_statistics(quality, epoch_numbers) -> dict:
    """``epochs_flagged`` (int, None without quality) and ``quality_warnings`` (``"; "``-joined, "" when none).

    ``quality``: a ``signal_quality.EpochQuality`` or None; ``epoch_numbers``
    the listed epochs, shape (n,).
    """
    if quality is None:
        return {"epochs_flagged": None, "quality_warnings": ""}
    flags = [cells[0] for cells in quality.epoch_columns(epoch_numbers)]
    return {"epochs_flagged": flags.count(signal_quality.FLAGGED), "quality_warnings": "; ".join(quality.warnings)}


def _draw_steps(top, bottom, edges: np.ndarray, stages: np.ndarray, probabilities: np.ndarray, labelled: bool) -> None:
    """One run of contiguous epochs: the hypnogram's steps on ``top``, the stacked probabilities on ``bottom``.

    ``edges``: the epochs' borders in hours, shape (n + 1,). Drawn as lines
    and filled collections, not ``stairs``: a stairs patch's data limits are
    found segment by segment in Python, most of a figure's time on a long night.
    """
    def held(values):  # a value per edge: the last epoch's again at the run's end
        return np.append(values, values[-1])

    height_of = np.array([HYPNOGRAM_ORDER.index(name) for name in STAGES])
    top.plot(edges, held(height_of[stages]), drawstyle="steps-post", color="black", lw=1.0)
    rem = np.where(stages == REM, height_of[REM], np.nan)
    top.plot(edges, held(rem), drawstyle="steps-post", color=STAGE_COLOURS[REM], lw=3.0, solid_capstyle="butt")
    cumulative = np.concatenate([np.zeros((len(stages), 1)), np.cumsum(probabilities, axis=1)], axis=1)
    for s in range(NUM_CLASSES):
        bottom.fill_between(edges, held(cumulative[:, s]), held(cumulative[:, s + 1]), step="post",
                            color=STAGE_COLOURS[s], lw=0.5, label=STAGES[s] if labelled else None)


def plot_recording(path: Path, recording_id: str, onsets: np.ndarray, stages: np.ndarray, probabilities: np.ndarray,
                   start: datetime.datetime | None, epoch_seconds: float, statistics: dict,
                   inside: np.ndarray | None = None) -> None:
    """The hypnogram (top) and the stacked stage probabilities (bottom) on one time axis, as PNG, atomically.

    Unlisted epochs are left blank in both panels; epochs outside the lights
    period (``inside`` False, shape (n,)) are shaded grey in both, and the
    title names lights off and on when ``statistics`` covers a lights period
    (the keys of :func:`lights_period`). The time axis is clock time when
    ``start`` is known, hours from the recording start otherwise.
    """
    from matplotlib.figure import Figure  # without pyplot: no display, nothing global
    from matplotlib.ticker import FuncFormatter

    hours = onsets / 3600.0
    epoch_hours = epoch_seconds / 3600.0
    fig = Figure(figsize=(11, 4.2))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": (1.3, 1)})
    for run in contiguous_runs(onsets, epoch_seconds):
        _draw_steps(top, bottom, np.append(hours[run], hours[run][-1] + epoch_hours), stages[run],
                    probabilities[run], labelled=run.start == 0)
    top.set_yticks(range(NUM_CLASSES), HYPNOGRAM_ORDER)
    top.set_ylim(-0.5, NUM_CLASSES - 0.5)
    shown = {key: "n/a" if math.isnan(statistics[key]) else f"{statistics[key]:.1f}" for key in ("TST", "SE", "SOL", "WASO")}
    title = (f"{recording_id}: TST {shown['TST']} min, SE {shown['SE']} %, SOL {shown['SOL']} min, "
             f"WASO {shown['WASO']} min")
    if statistics.get("period") == "lights off to lights on":
        title += f"; lights off {_lights_text(statistics, 'off')} - lights on {_lights_text(statistics, 'on')}"
    top.set_title(title, fontsize=10)
    # runs of epochs outside the lights period, shaded over what is drawn so they read as "not counted"
    outside = np.zeros(len(onsets), dtype=bool) if inside is None else ~np.asarray(inside, dtype=bool)
    changes = np.diff(np.concatenate([[0], outside.astype(int), [0]]))
    for first, stop in zip(np.flatnonzero(changes == 1), np.flatnonzero(changes == -1)):
        for axis in (top, bottom):
            axis.axvspan(hours[first], hours[stop - 1] + epoch_hours, color="0.5", alpha=0.3, lw=0, zorder=3)
    bottom.set_ylim(0, 1)
    bottom.set_ylabel("probability")
    bottom.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    bottom.set_xlim(hours[0], hours[-1] + epoch_hours)
    if start is None:
        bottom.set_xlabel("hours from the recording start")
    else:
        # ticks on whole clock hours (half hours for nights under 3 h)
        step = 1.0 if hours[-1] - hours[0] >= 3 else 0.5
        past_midnight = (start.hour * 3600 + start.minute * 60 + start.second) / 3600.0
        first = math.ceil((past_midnight + hours[0]) / step) * step - past_midnight
        bottom.set_xticks(np.arange(first, hours[-1] + epoch_hours, step))
        bottom.xaxis.set_major_formatter(FuncFormatter(
            lambda x, _: (start + datetime.timedelta(hours=x)).strftime("%H:%M")))
        bottom.set_xlabel(f"clock time (recording start {start:%Y-%m-%d %H:%M:%S})")
    fig.tight_layout()
    with script_io.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)


def _checked_outputs(onsets, stages_before, stages_after, probabilities, epoch_numbers):
    """The inputs as arrays of one length, sorted by epoch number; ValueError when they do not fit."""
    onsets = np.asarray(onsets, dtype=np.float64)
    epoch_numbers = np.asarray(epoch_numbers)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    before, after = checked_stages(stages_before), checked_stages(stages_after)
    n = len(onsets)
    if n == 0:
        raise ValueError("a recording needs at least one epoch")
    if not (onsets.shape == epoch_numbers.shape == before.shape == after.shape == (n,)):
        raise ValueError(f"onsets, epoch_numbers, stages_before and stages_after need shape ({n},), got "
                         f"{epoch_numbers.shape}, {before.shape}, {after.shape}")
    if probabilities.shape != (n, NUM_CLASSES):
        raise ValueError(f"probabilities need shape ({n}, {NUM_CLASSES}), got {probabilities.shape}")
    if not (np.isfinite(onsets).all() and np.isfinite(probabilities).all()):
        raise ValueError("onsets and probabilities must be finite")
    order = np.argsort(epoch_numbers, kind="stable")
    if len(np.unique(epoch_numbers)) != n:
        raise ValueError("epoch numbers must be unique")
    if np.any(np.diff(onsets[order]) <= 0):
        raise ValueError("onsets must increase with the epoch number")
    return onsets[order], epoch_numbers[order], before[order], after[order], probabilities[order]


def write_recording_outputs(out_dir: Path, recording_id: str, onsets: np.ndarray, stages_before: np.ndarray,
                            stages_after: np.ndarray, probabilities: np.ndarray, start: datetime.datetime | None,
                            epoch_numbers: np.ndarray, epoch_seconds: float = 30.0, figure: bool = True,
                            lights_off: float | None = None, lights_on: float | None = None,
                            lights_source: str | None = None, quality=None) -> dict:
    """Write one recording's hypnogram table, EDF+ annotations, figure and statistics (the module docstring's files).

    Epochs are put in epoch-number order first; each file is written
    atomically into ``out_dir/<recording_id>/``.

    Parameters
    ----------
    out_dir : Path
        Parent folder of the recording's folder ``recording_id`` (made if absent).
    recording_id : str
    onsets : np.ndarray of float, shape (n,)
        Onset of each epoch, s from the recording start.
    stages_before, stages_after : np.ndarray of int, shape (n,)
        The blend's argmax and the post-processed stage, codes 0..4.
    probabilities : np.ndarray of float, shape (n, 5)
        The blended stage probabilities.
    start : datetime.datetime or None
        Recording start; None when unknown (the synthetic challenge layout).
    epoch_numbers : np.ndarray of int, shape (n,)
        Epoch number of each image (NNNN in ``<ID>_NNNN.png``, from 1).
    epoch_seconds : float
        Epoch length, s.
    figure : bool
        Draw the figure (most of the time taken: seconds per night).
    lights_off, lights_on : float or None
        Lights off and lights on, s from the recording start; None: the
        recording's start (lights off) or end (lights on).
    lights_source : str or None
        Where the lights times came from (written as it is).
    quality : signal_quality.EpochQuality or None
        The recording's signal quality sidecar, if it has one.

    Returns
    -------
    dict
        The statistics written (NaN kept): ``sleep_statistics``' keys, then
        :func:`lights_period`'s, then :func:`quality_statistics`'.

    Raises
    ------
    ValueError
        Arrays of different lengths, a probability table not (n, 5), stage
        codes outside 0..4, repeated epoch numbers, onsets not increasing
        with the epoch number, or no listed epoch in the lights period
        (nothing is written then).
    """
    onsets, epoch_numbers, before, after, probabilities = _checked_outputs(
        onsets, stages_before, stages_after, probabilities, epoch_numbers)
    inside, statistics = _night_statistics(recording_id, onsets, after, epoch_numbers, start, epoch_seconds,
                                           lights_off, lights_on, lights_source, quality)
    _write_night_files(Path(out_dir) / recording_id, recording_id, onsets, epoch_numbers, before, after,
                       probabilities, start, epoch_seconds, inside, statistics, quality, figure)
    return statistics


def _night_statistics(recording_id: str, onsets, stages, epoch_numbers, start, epoch_seconds: float, lights_off,
                      lights_on, lights_source, quality) -> tuple[np.ndarray, dict]:
    """(in the lights period, bool (n,); the statistics) of :func:`write_recording_outputs`' checked arrays.

    Raises ValueError when no epoch lies in the lights period.
    """
    inside = in_lights_period(onsets, epoch_seconds, lights_off, lights_on)
    period = lights_period(start, lights_off, lights_on, lights_source, int((~inside).sum()))
    if not inside.any():
        raise ValueError(f"recording {recording_id}: no epoch has its midpoint between lights off "
                         f"({_lights_text(period, 'off')}) and lights on ({_lights_text(period, 'on')})")
    statistics = {**sleep_statistics(stages[inside], epoch_seconds), **period,
                  **quality_statistics(quality, epoch_numbers)}
    return inside, statistics


def _write_night_files(folder: Path, recording_id: str, onsets, epoch_numbers, before, after, probabilities, start,
                       epoch_seconds: float, inside, statistics: dict, quality, figure: bool) -> None:
    """The files of :func:`write_recording_outputs` into ``folder``, from its checked, epoch-ordered arrays."""
    names = {key: folder / pattern.format(name=recording_id) for key, pattern in OUTPUT_FILES.items()}
    write_hypnogram_table(names["table"], epoch_numbers, onsets, _clock_times(start, onsets), inside, before, after,
                          probabilities, None if quality is None else quality.epoch_columns(epoch_numbers))
    write_annotation_edf(names["edf"], recording_id, stage_annotations(onsets, after, epoch_seconds), start)
    if figure:
        plot_recording(names["figure"], recording_id, onsets, after, probabilities, start, epoch_seconds,
                       statistics, inside)
    with script_io.atomic_path(names["statistics"]) as tmp:
        tmp.write_text(json.dumps(json_ready(statistics), indent=2, allow_nan=False) + "\n")
