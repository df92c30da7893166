"""A cohort split into shards scored on several machines, and the shards put back together.

Shard ``K/N`` is numbered from 0, as Slurm numbers the tasks of
``sbatch --array=0-(N-1)``: K runs from 0 to N-1. It scores every N-th
night of the cohort's recording IDs in sorted order, starting at the K-th
(positions K, K + N, K + 2N, ...), so every machine that sees the same
``--edf`` folder computes the same split, and the shards' sizes differ by
at most one night. A shard is an ordinary ``stage_edf.py`` run into its
own folder (resumable, its own tables); its ``stage_edf.json`` holds
:func:`shard_record`: the shard, the cohort it split (night count and a
digest of the sorted IDs), the nights it was given, and a digest of the
model files (:func:`model_set.model_files_sha256`).

:func:`merge_shards` builds the cohort's ``sleep_statistics.csv``,
``failures.csv`` and ``index.html`` from all N shards (the nights' folders
stay where they are; the index links into them). It refuses, with one line
and nothing written: a shard missing or given twice, an unfinished shard,
shards of different cohorts, models or settings, and a night in two shards.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from sleepstaging import script_io
from sleepstaging.scoring import cohort, cohort_page
from sleepstaging.script_io import InputError, where

SLURM_TASK, SLURM_COUNT = "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"
SLURM_MIN, SLURM_MAX = "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_MAX"
GIVEN_BY_SLURM = f"{SLURM_TASK}/{SLURM_COUNT}"
MERGE_RECORD = "merged_shards.json"
SHARD_RECORD_KEYS = ("index", "count", "given_by", "cohort_nights", "cohort_sha256", "nights", "model_files_sha256")
# Settings that may differ between the shards of one cohort: the shard itself, and where the
# weights folder was (a node's copy of it); the models' files are compared by their digest instead.
PER_SHARD_SETTINGS = ("shard", "weights_dir")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0 <= index < count), and what gave it (``--shard`` or Slurm's variables)."""

    index: int
    count: int
    given_by: str

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str, given_by: str) -> Shard:
    """``K/N`` -> :class:`Shard`; K from 0 to N-1."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if match is None:
        raise InputError(f"{given_by} must be K/N (shard K of N, K from 0 to N-1), got {text!r}")
    index, count = int(match[1]), int(match[2])
    if count < 1 or index >= count:
        raise InputError(f"{given_by} {text}: shards of {count} are numbered 0 to {count - 1} (as sbatch "
                         f"--array=0-{max(count - 1, 0)} numbers its tasks)")
    return Shard(index, count, given_by)


def resolve_shard(option: str | None, environ) -> Shard | None:
    """The shard of this run: ``--shard``, else Slurm's job-array variables when set, else None (every night).

    Slurm's task IDs must run 0 to N-1 (``--array=0-(N-1)``); an array
    numbered otherwise (from 1, a step, a list of retried tasks) is refused
    with how to say it, since its IDs do not name shards of its task count.
    """
    if option is not None:
        return parse_shard(option, "--shard")
    if SLURM_TASK not in environ:
        return None
    if SLURM_COUNT not in environ:
        raise InputError(f"{SLURM_TASK} is set but {SLURM_COUNT} is not: give the shard with --shard K/N")
    task, count = environ[SLURM_TASK], environ[SLURM_COUNT]
    low, high = environ.get(SLURM_MIN, "0"), environ.get(SLURM_MAX)
    names_a_shard = (task.isdigit() and count.isdigit() and int(task) < int(count) and low == "0"
                     and high in (None, str(int(count) - 1)))
    if not names_a_shard:
        raise InputError(f"the job array's task {task} of {count} (tasks {low} to {high}) does not name a shard: "
                         f"shards of N are the tasks of sbatch --array=0-(N-1); to redo shard K of an earlier "
                         f"array of N, give --shard K/N")
    return parse_shard(f"{task}/{count}", GIVEN_BY_SLURM)


def cohort_digest(recording_ids) -> str:
    """SHA-256 of the sorted recording IDs, one a line: equal on every machine that sees the same nights."""
    return hashlib.sha256("".join(f"{i}\n" for i in sorted(recording_ids)).encode()).hexdigest()


def shard_nights(recordings: list, shard: Shard) -> list:
    """The recordings of ``shard``: every ``count``-th of the sorted IDs from the ``index``-th, in the given order."""
    ids = sorted(source.recording_id for source in recordings)
    chosen = set(ids[shard.index::shard.count])
    return [source for source in recordings if source.recording_id in chosen]


def shard_record(shard: Shard, recordings: list, assigned: list, model_files: str) -> dict:
    """What a shard's ``stage_edf.json`` says of it (key ``shard``), read back by :func:`merge_shards`."""
    values = (shard.index, shard.count, shard.given_by, len(recordings),
              cohort_digest(source.recording_id for source in recordings),
              sorted(source.recording_id for source in assigned), model_files)
    return dict(zip(SHARD_RECORD_KEYS, values))


