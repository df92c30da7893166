"""The synthetic signals: each channel group over a whole night, at its native rate.

EEG (an aperiodic 1/f^x background mixed from power laws, rhythms as
coloured noise, spindles, K-complexes, vertex and sawtooth waves, movement,
popping-electrode and sweat artefacts), EOG, chin and leg EMG, respiration,
ECG, snore and room sound, the chest accelerometer and SpO2. Each generator
takes the hypnogram, the per-second stage controls, the night's events and
the subject, and draws from the recording's signal stream; the order in
which ``synthetic_recording`` calls them fixes every value.
"""
from __future__ import annotations

import numpy as np
from scipy.signal import oaconvolve

from sleepstaging.synthetic.channels import channel_rate
from sleepstaging.synthetic.hypnogram import EPOCH_S, N1, N2
from sleepstaging.synthetic.noise import band, band_noise, event_times, gate_with_fraction, pink, slow_noise, smooth, stamp, upsample
from sleepstaging.synthetic.physiology import Subject


# --------------------------------------------------------------------------
# The EEG's aperiodic background
# --------------------------------------------------------------------------


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


# --------------------------------------------------------------------------
# EEG and EOG
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
        # the posterior dominant rhythm: at O1/O2 1.2 times the subject's alpha, a third of that at C3/C4
        (band(subject.alpha_hz - 1, subject.alpha_hz + 1), 0.4 * CENTRAL + 1.2 * OCCIPITAL, 0.7, alpha),
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


# --------------------------------------------------------------------------
# Muscles, heart, breathing, sound, position, oxygen
# --------------------------------------------------------------------------


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
