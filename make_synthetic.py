"""Make the embedded default data set: synthetic PSG nights in the challenge layout.

    python make_synthetic.py --out DATA --train-subjects 16 --test-subjects 4 --seed 0 [--hours 6.1] [--workers 2] [--edf]

Each recording is one night of one synthetic subject. A hypnogram is drawn
first (sleep-onset latency, NREM-REM cycles of about 90 minutes, N3 early,
REM lengthening towards morning, brief awakenings followed by N1). Every
stage sets the parameters of the physiology (the EEG's aperiodic 1/f
background, steeper with depth; alpha, theta, delta and slow waves, spindles, K-complexes, vertex waves, sawtooth waves, eye movements,
muscle tone, heart rate, breathing); these are smoothed over time so that
features fade in and out across epoch borders, and one continuous night is
generated per signal, as a recorder would store it, then cut into 30-s
epochs and drawn with ``psg_layout.render_epoch``. Subjects differ in
amplitudes, alpha and spindle frequency, noise, electrode artefacts, apnea
severity, snoring and leg movements.

Writes into ``--out``: ``trainset-for_user.csv``, ``testset-for_user.csv``,
``testset-labels.csv`` (answers, for scoring only), ``<ID>/<ID>_NNNN.png``
for every epoch (the first few epochs of each night are unscored and appear
in no CSV), with ``--edf`` also ``edf/<ID>.edf`` and ``edf/<ID>.hypnogram.csv``,
and last ``make_synthetic.json`` (the configuration), which marks the folder
complete: a folder without it was interrupted and is never overwritten.
"""
from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import edfio
import numpy as np
import scipy.fft
from scipy.ndimage import gaussian_filter1d
from scipy.signal import oaconvolve
from scipy.special import ndtri
from tqdm import tqdm

import psg_layout
import script_io
from psg_layout import STAGE_TO_INT, STAGES
from script_io import InputError, where

# --------------------------------------------------------------------------
# Configuration (the defaults are the demo's data set)
# --------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=script_io.HelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("DATA"), help="data root to create")
    parser.add_argument("--train-subjects", type=int, default=16, help="labelled recordings (one night each)")
    parser.add_argument("--test-subjects", type=int, default=4, help="test recordings")
    parser.add_argument("--seed", type=int, default=0, help="master seed; each recording derives its own")
    parser.add_argument("--hours", type=float, default=6.1, help="mean scored length of a night")
    parser.add_argument("--workers", type=int, default=2, help="recordings made in parallel")
    parser.add_argument("--edf", action="store_true", help="also write edf/<ID>.edf and edf/<ID>.hypnogram.csv")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


GENERATOR_VERSION = 4  # bump whenever the same arguments would give different files
MARKER_NAME = "make_synthetic.json"
GENERATION_KEYS = ("train_subjects", "test_subjects", "seed", "hours", "edf", "generator_version")
MAX_HOURS = 24.0  # 4-digit epoch numbers allow 83 h; a night is shorter
ID_FORMAT = "A2026-SY-01-{:04d}"  # the challenge's ID shape (A2019-NX-01-1451)
EDF_DIR = "edf"
EDF_START = datetime.datetime(2026, 1, 5, 22, 30, 0)  # fixed, so EDF bytes are reproducible
UNSCORED = -1  # stage code of the leading epochs recorded before lights out
UNSCORED_LEADING = (2, 15)  # how many leading epochs are unscored (inclusive range)

EPOCH_S = psg_layout.EPOCH_SECONDS
EPOCHS_PER_HOUR = 3600 // EPOCH_S
NOMINAL_NIGHT_HOURS = 6.0  # shorter nights are the same architecture, squeezed in time...
MIN_SQUEEZE = 0.25  # ...down to this factor, so 0.5 h still passes through every stage
TRANSITION_S = 6.0  # Gaussian sigma (s) over which stage parameters fade across epoch borders
EPOCH_JITTER = 0.25  # log-normal sigma of per-epoch variation of each stage parameter...
STEADY_JITTER = {"heart_rate": 0.03, "breath_rate": 0.05, "aperiodic_exponent": 0.06}  # ...except these

W, N1, N2, N3, REM = (STAGE_TO_INT[s] for s in STAGES)

# Stage-dependent physiology (AASM manual, adult norms), one value per stage.
# Amplitudes are multiplied by the subject's own scale for that feature.
STAGE_TABLE = {
    #                     Wake  N1    N2    N3    REM
    "alpha":             (1.0,  0.08, 0.05, 0.03, 0.12),  # x subject alpha (uV rms at O1/O2)
    "aperiodic_exponent": (1.5, 1.7,  1.85, 2.8,  1.8),   # 1/f^x background (Lendner et al. 2020)
    "aperiodic_power":   (3.4,  3.0,  3.0,  3.2,  2.0),   # its power at 10 Hz, uV^2/Hz at C3/C4
    "theta":             (1.5,  8.0,  3.0,  2.0,  4.0),   # uV rms, 4-7.5 Hz bump over the background
    "delta":             (0.0,  0.0,  1.5,  12.0, 0.0),   # uV rms, 0.5-2 Hz bump over the background
    "slow_wave_time":    (0.0,  0.0,  0.0,  0.6,  0.0),   # fraction of time with >75 uV p-p slow waves
    "beta":              (2.0,  1.2,  0.8,  0.5,  1.2),   # uV rms, 15-30 Hz bump (muscle, wake cortex)
    "spindles":          (0.0,  0.3,  5.0,  1.0,  0.0),   # per minute, 11-16 Hz, 0.5-1.5 s
    "k_complexes":       (0.0,  0.2,  1.6,  0.3,  0.0),   # per minute
    "vertex_waves":      (0.0,  4.0,  0.4,  0.0,  0.0),   # per minute
    "sawtooth":          (0.0,  0.0,  0.0,  0.0,  1.5),   # bursts per minute
    "rapid_eye":         (0.0,  0.0,  0.0,  0.0,  3.0),   # bursts of rapid eye movements per minute
    "slow_eye":          (0.4,  0.6,  0.1,  0.0,  0.0),   # share of time with slow rolling eye movements (SLOW_EYE_UV)
    "blinks":            (12.0, 0.3,  0.0,  0.0,  0.0),   # per minute with eyes open; they stop as N1 begins
    "saccades":          (20.0, 0.2,  0.0,  0.0,  0.0),   # per minute with eyes open
    "chin_emg":          (1.0,  0.5,  0.4,  0.35, 0.1),  # x subject chin tone (uV rms)
    "twitches":          (0.0,  0.0,  0.0,  0.0,  6.0),   # phasic chin twitches per minute
    "movements":         (2.0,  0.2,  0.05, 0.02, 0.05),  # body movements per minute
    "heart_rate":        (1.12, 1.06, 1.0,  0.96, 1.08),  # x subject sleeping heart rate
    "breath_rate":       (1.12, 1.05, 1.0,  0.97, 1.12),  # x subject breathing rate
    "breath_irregular":  (0.25, 0.12, 0.06, 0.02, 0.3),   # relative variation of breath rate and depth
    "breath_depth":      (1.0,  0.85, 0.8,  0.9,  0.7),
    "apnea":             (0.0,  1.0,  1.0,  0.3,  1.8),   # x subject apnea-hypopnea index
    "snoring":           (0.0,  0.5,  1.0,  1.0,  0.3),   # x subject snoring loudness
    "leg_movements":     (0.8,  0.3,  0.2,  0.05, 0.05),  # per minute
    "arousals":          (0.0,  0.25, 0.15, 0.05, 0.15),  # spontaneous arousals per minute
}

