"""What the hmm gains on simulated noisy labels: generator nights against nights drawn from real transitions.

    python bench/hmm_context.py          # seeds 1-4, 40 nights of 7 h per kind (20 count the hmm, 20 decoded)
    python bench/hmm_context.py --walk my_walk.json --out OUT.json  # a candidate walk (bench/walk.py)

Two kinds of nights: the generator's labels (``recording_hypnogram``,
per ``--seeds``) and nights drawn as a Markov chain from the 30-s transition counts
of Metzner et al. 2021 (``METZNER_COUNTS``, the default of yasa 0.8.1's
``simulate_hypnogram``), starting awake. A classifier is simulated by
``CONFUSION`` (rows: true stage, columns: the stage it says; a plausible
epoch classifier on these images: N1 the weakest, as in the demo's
reports), its errors either independent from epoch to epoch or in runs
(an error persists into the next epoch with probability ``RUN_PERSISTENCE``
while the true stage stays). Its probabilities for an epoch are what a
calibrated classifier gives: the column of ``CONFUSION`` of the stage it
says (the likelihood of each true stage) times the nights' stage shares,
normalised; the hmm divides the shares out again. ``hmm.estimate_hmm``
counts the hmm on the first half of the nights; ``hmm.hmm_decode`` decodes
the second half; the gain is macro-F1 after minus before.

Where a gain difference comes from, nights drawn as semi-Markov chains: a
chain of changes (where a stage goes when it is left) and, for each stage,
how long it lasts (its bouts), taken from either kind:

- ``generator_chain``: the generator's own pooled transitions as a Markov
  chain (its order of stages and mean bouts, without the night's plan);
- ``metzner_changes_generator_bouts`` and ``generator_changes_metzner_bouts``:
  one kind's changes with the other's bouts (the generator's: drawn from its
  nights' bouts of that stage; Metzner's: geometric, as its chain gives);
- ``metzner_changes_generator_bouts_but_N1_metzner`` (and each other
  stage): the second kind with one stage's bouts from Metzner's chain;
- ``metzner_changes_target_bouts``: Metzner's changes with geometric bouts
  whose means give the generator's stage shares, REM bouts a night and
  night length (:func:`bouts_for_targets`): real nights' order of stages
  at the structure targets. Bouts balance (every bout is entered from the
  one before it), so the changes alone fix how many bouts of each stage
  come to one REM bout (``bouts_per_rem_bout`` in the output: 5.8 of N1
  with Metzner's changes); the shares and the REM bouts then fix each
  stage's mean bout;
- ``structure_targets_chain``: nights that meet the structure targets of
  docs/synthetic-data.md with bouts as long as the targets let them be:
  changes within ``STRUCTURE_SLACK`` of Metzner's (the target allows 0.10)
  that send the fewest bouts to N1 and N2 for each REM bout
  (:func:`fewest_short_bouts_changes`), wake bouts from the power law
  below, the other stages' geometric bouts with the means that give the
  generator's stage shares and REM bouts a night (:func:`bouts_for_targets`);
- ``metzner_short_wake_bouts``: Metzner's chain with its wake bouts alone
  drawn from a power law, most of them one epoch (Lo et al. 2002; the
  structure target of docs/synthetic-data.md: at least half), where the
  chain's geometric wake bouts last one epoch in 5 % of cases: what that
  one target does to the gain on Metzner's own chain.

A first-order chain is the hmm's own model, so the gain on Metzner's chain
is what the hmm gains on nights that are exactly Markov; real nights are
not (their transition probabilities change over the night), and neither
are the generator's. Writes ``bench/results/hmm_context.json``.
"""
from __future__ import annotations

import argparse
import functools
import json
import platform
import sys
from pathlib import Path

import numpy as np


