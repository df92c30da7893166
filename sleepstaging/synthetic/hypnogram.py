"""The stages of a synthetic night: a realistic adult hypnogram, and the recording's random streams.

A night starts with a few unscored epochs (recorded before lights out),
then a sleep-onset latency, NREM-REM cycles of about 90 minutes with N3
early and REM lengthening towards morning, brief awakenings followed by N1,
and a final awakening. Nights shorter than ``NOMINAL_NIGHT_HOURS`` are the
same architecture squeezed in time. Each recording has two random streams
derived from ``(seed, index)``: the hypnogram draws from the first, so it
can be drawn without the signals, which draw from the second.
"""
from __future__ import annotations

import numpy as np

from sleepstaging.data import psg_layout
from sleepstaging.data.psg_layout import STAGE_TO_INT, STAGES
from sleepstaging.synthetic.scoring import ScoredNight, score_night

UNSCORED = -1  # stage code of the leading epochs recorded before lights out
UNSCORED_LEADING = (2, 15)  # how many leading epochs are unscored (inclusive range)

EPOCH_S = psg_layout.EPOCH_SECONDS
EPOCHS_PER_HOUR = 3600 // EPOCH_S
NOMINAL_NIGHT_HOURS = 6.0  # shorter nights are the same architecture, squeezed in time...
MIN_SQUEEZE = 0.25  # ...down to this factor, so 0.5 h still passes through every stage

W, N1, N2, N3, REM = (STAGE_TO_INT[s] for s in STAGES)