# Each stage's parameters lie up to this share of the way towards a neighbour stage.
BLUR_TOWARDS = {
    W: ((N1, 0.1),),
    N1: ((W, 0.1), (N2, 0.25)),
    N2: ((N1, 0.15), (N3, 0.15)),
    N3: ((N2, 0.25),),
    REM: ((N1, 0.2),),
}

# EDF channels: the image rows, except that both SpO2 rows come from one channel.
SPO2 = "SpO2"
SPO2_ROWS = ("SpO2 (85-100 %)", "SpO2 (40-100 %)")
EDF_CHANNELS = tuple(dict.fromkeys(SPO2 if name in SPO2_ROWS else name for name in psg_layout.SIGNAL_NAMES))
# Physical range of each EDF channel: wide enough for every synthetic value,
# fine enough that 16-bit steps are under 1/100 pixel at 1080 rows.
PHYSICAL_RANGE = {
    "X Axis": (-4.0, 4.0), "Y Axis": (-4.0, 4.0), "Z Axis": (-4.0, 4.0),
    "C3-M2": (-1000.0, 1000.0), "C4-M1": (-1000.0, 1000.0), "O1-M2": (-1000.0, 1000.0), "O2-M1": (-1000.0, 1000.0),
    "E1-M2": (-1000.0, 1000.0), "E2-M1": (-1000.0, 1000.0), "Chin EMG": (-500.0, 500.0), "ECG": (-5.0, 5.0),
    "Flow": (-5.0, 5.0), "Thermistor": (-5.0, 5.0), "Thorax": (-5.0, 5.0), "Abdomen": (-5.0, 5.0),
    "Snore": (-5.0, 5.0), "Audio Volume": (0.0, 130.0), "Left Leg EMG": (-500.0, 500.0),
    "Right Leg EMG": (-500.0, 500.0), SPO2: (0.0, 100.0),
}


def channel_rate(channel: str) -> float:
    """Native sampling rate (Hz) of an EDF channel, from psg_layout's table."""
    return psg_layout.SIGNAL_BY_NAME[SPO2_ROWS[0] if channel == SPO2 else channel].fs


def channel_unit(channel: str) -> str:
    """Physical unit of an EDF channel, from psg_layout's table."""
    return psg_layout.SIGNAL_BY_NAME[SPO2_ROWS[0] if channel == SPO2 else channel].unit


# --------------------------------------------------------------------------
# Recording identity and random streams
# --------------------------------------------------------------------------
def recording_id(index: int) -> str:
    """Challenge-shaped ID of the recording with 0-based global ``index`` (train first, then test)."""
    return ID_FORMAT.format(index + 1)


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


# --------------------------------------------------------------------------
# Subjects
# --------------------------------------------------------------------------
@dataclass
class Subject:
    """Traits of one synthetic sleeper (amplitudes in uV unless noted)."""

    eeg_gain: float          # overall EEG amplitude (age, skull)
    alpha_uv: float          # wake alpha rms at O1/O2 with eyes closed
    alpha_hz: float
    eyes_closed: float       # fraction of quiet wake spent with eyes closed
    spindle_hz: float
    spindle_uv: float        # spindle peak amplitude at C3/C4
    slow_wave_uv: float      # slow-wave rms at C3/C4 early in the night
    noise_uv: float          # electrode and amplifier noise (white on the EEG at 0.3 x, pink on the EOG)
    eye_gain: float
    chin_uv: float           # wake chin EMG rms
    leg_uv: float            # resting leg EMG rms
    plm: bool                # periodic limb movements in light sleep
    heart_bpm: float         # heart rate in N2
    ecg_mv: float            # R-wave amplitude
    ecg_in_chin: float       # cardiac artefact on the chin EMG (fraction of ECG)
    ecg_in_legs: float       # cardiac artefact on the leg EMG
    breath_per_min: float    # breathing rate in N2
    flow_gain: float
    ahi: float               # apnea-hypopnea events per hour of sleep
    central_fraction: float
    hypopnea_fraction: float
    spo2_baseline: float
    snorer: float            # snoring loudness, 0 for non-snorers
    room_db: float           # background noise of the room
    popping_channel: int     # EEG channel (0-3) with a loose electrode, -1 for none
    pops_per_min: float
    sweaty_channel: int      # EEG channel with sweat sway, -1 for none


def draw_subject(rng: np.random.Generator) -> Subject:
    """One adult sleeper; ranges are typical adult values (15 % produce little alpha, 20 % have moderate OSA)."""
    low_alpha = rng.random() < 0.15  # some adults produce little alpha
    ahi = float(rng.choice([rng.uniform(0, 5), rng.uniform(5, 15), rng.uniform(15, 35)], p=[0.45, 0.35, 0.2]))
    return Subject(
        eeg_gain=rng.lognormal(0, 0.2),
        alpha_uv=rng.uniform(15, 32) * (0.3 if low_alpha else 1.0),
        alpha_hz=rng.uniform(8.5, 11.5),
        eyes_closed=rng.uniform(0.3, 0.8),
        spindle_hz=rng.uniform(12.0, 14.5),
        spindle_uv=rng.uniform(20, 40),
        slow_wave_uv=rng.uniform(32, 55),
        noise_uv=rng.uniform(3, 7),
        eye_gain=rng.lognormal(0, 0.2),
        chin_uv=rng.uniform(4, 10),
        leg_uv=rng.uniform(4, 9),
        plm=bool(rng.random() < 0.25),
        heart_bpm=rng.uniform(52, 72),
        ecg_mv=rng.uniform(0.5, 1.3),
        ecg_in_chin=rng.choice([0.0, rng.uniform(0.005, 0.02)], p=[0.6, 0.4]),
        ecg_in_legs=rng.choice([0.0, rng.uniform(0.005, 0.02)], p=[0.6, 0.4]),
        breath_per_min=rng.uniform(12, 17),
        flow_gain=rng.uniform(0.6, 1.2),
        ahi=ahi,
        central_fraction=rng.uniform(0, 0.2),
        hypopnea_fraction=rng.uniform(0.3, 0.7),
        spo2_baseline=rng.uniform(94, 98),
        snorer=rng.choice([0.0, rng.uniform(0.3, 1.0)], p=[0.4, 0.6]),
        room_db=rng.uniform(38, 48),
        popping_channel=int(rng.integers(0, 4)) if rng.random() < 0.3 else -1,
        pops_per_min=rng.uniform(0.1, 0.6),
        sweaty_channel=int(rng.integers(0, 4)) if rng.random() < 0.2 else -1,
    )


# --------------------------------------------------------------------------
# Building blocks: control curves, noise, events
# --------------------------------------------------------------------------
def smooth(values: np.ndarray, sigma_samples: float) -> np.ndarray:
    """Gaussian smoothing along the only axis, ``sigma_samples`` wide, ends held."""
    return gaussian_filter1d(values, sigma_samples, mode="nearest")