def check_resumed_shard(out: Path, record: dict) -> None:
    """Refuse to go on with a shard whose cohort or model files changed since it was started.

    Other nights under ``--edf`` would split otherwise (the shards would no
    longer cover the cohort once each); other model files would score the
    rest of the shard with other models.
    """
    earlier = script_io.read_json_object(out / cohort.MARKER, "run record").get("shard") or {}
    shard = f"{record['index']}/{record['count']}"
    if earlier.get("cohort_sha256") != record["cohort_sha256"]:
        raise InputError(f"--resume of shard {shard}: the nights under --edf changed since it was started "
                         f"({earlier.get('cohort_nights')} then, {record['cohort_nights']} now), so the shards no "
                         f"longer split the cohort as before; score every shard into new folders "
                         f"{where(out / cohort.MARKER)}")
    if earlier.get("model_files_sha256") != record["model_files_sha256"]:
        raise InputError(f"--resume of shard {shard}: the model files (checkpoints, configurations, "
                         f"model_set.json) changed since it was started; score every shard into new folders "
                         f"{where(out / cohort.MARKER)}")


# --------------------------------------------------------------------------
# Merging
# --------------------------------------------------------------------------
def read_shard(folder: Path) -> dict:
    """A finished shard's record: its ``stage_edf.json`` with ``folder``; refused when it is not one."""
    marker = folder / cohort.MARKER
    if not marker.is_file():
        raise InputError(f"not a stage_edf.py result ({cohort.MARKER} is missing) {where(folder)}")
    run = script_io.read_json_object(marker, "run record")
    shard = run.get("shard")
    if not isinstance(shard, dict) or not isinstance(run.get("settings"), dict):
        raise InputError(f"not a shard: scored without --shard or Slurm's job-array variables {where(marker)}")
    missing = [key for key in SHARD_RECORD_KEYS if key not in shard]
    if missing:
        raise InputError(f"the shard's record lacks {', '.join(missing)} {where(marker)}")
    if "recordings" not in run:
        raise InputError(f"shard {shard['index']}/{shard['count']} did not finish: run it again with --resume "
                         f"{where(marker)}")
    return dict(run, folder=folder)


def shard_name(run: dict) -> str:
    """``shard K/N`` of a shard's record."""
    return f"shard {run['shard']['index']}/{run['shard']['count']}"


