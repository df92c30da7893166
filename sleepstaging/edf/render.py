"""EDF recordings into the challenge layout: pairing recordings with hypnograms, planning each night's epochs
and lights, drawing the images and the CSVs (render_edf.py, stage_edf.py).
"""
from __future__ import annotations

import json
import os
import queue
import re
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import Manager
from pathlib import Path

import numpy as np
from tqdm import tqdm

from sleepstaging.data import epoch_timing
from sleepstaging.data import psg_layout
from sleepstaging import script_io
from sleepstaging.edf import signal_quality
from sleepstaging.edf.edf_signals import EdfRecording, detect_montage, open_edf, resolve_channels
from sleepstaging.edf.lights import resolve_lights
from sleepstaging.edf.montages import AUTO_MONTAGE, Montage, load_montage
from sleepstaging.data.psg_layout import EPOCH_SECONDS
from sleepstaging.edf.scored_hypnograms import UNSCORED, epochs_to_keep, read_hypnogram, stages_on_epoch_grid, unscored_epoch_grid
from sleepstaging.script_io import InputError, where




# --------------------------------------------------------------------------
# Finding recordings and pairing them with hypnograms
# --------------------------------------------------------------------------
RECORDING_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class RecordingSource:
    """One recording to render: its ID, EDF file and hypnogram file (None: unscored)."""

    recording_id: str
    edf: Path
    hypnogram: Path | None


def is_hypnogram_file(path: Path) -> bool:
    """Hypnogram files by the archives' naming: Sleep-EDF, NSRR and the synthetic generator."""
    name = path.name.lower()
    return name.endswith(("-hypnogram.edf", "-nsrr.xml", ".hypnogram.csv"))


def recording_id_of(edf: Path) -> str:
    """The recording ID: the file stem, without Sleep-EDF's ``-PSG`` suffix."""
    stem = edf.stem
    return stem[:-len("-PSG")] if stem.upper().endswith("-PSG") else stem


def hypnogram_key(path: Path) -> str:
    """The name part a recording and its hypnogram share, by the archives' naming.

    Sleep-EDF: the first 6 characters (``SC4001E0-PSG.edf`` with
    ``SC4001EC-Hypnogram.edf``); NSRR: ``<stem>.edf`` with
    ``<stem>-nsrr.xml``; synthetic: ``<ID>.edf`` with ``<ID>.hypnogram.csv``.
    """
    name = path.name
    lowered = name.lower()
    if lowered.endswith(("-psg.edf", "-hypnogram.edf")):
        return name[:6]
    for suffix in ("-nsrr.xml", ".hypnogram.csv", ".edf"):
        if lowered.endswith(suffix):
            return name[:-len(suffix)]
    return name


def _files_under(folder: Path, recursive: bool) -> list[Path]:
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if p.is_file() and not p.name.startswith("."))


def _pair_with_hypnograms(edfs: list[Path], edf: Path, hypnogram: Path | None,
                          unscored: bool) -> list[tuple[Path, Path | None]]:
    """Each of ``edfs`` with its one hypnogram (None if ``unscored``); arguments as :func:`find_recordings`.

    Raises
    ------
    InputError
        Recordings without a hypnogram (up to five listed), or one with several.
    """
    if unscored:
        pairs = [(p, [None]) for p in edfs]
    elif hypnogram is not None and hypnogram.is_file():
        pairs = [(edfs[0], [hypnogram])]
    else:
        search_root = hypnogram if hypnogram is not None else (edf if edf.is_dir() else edf.parent)
        candidates = {}
        for path in _files_under(search_root, recursive=edf.is_dir() or hypnogram is not None):
            if is_hypnogram_file(path):
                candidates.setdefault(hypnogram_key(path), []).append(path)
        pairs = [(p, candidates.get(hypnogram_key(p), [])) for p in edfs]

    unpaired = [str(p) for p, found in pairs if not found]
    if unpaired:
        raise InputError(
            f"no hypnogram found for {len(unpaired)} recording(s): {', '.join(unpaired[:5])}"
            f"{' ...' if len(unpaired) > 5 else ''} (expected <ID>-Hypnogram.edf sharing the first 6 characters, "
            f"<stem>-nsrr.xml or <stem>.hypnogram.csv; or give --hypnogram) {where(unpaired[0])}"
        )
    ambiguous = [(p, found) for p, found in pairs if len(found) > 1]
    if ambiguous:
        p, found = ambiguous[0]
        raise InputError(f"several hypnograms match {p.name}: {', '.join(map(str, found))} {where(p)}")
    return [(p, found[0]) for p, found in pairs]


