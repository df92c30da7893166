"""The order of stages and their bouts in the synthetic nights against real nights (runs in the YASA venv).

    PYTHONPATH=. .venv-realism/bin/python bench/hypnogram_structure.py   # seeds 1-3, 30 nights of 7 h each
    ... bench/hypnogram_structure.py --walk my_walk.json --out OUT.json  # a candidate walk (bench/walk.py)

(YASA's venv, made by ``bench/realism.py``, does not have the project
installed: ``PYTHONPATH=.`` reads the package from this checkout.)

For every seed, the labels of 30 nights (``recording_hypnogram``, no
signals) are read with YASA's own ``Hypnogram`` and ``transition_matrix``
and compared with the 30-s transition counts of Metzner et al. 2021 (the
default of ``yasa.simulate_hypnogram``, read from yasa's source): for each
stage, the share of its changes that go to each other stage; every change
that real nights make in at least 2 % of a stage's exits must occur and
lie within 0.10 of Metzner's share. Also: night-time wake bouts (after
sleep onset, before the final awakening) of one epoch; mean N3 bout;
REM bouts a night; stage shares of sleep (sleep onset to final awakening);
each stage's mean bout (against Metzner's chain: 1 / (1 - its stay
probability)) and wake after sleep onset, which no target bounds.
The panel's hypnodensity gives the share of epochs on which all scorers
agree (Bakker et al. 2022: 32-46 %). Writes
``bench/results/hypnogram_structure.json``.
"""
from __future__ import annotations

import argparse
import inspect
import json
import platform
import re
import sys
from pathlib import Path

import numpy as np
import yasa

from sleepstaging.synthetic import hypnogram as synthetic_hypnogram
from transitions import EXIT_FLOOR, chain_mean_bouts, change_shares
from walk import apply_walk

REPO = Path(__file__).resolve().parents[1]
STAGES = ("WAKE", "N1", "N2", "N3", "REM")  # yasa's names, in the project's order 0-4


def metzner_counts() -> np.ndarray:
    """The 5 x 5 transition counts ``simulate_hypnogram`` defaults to, read from yasa's source (W, N1, N2, N3, R)."""
    source = inspect.getsource(yasa.simulate_hypnogram)
    block = source[source.index("trans_freqs = np.array("):]
    rows = re.findall(r"\[\s*(\d+),\s*(\d+),\s*(\d+),\s*(\d+),\s*(\d+)\s*\]", block)[:5]
    return np.array(rows, dtype=float)


def bouts(stages: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(stage, length, first epoch)`` of every run of one stage, each shape (runs,)."""
    starts = np.r_[0, np.flatnonzero(np.diff(stages)) + 1]
    return stages[starts], np.diff(np.r_[starts, len(stages)]), starts


def seed_structure(seed: int, nights: int, hours: float) -> dict:
    counts = np.zeros((5, 5))
    one_epoch_wake, n3_bouts, rem_bouts, shares, unanimous, scored = [], [], [], np.zeros(5), 0, 0
    bout_lengths, waso_minutes = [[] for _ in STAGES], []
    for index in range(nights):
        _, scoring = synthetic_hypnogram.recording_night(seed, index, hours)
        kept = scoring.labels >= 0
        labels = scoring.labels[kept].astype(int)
        hypno = yasa.Hypnogram([STAGES[s] for s in labels], n_stages=5)
        counts_yasa, _ = hypno.transition_matrix()
        # a night without some stage (no N3, as in many older sleepers) has no row or column for it
        counts += counts_yasa.reindex(index=list(STAGES), columns=list(STAGES), fill_value=0).to_numpy()
        stage, length, first = bouts(labels)
        asleep = np.flatnonzero(labels != 0)
        inside = (first > asleep[0]) & (first < asleep[-1])
        one_epoch_wake += (length[(stage == 0) & inside] == 1).tolist()
        n3_bouts += length[stage == 3].tolist()
        for code, lengths_of_stage in enumerate(bout_lengths):
            lengths_of_stage += length[stage == code].tolist()
        waso_minutes.append(float(np.sum(labels[asleep[0]:asleep[-1]] == 0)) / 2)
        rem_bouts.append(int(np.sum(stage == 4)))
        shares += np.bincount(labels[asleep[0]:asleep[-1] + 1], minlength=5)
        unanimous += int(np.sum(scoring.hypnodensity[kept].max(axis=1) == 1))
        scored += int(kept.sum())
    reference = change_shares(metzner_counts())
    found = change_shares(counts)
    required = reference >= EXIT_FLOOR
    sleep_share = shares[1:] / shares[1:].sum()
    return {
        "exit_shares": np.round(found, 3).tolist(),
        "required_changes_missing": [f"{STAGES[a]}->{STAGES[b]}" for a, b in zip(*np.nonzero(required & (counts == 0)))],
        "max_exit_share_difference": round(float(np.abs(found - reference).max()), 3),
        "one_epoch_night_wake_bouts": round(float(np.mean(one_epoch_wake)), 3),
        "n3_mean_bout_epochs": round(float(np.mean(n3_bouts)), 1),
        "mean_bout_epochs": dict(zip(STAGES, (round(float(np.mean(lengths_of_stage)), 1) for lengths_of_stage in bout_lengths))),
        "wake_after_sleep_onset_minutes": round(float(np.mean(waso_minutes)), 1),
        "rem_bouts_per_night": {"mean": round(float(np.mean(rem_bouts)), 1), "min": min(rem_bouts),
                                "max": max(rem_bouts)},
        "sleep_shares": dict(zip(STAGES[1:], np.round(sleep_share, 3).tolist())),
        "panel_all_agree": round(unanimous / scored, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--nights", type=int, default=30)
    parser.add_argument("--hours", type=float, default=7.0)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "hypnogram_structure.json")
    parser.add_argument("--walk", type=Path, default=None,
                        help="draw the generator's nights with this walk's tables (bench/walk.py; default: its own)")
    args = parser.parse_args()
    walk = {"file": None if args.walk is None else str(args.walk), "tables": apply_walk(args.walk)}
    result = {"command": "PYTHONPATH=. .venv-realism/bin/python bench/hypnogram_structure.py " + " ".join(sys.argv[1:]),
              "nights_per_seed": args.nights, "walk": walk, "hours": args.hours, "yasa": yasa.__version__,
              "metzner_exit_shares": np.round(change_shares(metzner_counts()), 3).tolist(),
              "metzner_mean_bout_epochs": dict(zip(STAGES, np.round(chain_mean_bouts(metzner_counts()), 1).tolist())),
              "seeds": {str(seed): seed_structure(seed, args.nights, args.hours) for seed in args.seeds},
              "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()}}
    for seed, found in result["seeds"].items():
        print(f"seed {seed}: " + json.dumps({k: v for k, v in found.items() if k != "exit_shares"}))
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(args.out)


if __name__ == "__main__":
    main()