from sleepstaging.scoring import hmm
from sleepstaging.synthetic import hypnogram as synthetic_hypnogram
from sleepstaging.scoring.blend import macro_f1
from transitions import EXIT_FLOOR, chain_mean_bouts, change_shares
from walk import apply_walk

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
STAGE_NAMES = ("W", "N1", "N2", "N3", "REM")
# Wake bouts of metzner_short_wake_bouts: survival (1 + d / scale) ** -exponent after d epochs, a
# power law whose first epoch ends 59 % of the bouts (the generator's labels: 56-61 %, bench/results/hypnogram_structure.json)
WAKE_POWER_LAW = (1.3, 1.0)  # (exponent, scale in epochs)
# structure_targets_chain: how far each change share may move from Metzner's (the structure target allows 0.10;
# a margin is left for the sampling error of 30 nights)
STRUCTURE_SLACK = 0.075
MAX_N3_BOUTS_PER_REM_BOUT = 0.85  # N3 bouts of 15 epochs or more at N3's 17 % of sleep and 9-10 REM bouts a night


def chain_night(rng: np.random.Generator, epochs: int, counts: np.ndarray = METZNER_COUNTS) -> np.ndarray:
    """A night drawn as a stationary Markov chain from transition ``counts`` (5 x 5), starting awake, shape (epochs,)."""
    transition = counts / counts.sum(axis=1, keepdims=True)
    night = np.empty(epochs, dtype=np.int64)
    stage = 0
    for epoch in range(epochs):
        night[epoch] = stage
        stage = rng.choice(5, p=transition[stage])
    return night


def stage_bouts(nights: list) -> list:
    """The lengths (epochs) of every bout of each stage in ``nights``: 5 arrays."""
    found = [[] for _ in range(5)]
    for night in nights:
        starts = np.r_[0, np.flatnonzero(np.diff(night)) + 1]
        for stage, length in zip(night[starts], np.diff(np.r_[starts, len(night)])):
            found[stage].append(length)
    return [np.array(lengths) for lengths in found]


def geometric_bouts(means: np.ndarray) -> list:
    """Per stage, a draw of a geometric bout length (as a Markov chain gives it) of mean ``means[stage]`` epochs."""
    if np.min(means) < 1.0:
        raise ValueError(f"a bout lasts at least one epoch, got mean bouts {np.round(means, 2).tolist()}")
    return [lambda rng, mean=mean: int(rng.geometric(1.0 / mean)) for mean in means]


def bout_visit_shares(changes: np.ndarray) -> np.ndarray:
    """The share of a long night's bouts that are bouts of each stage, for nights following ``changes``, shape (5,).

    Every bout is entered from the bout before it, so the bouts balance: the
    bouts of stage j number the sum over i of the bouts of i times
    ``changes[i, j]`` (up to each night's first bout), whatever the bouts'
    lengths and however the night is planned: the stationary distribution of
    the chain of bouts.
    """
    values, vectors = np.linalg.eig(np.asarray(changes, dtype=float).T)
    shares = np.real(vectors[:, np.argmin(np.abs(values - 1.0))])
    return shares / shares.sum()


def bouts_for_targets(changes: np.ndarray, stage_shares: np.ndarray, rem_bouts: float, epochs: float) -> np.ndarray:
    """Mean bout (epochs) of each stage that nights of ``epochs`` following ``changes`` need to have these
    ``stage_shares`` (of all epochs, shape (5,)) and ``rem_bouts`` REM bouts a night, shape (5,).

    The bouts of each stage number ``rem_bouts`` times their share of bouts
    (:func:`bout_visit_shares`) over REM's, and share that stage's epochs.
    """
    visits = bout_visit_shares(changes)
    return np.asarray(stage_shares, dtype=float) * epochs * visits[4] / (rem_bouts * visits)


