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


def make_hypnogram(rng: np.random.Generator, hours: float) -> np.ndarray:
    """Draw one night's stages, unscored leading epochs included.

    Parameters
    ----------
    rng : np.random.Generator
        The recording's hypnogram stream.
    hours : float
        Mean scored length; each night varies by +-7 %. Nights shorter than
        ``NOMINAL_NIGHT_HOURS`` keep the same architecture with every bout
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

    def epochs(low_min: float, high_min: float) -> int:
        return max(1, round(rng.uniform(low_min, high_min) * 2 * squeeze))

    bouts = [(W, epochs(6, 25))]  # sleep-onset latency
    for _ in range(rng.integers(0, 3)):  # drifting in and out of sleep before it settles
        bouts += [(N1, epochs(0.5, 2)), (W, epochs(0.5, 2))]
    bouts.append((N1, epochs(2, 6)))

    def fragmented(stage: int, length: int, per_minute: float, intrusion: int, intrusion_min: tuple) -> list:
        """``length`` epochs of ``stage``, part of them taken by brief intrusions (awakenings, lighter sleep)."""
        pieces, left = [], length
        for _ in range(rng.poisson(per_minute * length / 2)):
            brief = [(intrusion, epochs(*intrusion_min))]
            if intrusion == W:  # waking up from sleep goes back through N1
                brief.append((N1, epochs(0.5, 1.5)))
            taken = sum(n for _, n in brief)
            if left <= taken + 1:
                break
            cut = int(rng.integers(1, left - taken))
            pieces += [(stage, cut), *brief]
            left -= cut + taken
        return pieces + [(stage, left)]

    # NREM-REM cycles of about 90-100 min fill the night; N3 takes a shrinking
    # share of each cycle, REM a growing one
    n3_share, rem_share = (0.45, 0.15, 0.04), (0.14, 0.23, 0.3, 0.35)
    final_wake = epochs(2, 10)
    asleep = max(1, n_scored - final_wake - sum(n for _, n in bouts))
    n_cycles = max(1, round(asleep / epochs(90, 100)))
    cycle_weights = rng.uniform(0.85, 1.15, n_cycles)
    for cycle, length in enumerate(np.maximum(1, np.round(asleep * cycle_weights / cycle_weights.sum())).astype(int)):
        n3 = round(length * n3_share[cycle] * rng.uniform(0.75, 1.25)) if cycle < len(n3_share) else 0
        rem = max(1, round(length * rem_share[min(cycle, len(rem_share) - 1)] * rng.uniform(0.9, 1.1)))
        if rng.random() < 0.5:  # awake between cycles, then falling asleep again
            between = [(W, epochs(1, 6)), (N1, epochs(1, 4))]
        else:
            between = [(N1, epochs(1, 3))]
        n2 = max(1, length - n3 - rem - sum(n for _, n in between))
        if n3 >= 2:
            early_n2 = max(1, round(n2 * rng.uniform(0.55, 0.75)))
            bouts += fragmented(N2, early_n2, 1 / 30, W, (0.5, 1.5))
            bouts += fragmented(N3, n3, 1 / 12, N2, (0.5, 2))
            bouts += fragmented(N2, max(1, n2 - early_n2), 1 / 30, W, (0.5, 1.5))
        else:
            bouts += fragmented(N2, n2, 1 / 30, W, (0.5, 1.5))
        bouts += fragmented(REM, rem, 1 / 40, W, (0.5, 1))
        bouts += between
    asleep_until = max(0, n_scored - final_wake)  # a night of minutes may be all latency
    scored = np.concatenate([np.full(n, stage, dtype=np.int8) for stage, n in bouts])[:asleep_until]
    scored = np.concatenate([scored, np.full(n_scored - len(scored), W, dtype=np.int8)])
    leading = np.full(rng.integers(UNSCORED_LEADING[0], UNSCORED_LEADING[1] + 1), UNSCORED, dtype=np.int8)
    return np.concatenate([leading, scored])


def recording_hypnogram(seed: int, index: int, hours: float) -> np.ndarray:
    """The hypnogram of recording ``index`` (as in the full data set), without its signals."""
    return make_hypnogram(recording_rngs(seed, index)[0], hours)