def upsample(per_second: np.ndarray, fs: float) -> np.ndarray:
    """Linear interpolation of a 1-Hz control curve onto ``fs`` samples per second."""
    n = int(round(len(per_second) * fs))
    return np.interp((np.arange(n) + 0.5) / fs, np.arange(len(per_second)) + 0.5, per_second)


def stage_controls(stages: np.ndarray, rng: np.random.Generator) -> dict:
    """Per-second stage parameters, blurred towards a neighbour stage, jittered, faded across borders.

    Sleep is a continuum that scorers cut into stages, so each epoch's
    parameters lie part of the way (a random share up to ``BLUR_TOWARDS``)
    towards a neighbouring stage: drowsy wake looks like N1, light N1 like
    wake, deep N1 like N2, and so on. This is what makes N1 hard.

    Returns a dict of ``STAGE_TABLE`` names -> float arrays of shape
    (epochs * 30,), one value per second.
    """
    scored = np.where(stages == UNSCORED, W, stages)  # before lights out the subject is awake
    neighbour, share = np.empty_like(scored), np.empty(len(scored))
    for epoch, stage in enumerate(scored):
        options = BLUR_TOWARDS[stage]
        neighbour[epoch], most = options[rng.integers(len(options))]
        share[epoch] = rng.uniform(0, most)
    controls = {}
    for name, per_stage in STAGE_TABLE.items():
        table = np.asarray(per_stage)
        jitter = rng.lognormal(0, STEADY_JITTER.get(name, EPOCH_JITTER), len(stages))
        per_epoch = ((1 - share) * table[scored] + share * table[neighbour]) * jitter
        controls[name] = smooth(np.repeat(per_epoch, EPOCH_S), TRANSITION_S)
    return controls


def slow_noise(rng: np.random.Generator, n: int, sigma_samples: float) -> np.ndarray:
    """Unit-variance Gaussian noise smoothed over ``sigma_samples``."""
    noise = smooth(rng.standard_normal(n), sigma_samples)
    return noise / (noise.std() + 1e-12)


def gate_with_fraction(rng: np.random.Generator, fraction: np.ndarray, sigma_samples: float) -> np.ndarray:
    """A 0..1 on/off curve that is on for about ``fraction`` of the time, locally.

    A smoothed Gaussian process is compared with its ``1 - fraction``
    quantile, so on-periods last several ``sigma_samples`` and their share
    follows ``fraction`` (an array of the same length).
    """
    threshold = ndtri(1 - np.clip(fraction, 1e-4, 1 - 1e-4))
    return 1 / (1 + np.exp(-(slow_noise(rng, len(fraction), sigma_samples) - threshold) / 0.15))


def band_noise(rng: np.random.Generator, n: int, fs: float, shape, channels: int = 1, shared: float = 0.0):
    """Coloured Gaussian noise, unit rms per channel, shape (channels, n).

    ``shape(f)`` gives the amplitude spectrum at frequencies ``f`` (Hz);
    ``shared`` is the fraction of power common to all channels, as for one
    generator seen by several electrodes. One noise is drawn per call (one
    inverse FFT over the night, the costly step); each channel's own part is
    that noise read at a different point of the night, a fifth of the night
    or more apart, so the parts are independent over any stretch of time
    that matters.
    """
    length = scipy.fft.next_fast_len(n, real=True)
    gain = shape(np.fft.rfftfreq(length, 1 / fs)).astype(np.float32)
    used = np.flatnonzero(gain)
    spectrum = np.zeros(len(gain), dtype=np.complex64)
    spectrum[used] = (rng.standard_normal(len(used), dtype=np.float32)
                      + 1j * rng.standard_normal(len(used), dtype=np.float32)) * gain[used]
    noise = scipy.fft.irfft(spectrum, length)[:n]
    noise /= noise.std() + 1e-12
    if channels == 1:
        return noise[None, :]
    out = np.empty((channels, n), dtype=np.float32)
    spacing = n // (channels + 1)
    for channel in range(channels):
        shift = (channel + 1) * spacing
        out[channel, :shift] = noise[n - shift:]
        out[channel, shift:] = noise[:n - shift]
        out[channel] *= np.sqrt(1 - shared)
        out[channel] += np.sqrt(shared) * noise
    return out


def band(low: float, high: float, edge: float = 0.5):
    """Amplitude spectrum of a band with raised-cosine edges ``edge`` Hz wide."""
    def shape(f):
        rise = np.clip((f - (low - edge / 2)) / edge, 0, 1)
        fall = np.clip(((high + edge / 2) - f) / edge, 0, 1)
        return (0.5 - 0.5 * np.cos(np.pi * rise)) * (0.5 - 0.5 * np.cos(np.pi * fall))
    return shape


def pink(low: float, high: float):
    """1/f power spectrum between ``low`` and ``high`` Hz."""
    def shape(f):
        return np.where((f >= low) & (f <= high), 1 / np.sqrt(np.maximum(f, low)), 0.0)
    return shape


EXPONENT_GRID = (1.0, 1.5, 2.0, 2.5, 3.0)  # power laws mixed into the EEG background
PIVOT_HZ = 10.0  # each grid component has unit power spectral density here
KNEE_HZ = 1.0  # below the knee the background flattens, as real EEG spectra do
BACKGROUND_HZ = (0.3, 45.0)  # the background's band


def power_law(exponent: float):
    """Amplitude spectrum of a ``1 / (KNEE_HZ^2 + f^2)^(exponent / 2)`` power spectrum, 1 at ``PIVOT_HZ``.

    Above the knee the power falls as ``1 / f^exponent`` (the "fixed" aperiodic
    model of FOOOF/specparam), below it the spectrum flattens (their "knee").
    """
    def shape(f):
        inside = (f >= BACKGROUND_HZ[0]) & (f <= BACKGROUND_HZ[1])
        ratio = (KNEE_HZ ** 2 + f ** 2) / (KNEE_HZ ** 2 + PIVOT_HZ ** 2)
        return np.where(inside, ratio ** (-exponent / 4), 0.0)
    return shape


def power_law_variance(exponent: float, fs: float) -> float:
    """Variance of ``power_law(exponent)`` noise with unit power density at the pivot: its power over frequency.

    Unit-rms noise of that shape times ``sqrt(p * power_law_variance(...))``
    has a power spectral density of ``p`` at ``PIVOT_HZ``.
    """
    f = np.linspace(0, fs / 2, 200_001)
    return float(np.sum(power_law(exponent)(f) ** 2) * (f[1] - f[0]))


def grid_shares(exponent: np.ndarray) -> np.ndarray:
    """Power share of each ``EXPONENT_GRID`` component that mixes to ``exponent``, shape (grid, len(exponent)).

    The two grid exponents around each wanted value share the power linearly;
    mixing neighbours half a unit apart gives a spectrum close to the power law
    in between.
    """
    grid = np.asarray(EXPONENT_GRID)
    position = np.interp(np.clip(exponent, grid[0], grid[-1]), grid, np.arange(len(grid)))
    return np.clip(1 - np.abs(np.arange(len(grid))[:, None] - position[None, :]), 0, 1)


def event_times(rng: np.random.Generator, per_minute: np.ndarray) -> np.ndarray:
    """Poisson event times (s) with a rate given per second of the night (events/min)."""
    counts = rng.poisson(np.maximum(per_minute, 0) / 60)
    return np.repeat(np.arange(len(per_minute)), counts) + rng.random(counts.sum())