@functools.lru_cache(maxsize=None)  # the same shares for every seed of a run
def fewest_short_bouts_changes(slack: float = STRUCTURE_SLACK) -> np.ndarray:
    """Where each stage goes when it is left, each share within ``slack`` of Metzner's, so that the fewest bouts
    go to N1 and N2 for each REM bout, shape (5, 5) (:func:`change_shares`'s layout).

    Fewer N1 and N2 bouts to each REM bout let them last longer at the same
    stage shares and REM bouts a night (:func:`bouts_for_targets`). Minimised:
    N1 bouts plus 0.3 times N2 bouts to a REM bout (N1's bouts weigh most on
    the hmm's gain, N2's next), by SLSQP from Metzner's shares. The changes
    real nights make in at least ``EXIT_FLOOR`` of a stage's exits stay at
    that floor or above; the rarer ones stay as they are; at most
    ``MAX_N3_BOUTS_PER_REM_BOUT`` N3 bouts come to a REM bout (the structure
    targets' long N3 bouts). The array is read-only (it is cached).
    """
    from scipy.optimize import minimize

    metzner = change_shares(METZNER_COUNTS)
    free = metzner >= EXIT_FLOOR

    def shares(values: np.ndarray) -> np.ndarray:
        changes = metzner.copy()
        changes[free] = values
        return changes

    def per_rem_bout(values: np.ndarray) -> np.ndarray:
        visits = bout_visit_shares(shares(values))
        return visits / visits[4]

    long_n3 = {"type": "ineq", "fun": lambda values: MAX_N3_BOUTS_PER_REM_BOUT - per_rem_bout(values)[3]}
    rows_sum_to_one = [{"type": "eq", "fun": lambda values, row=row: shares(values)[row].sum() - 1.0} for row in range(5)]
    bounds = [(max(EXIT_FLOOR, share - slack), share + slack) for share in metzner[free]]
    found = minimize(lambda values: per_rem_bout(values)[1] + 0.3 * per_rem_bout(values)[2], metzner[free],
                     method="SLSQP", bounds=bounds, constraints=rows_sum_to_one + [long_n3],
                     options={"maxiter": 500, "ftol": 1e-10})
    if not found.success:
        raise RuntimeError(f"no change shares within {slack} of Metzner's found: {found.message}")
    longest = shares(found.x)
    longest.setflags(write=False)
    return longest


def drawn_bouts(lengths: list) -> list:
    """Per stage, a draw from the bout ``lengths`` (:func:`stage_bouts`) of that stage."""
    return [lambda rng, found=found: int(rng.choice(found)) for found in lengths]


def power_law_bout(rng: np.random.Generator) -> int:
    """A bout length (epochs) whose survival beyond d epochs is about (1 + d / scale) ** -exponent."""
    exponent, scale = WAKE_POWER_LAW
    return max(1, int(np.ceil(scale * (rng.random() ** (-1.0 / exponent) - 1.0))))


def semi_markov_night(rng: np.random.Generator, epochs: int, changes: np.ndarray, bouts: list) -> np.ndarray:
    """A night that starts awake, each bout's length drawn by ``bouts[stage]`` and the next stage from
    ``changes`` (:func:`change_shares`), shape (epochs,)."""
    night, stage = [], 0
    while len(night) < epochs:
        night += [stage] * bouts[stage](rng)
        stage = int(rng.choice(5, p=changes[stage]))
    return np.array(night[:epochs], dtype=np.int64)


def noisy_labels(rng: np.random.Generator, truth: np.ndarray, in_runs: bool) -> np.ndarray:
    """The stage the simulated classifier says for each epoch, shape like ``truth``."""
    said = np.empty_like(truth)
    for epoch, stage in enumerate(truth):
        keep = (in_runs and epoch > 0 and truth[epoch - 1] == stage and said[epoch - 1] != stage
                and rng.random() < RUN_PERSISTENCE)
        said[epoch] = said[epoch - 1] if keep else rng.choice(5, p=CONFUSION[stage])
    return said


def calibrated_probabilities(said: np.ndarray, stage_shares: np.ndarray) -> np.ndarray:
    """What a calibrated classifier that said ``said`` gives, shape (epochs, 5): P(true | said) on nights with these
    ``stage_shares``, the likelihood column of :data:`CONFUSION` times the shares, normalised."""
    posterior = CONFUSION[:, said].T * stage_shares[None, :]
    return posterior / posterior.sum(axis=1, keepdims=True)