def recording_rngs(seed: int, index: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent ``(hypnogram, signals)`` generators of one recording.

    Derived from ``(seed, index)`` alone, so a recording is the same whatever
    the number of workers, and its hypnogram can be drawn without its signals.
    """
    hypnogram_seq, signal_seq = np.random.SeedSequence([seed, index]).spawn(2)
    return np.random.default_rng(hypnogram_seq), np.random.default_rng(signal_seq)


# --------------------------------------------------------------------------
# Hypnogram: a realistic adult night
# --------------------------------------------------------------------------

# The night's plan: which stage the sleeper gravitates to ("home") epoch by
# epoch. Sleep-onset latency, NREM-REM cycles (N2, N3 taking a shrinking
# share, N2 again, REM taking a growing one), a final awakening.
N3_SHARE_BY_CYCLE = (0.42, 0.22, 0.06)  # share of each cycle planned as N3 (0 from the fourth on)
REM_SHARE_BY_CYCLE = (0.17, 0.27, 0.33, 0.40)  # share of each cycle planned as REM (the last value from then on)
CYCLE_MINUTES = (85, 105)  # planned cycle length, uniform

# Leaving a stage, epoch by epoch. At home the sleeper leaves with
# ``EXIT_AT_HOME[stage]`` per epoch and goes where real nights go
# (``EXIT_SHARES``); away from home it leaves with ``EXIT_AWAY[stage]`` and
# the home stage's share is multiplied by ``PULL_HOME`` (then renormalised).
# EXIT_SHARES start from the shares of each stage's changes in the 30-s
# transition counts of Metzner et al. 2021 (Commun Biol 4:1208), rows and
# columns Wake, N1, N2, N3, REM, moved (within 0.10) towards fewer and longer
# N1 bouts: every stage goes to N1 less often, N2 more often to N3 and REM.
# The labels are a scorer's reading of drifting features (synthetic_scoring),
# and borderline stretches add changes of their own (a brief N1 after wake
# read as Wake, REM with some chin tone read as N1), so the process's Wake
# row leans the other way (Wake to N1 0.915 instead of 0.866): the LABELS then match
# Metzner's shares within 0.10 (bench/hypnogram_structure.py).
EXIT_SHARES = np.array([
    [0.0, 0.915, 0.079, 0.003, 0.003],
    [0.076, 0.0, 0.899, 0.005, 0.020],
    [0.087, 0.390, 0.0, 0.347, 0.176],
    [0.083, 0.294, 0.557, 0.0, 0.066],
    [0.173, 0.580, 0.241, 0.006, 0.0],
])
EXIT_AT_HOME = np.array([0.03, 0.3, 0.025, 0.008, 0.018])
EXIT_AWAY = np.array([0.67, 0.35, 0.45, 0.5, 0.5])
# Night-time wake (away from a planned wake) is left after its first epoch with EXIT_AWAY[W], then ever
# more rarely: survival (1 + d / scale) ** -NIGHT_WAKE_EXPONENT after d epochs, the power law of wake
# bouts (Lo et al. 2002, Europhys Lett 57:625), most of them one epoch and a few of many minutes; past
# 6 min the rate stays at NIGHT_WAKE_MIN_LEAVING: one awakening in 300 lasts 15 min, where an uncapped
# power law would leave healthy nights with awakenings of hours
NIGHT_WAKE_EXPONENT = 1.4
NIGHT_WAKE_MIN_LEAVING = 0.1
PULL_HOME = np.array([  # [stage being left, home stage]
    [1.0, 1.0, 1.5, 1.5, 1.5],
    [10.0, 1.0, 10.0, 10.0, 10.0],
    [10.0, 3.0, 1.0, 10.0, 2.0],
    [1.0, 1.0, 1.0, 1.0, 1.0],
    [1.5, 1.5, 1.5, 1.5, 1.0],
])
# Changes into N3 or REM outside their planned time are rarer than these
# shares say (most of those changes happen as a cycle turns to N3 or REM),
# so N3 and REM bouts stay long: their shares times this, by destination
UNPLANNED_DAMP = np.array([1.0, 1.0, 1.0, 0.25, 0.5])


def night_plan(rng: np.random.Generator, n_scored: int, squeeze: float) -> np.ndarray:
    """The home stage of every scored epoch, shape (n_scored,) of int8."""
    def epochs(low_min: float, high_min: float) -> int:
        return max(1, round(rng.uniform(low_min, high_min) * 2 * squeeze))

    plan = [(W, epochs(6, 25)), (N1, epochs(1, 4))]  # sleep-onset latency, falling asleep
    final_wake = epochs(2, 10)
    asleep = max(1, n_scored - final_wake - sum(n for _, n in plan))
    n_cycles = max(1, round(asleep / epochs(*CYCLE_MINUTES)))
    weights = rng.uniform(0.85, 1.15, n_cycles)
    for cycle, length in enumerate(np.maximum(1, np.round(asleep * weights / weights.sum())).astype(int)):
        n3_share = N3_SHARE_BY_CYCLE[cycle] if cycle < len(N3_SHARE_BY_CYCLE) else 0.0
        n3 = round(length * n3_share * rng.uniform(0.8, 1.2))
        rem = max(1, round(length * REM_SHARE_BY_CYCLE[min(cycle, len(REM_SHARE_BY_CYCLE) - 1)]
                           * rng.uniform(0.9, 1.1)))
        n2 = max(1, length - n3 - rem)
        early_n2 = max(1, round(n2 * rng.uniform(0.3, 0.5))) if n3 else n2
        plan += [(N2, early_n2), (N3, n3), (N2, n2 - early_n2), (REM, rem)]
    homes = np.concatenate([np.full(n, stage, dtype=np.int8) for stage, n in plan if n > 0])[:max(0, n_scored - final_wake)]
    return np.concatenate([homes, np.full(n_scored - len(homes), W, dtype=np.int8)])


def night_wake_leaving(epochs_awake: int) -> float:
    """Chance of leaving night-time wake after ``epochs_awake`` (>= 1) epochs of it: the hazard of the power law
    whose survival is ``(1 + d / scale) ** -NIGHT_WAKE_EXPONENT``, its scale set so that the first epoch ends
    ``EXIT_AWAY[W]`` of the bouts, and never below ``NIGHT_WAKE_MIN_LEAVING``."""
    scale = 1.0 / ((1.0 - EXIT_AWAY[W]) ** (-1.0 / NIGHT_WAKE_EXPONENT) - 1.0)
    power_law = 1.0 - ((scale + epochs_awake) / (scale + epochs_awake - 1)) ** -NIGHT_WAKE_EXPONENT
    return max(NIGHT_WAKE_MIN_LEAVING, power_law)


def leaving_rate(stage: int, home: int, epochs_in_stage: int) -> float:
    """Chance per epoch that the sleeper leaves ``stage`` with ``home`` planned, ``epochs_in_stage`` (>= 1) into it.

    The epochs count from the start of the bout, planned wake included: a sleeper still awake when the planned
    sleep-onset latency ends falls asleep at the rate of a long awakening (sleep onset then comes 1 min later on
    average than with version 5's constant rate, 10.3 against 9.3 min over seeds 1-3, 30 nights of 7 h each).
    """
    if stage == home:
        return EXIT_AT_HOME[stage]
    return night_wake_leaving(epochs_in_stage) if stage == W else EXIT_AWAY[stage]


def walk_plan(rng: np.random.Generator, homes: np.ndarray) -> np.ndarray:
    """The stages a sleeper takes along ``homes``: leaving and returning as real nights do, shape like ``homes``."""
    uniform = rng.random((len(homes), 2))
    stages = np.empty_like(homes)
    stage, epochs_in_stage = W, 1
    for epoch, home in enumerate(homes):
        if uniform[epoch, 0] < leaving_rate(stage, home, epochs_in_stage):
            shares = EXIT_SHARES[stage] * (UNPLANNED_DAMP if stage == N2 else 1.0)
            if stage == home == W:  # asleep through N1 or N2: in adults REM at sleep onset is a sign of narcolepsy
                shares[[N3, REM]] = 0.0
            if stage != home:
                shares[home] = EXIT_SHARES[stage, home] * PULL_HOME[stage, home]
            stage, epochs_in_stage = int(np.searchsorted(np.cumsum(shares / shares.sum()), uniform[epoch, 1],
                                                         side="right")), 0
        stages[epoch] = stage
        epochs_in_stage += 1
    return stages


def make_hypnogram(rng: np.random.Generator, hours: float) -> np.ndarray:
    """Draw one night's stages (the sleep process, before scoring), unscored leading epochs included.

    Parameters
    ----------
    rng : np.random.Generator
        The recording's hypnogram stream.
    hours : float
        Mean scored length; each night varies by +-7 %. Nights shorter than
        ``NOMINAL_NIGHT_HOURS`` keep the same plan with every part
        shortened (down to a factor ``MIN_SQUEEZE``), so a short recording is
        a night in miniature rather than only its first stage.

    Returns
    -------
    np.ndarray of int8, shape (epochs,)
        ``UNSCORED`` (-1) for the 2-15 leading epochs, then stage ints
        (Wake=0 ... REM=4), one per 30-s epoch.
    """
    n_scored = max(1, round(hours * EPOCHS_PER_HOUR * rng.uniform(0.93, 1.07)))
    squeeze = min(1.0, max(MIN_SQUEEZE, hours / NOMINAL_NIGHT_HOURS))
    scored = walk_plan(rng, night_plan(rng, n_scored, squeeze))
    leading = np.full(rng.integers(UNSCORED_LEADING[0], UNSCORED_LEADING[1] + 1), UNSCORED, dtype=np.int8)
    return np.concatenate([leading, scored])


def scored_night(rng: np.random.Generator, hours: float) -> tuple[np.ndarray, ScoredNight]:
    """The sleep process and its scoring, from the recording's hypnogram stream.

    Returns
    -------
    process : np.ndarray of int8, shape (epochs,)
        :func:`make_hypnogram`'s stages (``UNSCORED`` for the leading epochs).
    scoring : ScoredNight
        Features, labels and hypnodensity of every epoch (the leading
        epochs scored as the awake sleeper they are, their labels
        ``UNSCORED``).
    """
    process = make_hypnogram(rng, hours)
    scoring = score_night(rng, np.where(process == UNSCORED, W, process))
    scoring.labels[process == UNSCORED] = UNSCORED
    return process, scoring


def recording_night(seed: int, index: int, hours: float) -> tuple[np.ndarray, ScoredNight]:
    """:func:`scored_night` of recording ``index`` (as in the full data set), without its signals."""
    return scored_night(recording_rngs(seed, index)[0], hours)


def recording_hypnogram(seed: int, index: int, hours: float) -> np.ndarray:
    """The labels of recording ``index`` (as in the full data set), ``UNSCORED`` leading epochs included, shape (epochs,)."""
    return recording_night(seed, index, hours)[1].labels
