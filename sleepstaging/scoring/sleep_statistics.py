"""The sleep statistics of one scored night, and their units.

Stage codes are :data:`psg_layout.STAGES` indices: 0 Wake, 1 N1, 2 N2,
3 N3, 4 REM. The module imports NumPy, the standard library and ``psg_layout``; no torch.

:func:`sleep_statistics` follows the AASM manual's definitions (Iber et al.
2007, *The AASM manual for the scoring of sleep and associated events*,
"sleep scoring data"), in the form YASA's ``yasa.sleep_statistics`` computes
them (Vallat & Walker 2021, eLife 10:e70092; YASA >= 0.5 documentation). The
hypnogram it is given is the time in bed: its first epoch is "lights out", its
last epoch ends at "lights on". ``night_outputs.write_recording_outputs`` gives it the
epochs of the lights period only (AASM: time in bed runs from lights off to
lights on, sleep onset latency counts from lights off): an epoch is inside
when its midpoint lies in ``[lights_off, lights_on)``
(``night_outputs.in_lights_period``); without lights times the whole recording is the
time in bed. All values are minutes unless stated.

* ``TIB`` time in bed: all epochs.
* ``SPT`` sleep period time: first to last epoch of sleep (N1, N2, N3 or
  REM), both included; 0 for a night without sleep.
* ``TST`` total sleep time: N1 + N2 + N3 + REM epochs.
* ``SOL`` sleep onset latency: lights out to the first epoch of any sleep
  (sleep onset; no persistence is required: one N1 epoch is sleep onset).
* ``WASO`` wake after sleep onset: Wake epochs inside the sleep period
  (wake after the final awakening is not counted, as in YASA; a WASO
  defined as TIB - SOL - TST would count it).
* ``SE`` sleep efficiency, %: TST / TIB x 100.
* ``SME`` sleep maintenance efficiency, %: TST / SPT x 100.
* ``Lat_N1``, ``Lat_N2``, ``Lat_N3``, ``Lat_REM``: lights out to the first
  epoch of that stage (YASA's convention: all latencies from lights out).
* ``Lat_REM_from_onset``: sleep onset to the first REM epoch (the AASM
  manual's "stage R latency"), i.e. ``Lat_REM - SOL``.
* ``W``, ``N1``, ``N2``, ``N3``, ``REM``: minutes in each stage (Wake over
  the whole time in bed); ``NREM`` = N1 + N2 + N3.
* ``%N1``, ``%N2``, ``%N3``, ``%REM``, ``%NREM``: percent of TST.
* ``awakenings``: Wake bouts inside the sleep period, i.e. runs of one or
  more consecutive Wake epochs (minimum length one epoch, 30 s) preceded
  and followed by sleep. Wake before sleep onset or after the final
  awakening is not an awakening.
* ``stage_shifts``: changes of stage between successive epochs over the
  whole time in bed, Wake included (W-N1-N1-N2-W has 3).

Undefined values are NaN (``null`` in JSON, via :func:`json_ready`), never
an exception: a latency to a stage that never occurs; SOL, WASO,
awakenings, ``Lat_REM_from_onset``, SME and the stage percentages of a
night without sleep (where SPT and TST are 0 and SE is 0 %); SE of an empty
hypnogram.

Epochs that are not listed (an unscored epoch is drawn but not in the CSV)
count nowhere: the statistics are those of the listed epochs in time order,
each lasting one epoch, so TIB is the listed time and a latency counts the
listed epochs before the first one of its stage.
"""
from __future__ import annotations

import math

import numpy as np

from sleepstaging.data import psg_layout
from sleepstaging.data.psg_layout import NUM_CLASSES, STAGES

WAKE = psg_layout.STAGE_TO_INT["Wake"]


def checked_stages(stages) -> np.ndarray:
    """``stages`` as int64 codes 0..4, shape (n,); ValueError when not a 1-D integer array of such codes."""
    stages = np.asarray(stages)
    if stages.ndim != 1:
        raise ValueError(f"stages must be one-dimensional, got shape {stages.shape}")
    if stages.size and not np.issubdtype(stages.dtype, np.integer):
        raise ValueError(f"stages must be integers 0..{NUM_CLASSES - 1}, got dtype {stages.dtype}")
    if stages.size and (stages.min() < 0 or stages.max() >= NUM_CLASSES):
        raise ValueError(f"stage codes must be 0..{NUM_CLASSES - 1} ({', '.join(STAGES)}), "
                         f"got values from {stages.min()} to {stages.max()}")
    return stages.astype(np.int64)