def stamp(target: np.ndarray, fs: float, start_s: float, waveform: np.ndarray) -> None:
    """Add ``waveform`` into ``target`` from ``start_s`` on, cut at the ends."""
    first = int(round(start_s * fs))
    lo, hi = max(first, 0), min(first + len(waveform), len(target))
    if hi > lo:
        target[lo:hi] += waveform[lo - first:hi - first]


def boxcar(n_seconds: int, starts: np.ndarray, durations: np.ndarray) -> np.ndarray:
    """1 during each (start, start + duration) interval, 0 elsewhere, one value per second."""
    edges = np.zeros(n_seconds + 1)
    first = np.clip(np.round(starts).astype(int), 0, n_seconds)
    last = np.clip(np.round(starts + durations).astype(int), 0, n_seconds)
    np.add.at(edges, first, 1)
    np.add.at(edges, last, -1)
    return np.minimum(np.cumsum(edges)[:n_seconds], 1)


# --------------------------------------------------------------------------
# The night's events shared by several signals
# --------------------------------------------------------------------------
@dataclass
class NightEvents:
    """Events that show on several channels, all per second of the night."""

    arousal: np.ndarray          # 0..1 arousal gate (EEG speeds up, tone and heart rate rise)
    movement: np.ndarray         # 0..1 body movement gate
    movement_starts: np.ndarray  # s
    flow: np.ndarray             # airflow factor (apneas ~0, hypopneas ~0.4)
    effort: np.ndarray           # breathing effort factor (central apneas ~0)
    paradox: np.ndarray          # 0..1 abdomen out of phase (obstructed)
    recovery: np.ndarray         # 0..1 deep breaths after an event
    desaturation: np.ndarray     # SpO2 drop (%)


def night_events(stages: np.ndarray, controls: dict, subject: Subject, rng: np.random.Generator) -> NightEvents:
    """Apneas and hypopneas (with their recovery breaths, arousals and SpO2 dips), arousals, body movements.

    Obstructive apneas keep the effort going with the abdomen out of phase,
    central ones stop it; SpO2 falls 10 s into an event and bottoms out 15 s
    after its end (the circulation delay), deeper for longer events and in REM.
    """
    n_sec = len(stages) * EPOCH_S
    stage_per_s = np.repeat(np.where(stages == UNSCORED, W, stages), EPOCH_S)

    # apneas and hypopneas: Poisson starts, at least 10 s of breathing between events
    flow, effort, paradox = np.ones(n_sec), np.ones(n_sec), np.zeros(n_sec)
    recovery, desaturation = np.zeros(n_sec), np.zeros(n_sec)
    arousal_starts = list(event_times(rng, controls["arousals"]))
    seconds = np.arange(n_sec)
    free_from = 0.0
    for start in event_times(rng, controls["apnea"] * subject.ahi / 60):
        if start < free_from:
            continue
        in_rem = stage_per_s[int(start)] == REM
        duration = rng.uniform(10, 30) * (1.3 if in_rem else 1.0)
        end = start + duration
        kind = rng.choice(3, p=[1 - subject.central_fraction - subject.hypopnea_fraction,
                                subject.central_fraction, subject.hypopnea_fraction])
        span = slice(int(start), min(int(end) + 1, n_sec))
        flow[span] = (0.05, 0.03, rng.uniform(0.3, 0.55))[kind]
        effort[span] = (rng.uniform(0.9, 1.2), 0.05, rng.uniform(0.6, 0.8))[kind]
        if kind == 0:
            paradox[span] = 1
        recovery[int(end):int(end) + 8] = 1
        if rng.random() < 0.7:
            arousal_starts.append(end)
        depth = duration * rng.uniform(0.15, 0.35) * (1.3 if in_rem else 1.0) * (0.5 if kind == 2 else 1.0)
        nadir = end + 15  # circulation delay from lung to finger
        falling = (seconds - (start + 10)) / max(nadir - start - 10, 1)
        rising = 1 - (seconds - nadir) / 12
        profile = np.clip(np.minimum(falling, rising), 0, 1) * min(depth, 15)
        desaturation = np.maximum(desaturation, profile)
        free_from = end + 10
    flow, effort, paradox, recovery = (smooth(curve, 1.5) for curve in (flow, effort, paradox, recovery))

    arousal_starts = np.sort(np.asarray(arousal_starts))
    arousal = smooth(boxcar(n_sec, arousal_starts, rng.uniform(3, 12, len(arousal_starts))), 1.0)
    # body movements, and a share of arousals that move the sleeper
    movement_starts = np.sort(np.concatenate([
        event_times(rng, controls["movements"]),
        arousal_starts[rng.random(len(arousal_starts)) < 0.2],
    ]))
    movement = smooth(boxcar(n_sec, movement_starts, rng.uniform(1, 5, len(movement_starts))), 0.5)
    return NightEvents(np.clip(arousal, 0, 1), np.clip(movement, 0, 1), movement_starts,
                       flow, effort, paradox, recovery, desaturation)


# --------------------------------------------------------------------------
# Signals
# --------------------------------------------------------------------------
EEG_NAMES = ("C3-M2", "C4-M1", "O1-M2", "O2-M1")
CENTRAL = np.array([1.0, 1.0, 0.0, 0.0])
OCCIPITAL = 1 - CENTRAL


# Transients of the sleep EEG, each drawn fresh per event, in uV before the subject's EEG gain.
def spindle(rng: np.random.Generator, fs: float, subject: Subject) -> np.ndarray:
    """A sleep spindle: 0.5-1.5 s of the subject's sigma rhythm (11.5-15 Hz) under a Hann envelope."""
    t = np.arange(int(rng.uniform(0.5, 1.5) * fs)) / fs
    frequency = subject.spindle_hz + rng.uniform(-0.5, 0.5)
    envelope = subject.spindle_uv * rng.uniform(0.6, 1.2) * np.hanning(len(t))
    return envelope * np.sin(2 * np.pi * frequency * t + rng.uniform(0, 2 * np.pi))


def k_complex(rng: np.random.Generator, fs: float, subject: Subject) -> np.ndarray:
    """A K-complex: a sharp negative wave followed by a slower positive one, about 1 s in all."""
    t = np.arange(int(1.2 * fs)) / fs
    negative = rng.uniform(70, 150) * np.exp(-(((t - 0.2) / 0.07) ** 2))
    positive = rng.uniform(40, 80) * np.exp(-(((t - 0.55) / 0.15) ** 2))
    return positive - negative


def vertex_wave(rng: np.random.Generator, fs: float, subject: Subject) -> np.ndarray:
    """A vertex sharp wave of N1: a sharp negative peak (under 0.5 s) with a small positive tail."""
    t = np.arange(int(0.5 * fs)) / fs
    peak = rng.uniform(40, 90)
    return 0.3 * peak * np.exp(-(((t - 0.25) / 0.08) ** 2)) - peak * np.exp(-(((t - 0.1) / 0.04) ** 2))


def sawtooth_train(rng: np.random.Generator, fs: float, subject: Subject) -> np.ndarray:
    """REM sawtooth waves: 1.5-5 s of 2-5 Hz triangular waves, slow rise and fast fall."""
    phase = (np.arange(int(rng.uniform(1.5, 5) * fs)) / fs * rng.uniform(2, 5)) % 1
    teeth = np.where(phase < 0.75, phase / 0.75, (1 - phase) / 0.25) * 2 - 1
    return rng.uniform(20, 45) * np.hanning(len(phase)) * teeth