def find_recordings(edf: Path, hypnogram: Path | None, unscored: bool = False) -> list[RecordingSource]:
    """Recordings to render with their hypnograms, sorted by ID.

    Parameters
    ----------
    edf : Path
        One EDF file, or a folder searched recursively for ``*.edf``
        (hypnogram EDFs excluded).
    hypnogram : Path or None
        For one EDF: its hypnogram file, or a folder to look in; for an EDF
        folder: a folder to search recursively. None: beside the recordings.
    unscored : bool
        The recordings have no hypnograms: none is looked for (hypnogram
        EDFs in a folder are still skipped).

    Raises
    ------
    InputError
        Missing paths, a recording without a hypnogram or with several
        (all listed), two recordings with the same ID, an ID that is not a
        plain name.
    """
    if not edf.exists():
        raise InputError(f"--edf not found {where(edf)}")
    if hypnogram is not None and not hypnogram.exists():
        raise InputError(f"--hypnogram not found {where(hypnogram)}")
    if edf.is_file():
        edfs = [edf]
    else:
        edfs = [p for p in _files_under(edf, True) if p.suffix.lower() == ".edf" and not is_hypnogram_file(p)]
        if not edfs:
            raise InputError(f"no EDF recordings in the folder {where(edf)}")
        if hypnogram is not None and hypnogram.is_file():
            raise InputError(f"--hypnogram must be a folder when --edf is a folder {where(hypnogram)}")

    recordings, seen = [], {}
    for path, hypnogram_path in _pair_with_hypnograms(edfs, edf, hypnogram, unscored):
        recording_id = recording_id_of(path)
        if not RECORDING_ID_PATTERN.fullmatch(recording_id):
            raise InputError(f"recording ID {recording_id!r} is not a plain name (letters, digits, . _ -) {where(path)}")
        if recording_id in seen:
            raise InputError(f"two recordings with ID {recording_id!r}: {seen[recording_id]} and {path} {where(path)}")
        seen[recording_id] = path
        recordings.append(RecordingSource(recording_id, path, hypnogram_path))
    return sorted(recordings, key=lambda r: r.recording_id)


# --------------------------------------------------------------------------
# Rendering one recording
# --------------------------------------------------------------------------
@dataclass
class RenderJob:
    """Everything a worker needs to draw one recording (checked beforehand).

    Attributes
    ----------
    source : RecordingSource
    recording : edf_signals.EdfRecording
        The EDF, opened once when the recording was planned; its samples are read from it.
    rows : dict
        Row name -> :class:`edf_signals.RowChannel`.
    origin : float
        Start of epoch 1, s from the recording start.
    epoch_numbers : np.ndarray of int64, shape (epochs,)
        1-based epoch numbers to draw, counted from the recording start.
    stages : np.ndarray of int64, shape (epochs,)
        Stage int per drawn epoch, :data:`scored_hypnograms.UNSCORED` for unlabelled ones.
    staging : Path
        Hidden folder the images go to until the run succeeds.
    timing : epoch_timing.EpochTiming
        Saved as the recording's timing sidecar.
    record : dict
        The resolved configuration and facts saved as ``render_edf.json``.
    missing : tuple of str
        Rows the montage names whose channels the EDF lacks (drawn empty).
    """

    source: RecordingSource
    recording: EdfRecording
    rows: dict
    origin: float
    epoch_numbers: np.ndarray
    stages: np.ndarray
    staging: Path
    timing: epoch_timing.EpochTiming
    record: dict = field(default_factory=dict)
    missing: tuple = ()