def check_shard_set(shards: list[dict]) -> None:
    """One shard of each index 0 to N-1, all of the same N; else one line naming what is missing or twice."""
    counts = sorted({run["shard"]["count"] for run in shards})
    if len(counts) > 1:
        listed = ", ".join(f"{shard_name(run)} ({run['folder']})" for run in shards)
        raise InputError(f"the shards split the cohort into different numbers of shards "
                         f"({', '.join(map(str, counts))}): {listed}")
    count = counts[0]
    seen = {}
    for run in shards:
        index = run["shard"]["index"]
        if index in seen:
            raise InputError(f"shard {index}/{count} is given twice: {seen[index]['folder']} and {run['folder']}")
        seen[index] = run
    missing = [index for index in range(count) if index not in seen]
    if missing:
        shown = ", ".join(f"{index}/{count}" for index in missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise InputError(f"{len(missing)} of {count} shard(s) missing: {shown}; score each with --shard K/{count} "
                         f"(or its Slurm array task) and merge all {count}")


def check_same_run(shards: list[dict]) -> None:
    """The shards split one cohort, with the same model files and settings; else one line naming the difference."""
    first = shards[0]
    for run in shards[1:]:
        this, that = shard_name(run), shard_name(first)
        if run["shard"]["cohort_sha256"] != first["shard"]["cohort_sha256"]:
            raise InputError(f"{this} split another cohort than {that} ({run['shard']['cohort_nights']} and "
                             f"{first['shard']['cohort_nights']} night(s) under --edf; the folder changed between "
                             f"them): {run['folder']}, {first['folder']}")
        if run["shard"]["model_files_sha256"] != first["shard"]["model_files_sha256"]:
            raise InputError(f"{this} was scored with other model files than {that} (checkpoints, configurations "
                             f"or model_set.json differ): {run['folder']}, {first['folder']}")
        keys = (set(run["settings"]) | set(first["settings"])) - set(PER_SHARD_SETTINGS)
        for key in sorted(keys):
            if run["settings"].get(key) != first["settings"].get(key):
                raise InputError(f"{this} was scored with {key} {run['settings'].get(key)!r}, {that} with "
                                 f"{first['settings'].get(key)!r}: merge only shards of one run's settings "
                                 f"({run['folder']}, {first['folder']})")


def shard_contents(shards: list[dict]) -> tuple[dict, dict]:
    """Every night of the shards: (ID -> folder holding its scored night, ID -> failure row).

    Raises
    ------
    InputError
        A night in two shards, or a night a shard was given that it neither
        scored nor lists as failed.
    """
    holder, scored, failed = {}, {}, {}
    for run in shards:
        folder = run["folder"]
        nights, failures = cohort.scored_nights(folder), cohort.read_failures(folder)
        for recording_id in [*nights, *failures]:
            if recording_id in holder:
                raise InputError(f"night {recording_id} is in two shards: {shard_name(holder[recording_id])} "
                                 f"({holder[recording_id]['folder']}) and {shard_name(run)} ({folder})")
            holder[recording_id] = run
        scored.update(dict.fromkeys(nights, folder))
        failed.update(failures)
        absent = sorted(set(run["shard"]["nights"]) - set(nights) - set(failures))
        if absent:
            raise InputError(f"{shard_name(run)} lacks {len(absent)} of its nights ({', '.join(absent[:5])}"
                             f"{' ...' if len(absent) > 5 else ''}): run it again with --resume {where(folder)}")
    return scored, failed


def check_merge_out(out: Path, folders: list[Path], overwrite: bool) -> None:
    """Refuse an ``--out`` a merge may not write: a shard's folder, or one holding anything but an earlier merge."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out is a file, not a folder {where(out)}")
    if any(out.resolve() == folder.resolve() for folder in folders):
        raise InputError(f"--out is one of the shards; merge into a folder of its own {where(out)}")
    if not out.exists() or not any(out.iterdir()):
        return
    if not (out / MERGE_RECORD).is_file():
        raise InputError(f"--out holds files that no merge wrote ({MERGE_RECORD} is missing); merge into a new "
                         f"or empty folder {where(out)}")
    if not overwrite:
        raise InputError(f"--out holds an earlier merge; --overwrite replaces it {where(out)}")


def merge_shards(folders: list[Path], out: Path, overwrite: bool, config: dict) -> dict:
    """Check the shards, then write the cohort's two tables, its index and :data:`MERGE_RECORD` into ``out``.

    Returns
    -------
    dict
        The merge record: shards (index, folder, nights scored and failed),
        ``recordings`` (scored IDs), ``failed`` (IDs), the shared settings.
    """
    check_merge_out(out, folders, overwrite)
    shards = [read_shard(folder) for folder in folders]
    check_shard_set(shards)
    shards.sort(key=lambda run: run["shard"]["index"])
    check_same_run(shards)
    scored, failed = shard_contents(shards)
    out.mkdir(parents=True, exist_ok=True)
    statistics = {recording_id: cohort.night_statistics(folder, recording_id)
                  for recording_id, folder in scored.items()}
    cohort.write_cohort_tables(out, statistics, failed)
    cohort_page.write_index(out, [failed[i] for i in sorted(failed)], scored)
    record = dict(config, shards=[{"index": run["shard"]["index"], "folder": str(run["folder"]),
                                   "recordings": run["recordings"], "failed": run.get("failed", [])}
                                  for run in shards],
                  cohort_nights=shards[0]["shard"]["cohort_nights"], cohort_sha256=shards[0]["shard"]["cohort_sha256"],
                  model_files_sha256=shards[0]["shard"]["model_files_sha256"],
                  settings={k: v for k, v in shards[0]["settings"].items() if k not in PER_SHARD_SETTINGS},
                  recordings=sorted(scored), failed=sorted(failed))
    with script_io.atomic_path(out / MERGE_RECORD) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    return record