def gain(nights: list, rng: np.random.Generator, in_runs: bool) -> dict:
    half = len(nights) // 2
    ids = lambda group: np.concatenate([np.full(len(n), i) for i, n in enumerate(group)]).astype(str)  # noqa: E731
    model = hmm.estimate_hmm(np.concatenate(nights[:half]), ids(nights[:half]))
    truth = np.concatenate(nights[half:])
    said = np.concatenate([noisy_labels(rng, night, in_runs) for night in nights[half:]])
    decoded = hmm.hmm_decode(calibrated_probabilities(said, model[2]), ids(nights[half:]), *model)
    before, after = macro_f1(truth, said), macro_f1(truth, decoded)
    return {"before": round(before, 4), "after": round(after, 4), "gain": round(after - before, 4)}


def target_bouts(generator: list, changes: np.ndarray | None = None) -> np.ndarray:
    """The mean bouts (:func:`bouts_for_targets`) that give nights of ``changes`` (default: Metzner's) the stage
    shares, REM bouts a night and length of the ``generator``'s nights, shape (5,)."""
    epochs = np.concatenate(generator)
    shares = np.bincount(epochs, minlength=5) / len(epochs)
    rem_bouts = len(stage_bouts(generator)[4]) / len(generator)
    changes = change_shares(METZNER_COUNTS) if changes is None else changes
    return bouts_for_targets(changes, shares, rem_bouts, len(epochs) / len(generator))


def kinds_of_night(generator: list, seed: int) -> dict:
    """Every kind of night the bench decodes, each as long as the generator's nights, one by one."""
    rng = np.random.default_rng(seed)
    own_counts = np.zeros((5, 5))
    for night in generator:
        np.add.at(own_counts, (night[:-1], night[1:]), 1)
    own_bouts, metzner_bouts = drawn_bouts(stage_bouts(generator)), geometric_bouts(chain_mean_bouts(METZNER_COUNTS))
    semi = {"metzner_changes_generator_bouts": (change_shares(METZNER_COUNTS), own_bouts),
            "generator_changes_metzner_bouts": (change_shares(own_counts), metzner_bouts),
            "metzner_short_wake_bouts": (change_shares(METZNER_COUNTS), [power_law_bout] + metzner_bouts[1:])}
    for stage, name in enumerate(STAGE_NAMES):  # which stage's bouts carry the difference, one at a time
        swapped = own_bouts[:stage] + [metzner_bouts[stage]] + own_bouts[stage + 1:]
        semi[f"metzner_changes_generator_bouts_but_{name}_metzner"] = (change_shares(METZNER_COUNTS), swapped)
    # last, so the kinds above draw what they drew before it was added
    semi["metzner_changes_target_bouts"] = (change_shares(METZNER_COUNTS), geometric_bouts(target_bouts(generator)))
    longest = fewest_short_bouts_changes()
    semi["structure_targets_chain"] = (longest, [power_law_bout] + geometric_bouts(target_bouts(generator, longest))[1:])
    kinds = {"generator": generator,
             "metzner": [chain_night(rng, len(night)) for night in generator],
             "generator_chain": [chain_night(rng, len(night), own_counts) for night in generator]}
    for kind, (changes, bouts) in semi.items():
        kinds[kind] = [semi_markov_night(rng, len(night), changes, bouts) for night in generator]
    return kinds


def bout_summary(nights: list) -> dict:
    """Mean bout (epochs) per stage, the share of wake bouts of one epoch, REM bouts a night, stage shifts an
    hour (30-s epochs) and N1, N2, N3 and REM's shares of the epochs asleep."""
    lengths = stage_bouts(nights)
    shifts = sum(int(np.count_nonzero(np.diff(night))) for night in nights)
    hours = sum(len(night) for night in nights) / 120
    asleep = np.bincount(np.concatenate(nights), minlength=5)[1:]
    return {"mean_bout_epochs": [round(float(found.mean()), 1) if len(found) else None for found in lengths],
            "sleep_shares": np.round(asleep / asleep.sum(), 3).tolist(),
            "one_epoch_wake_bouts": round(float(np.mean(lengths[0] == 1)), 3),
            "rem_bouts_per_night": round(len(lengths[4]) / len(nights), 1),
            "stage_shifts_per_hour": round(shifts / hours, 1)}


