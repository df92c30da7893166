"""A scorer's corrections (``<ID>-corrections.csv``, saved by the review page) written back into a night's outputs.

A corrections file has the header :data:`review_page.CORRECTION_COLUMNS`
(``recording_id,epoch,stage_before,stage_after,when,scorer``), one row per
epoch changed: the stage the page showed and the stage the scorer set, as
stage names (Wake, N1, N2, N3, REM). Every file is checked against its night
before anything is written (:func:`plan_corrections`): a night that is not
in the folder, an unknown stage, an epoch the night does not have, or a
``stage_before`` that is neither the night's stage now nor (applied before)
its ``stage_after`` is a one-line error naming the file and row.

Applying (:func:`apply_corrections`) rewrites each night's hypnogram table
(``stage_after``), EDF+ annotations, statistics (the lights period's
stages, recomputed), figure (when there was one) and review page, and
appends each change to ``<ID>-corrections-log.csv`` (:data:`LOG_COLUMNS`:
who changed what, when, from which file): every night's files are first
written under temporary names, then all renamed into place; the caller
then rebuilds the folder's ``sleep_statistics.csv`` and index.
"""
from __future__ import annotations

import csv
import datetime
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sleepstaging.scoring import night_outputs

from sleepstaging.scoring import sleep_statistics
from sleepstaging.data import psg_layout
from sleepstaging.scoring import review_page
from sleepstaging import script_io
from sleepstaging.data.psg_layout import STAGE_TO_INT, STAGES
from sleepstaging.script_io import InputError, read_csv_with_header, where

LOG_NAME = "{name}-corrections-log.csv"
LOG_COLUMNS = ("recording_id", "epoch", "stage_before", "stage_after", "when", "scorer", "applied_at", "source")


@dataclass
class Correction:
    epoch: int
    before: int
    after: int
    when: str
    scorer: str
    row: int  # the file's line number, for errors


def read_corrections(path: Path) -> tuple[str, list[Correction]]:
    """One corrections file: its recording ID and rows, checked for form (not yet against the night)."""
    rows = read_csv_with_header(path, review_page.CORRECTION_COLUMNS, "the corrections file")
    recording_id, corrections, epochs = None, [], set()
    for line, cells in enumerate(rows, start=2):
        if len(cells) != len(review_page.CORRECTION_COLUMNS):
            raise InputError(f"expected {len(review_page.CORRECTION_COLUMNS)} fields, found {len(cells)} "
                             f"{where(path, line)}")
        name, epoch, before, after, when, scorer = cells
        if recording_id is not None and name != recording_id:
            raise InputError(f"a corrections file holds one night; {name!r} after {recording_id!r} {where(path, line)}")
        recording_id = name
        if not epoch.isdigit():
            raise InputError(f"epoch {epoch!r} is not an epoch number {where(path, line)}")
        for stage in (before, after):
            if stage not in STAGE_TO_INT:
                raise InputError(f"unknown stage {stage!r} (expected {', '.join(STAGES)}) {where(path, line)}")
        if int(epoch) in epochs:
            raise InputError(f"epoch {epoch} is listed twice {where(path, line)}")
        epochs.add(int(epoch))
        corrections.append(Correction(int(epoch), STAGE_TO_INT[before], STAGE_TO_INT[after], when, scorer, line))
    if recording_id is None:
        raise InputError(f"no corrections in the file {where(path)}")
    return recording_id, corrections


def night_files(folder: Path, recording_id: str) -> dict:
    """The night's output files (night_outputs.OUTPUT_FILES, the page and the log) by key."""
    night = folder / recording_id
    files = {key: night / pattern.format(name=recording_id) for key, pattern in night_outputs.OUTPUT_FILES.items()}
    files.update(page=night / review_page.PAGE_NAME, log=night / LOG_NAME.format(name=recording_id))
    return files


def plan_corrections(folder: Path, paths: list[Path]) -> dict:
    """Check every file against its night; return ID -> (table rows, [(path, Correction), ...]) to apply.

    Raises
    ------
    InputError
        The first problem found (file and row); nothing has been written.
    """
    plans: dict[str, tuple] = {}
    for path in paths:
        recording_id, corrections = read_corrections(path)
        files = night_files(folder, recording_id)
        if not files["table"].is_file():
            raise InputError(f"night {recording_id!r} is not scored in {folder} (no {files['table'].name}) "
                             f"{where(path, corrections[0].row)}")
        if recording_id not in plans:
            with open(files["table"], newline="") as handle:
                plans[recording_id] = (list(csv.DictReader(handle)), [])
        table, planned = plans[recording_id]
        row_of = {int(row["epoch"]): row for row in table}
        for correction in corrections:
            row = row_of.get(correction.epoch)
            if row is None:
                raise InputError(f"night {recording_id} has no epoch {correction.epoch} (epochs "
                                 f"{table[0]['epoch']} to {table[-1]['epoch']}) {where(path, correction.row)}")
            now = STAGE_TO_INT[row["stage_after"]]
            if now not in (correction.before, correction.after):
                raise InputError(f"epoch {correction.epoch} of {recording_id} is {STAGES[now]} now, the file says it "
                                 f"was {STAGES[correction.before]} {where(path, correction.row)}")
            row["stage_after"] = STAGES[correction.after]
            planned.append((path, correction, now))
    return plans


def _start_of(edf_path: Path) -> datetime.datetime | None:
    """The recording start the annotations EDF holds (None: EDF+'s unknown date, as hypnogram.py writes it)."""
    import edfio

    edf = edfio.read_edf(edf_path)
    try:
        date = edf.startdate
    except Exception:  # edfio raises for the anonymised date X (unknown)
        return None
    if date is None or date == datetime.date(1985, 1, 1):
        return None
    return datetime.datetime.combine(date, edf.starttime)