def epoch_signals(channels: dict, rows: dict, origin: float, epoch_number: int, edf: Path) -> dict:
    """Each row's samples over one epoch, in the row's physical unit: row name -> array of shape (30 * fs,)."""
    signals = {}
    for row, row_channel in rows.items():
        count = round(row_channel.fs * EPOCH_SECONDS)
        start = round((origin + (epoch_number - 1) * EPOCH_SECONDS) * row_channel.fs)
        samples = channels[row_channel.channel][start:start + count]
        if len(samples) != count:
            raise InputError(f"channel {row_channel.channel!r} ends inside epoch {epoch_number} {where(edf)}")
        signals[row] = samples * row_channel.gain
    return signals


def render_recording(job: RenderJob, progress=None, write_images: bool = True, sink=None) -> list[str]:
    """Draw every planned epoch of one recording into ``job.staging``, with its ``render_edf.json`` and sidecars.

    The sidecars are the timing and the signal quality; returns the
    recording's signal quality warnings (``signal_quality``). Each epoch is
    written as its PNG file (unless not ``write_images``) and handed to
    ``sink`` (when given), in epoch order: ``sink.begin(epochs, folder)``
    first, ``sink.add(index, image)`` per epoch with its grey image (the
    drawn image's one channel: :func:`psg_layout.render_epoch` draws R = G = B),
    ``sink.finish()`` last.
    """
    channels = job.recording.read_channels({row_channel.channel for row_channel in job.rows.values()})
    fs = {row: row_channel.fs for row, row_channel in job.rows.items()}
    quality = signal_quality.QualityRecorder(job.source.recording_id,
                                             {row: rc.limits for row, rc in job.rows.items()}, job.missing)
    shutil.rmtree(job.staging, ignore_errors=True)  # debris of a run that was killed
    job.staging.mkdir(parents=True)
    if sink is not None:
        sink.begin(len(job.epoch_numbers), job.staging)
    for index, epoch_number in enumerate(job.epoch_numbers):
        signals = epoch_signals(channels, job.rows, job.origin, int(epoch_number), job.source.edf)
        quality.add_epoch(int(epoch_number), signals)
        image = psg_layout.render_epoch(signals, fs)
        if write_images:
            psg_layout.write_png(job.staging / psg_layout.image_name(job.source.recording_id, int(epoch_number)),
                                 image)
        if sink is not None:
            sink.add(index, np.ascontiguousarray(image[:, :, 0]))
        if progress is not None:
            progress.put(1)
    if sink is not None:
        sink.finish()
    with script_io.atomic_path(job.staging / "render_edf.json") as tmp:
        tmp.write_text(json.dumps(job.record, indent=2) + "\n")
    epoch_timing.write_epoch_timing(job.staging, job.timing)
    found = quality.result()
    signal_quality.write_quality(job.staging, found)
    return list(found.warnings)


def render_unscored_night(source: RecordingSource, montage_spec: str, out: Path, config: dict,
                          write_images: bool = True, sink=None, **plan_options) -> dict:
    """Open, check, plan and draw one unscored night into ``out/<ID>/`` on its own; return its record.

    The EDF is opened once (:func:`edf_signals.open_edf`); montage
    detection, planning and drawing all read from that one recording.

    ``stage_edf.py``'s way through a cohort: each night is checked only when
    its turn comes, so a bad one stops only itself. The folder appears whole
    (drawn under a hidden name, then renamed) or not at all. ``montage_spec``
    is a :func:`montages.load_montage` spec or ``auto``; ``write_images`` and
    ``sink`` go to :func:`render_recording`, ``plan_options`` to
    :func:`plan_recording`.

    Raises
    ------
    InputError
        As :func:`edf_signals.open_edf`, :func:`plan_recording` and :func:`render_recording`.
    """
    montage = None if montage_spec == AUTO_MONTAGE else load_montage(montage_spec)
    recording = open_edf(source.edf)
    job = plan_recording(source, recording, montage or detect_montage(recording), None, out, config, **plan_options)
    try:
        render_recording(job, write_images=write_images, sink=sink)
        os.replace(job.staging, out / source.recording_id)
    except BaseException:
        shutil.rmtree(job.staging, ignore_errors=True)
        raise
    return job.record


