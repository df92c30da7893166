"""A what-if for the generator's walk: its leaving rates and change shares read from a JSON file (``--walk``).

The generator walks a night's plan with the tables of
``sleepstaging/synthetic/hypnogram.py``: ``EXIT_SHARES`` (where a stage goes
when it is left), ``EXIT_AT_HOME`` and ``EXIT_AWAY`` (how often it is left
per epoch, at and away from the planned stage) and ``NIGHT_WAKE_EXPONENT``
(how fast night-time wake's leaving rate falls after its first epoch). A bench given ``--walk
FILE`` draws its nights with FILE's tables instead, in its own process
only, so that a candidate walk is measured against the structure targets
(``hypnogram_structure.py``) and the hmm's gain (``hmm_context.py``) before
the generator takes it. Tables FILE leaves out keep the generator's values.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sleepstaging.synthetic import hypnogram as synthetic_hypnogram

TABLES = ("EXIT_SHARES", "EXIT_AT_HOME", "EXIT_AWAY", "NIGHT_WAKE_EXPONENT")


def read_walk(path: Path) -> dict:
    """The tables of a walk file, checked: ``name -> np.ndarray``.

    Raises
    ------
    ValueError
        Naming the file: not a JSON object, an unknown table, a shape other
        than the generator's, a share matrix whose diagonal is not 0 or whose
        rows do not sum to 1, a rate outside (0, 1], an exponent not above 0.
    """
    try:
        found = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read a walk ({err})") from err
    if not isinstance(found, dict) or not found or set(found) - set(TABLES):
        raise ValueError(f"{path}: expected a JSON object of some of {', '.join(TABLES)}")
    tables = {}
    for name, values in found.items():
        table = np.array(values, dtype=float)
        if table.shape != np.shape(getattr(synthetic_hypnogram, name)):
            raise ValueError(f"{path}: {name} has shape {table.shape}, the generator's "
                             f"{np.shape(getattr(synthetic_hypnogram, name))}")
        tables[name] = table
    shares = tables.get("EXIT_SHARES")
    if shares is not None and (np.any(np.diag(shares) != 0) or np.any(shares < 0)
                               or not np.allclose(shares.sum(axis=1), 1.0, atol=1e-6)):
        raise ValueError(f"{path}: EXIT_SHARES needs a zero diagonal, no negative share and rows that sum to 1")
    for name in ("EXIT_AT_HOME", "EXIT_AWAY"):
        if name in tables and not np.all((tables[name] > 0) & (tables[name] <= 1)):
            raise ValueError(f"{path}: {name} needs rates in (0, 1] per epoch")
    if "NIGHT_WAKE_EXPONENT" in tables and not tables["NIGHT_WAKE_EXPONENT"] > 0:
        raise ValueError(f"{path}: NIGHT_WAKE_EXPONENT needs a power law's exponent above 0")
    return tables


def apply_walk(path: Path | None) -> dict:
    """Walk this process's generator nights with the tables of ``path`` (None: the generator's own); return the
    tables in effect, as lists (for a bench's result)."""
    for name, table in ({} if path is None else read_walk(path)).items():
        setattr(synthetic_hypnogram, name, table)
    return {name: np.round(getattr(synthetic_hypnogram, name), 4).tolist() for name in TABLES}