class StagedWrites:
    """Files written under temporary names beside their targets, renamed into place together by :meth:`commit`.

    :meth:`path` gives the temporary name for a target (hidden, the process
    id in it, the target's suffix kept for writers that go by it). The
    renames follow the order the paths were asked for.
    """

    def __init__(self) -> None:
        self.renames: list[tuple[Path, Path]] = []

    def path(self, target: Path) -> Path:
        staged = target.with_name(f".{target.stem}.{os.getpid()}.staged{target.suffix}")
        self.renames.append((staged, target))
        return staged

    def commit(self) -> None:
        for staged, target in self.renames:
            os.replace(staged, target)

    def discard(self) -> None:
        for staged, _ in self.renames:
            staged.unlink(missing_ok=True)


def apply_corrections(folder: Path, plans: dict, applied_at: str) -> dict:
    """Apply :func:`plan_corrections`' plans: every night's new files written first, then all renamed into place.

    Per night the renames go log, page, annotations, figure, statistics and
    the hypnogram table last: the table is what says a correction is applied
    (``plan_corrections`` reads it), so a night whose table was not renamed
    when the process died is applied whole by the same command run again
    (its log gets no row twice: :func:`write_log`). An error while writing
    removes every temporary file and changes nothing.

    Returns
    -------
    dict
        Recording ID -> epochs whose stage changed.
    """
    staged = StagedWrites()
    try:
        changed = {recording_id: apply_night(folder, recording_id, table, planned, applied_at, staged)
                   for recording_id, (table, planned) in plans.items()}
    except BaseException:
        staged.discard()
        raise
    staged.commit()
    return changed


def apply_night(folder: Path, recording_id: str, table: list[dict], planned: list, applied_at: str,
                staged: StagedWrites) -> int:
    """Write one night's outputs from its corrected table rows under ``staged`` names; return how many epochs
    change stage."""
    files = night_files(folder, recording_id)
    statistics_old = json.loads(files["statistics"].read_text())
    epochs = np.array([int(r["epoch"]) for r in table])
    onsets = np.array([float(r["onset_s"]) for r in table])
    after = np.array([STAGE_TO_INT[r["stage_after"]] for r in table])
    inside = np.array([r["in_lights_period"] == "1" for r in table])
    epoch_seconds = psg_layout.EPOCH_SECONDS  # every scored night's epochs are 30 s (render_edf.py)
    statistics = {**statistics_old, **sleep_statistics.sleep_statistics(after[inside], epoch_seconds)}
    start = _start_of(files["edf"])
    probabilities = np.array([[float(r[f"p_{name}"]) for name in STAGES] for r in table])
    before = np.array([STAGE_TO_INT[r["stage_before"]] for r in table])
    quality = [[r[key] for key in night_outputs.QUALITY_COLUMNS] for r in table]
    changed = [(path, c, now) for path, c, now in planned if now != c.after]
    write_log(files["log"], recording_id, changed, applied_at, out=staged.path(files["log"]))
    if files["page"].is_file():
        review_page.rewrite_page_stages(files["page"], after.tolist(), out=staged.path(files["page"]))
    night_outputs.write_annotation_edf(staged.path(files["edf"]), recording_id,
                                   night_outputs.stage_annotations(onsets, after, epoch_seconds), start)
    if files["figure"].is_file():
        night_outputs.plot_recording(staged.path(files["figure"]), recording_id, onsets, after, probabilities, start,
                                 epoch_seconds, statistics, inside)
    with script_io.atomic_path(staged.path(files["statistics"])) as tmp:
        tmp.write_text(json.dumps(sleep_statistics.json_ready(statistics), indent=2, allow_nan=False) + "\n")
    night_outputs.write_hypnogram_table(staged.path(files["table"]), epochs, onsets, [r["clock_time"] for r in table],
                                    inside, before, after, probabilities, quality)
    return len(changed)


def write_log(path: Path, recording_id: str, changed: list, applied_at: str, out: Path | None = None) -> None:
    """Append the changes (who, what, when, from which file) to the night's corrections log, atomically.

    A change the log already holds (same epoch, stages, time, scorer and
    file: an apply that died before its table was renamed, run again) is
    not added twice. Written to ``out`` (default: ``path``).
    """
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True) if path.is_file() else []
    logged = {tuple(row[:6]) + (row[7],) for row in csv.reader(lines[1:]) if len(row) == len(LOG_COLUMNS)}
    with script_io.atomic_path(path if out is None else out) as tmp, open(tmp, "w", newline="",
                                                                          encoding="utf-8") as handle:
        handle.writelines(lines)
        writer = csv.writer(handle, lineterminator="\n")
        if not lines:
            writer.writerow(LOG_COLUMNS)
        for source, c, now in changed:
            row = [recording_id, str(c.epoch), STAGES[now], STAGES[c.after], c.when, c.scorer]
            if tuple(row) + (Path(source).name,) not in logged:
                writer.writerow([*row, applied_at, Path(source).name])


def rebuild_statistics_table(folder: Path) -> list[str]:
    """The folder's ``sleep_statistics.csv`` from every night's statistics JSON; return the nights."""
    from sleepstaging.scoring import cohort
    from sleepstaging.scoring import postprocess
    nights = cohort.scored_nights(folder)
    statistics = {night: json.loads(night_files(folder, night)["statistics"].read_text()) for night in nights}
    night_outputs.write_statistics_table(folder / postprocess.STATISTICS_TABLE, statistics)
    return nights