def plan_recording(source: RecordingSource, recording: EdfRecording, montage: Montage, trim_minutes: float | None,
                   out: Path, config: dict, lights_off: str | None = None, lights_on: str | None = None,
                   lights_given_by: str | None = None) -> RenderJob:
    """Check one recording completely (channels, units, hypnogram, lights) and plan its epochs.

    ``recording`` is ``source.edf`` as :func:`edf_signals.open_edf` opened
    it (the header read and checked once; every step here reads from it).
    A recording without hypnogram (``source.hypnogram`` None) keeps every
    whole epoch from its first sample, all unlabelled. ``lights_off`` and
    ``lights_on`` are the texts of ``--lights-off``/``--lights-on`` (None:
    absent), or of another source that ``lights_given_by`` names; the
    resolved times (:func:`lights.resolve_lights`) go into the timing
    sidecar and ``render_edf.json``.
    """
    rows = resolve_channels(recording, montage)
    duration = recording.duration
    lights = resolve_lights(recording, lights_off, lights_on, lights_given_by)
    if source.hypnogram is None:
        origin, stages = unscored_epoch_grid(source.edf, duration)
        keep = np.arange(len(stages))
    else:
        segments = read_hypnogram(source.hypnogram)
        origin, stages = stages_on_epoch_grid(segments, source.hypnogram, duration)
        keep = epochs_to_keep(stages, trim_minutes, source.hypnogram)
        if not (stages[keep] != UNSCORED).any():
            raise InputError(f"no scored epoch to label in the recording {where(source.hypnogram)}")
    epoch_numbers = keep + 1
    missing = tuple(row for row in montage.rows if row not in rows)
    if epoch_numbers[-1] > 9999:
        raise InputError(f"more than 9999 epochs; file names have 4 digits {where(source.edf)}")
    labelled = int((stages[keep] != UNSCORED).sum())
    record = {
        **config,
        "recording_id": source.recording_id,
        "montage": montage.name,
        "edf": str(source.edf),
        "hypnogram": None if source.hypnogram is None else str(source.hypnogram),
        "recording_seconds": duration,
        "epoch1_offset_seconds": origin,
        "epochs_in_recording": len(stages),
        "first_epoch": int(epoch_numbers[0]),
        "last_epoch": int(epoch_numbers[-1]),
        "epochs_rendered": len(keep),
        "epochs_labelled": labelled,
        **dict(zip(("lights_off_s", "lights_on_s", "lights_source"), lights)),
        "rows": {row: {"channel": rc.channel, "fs_hz": rc.fs, "file_unit": rc.file_unit, "gain_from_mne": rc.gain}
                 for row, rc in rows.items()},
        "rows_missing": list(missing),
    }
    staging = out / f".{source.recording_id}.render-partial"
    timing = epoch_timing.EpochTiming(source.recording_id, recording.start, float(EPOCH_SECONDS), origin,
                                    tuple(int(n) for n in epoch_numbers), *lights)
    return RenderJob(source, recording, rows, origin, epoch_numbers, stages[keep], staging, timing, record, missing)


