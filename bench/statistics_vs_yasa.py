"""The project's sleep statistics against YASA's ``sleep_statistics``, on random hypnograms.

docs/sleep-statistics.md says the statistics are computed as YASA's
``sleep_statistics`` computes them. This checks it: for ``--hypnograms``
random hypnograms (uniform stages, runs of one stage, mostly wake, and the
edge cases all wake, all sleep, one sleep epoch) at 30-s and 20-s epochs,
every statistic both compute must agree (relative difference at most
1e-9, or undefined in both: NaN here, NaN or absent there). Statistics
YASA does not compute (``Lat_REM_from_onset``, ``awakenings``,
``stage_shifts``, ``W``) are listed, not compared. Prints the disagreements
(at most 3 examples per statistic) and writes the summary to ``--out``.
Exit status 1 when any statistic disagrees.

Runs in the bench-only venv that holds yasa (``hypnogram``'s statistics
need only NumPy and the standard library there; ``PYTHONPATH=.`` reads the
package from this checkout, which that venv does not have installed):

    python -m venv .venv-realism && .venv-realism/bin/pip install -r bench/requirements-realism.txt
    PYTHONPATH=. .venv-realism/bin/python bench/statistics_vs_yasa.py
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from pathlib import Path


import numpy as np

from sleepstaging.scoring import sleep_statistics

REPO = Path(__file__).resolve().parents[1]
parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
parser.add_argument("--hypnograms", type=int, default=3000, help="random hypnograms per epoch length")
parser.add_argument("--seed", type=int, default=72)
parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "statistics_vs_yasa.json")


def random_hypnograms(count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Stage codes 0..4 of ``count`` nights of 2 to 960 epochs, four kinds in turn, plus the edge cases."""
    nights = [np.zeros(10, dtype=int), np.full(10, 2), np.array([0, 0, 1, 0, 0]), np.array([3, 0])]
    for index in range(count):
        length = int(rng.integers(2, 961))
        kind = index % 4
        if kind == 0:
            stages = rng.integers(0, 5, length)
        elif kind == 1:  # runs of one stage, as a scored night has
            runs = rng.integers(0, 5, length)
            stages = np.repeat(runs, rng.integers(1, 40, length))[:length]
        elif kind == 2:  # mostly wake: the undefined and the edge cases of latencies and WASO
            stages = np.where(rng.random(length) < 0.9, 0, rng.integers(1, 5, length))
        else:  # no REM or no N3 at all
            stages = rng.choice([0, 1, 2, 4] if index % 8 == 3 else [0, 1, 2, 3], length)
        nights.append(stages.astype(int))
    return nights


def undefined(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def agree(ours, theirs) -> bool:
    if undefined(ours) or undefined(theirs):
        return undefined(ours) and undefined(theirs)
    return abs(ours - theirs) <= 1e-9 * max(1.0, abs(theirs))


def main() -> int:
    args = parser.parse_args()
    import yasa

    warnings.filterwarnings("ignore", message="The `yasa.sleep_statistics` function is deprecated")
    rng = np.random.default_rng(args.seed)
    compared, disagreements, not_in_yasa = {}, {}, set()
    nights = 0
    for epoch_seconds in (30.0, 20.0):
        for stages in random_hypnograms(args.hypnograms, rng):
            ours = sleep_statistics.sleep_statistics(stages, epoch_seconds)
            theirs = yasa.sleep_statistics(stages, sf_hyp=1.0 / epoch_seconds)
            nights += 1
            for key, value in ours.items():
                if key not in theirs:
                    not_in_yasa.add(key)
                    continue
                compared[key] = compared.get(key, 0) + 1
                if not agree(value, theirs[key]):
                    disagreements.setdefault(key, []).append(
                        {"epoch_seconds": epoch_seconds, "stages": stages.tolist()[:40], "ours": value,
                         "yasa": None if undefined(theirs[key]) else float(theirs[key])})
    print(f"{nights} hypnograms at 30-s and 20-s epochs; yasa {yasa.__version__}")
    print(f"compared: {', '.join(compared)}")
    print(f"not computed by yasa: {', '.join(sorted(not_in_yasa))}")
    for key, cases in disagreements.items():
        print(f"  {key}: {len(cases)} disagreements, e.g. {cases[:3]}")
    print("all agree" if not disagreements else f"{len(disagreements)} statistics disagree")
    report = {"command": "PYTHONPATH=. .venv-realism/bin/python bench/statistics_vs_yasa.py " + " ".join(sys.argv[1:]),
              "yasa": yasa.__version__, "hypnograms": nights, "compared": compared,
              "not_in_yasa": sorted(not_in_yasa),
              "disagreements": {key: {"count": len(cases), "examples": cases[:3]}
                                for key, cases in disagreements.items()}}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 1 if disagreements else 0


if __name__ == "__main__":
    sys.exit(main())