def eeg(stages, controls, events, subject, rng) -> np.ndarray:
    """C3-M2, C4-M1, O1-M2, O2-M1 in uV at their native rate, shape (4, samples).

    An aperiodic 1/f^x background whose exponent and 10-Hz power follow the
    stage second by second (``aperiodic_exponent``, ``aperiodic_power``),
    plus rhythms as coloured noise with a per-second rms (alpha blocked when
    the eyes are open, slow waves gated to their share of time and declining
    over the night), all partly shared between leads; transients are added at
    Poisson times with their own spatial weights; then movement artefact,
    a popping electrode and sweat sway where the subject has them.
    """
    fs = channel_rate("C3-M2")
    n_sec = len(stages) * EPOCH_S
    n = int(n_sec * fs)
    gain = subject.eeg_gain
    eyes_closed = gate_with_fraction(rng, np.full(n_sec, subject.eyes_closed), 15)
    alpha = subject.alpha_uv * (controls["alpha"] * (0.15 + 0.85 * eyes_closed) + 0.6 * events.arousal)
    slow_wave_gate = gate_with_fraction(rng, np.clip(controls["slow_wave_time"], 0, 0.95), 3)
    slow_waves = subject.slow_wave_uv * slow_wave_gate * np.exp(-np.arange(n_sec) / 3600 / 12)  # homeostatic decline
    # the aperiodic background: neighbouring power laws mixed to the stage's exponent and power at 10 Hz
    exponent = controls["aperiodic_exponent"] - 0.4 * events.arousal
    power_10hz = gain ** 2 * controls["aperiodic_power"] * (1 + events.arousal)
    rhythms = [  # (spectrum, spatial weights, shared fraction, rms per second)
        *((power_law(grid_exponent), CENTRAL + 0.8 * OCCIPITAL, 0.4,
           np.sqrt(share * power_10hz * power_law_variance(grid_exponent, fs)))
          for grid_exponent, share in zip(EXPONENT_GRID, grid_shares(exponent))),
        (band(subject.alpha_hz - 1, subject.alpha_hz + 1), 0.4 * CENTRAL + OCCIPITAL, 0.7, alpha),
        (band(4, 7.5), CENTRAL + 0.8 * OCCIPITAL, 0.5, gain * controls["theta"]),
        (band(0.5, 2, 0.4), CENTRAL + 0.75 * OCCIPITAL, 0.8, gain * (controls["delta"] + slow_waves)),
        (band(15, 30, 2), CENTRAL + 0.8 * OCCIPITAL, 0.3, gain * controls["beta"] * (1 + 2 * events.arousal)),
    ]
    out = subject.noise_uv * band_noise(rng, n, fs, band(0.3, 45), channels=4, shared=0.0) * 0.3
    for spectrum, weights, shared, rms in rhythms:
        out += weights[:, None] * band_noise(rng, n, fs, spectrum, 4, shared) * upsample(rms, fs)

    def add(times, make_waveform, weights):
        for t in times:
            waveform = gain * make_waveform(rng, fs, subject)
            for channel in range(4):
                stamp(out[channel], fs, t, waveform * weights[channel] * rng.uniform(0.85, 1.15))

    add(event_times(rng, controls["spindles"]), spindle, CENTRAL + 0.45 * OCCIPITAL)
    k_complexes = event_times(rng, controls["k_complexes"])
    add(k_complexes, k_complex, CENTRAL + 0.6 * OCCIPITAL)
    add(k_complexes[rng.random(len(k_complexes)) < 0.4] + 0.6, spindle, CENTRAL + 0.45 * OCCIPITAL)
    add(event_times(rng, controls["vertex_waves"]), vertex_wave, CENTRAL + 0.35 * OCCIPITAL)
    add(event_times(rng, controls["sawtooth"]), sawtooth_train, CENTRAL + 0.5 * OCCIPITAL)

    # movement: muscle and electrode artefact on every lead
    out += 25 * band_noise(rng, n, fs, band(20, 45, 5), 4, 0.6) * upsample(events.movement, fs)
    if subject.popping_channel >= 0:
        t = np.arange(int(1.5 * fs)) / fs
        for start in event_times(rng, np.full(n_sec, subject.pops_per_min)):
            pop = rng.choice([-1, 1]) * rng.uniform(80, 250) * np.exp(-t / 0.3)
            stamp(out[subject.popping_channel], fs, start, pop)
    if subject.sweaty_channel >= 0:
        sway = band_noise(rng, n, fs, band(0.1, 0.5, 0.1))[0]
        out[subject.sweaty_channel] += 35 * sway * upsample(gate_with_fraction(rng, np.full(n_sec, 0.3), 300), fs)
    return out


EOG_HIGH_PASS_HZ = 0.3  # low-frequency filter of the EOG amplifier (AASM recommends 0.3 Hz)
SLOW_EYE_UV = 20.0  # rms of slow eye movements while they roll, after that filter, before the subject's eye gain


def high_pass(f: np.ndarray, corner_hz: float) -> np.ndarray:
    """Amplitude response of a first-order high-pass filter with its -3 dB corner at ``corner_hz`` (Hz)."""
    return f / np.hypot(f, corner_hz)


def eog(stages, controls, events, subject, eeg_signals, rng) -> np.ndarray:
    """E1-M2, E2-M1 in uV, shape (2, samples).

    Eye movements swing the two leads in opposite directions (out of phase);
    frontal EEG (slow waves, K-complexes) reaches both in phase.
    """
    fs = channel_rate("E1-M2")
    n_sec = len(stages) * EPOCH_S
    n = int(n_sec * fs)
    eyes = np.zeros(n)
    eyes_open = 1 - gate_with_fraction(rng, np.full(n_sec, subject.eyes_closed), 15)
    step_t = np.arange(int(3 * fs)) / fs

    def eye_step(size):  # a fast movement seen through the 0.3-Hz high-pass of the EOG amplifier
        return size * (1 - np.exp(-step_t / 0.03)) * np.exp(-step_t / 0.6)

    for start in event_times(rng, controls["saccades"] * eyes_open):
        stamp(eyes, fs, start, eye_step(rng.choice([-1, 1]) * rng.uniform(30, 110)))
    blink_t = np.arange(int(0.6 * fs)) / fs
    for start in event_times(rng, controls["blinks"] * eyes_open):
        tau = rng.uniform(0.06, 0.1)
        stamp(eyes, fs, start, rng.uniform(100, 250) * (blink_t / tau) * np.exp(1 - blink_t / tau))
    late_night = 0.6 + 0.8 * np.arange(n_sec) / n_sec  # REM density rises towards morning
    for start in event_times(rng, controls["rapid_eye"] * late_night):
        offset = start
        for _ in range(rng.integers(1, 7)):  # a burst of rapid eye movements
            stamp(eyes, fs, offset, eye_step(rng.choice([-1, 1]) * rng.uniform(80, 220)))
            offset += rng.uniform(0.3, 1.0)
    # slow eye movements (drowsy eyes-closed wake, N1): episodes, not a steady roll, of 0.1-0.5 Hz
    # swings (AASM: initial deflection over 0.5 s), seen through the same high-pass as the steps; a
    # steady 84-uV rms roll through all of N1 gave it 8 times the EOG power of wake, which any stager
    # trained on real nights reads as wake (blinks, saccades)
    rolling = band_noise(rng, n, fs, lambda f: band(0.1, 0.5, 0.1)(f) * high_pass(f, EOG_HIGH_PASS_HZ))[0]
    rolling_on = gate_with_fraction(rng, np.clip(controls["slow_eye"], 0, 0.95), 8)
    eyes += SLOW_EYE_UV * rolling * upsample(rolling_on, fs)
    eyes *= subject.eye_gain

    frontal = 0.5 * (eeg_signals[0] + eeg_signals[1])
    noise = subject.noise_uv * band_noise(rng, n, fs, pink(0.3, 45), 2, 0.2)
    muscle = 30 * band_noise(rng, n, fs, band(20, 45, 5), 2, 0.6) * upsample(events.movement, fs)
    drift = 10 * band_noise(rng, n, fs, band(0.03, 0.25, 0.04), 2)  # electrode drift (skin potentials), each lead its own
    return np.stack([eyes + 0.45 * frontal, -eyes + 0.45 * frontal]) + noise + muscle + drift


