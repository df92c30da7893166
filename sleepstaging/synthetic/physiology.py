"""The synthetic sleeper: stage physiology second by second, subject traits, the night's shared events.

``STAGE_TABLE`` sets the physiology of each stage (AASM manual, adult
norms); ``stage_controls`` turns a hypnogram into per-second curves of
those parameters, blurred towards a neighbour stage, jittered and faded
across epoch borders. ``Subject`` holds one sleeper's traits (drawn by
``draw_subject``); ``night_events`` draws the events that show on several
channels (apneas and hypopneas with their recovery breaths and SpO2 dips,
arousals, body movements).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sleepstaging.synthetic.hypnogram import EPOCH_S, N1, N2, N3, REM, UNSCORED, W
from sleepstaging.synthetic.noise import boxcar, event_times, smooth


# --------------------------------------------------------------------------
# Stage parameters
# --------------------------------------------------------------------------


TRANSITION_S = 6.0  # Gaussian sigma (s) over which stage parameters fade across epoch borders
EPOCH_JITTER = 0.25  # log-normal sigma of per-epoch variation of each stage parameter...
STEADY_JITTER = {"heart_rate": 0.03, "breath_rate": 0.05, "aperiodic_exponent": 0.06}  # ...except these

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
    "chin_emg":          (1.0,  0.5,  0.4,  0.3,  0.1),   # x subject chin tone (uV rms)
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


# The parameters set by the features a scorer reads (synthetic_scoring): name -> (feature, factor),
# the factor taking the feature's unit to the parameter's (alpha: wake's share of 0.85 is table value 1;
# spindles and K-complexes share N2's rate of 4.5 per minute as the table does, 5.0 and 1.6)
FROM_FEATURES = {
    "alpha": ("alpha", 1 / 0.85),
    "slow_wave_time": ("slow_waves", 1.0),
    "spindles": ("spindles", 5.0 / 4.5),
    "k_complexes": ("spindles", 1.6 / 4.5),
    "chin_emg": ("chin", 1.0),
    "rapid_eye": ("rapid_eye", 1.0),
}


def stage_controls(stages: np.ndarray, rng: np.random.Generator, features: dict) -> dict:
    """Per-second stage parameters, blurred towards a neighbour stage, jittered, faded across borders.

    The parameters in ``FROM_FEATURES`` follow the night's drawn features
    instead (``features``: ``synthetic_scoring.ScoredNight.features``, per
    epoch), so the signals show what the scorers read.

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
        if name in FROM_FEATURES:
            feature, factor = FROM_FEATURES[name]
            per_epoch = features[feature] * factor
        controls[name] = smooth(np.repeat(per_epoch, EPOCH_S), TRANSITION_S)
    return controls


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