def _percent(part: float, whole: float) -> float:
    """``100 * part / whole``, NaN when ``whole`` is 0."""
    return 100.0 * part / whole if whole > 0 else math.nan


def _first_minute(mask: np.ndarray, minutes_per_epoch: float) -> float:
    """Minutes before the first epoch where ``mask`` holds; NaN when it never does."""
    found = np.flatnonzero(mask)
    return float(found[0] * minutes_per_epoch) if found.size else math.nan


def _sleep_period(stages: np.ndarray, minutes_per_epoch: float) -> tuple[float, float, float | int]:
    """SPT and WASO (minutes) and the awakenings of ``stages`` (codes, shape (n,)); 0, NaN, NaN without sleep."""
    sleep_epochs = np.flatnonzero(stages != WAKE)
    if not sleep_epochs.size:
        return 0.0, math.nan, math.nan
    period = stages[sleep_epochs[0]:sleep_epochs[-1] + 1]  # begins and ends asleep
    awakenings = int(((period[:-1] != WAKE) & (period[1:] == WAKE)).sum())
    return len(period) * minutes_per_epoch, int((period == WAKE).sum()) * minutes_per_epoch, awakenings


def sleep_statistics(stages: np.ndarray, epoch_seconds: float = 30.0) -> dict:
    """The usual sleep statistics of one night (definitions in the module docstring).

    Parameters
    ----------
    stages : np.ndarray of int, shape (n_epochs,)
        Stage codes 0..4 (Wake, N1, N2, N3, REM) of consecutive epochs in time
        order, from lights out to lights on. May be empty.
    epoch_seconds : float
        Length of one epoch, s.

    Returns
    -------
    dict
        Keys in this order: ``TIB``, ``SPT``, ``TST``, ``SOL``, ``WASO``
        (minutes), ``SE``, ``SME`` (%), ``Lat_N1``, ``Lat_N2``, ``Lat_N3``,
        ``Lat_REM``, ``Lat_REM_from_onset``, ``W``, ``N1``, ``N2``, ``N3``,
        ``REM``, ``NREM`` (minutes), ``%N1``, ``%N2``, ``%N3``, ``%REM``,
        ``%NREM`` (% of TST), ``awakenings``, ``stage_shifts`` (counts).
        Values are Python floats (counts: ints), NaN where undefined.

    Raises
    ------
    ValueError
        Not a 1-D integer array of codes 0..4, or ``epoch_seconds`` not positive.

    Examples
    --------
    W W N1 N2 W N2 REM W at 30 s: TIB 4, SPT 2.5 (N1..REM), TST 2, SOL 1,
    WASO 0.5, SE 50 %, SME 80 %, Lat_REM 3, Lat_REM_from_onset 2,
    1 awakening, 6 stage shifts.
    """
    if not epoch_seconds > 0:
        raise ValueError(f"epoch_seconds must be positive, got {epoch_seconds}")
    stages = checked_stages(stages)
    minutes = epoch_seconds / 60.0
    asleep = stages != WAKE
    tib = len(stages) * minutes
    tst = int(asleep.sum()) * minutes
    spt, waso, awakenings = _sleep_period(stages, minutes)
    sol = _first_minute(asleep, minutes)
    latencies = {f"Lat_{STAGES[s]}": _first_minute(stages == s, minutes) for s in range(1, NUM_CLASSES)}
    durations = {("W" if s == WAKE else STAGES[s]): int((stages == s).sum()) * minutes for s in range(NUM_CLASSES)}
    durations["NREM"] = durations["N1"] + durations["N2"] + durations["N3"]
    return {
        "TIB": tib, "SPT": spt, "TST": tst, "SOL": sol, "WASO": waso,
        "SE": _percent(tst, tib), "SME": _percent(tst, spt),
        **latencies,
        "Lat_REM_from_onset": latencies["Lat_REM"] - sol,  # NaN when either is
        **durations,
        **{f"%{name}": _percent(durations[name], tst) for name in ("N1", "N2", "N3", "REM", "NREM")},
        "awakenings": awakenings,
        "stage_shifts": int((stages[1:] != stages[:-1]).sum()),
    }


def statistic_unit(key: str) -> str:
    """Unit of a :func:`sleep_statistics` key: ``"%"``, ``"count"`` or ``"min"``."""
    if key in ("SE", "SME") or key.startswith("%"):
        return "%"
    return "count" if key in ("awakenings", "stage_shifts") else "min"


def json_ready(value):
    """``value`` with every NaN float replaced by None (JSON ``null``), through dicts and lists."""
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