def emg_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """Unit-rms muscle noise: white at the EMG sampling rate (muscle power spans 10-100 Hz)."""
    return rng.standard_normal(n, dtype=np.float32)


def chin_emg(stages, controls, events, subject, ecg_signal, rng) -> np.ndarray:
    """Chin EMG in uV: tone by stage (lowest in REM), REM twitches, movement bursts."""
    fs = channel_rate("Chin EMG")
    n_sec = len(stages) * EPOCH_S
    rms = subject.chin_uv * controls["chin_emg"] * (1 + 1.5 * events.arousal) + 40 * events.movement + 0.8
    out = emg_noise(rng, int(n_sec * fs)) * upsample(rms, fs)
    twitch_len = int(0.25 * fs)
    for start in event_times(rng, controls["twitches"]):
        length = rng.integers(int(0.05 * fs), twitch_len)
        stamp(out, fs, start, rng.uniform(8, 25) * np.hanning(length) * emg_noise(rng, length))
    return out + subject.ecg_in_chin * 1000 * ecg_signal  # ECG in mV, EMG in uV


def leg_emg(stages, controls, events, subject, ecg_signal, rng) -> np.ndarray:
    """Left and right leg EMG in uV, shape (2, samples): rest noise, leg movements, cardiac artefact."""
    fs = channel_rate("Left Leg EMG")
    n_sec = len(stages) * EPOCH_S
    n = int(n_sec * fs)
    out = subject.leg_uv * np.stack([emg_noise(rng, n), emg_noise(rng, n)])
    starts = list(event_times(rng, controls["leg_movements"] + 6 * events.movement / 60))
    if subject.plm:  # trains of periodic limb movements, 20-40 s apart, in light sleep
        light = np.isin(np.repeat(stages, EPOCH_S), (N1, N2))
        for train in event_times(rng, 0.08 * light):
            starts += list(train + np.cumsum(rng.uniform(20, 40, rng.integers(4, 15))))
    for start in starts:
        length = int(rng.uniform(0.5, 5) * fs)
        burst = rng.uniform(8, 30) * np.hanning(length)
        sides = [0, 1] if rng.random() < 0.5 else [int(rng.integers(0, 2))]
        for side in sides:
            stamp(out[side], fs, start, burst * emg_noise(rng, length))
    return out + subject.ecg_in_legs * 1000 * ecg_signal  # ECG in mV, EMG in uV


def breathing(stages, controls, events, subject, rng) -> dict:
    """Respiration channels at their native rate (a.u.), plus the breath phase for heart and snore.

    Returns a dict with ``Flow``, ``Thermistor``, ``Thorax``, ``Abdomen`` and
    ``phase`` (radians, at the respiration rate), ``inspiring`` (0..1).
    """
    fs = channel_rate("Flow")
    n_sec = len(stages) * EPOCH_S
    irregular = controls["breath_irregular"]
    rate = subject.breath_per_min * controls["breath_rate"] * (1 + 0.6 * irregular * slow_noise(rng, n_sec, 4))
    depth = controls["breath_depth"] * (1 + 1.2 * irregular * slow_noise(rng, n_sec, 3)) * (1 + 0.8 * events.recovery)
    depth = np.clip(depth * (1 + 0.5 * events.movement), 0.15, None)
    phase = 2 * np.pi * np.cumsum(upsample(np.clip(rate, 4, 40) / 60, fs)) / fs
    depth_fs, flow_fs = upsample(depth, fs), upsample(events.flow, fs)
    effort_fs = upsample(events.effort, fs)
    abdomen_sign = 1 - 2 * upsample(events.paradox, fs)
    n = len(phase)
    drift = band_noise(rng, n, fs, band(0.01, 0.08, 0.02), 4, 0.2) * np.array([[0.3], [0.08], [0.05], [0.05]])
    cardiac = 0.03 * band_noise(rng, n, fs, band(0.8, 2, 0.3))[0]  # heartbeats and vibration on the nasal pressure
    movement = band_noise(rng, n, fs, band(0.5, 4, 0.5), 4, 0.5) * 0.6 * upsample(events.movement, fs)
    gain = subject.flow_gain
    return {
        "Flow": (0.5 * gain * depth_fs * flow_fs * (np.sin(phase) + 0.25 * np.sin(2 * phase)) + drift[0] + movement[0]
                 + cardiac),
        "Thermistor": 0.2 * gain * depth_fs * flow_fs * -np.cos(phase - 0.5) + drift[1] + movement[1],
        "Thorax": 0.2 * depth_fs * effort_fs * -np.cos(phase) + drift[2] + movement[2],
        "Abdomen": 0.35 * depth_fs * effort_fs * abdomen_sign * -np.cos(phase - 0.2) + drift[3] + movement[3],
        "phase": phase,
        "inspiring": np.maximum(np.sin(phase), 0) ** 2 * flow_fs,
    }


def ecg(stages, controls, events, subject, breath_phase, rng) -> np.ndarray:
    """ECG in mV: PQRST beats at a stage-dependent heart rate with sinus arrhythmia."""
    fs = channel_rate("ECG")
    breath_fs = channel_rate("Flow")
    n_sec = len(stages) * EPOCH_S
    bpm = (subject.heart_bpm * controls["heart_rate"] + 8 * events.arousal
           + 2 * slow_noise(rng, n_sec, 20) + 1.5 * slow_noise(rng, n_sec, 2))
    bpm_at_breath = upsample(bpm, breath_fs) + 3 * np.sin(breath_phase)  # respiratory sinus arrhythmia
    beats_done = np.cumsum(bpm_at_breath / 60) / breath_fs
    beat_times = np.searchsorted(beats_done, np.arange(1, int(beats_done[-1]) + 1)) / breath_fs
    n = int(n_sec * fs)
    impulses = np.zeros(n)
    index = np.clip(np.round(beat_times * fs).astype(int), 0, n - 1)
    np.add.at(impulses, index, subject.ecg_mv * rng.uniform(0.93, 1.07, len(index)))
    t = np.arange(-0.3, 0.5, 1 / fs)
    waves = [(0.12, -0.2, 0.025), (-0.1, -0.03, 0.01), (1.0, 0.0, 0.012), (-0.25, 0.03, 0.012), (0.3, 0.25, 0.05)]
    beat = sum(height * np.exp(-(((t - centre) / width) ** 2) / 2) for height, centre, width in waves)
    out = oaconvolve(impulses, beat, mode="full")[int(0.3 * fs):int(0.3 * fs) + n]
    wander = 0.12 * np.cos(np.interp(np.arange(n) / fs, np.arange(len(breath_phase)) / breath_fs, breath_phase))
    return out + wander + 0.04 * rng.standard_normal(n) + 0.3 * emg_noise(rng, n) * upsample(events.movement, fs)


