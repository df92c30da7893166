"""One synthetic night assembled: its ID, stages, subject and signals.

``synthesize_recording(seed, index, hours)`` makes recording ``index`` of
the data set made with ``seed``: the hypnogram from the recording's first
random stream, then from the second the subject, the stage controls, the
night's events and every channel group in a fixed order, each channel
quantised as its EDF stores it. ``Recording.epoch_signals`` gives one epoch
as ``psg_layout.render_epoch`` draws it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sleepstaging.synthetic.channels import EDF_CHANNELS, SPO2, SPO2_ROWS, channel_rate, edf_digital, edf_physical
from sleepstaging.synthetic.hypnogram import EPOCH_S, recording_rngs, scored_night
from sleepstaging.synthetic.physiology import Subject, draw_subject, night_events, stage_controls
from sleepstaging.synthetic.signals import (EEG_NAMES, accelerometer, breathing, chin_emg, ecg, eeg, eog, leg_emg,
                               snore_and_sound, spo2)

ID_FORMAT = "A2026-SY-01-{:04d}"  # the challenge's ID shape (A2019-NX-01-1451)


def recording_id(index: int) -> str:
    """Challenge-shaped ID of the recording with 0-based global ``index`` (train first, then test)."""
    return ID_FORMAT.format(index + 1)


@dataclass
class Recording:
    """One synthetic night.

    Attributes
    ----------
    recording_id : str
    stages : np.ndarray of int8, shape (epochs,)
        The labels: ``UNSCORED`` (-1) for the leading epochs, else Wake=0
        ... REM=4, as the AASM rules score the drawn features.
    signals : dict of str -> np.ndarray of float64
        ``EDF_CHANNELS`` -> the whole night in physical units at
        ``channel_rate(name)``, shape (epochs * 30 * rate,), exactly the
        values the EDF file stores (clipped to ``PHYSICAL_RANGE`` and
        quantised to its 16-bit steps).
    subject : Subject
    hypnodensity : np.ndarray of float64, shape (epochs, 5)
        Share of the simulated scoring panel per stage (``synthetic_scoring``).
    """

    recording_id: str
    stages: np.ndarray
    signals: dict
    subject: Subject
    hypnodensity: np.ndarray

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
    stages, scoring = scored_night(hypnogram_rng, hours)  # the signals follow the sleep process and features
    subject = draw_subject(rng)
    controls = stage_controls(stages, rng, scoring.features)
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
    return Recording(recording_id(index), scoring.labels, signals, subject, scoring.hypnodensity)
