"""A cohort scored over several runs: which nights are done, which failed, and the two cohort tables.

``stage_edf.py`` writes each scored night as a folder that appears whole
(``<out>/<ID>/``, its statistics last), lists the nights that failed in
``failures.csv`` with the size and modification time of their file, and
rebuilds ``sleep_statistics.csv`` from every scored night. A ``--resume``
reads both back here: a night with its statistics is done, a failure is
kept while its file is unchanged.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import postprocess
import script_io
from script_io import InputError, where

FAILURES = "failures.csv"
FAILURE_COLUMNS = ("recording_id", "edf", "step", "reason", "edf_bytes", "edf_modified_ns")


def scored_nights(out: Path) -> list[str]:
    """IDs of the nights whose results are in ``out`` (a night's folder appears whole, statistics included)."""
    import hypnogram

    statistics = hypnogram.OUTPUT_FILES["statistics"]
    return sorted(folder.name for folder in out.iterdir() if not folder.name.startswith(".")
                  and (folder / statistics.format(name=folder.name)).is_file())


def file_stamp(path: Path) -> dict:
    """Size and modification time of a file: a failed night is tried again once its file changed."""
    status = path.stat()
    return {"edf_bytes": str(status.st_size), "edf_modified_ns": str(status.st_mtime_ns)}


def read_failures(out: Path) -> dict:
    """The failures table of an earlier run: ID -> row (dict of :data:`FAILURE_COLUMNS`); empty when absent."""
    path = out / FAILURES
    if not path.is_file():
        return {}
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if rows and set(rows[0]) != set(FAILURE_COLUMNS):
        raise InputError(f"not a failures table of stage_edf.py (columns {list(rows[0])}) {where(path)}")
    return {row["recording_id"]: row for row in rows}


def plan_nights(recordings: list, out: Path, resuming: bool, retry_failed: bool) -> tuple[list, list, dict]:
    """Split the recordings into (to score, already scored IDs, failures kept from before: ID -> row)."""
    done = set(scored_nights(out)) if resuming else set()
    earlier = read_failures(out) if resuming and not retry_failed else {}
    kept = {}
    for source in recordings:
        row = earlier.get(source.recording_id)
        unchanged = row is not None and row["edf"] == str(source.edf) and all(
            row[key] == value for key, value in file_stamp(source.edf).items())
        if unchanged:
            kept[source.recording_id] = row
    pending = [s for s in recordings if s.recording_id not in done and s.recording_id not in kept]
    return pending, sorted(done & {s.recording_id for s in recordings}), kept


def write_tables(out: Path, failures: dict) -> list[str]:
    """The cohort's statistics table (every scored night in ``out``) and failures table; return the scored IDs."""
    import hypnogram

    nights = scored_nights(out)
    statistics = {recording_id: json.loads((out / recording_id / hypnogram.OUTPUT_FILES["statistics"].format(
        name=recording_id)).read_text()) for recording_id in nights}
    hypnogram.write_statistics_table(out / postprocess.STATISTICS_TABLE, statistics)
    with script_io.atomic_path(out / FAILURES) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, FAILURE_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(failures[recording_id] for recording_id in sorted(failures))
    return nights
