"""The synthetic data set as a whole: the generator's version, the marker that says a folder is complete and
up to date, the nights made over worker processes (make_synthetic.py).
"""
from __future__ import annotations

import json
import multiprocessing
from pathlib import Path


from sleepstaging.script_io import InputError, where
from sleepstaging.synthetic.files import make_recording

# --------------------------------------------------------------------------
# Configuration (the defaults are the demo's data set)
# --------------------------------------------------------------------------


GENERATOR_VERSION = 6  # bump whenever the same arguments would give different files
MARKER_NAME = "make_synthetic.json"
HYPNODENSITY_CSV = "hypnodensity.csv"  # ID,IDnum and the scoring panel's share of Wake, N1, N2, N3, REM
GENERATION_KEYS = ("train_subjects", "test_subjects", "seed", "hours", "edf", "generator_version")
MAX_HOURS = 24.0  # 4-digit epoch numbers allow 83 h; a night is shorter


def made_recordings(tasks: list, workers: int):
    """Yield ``make_recording`` results as recordings finish, ``workers`` at a time."""
    if workers == 1:
        yield from map(make_recording, tasks)
        return
    # spawn, not fork: a parent that has loaded torch or opened threads forks badly
    with multiprocessing.get_context("spawn").Pool(min(workers, len(tasks))) as pool:
        yield from pool.imap_unordered(make_recording, tasks)


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