# --------------------------------------------------------------------------
# The split's CSVs
# --------------------------------------------------------------------------
def existing_ids(out: Path) -> dict:
    """IDs already in the data root: ID -> where (a CSV or the image folder)."""
    found = {}
    for name, with_labels in ((psg_layout.TRAIN_CSV, True), (psg_layout.TEST_CSV, False),
                              (psg_layout.TEST_LABELS_CSV, True)):
        if (out / name).is_file():
            for recording_id in psg_layout.read_epoch_csv(out / name, with_labels).recording_ids:
                found.setdefault(recording_id, out / name)
    return found


def check_new_ids(out: Path, recordings: list[RecordingSource]) -> None:
    """Refuse IDs that the data root already has (in a CSV or as an image folder): no duplicates, no overwrite."""
    present = existing_ids(out)
    for recording in recordings:
        if recording.recording_id in present:
            raise InputError(f"recording {recording.recording_id!r} is already in the data set "
                             f"{where(present[recording.recording_id])}")
        if (out / recording.recording_id).exists():
            raise InputError(f"recording {recording.recording_id!r} already has a folder {where(out / recording.recording_id)}")


def _rows_of(path: Path, with_labels: bool) -> list[list[str]]:
    if not path.is_file():
        return []
    table = psg_layout.read_epoch_csv(path, with_labels)
    if not with_labels:
        return [[i, n] for i, n in zip(table.recording_ids, table.idnums)]
    return [[i, n, psg_layout.STAGES[s]] for i, n, s in zip(table.recording_ids, table.idnums, table.labels)]


def split_csv_contents(out: Path, split: str, jobs: list[RenderJob], unscored: bool = False) -> dict:
    """The split's CSVs after appending the jobs' epochs: path -> rows (existing rows first).

    Labelled epochs are appended; ``unscored``: every rendered epoch goes to
    the test CSV and the answers file is left alone.
    """
    labelled, listed = [], []
    for job in jobs:
        recording_id = job.source.recording_id
        for epoch_number, stage in zip(job.epoch_numbers, job.stages):
            idnum = psg_layout.image_name(recording_id, int(epoch_number))
            if unscored:
                listed.append([recording_id, idnum])
            elif stage != UNSCORED:
                labelled.append([recording_id, idnum, psg_layout.STAGES[stage]])
    if split == "train":
        path = out / psg_layout.TRAIN_CSV
        return {path: _rows_of(path, True) + labelled}
    test_path, answers_path = out / psg_layout.TEST_CSV, out / psg_layout.TEST_LABELS_CSV
    if unscored:
        return {test_path: _rows_of(test_path, False) + listed}
    return {test_path: _rows_of(test_path, False) + [row[:2] for row in labelled],
            answers_path: _rows_of(answers_path, True) + labelled}


# --------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------
def render_all(jobs: list[RenderJob], workers: int, show_progress: bool) -> list[list[str]]:
    """Render the jobs, ``workers`` recordings at a time, with one progress bar over all images.

    Returns each job's signal quality warnings, in the order of ``jobs``.
    """
    total = sum(len(job.epoch_numbers) for job in jobs)
    with tqdm(total=total, unit="image", disable=not show_progress) as bar:
        if workers == 1 or len(jobs) == 1:
            return [render_recording(job, _BarProgress(bar)) for job in jobs]
        with Manager() as manager, ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
            progress = manager.Queue()
            futures = [pool.submit(render_recording, job, progress) for job in jobs]
            while not all(f.done() for f in futures):
                if any(f.done() and f.exception() is not None for f in futures):
                    break
                try:
                    bar.update(progress.get(timeout=0.2))
                except queue.Empty:
                    pass
            for future in futures:
                future.cancel()
            for future in futures:
                if not future.cancelled():
                    future.result()  # re-raises the first worker error here
            while not progress.empty():
                bar.update(progress.get())
            return [future.result() for future in futures]


class _BarProgress:
    """In-process stand-in for the workers' queue: each ``put`` advances the bar."""

    def __init__(self, bar):
        self.bar = bar

    def put(self, count: int) -> None:
        self.bar.update(count)