def snore_and_sound(stages, controls, events, subject, breath, rng) -> tuple[np.ndarray, np.ndarray]:
    """Snore microphone (a.u.) and audio volume (dB): loud on inspiration while snoring."""
    fs = channel_rate("Snore")
    breath_fs = channel_rate("Flow")
    n_sec = len(stages) * EPOCH_S
    episodes = gate_with_fraction(rng, np.full(n_sec, 0.6), 60)
    loudness = subject.snorer * controls["snoring"] * episodes * (1 + events.recovery)
    inspiring = breath["inspiring"] * upsample(loudness, breath_fs)
    n = int(n_sec * fs)
    inspiring_fs = np.interp(np.arange(n) / fs, np.arange(len(inspiring)) / breath_fs, inspiring)
    snore = 0.7 * inspiring_fs * emg_noise(rng, n) + 0.02 * rng.standard_normal(n)
    sound_fs = channel_rate("Audio Volume")
    rustle = 18 * upsample(events.movement, sound_fs)
    volume = (subject.room_db + 1.5 * slow_noise(rng, int(n_sec * sound_fs), 5) + rustle
              + 30 * np.interp(np.arange(n_sec * sound_fs) / sound_fs, np.arange(len(inspiring)) / breath_fs, inspiring))
    return snore, volume


# A chest-worn sensor: X across the chest (left-right), Y through it (back-front), Z along the body.
# As in the challenge's real images, lying on the back puts gravity on -Y, the chest turned a little
# left, the head raised a little by the pillow (+Z).
POSITIONS = np.array([  # gravity (g) on X, Y, Z
    [-0.25, -0.95, 0.1],  # supine
    [-0.95, -0.25, 0.1],  # left side
    [0.95, -0.25, 0.1],   # right side
    [0.25, 0.95, 0.1],    # prone
])


TURN_TO = np.array([3.0, 1.0, 1.0, 0.5])  # relative odds of each position after turning over


def accelerometer(stages, events, subject, breath, rng) -> np.ndarray:
    """X, Y, Z axes in g, shape (3, samples): body position, moves, breathing."""
    fs = channel_rate("X Axis")
    n_sec = len(stages) * EPOCH_S
    position = np.zeros(n_sec, dtype=int)
    current = rng.choice(4, p=[0.6, 0.15, 0.15, 0.1])
    last = 0
    for start in events.movement_starts:
        if rng.random() < 0.35:  # this movement turns the sleeper over
            position[last:int(start)] = current
            others = [p for p in range(4) if p != current]  # back to the back more often than elsewhere
            last, current = int(start), rng.choice(others, p=TURN_TO[others] / TURN_TO[others].sum())
    position[last:] = current
    tilt = rng.normal(0, 0.05, 3)
    gravity = np.stack([smooth(upsample(POSITIONS[position, axis] + tilt[axis], fs), 1.5 * fs) for axis in range(3)])
    n = gravity.shape[1]
    shaking = band_noise(rng, n, fs, band(0.5, 5, 0.5), 3, 0.5) * 0.15 * upsample(events.movement, fs)
    gravity[1] += 0.01 * np.sin(breath["phase"][:n])  # the chest rises and falls with each breath
    return gravity + shaking + 0.003 * rng.standard_normal((3, n))


def spo2(stages, events, subject, rng) -> np.ndarray:
    """Oxygen saturation in %, 1 Hz, whole percent as oximeters report it."""
    n_sec = len(stages) * EPOCH_S
    level = subject.spo2_baseline + 0.4 * slow_noise(rng, n_sec, 30) - events.desaturation
    return np.clip(np.round(level), 50, 100)


# --------------------------------------------------------------------------
# One recording
# --------------------------------------------------------------------------
@dataclass
class Recording:
    """One synthetic night.

    Attributes
    ----------
    recording_id : str
    stages : np.ndarray of int8, shape (epochs,)
        ``UNSCORED`` (-1) for the leading epochs, else Wake=0 ... REM=4.
    signals : dict of str -> np.ndarray of float64
        ``EDF_CHANNELS`` -> the whole night in physical units at
        ``channel_rate(name)``, shape (epochs * 30 * rate,), exactly the
        values the EDF file stores (clipped to ``PHYSICAL_RANGE`` and
        quantised to its 16-bit steps).
    subject : Subject
    """

    recording_id: str
    stages: np.ndarray
    signals: dict
    subject: Subject

    @property
    def n_epochs(self) -> int:
        return len(self.stages)

    def epoch_signals(self, epoch: int) -> dict:
        """``psg_layout.SIGNAL_NAMES`` -> samples of 0-based ``epoch``, for ``render_epoch``."""
        rows = {}
        for channel, samples in self.signals.items():
            per_epoch = int(round(channel_rate(channel) * EPOCH_S))
            piece = samples[epoch * per_epoch:(epoch + 1) * per_epoch]
            for row in (SPO2_ROWS if channel == SPO2 else (channel,)):
                rows[row] = piece
        return rows


EDF_DIGITAL_RANGE = (-32768, 32767)


def edf_digital(channel: str, samples: np.ndarray) -> np.ndarray:
    """16-bit EDF values of ``samples`` (clipped to the channel's physical range)."""
    low, high = PHYSICAL_RANGE[channel]
    step = (high - low) / (EDF_DIGITAL_RANGE[1] - EDF_DIGITAL_RANGE[0])
    digital = np.rint((np.clip(samples, low, high) - low) / step) + EDF_DIGITAL_RANGE[0]
    return digital.astype(np.int16)


def edf_physical(channel: str, digital: np.ndarray) -> np.ndarray:
    """Physical values of 16-bit EDF values, by the EDF calibration (as edfio reads them)."""
    low, high = PHYSICAL_RANGE[channel]
    step = (high - low) / (EDF_DIGITAL_RANGE[1] - EDF_DIGITAL_RANGE[0])
    return step * (digital + (high / step - EDF_DIGITAL_RANGE[1]))


