"""What the hmm gains on simulated noisy labels: generator nights against nights drawn from real transitions.

    python bench/hmm_context.py          # 40 nights of 7 h per kind (20 to count the hmm, 20 decoded)

Two kinds of nights: the generator's labels (``recording_hypnogram``,
seed 1) and nights drawn as a Markov chain from the 30-s transition counts
of Metzner et al. 2021 (``METZNER_COUNTS``, the default of yasa 0.8.1's
``simulate_hypnogram``), starting awake. A classifier is simulated by
``CONFUSION`` (rows: true stage, columns: the stage it says; a plausible
epoch classifier on these images: N1 the weakest, as in the demo's
reports), its errors either independent from epoch to epoch or in runs
(an error persists into the next epoch with probability ``RUN_PERSISTENCE``
while the true stage stays). Its probabilities for an epoch are the column
of ``CONFUSION`` of the stage it says, normalised: the likelihood a
calibrated classifier would give. ``hmm.estimate_hmm`` counts the hmm on
the first half of the nights; ``hmm.hmm_decode`` decodes the second half;
the gain is macro-F1 after minus before. A third kind, ``generator_chain``,
draws stationary Markov chains from the generator's own pooled transition
counts: the same order of stages without the night's plan (cycles, N3
early, REM late), so the bench shows which part of a gain difference the
plan causes. A first-order chain is the hmm's own model, so the gain on
Metzner's chain is what the hmm gains on nights that are exactly Markov;
real nights are not (their transition probabilities change over the
night), and neither are the generator's. Writes ``bench/results/hmm_context.json``.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np


from sleepstaging.scoring import hmm
from sleepstaging.synthetic import hypnogram as synthetic_hypnogram
from sleepstaging.scoring.blend import macro_f1

REPO = Path(__file__).resolve().parents[1]

METZNER_COUNTS = np.array([[11737, 571, 84, 2, 2], [281, 6697, 1661, 11, 59], [253, 1070, 26259, 505, 272],
                           [49, 176, 279, 9630, 12], [57, 189, 84, 2, 10071]], dtype=float)
CONFUSION = np.array([  # rows: true Wake, N1, N2, N3, REM; columns: said
    [0.88, 0.07, 0.02, 0.00, 0.03],
    [0.15, 0.50, 0.20, 0.00, 0.15],
    [0.01, 0.05, 0.88, 0.05, 0.01],
    [0.00, 0.00, 0.10, 0.90, 0.00],
    [0.02, 0.06, 0.03, 0.00, 0.89],
])
RUN_PERSISTENCE = 0.8


def chain_night(rng: np.random.Generator, epochs: int, counts: np.ndarray = METZNER_COUNTS) -> np.ndarray:
    """A night drawn as a stationary Markov chain from transition ``counts`` (5 x 5), starting awake, shape (epochs,)."""
    transition = counts / counts.sum(axis=1, keepdims=True)
    night = np.empty(epochs, dtype=np.int64)
    stage = 0
    for epoch in range(epochs):
        night[epoch] = stage
        stage = rng.choice(5, p=transition[stage])
    return night


def noisy_labels(rng: np.random.Generator, truth: np.ndarray, in_runs: bool) -> np.ndarray:
    """The stage the simulated classifier says for each epoch, shape like ``truth``."""
    said = np.empty_like(truth)
    for epoch, stage in enumerate(truth):
        keep = (in_runs and epoch > 0 and truth[epoch - 1] == stage and said[epoch - 1] != stage
                and rng.random() < RUN_PERSISTENCE)
        said[epoch] = said[epoch - 1] if keep else rng.choice(5, p=CONFUSION[stage])
    return said


def gain(nights: list, rng: np.random.Generator, in_runs: bool) -> dict:
    half = len(nights) // 2
    ids = lambda group: np.concatenate([np.full(len(n), i) for i, n in enumerate(group)]).astype(str)  # noqa: E731
    model = hmm.estimate_hmm(np.concatenate(nights[:half]), ids(nights[:half]))
    truth = np.concatenate(nights[half:])
    said = np.concatenate([noisy_labels(rng, night, in_runs) for night in nights[half:]])
    probabilities = CONFUSION[:, said].T / CONFUSION[:, said].T.sum(axis=1, keepdims=True)
    decoded = hmm.hmm_decode(probabilities, ids(nights[half:]), *model)
    before, after = macro_f1(truth, said), macro_f1(truth, decoded)
    return {"before": round(before, 4), "after": round(after, 4), "gain": round(after - before, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nights", type=int, default=40)
    parser.add_argument("--hours", type=float, default=7.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "hmm_context.json")
    args = parser.parse_args()
    generator = []
    for index in range(args.nights):
        labels = synthetic_hypnogram.recording_hypnogram(args.seed, index, args.hours)
        generator.append(labels[labels >= 0].astype(np.int64))
    rng = np.random.default_rng(args.seed)
    metzner = [chain_night(rng, len(night)) for night in generator]
    # the generator's own pooled transitions as a stationary chain: separates what the order of stages
    # does to the gain (same counts, no cycles) from what the night's plan does (cycles, N3 early, REM late)
    own_counts = np.zeros((5, 5))
    for night in generator:
        np.add.at(own_counts, (night[:-1], night[1:]), 1)
    generator_chain = [chain_night(rng, len(night), own_counts) for night in generator]
    result = {"command": "python bench/hmm_context.py " + " ".join(sys.argv[1:]), "confusion": CONFUSION.tolist(),
              "run_persistence": RUN_PERSISTENCE, "nights": args.nights, "hours": args.hours}
    for errors, in_runs in (("independent", False), ("in_runs", True)):
        found = {kind: gain(nights, np.random.default_rng([args.seed, in_runs]), in_runs)
                 for kind, nights in (("generator", generator), ("metzner", metzner),
                                             ("generator_chain", generator_chain))}
        found["gain_difference"] = round(abs(found["generator"]["gain"] - found["metzner"]["gain"]), 4)
        result[errors] = found
        print(errors, json.dumps(found))
    result["machine"] = {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()}
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(args.out)


if __name__ == "__main__":
    main()