def seed_result(seed: int, nights: int, hours: float) -> dict:
    """Every kind's bouts and hmm gains for the generator's nights of ``seed`` (and the chains drawn beside them)."""
    generator = []
    for index in range(nights):
        labels = synthetic_hypnogram.recording_hypnogram(seed, index, hours)
        generator.append(labels[labels >= 0].astype(np.int64))
    kinds = kinds_of_night(generator, seed)
    result = {"bouts": {kind: bout_summary(found) for kind, found in kinds.items()},
              "target_mean_bouts": np.round(target_bouts(generator), 2).tolist()}
    for errors, in_runs in (("independent", False), ("in_runs", True)):
        found = {kind: gain(nights_of_kind, np.random.default_rng([seed, in_runs]), in_runs)
                 for kind, nights_of_kind in kinds.items()}
        found["gain_difference"] = round(abs(found["generator"]["gain"] - found["metzner"]["gain"]), 4)
        found["gain_difference_at_target_bouts"] = round(
            abs(found["generator"]["gain"] - found["metzner_changes_target_bouts"]["gain"]), 4)
        found["gain_difference_structure_targets_chain"] = round(
            abs(found["metzner"]["gain"] - found["structure_targets_chain"]["gain"]), 4)
        result[errors] = found
    return result


def gain_ranges(seeds: dict) -> dict:
    """Per kind of errors and of night, the lowest and highest gain (and gain difference) over the seeds."""
    ranges = {}
    for errors in ("independent", "in_runs"):
        values = {}
        for found in seeds.values():
            for kind, entry in found[errors].items():
                values.setdefault(kind, []).append(entry["gain"] if isinstance(entry, dict) else entry)
        ranges[errors] = {kind: [min(found), max(found)] for kind, found in values.items()}
    return ranges


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nights", type=int, default=40)
    parser.add_argument("--hours", type=float, default=7.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "hmm_context.json")
    parser.add_argument("--walk", type=Path, default=None,
                        help="draw the generator's nights with this walk's tables (bench/walk.py; default: its own)")
    args = parser.parse_args()
    walk = {"file": None if args.walk is None else str(args.walk), "tables": apply_walk(args.walk)}
    seeds = {str(seed): seed_result(seed, args.nights, args.hours) for seed in args.seeds}
    for seed, found in seeds.items():
        for errors in ("independent", "in_runs"):
            print(f"seed {seed} {errors}", json.dumps({kind: entry["gain"] if isinstance(entry, dict) else entry
                                                       for kind, entry in found[errors].items()}))
    visits = bout_visit_shares(change_shares(METZNER_COUNTS))
    longest = fewest_short_bouts_changes()
    longest_visits = bout_visit_shares(longest)
    result = {"command": "python bench/hmm_context.py " + " ".join(sys.argv[1:]), "confusion": CONFUSION.tolist(),
              "run_persistence": RUN_PERSISTENCE, "walk": walk, "nights": args.nights, "hours": args.hours,
              "bouts_per_rem_bout": dict(zip(STAGE_NAMES, np.round(visits / visits[4], 2).tolist())),
              "structure_targets_chain": {
                  "changes": np.round(longest, 3).tolist(),
                  "largest_difference_from_metzner": round(float(np.abs(longest - change_shares(METZNER_COUNTS)).max()), 3),
                  "bouts_per_rem_bout": dict(zip(STAGE_NAMES, np.round(longest_visits / longest_visits[4], 2).tolist()))},
              "ranges_over_seeds": gain_ranges(seeds), "seeds": seeds,
              "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()}}
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(args.out)


if __name__ == "__main__":
    main()
