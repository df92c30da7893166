"""One synthetic recording on disk: its epoch images and, with ``--edf``, its EDF+ file and hypnogram.

``make_recording`` is ``make_synthetic.py``'s unit of work (one per worker
at a time): it synthesizes a recording, draws each 30-s epoch with
``psg_layout.render_epoch`` into ``<ID>/<ID>_NNNN.png``, exports the EDF if
asked, and returns the epochs' rows, from which the script writes the CSVs
once every recording is done.
"""
from __future__ import annotations

import datetime
from pathlib import Path

import edfio

from sleepstaging.data import psg_layout
from sleepstaging import script_io
from sleepstaging.data.psg_layout import STAGES
from sleepstaging.synthetic.channels import EDF_CHANNELS, EDF_DIGITAL_RANGE, PHYSICAL_RANGE, channel_rate, channel_unit, edf_digital
from sleepstaging.synthetic.hypnogram import UNSCORED
from sleepstaging.synthetic.recording import Recording, synthesize_recording

EDF_DIR = "edf"
EDF_START = datetime.datetime(2026, 1, 5, 22, 30, 0)  # fixed, so EDF bytes are reproducible


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
    """Generate, render and write one recording; return ``(index, ID, [(IDnum, stage, hypnodensity), ...])``.

    Unscored epochs are rendered but returned with stage ``UNSCORED``;
    ``hypnodensity`` is the panel's share per stage (5 floats).
    """
    out, seed, index, hours, with_edf = task
    recording = synthesize_recording(seed, index, hours)
    folder = out / recording.recording_id
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for epoch in range(recording.n_epochs):
        idnum = psg_layout.image_name(recording.recording_id, epoch + 1)
        psg_layout.write_png(folder / idnum, psg_layout.render_epoch(recording.epoch_signals(epoch)))
        rows.append((idnum, int(recording.stages[epoch]), recording.hypnodensity[epoch].tolist()))
    if with_edf:
        write_edf(recording, out / EDF_DIR)
    return index, recording.recording_id, rows
