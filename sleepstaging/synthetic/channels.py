"""The channels of a synthetic recording as its EDF file stores them.

The channels are ``psg_layout``'s image rows, except that both SpO2 rows
come from one channel; each has its native rate and unit from
``psg_layout``'s table and a physical range. Every synthetic signal goes
through the 16-bit quantisation of its channel, so the signals in memory
are exactly what the EDF export gives back.
"""
from __future__ import annotations

import numpy as np

from sleepstaging.data import psg_layout
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