def synthesize_recording(seed: int, index: int, hours: float) -> Recording:
    """Generate recording ``index`` of the data set made with ``seed`` (raw signals, no images).

    Parameters
    ----------
    seed : int
        The data set's master seed.
    index : int
        0-based global recording index (train recordings first, then test).
    hours : float
        Mean scored length of a night, as ``--hours``.

    Returns
    -------
    Recording
    """
    hypnogram_rng, rng = recording_rngs(seed, index)
    stages = make_hypnogram(hypnogram_rng, hours)
    subject = draw_subject(rng)
    controls = stage_controls(stages, rng)
    events = night_events(stages, controls, subject, rng)
    eeg_signals = eeg(stages, controls, events, subject, rng)
    eog_signals = eog(stages, controls, events, subject, eeg_signals, rng)
    breath = breathing(stages, controls, events, subject, rng)
    ecg_signal = ecg(stages, controls, events, subject, breath["phase"], rng)
    legs = leg_emg(stages, controls, events, subject, ecg_signal, rng)
    snore, volume = snore_and_sound(stages, controls, events, subject, breath, rng)
    axes = accelerometer(stages, events, subject, breath, rng)
    raw = {
        "X Axis": axes[0], "Y Axis": axes[1], "Z Axis": axes[2],
        **dict(zip(EEG_NAMES, eeg_signals)), "E1-M2": eog_signals[0], "E2-M1": eog_signals[1],
        "Chin EMG": chin_emg(stages, controls, events, subject, ecg_signal, rng), "ECG": ecg_signal,
        "Flow": breath["Flow"], "Thermistor": breath["Thermistor"], "Thorax": breath["Thorax"],
        "Abdomen": breath["Abdomen"], "Snore": snore, "Audio Volume": volume,
        "Left Leg EMG": legs[0], "Right Leg EMG": legs[1], SPO2: spo2(stages, events, subject, rng),
    }
    signals = {}
    for channel in EDF_CHANNELS:
        expected = int(round(len(stages) * EPOCH_S * channel_rate(channel)))
        assert len(raw[channel]) == expected, (channel, len(raw[channel]), expected)
        signals[channel] = edf_physical(channel, edf_digital(channel, raw[channel]))  # what the EDF gives back
    return Recording(recording_id(index), stages, signals, subject)


def write_edf(recording: Recording, folder: Path) -> None:
    """``<ID>.edf`` (EDF+, native rates, physical units) and ``<ID>.hypnogram.csv``."""
    edf = edfio.Edf(
        [edfio.EdfSignal.from_digital(edf_digital(channel, recording.signals[channel]), channel_rate(channel),
                                      label=channel, physical_dimension=channel_unit(channel),
                                      physical_range=PHYSICAL_RANGE[channel], digital_range=EDF_DIGITAL_RANGE)
         for channel in EDF_CHANNELS],
        patient=edfio.Patient(code=recording.recording_id),
        recording=edfio.Recording(startdate=EDF_START.date()),
        starttime=EDF_START.time(),
        annotations=(),
    )
    with script_io.atomic_path(folder / f"{recording.recording_id}.edf") as tmp:
        edf.write(tmp)
    script_io.write_lines(folder / f"{recording.recording_id}.hypnogram.csv",
                           ("?" if stage == UNSCORED else STAGES[stage] for stage in recording.stages))


def make_recording(task: tuple) -> tuple[int, str, list]:
    """Generate, render and write one recording; return ``(index, ID, [(IDnum, stage), ...])``.

    Unscored epochs are rendered but returned with stage ``UNSCORED``.
    """
    out, seed, index, hours, with_edf = task
    recording = synthesize_recording(seed, index, hours)
    folder = out / recording.recording_id
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for epoch in range(recording.n_epochs):
        idnum = psg_layout.image_name(recording.recording_id, epoch + 1)
        psg_layout.write_png(folder / idnum, psg_layout.render_epoch(recording.epoch_signals(epoch)))
        rows.append((idnum, int(recording.stages[epoch])))
    if with_edf:
        write_edf(recording, out / EDF_DIR)
    return index, recording.recording_id, rows


def made_recordings(tasks: list, workers: int):
    """Yield ``make_recording`` results as recordings finish, ``workers`` at a time."""
    if workers == 1:
        yield from map(make_recording, tasks)
        return
    # spawn, not fork: a parent that has loaded torch or opened threads forks badly
    with multiprocessing.get_context("spawn").Pool(min(workers, len(tasks))) as pool:
        yield from pool.imap_unordered(make_recording, tasks)


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------
def check_arguments(args) -> None:
    """Raise ``InputError`` for arguments no data set can be made from."""
    if args.train_subjects < 1 or args.test_subjects < 1:
        raise InputError(f"--train-subjects and --test-subjects must be at least 1, got "
                         f"{args.train_subjects} and {args.test_subjects} (command line)")
    if args.train_subjects + args.test_subjects > 9999:
        raise InputError("at most 9999 recordings in all (4-digit IDs) (command line)")
    if not 0 < args.hours <= MAX_HOURS:
        raise InputError(f"--hours must be above 0 and at most {MAX_HOURS:g}, got {args.hours:g} (command line)")
    if args.seed < 0:
        raise InputError(f"--seed must be 0 or more, got {args.seed} (command line)")
    if args.workers < 1:
        raise InputError(f"--workers must be at least 1, got {args.workers} (command line)")


def output_is_up_to_date(out: Path, config: dict) -> bool:
    """True if ``out`` already holds this very data set; raise if it holds anything else."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out is a file, expected a folder {where(out)}")
    if not out.exists() or not any(out.iterdir()):
        return False
    marker = out / MARKER_NAME
    try:
        previous = json.loads(marker.read_text())
    except (OSError, ValueError):
        previous = None
    if isinstance(previous, dict) and all(previous.get(key) == config[key] for key in GENERATION_KEYS):
        return True
    raise InputError(f"--out already holds other data (another data set, different arguments or an "
                     f"interrupted run); choose another --out or delete it {where(out)}")


def main() -> None:
    args = build_parser().parse_args()
    config = {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()}
    config["generator_version"] = GENERATOR_VERSION
    print(json.dumps(config, indent=2))
    check_arguments(args)
    out = args.out
    if output_is_up_to_date(out, config):
        print(f"{out} is up to date (made with the same arguments); nothing to do")
        return
    out.mkdir(parents=True, exist_ok=True)

    n_recordings = args.train_subjects + args.test_subjects
    tasks = [(out, args.seed, index, args.hours, args.edf) for index in range(n_recordings)]
    n_images = sum(len(recording_hypnogram(args.seed, index, args.hours)) for index in range(n_recordings))
    bar = tqdm(total=n_images, unit="img", disable=args.quiet or not sys.stderr.isatty())
    started = time.perf_counter()
    results = {}
    for index, rec_id, rows in made_recordings(tasks, args.workers):
        results[index] = (rec_id, rows)
        bar.update(len(rows))
    bar.close()
    elapsed = time.perf_counter() - started

    train_rows, test_rows, answer_rows = [], [], []
    for index in range(n_recordings):
        rec_id, rows = results[index]
        for idnum, stage in rows:
            if stage == UNSCORED:
                continue
            if index < args.train_subjects:
                train_rows.append((rec_id, idnum, STAGES[stage]))
            else:
                test_rows.append((rec_id, idnum))
                answer_rows.append((rec_id, idnum, STAGES[stage]))
    script_io.write_csv_rows(out / psg_layout.TRAIN_CSV, train_rows)
    script_io.write_csv_rows(out / psg_layout.TEST_CSV, test_rows)
    script_io.write_csv_rows(out / psg_layout.TEST_LABELS_CSV, answer_rows)
    with script_io.atomic_path(out / MARKER_NAME) as tmp:  # last: marks the folder complete
        tmp.write_text(json.dumps(config, indent=2) + "\n")
    print(f"wrote {n_images} images of {n_recordings} recordings ({len(train_rows)} train rows, "
          f"{len(test_rows)} test rows) to {out} in {elapsed:.1f} s ({n_images / elapsed:.1f} images/s)")


if __name__ == "__main__":
    script_io.run_main(main)
