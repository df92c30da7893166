"""Independent re-statements of what the flow's steps compute, for the tests that check whole commands.

Each is written from the original's description, in plain loops over rows,
without calling the project function it checks: a test that compares a
command's output with the very library function the command calls cannot
see a mistake they share.
"""
from __future__ import annotations

import math

STAGES = ("Wake", "N1", "N2", "N3", "REM")

# The original's post-processing rules: (pattern, position in the pattern, stage written there).
ORIGINAL_RULES = (
    (("N1", "N3"), 1, "N2"),
    (("N2", "N2", "REM", "N2", "N2"), 2, "N2"),
    (("N3", "N3", "REM", "N3", "N3"), 2, "N3"),
    (("N1", "REM", "REM"), 0, "REM"),
    (("N2", "REM", "REM"), 0, "REM"),
    (("REM", "N1", "REM"), 1, "REM"),
    (("REM", "N2", "REM"), 1, "REM"),
)


def rules_by_loop(stages, recording_ids, across_recordings: bool = False) -> list[int]:
    """The rules of :data:`ORIGINAL_RULES`, one position at a time.

    Every pattern is looked for in the stages as given (not as earlier
    rules left them), over the rows of one recording in CSV order (with
    ``across_recordings``, over all rows in CSV order); where a later rule
    writes the same row as an earlier one, the later wins.
    """
    result = [int(s) for s in stages]
    groups = {}
    for row, recording in enumerate(recording_ids):
        groups.setdefault("all" if across_recordings else recording, []).append(row)
    for rows in groups.values():
        names = [STAGES[int(stages[row])] for row in rows]
        for pattern, position, new in ORIGINAL_RULES:
            for start in range(len(rows) - len(pattern) + 1):
                if tuple(names[start:start + len(pattern)]) == pattern:
                    result[rows[start + position]] = STAGES.index(new)
    return result


def original_row_scales(dump_scale: str, tta: int) -> tuple[float, float]:
    """The original dumps' row sums: the ViT's 4 equal weights over ``tta`` rounds; the EfficientNet's the
    same, its 1,000 outputs then folded into 5 by summing 200 slices and dividing by 200 (another 1/200)."""
    if dump_scale == "unit":
        return 1.0, 1.0
    return 1.0 / (4 * tta), 1.0 / (4 * tta) / 200


def _transform(value: float, method: str, power: float) -> float:
    return {"avg": value, "sqrt": math.sqrt(value), "log1p": math.log1p(value), "square": value ** power,
            "expm1": math.expm1(value)}[method]


def _ranks(row) -> list[int]:
    """0 for the least likely class ... 4 for the most likely; ties ranked in class order."""
    order = sorted(range(len(row)), key=lambda k: (row[k], k))
    ranks = [0] * len(row)
    for rank, k in enumerate(order):
        ranks[k] = rank
    return ranks


def blend_by_loop(p1, p2, method: str, weight: float, power: float, dump_scale: str, tta: int) -> list[int]:
    """The blended stage of each row: each model's row scaled as the original's dumps, transformed, then
    ``weight`` x model 1 + (1 - weight) x model 2 (``rank``: the two rank rows summed); the first
    largest score wins."""
    scale1, scale2 = original_row_scales(dump_scale, tta)
    stages = []
    for row1, row2 in zip(p1, p2):
        if method == "rank":
            scores = [a + b for a, b in zip(_ranks([scale1 * v for v in row1]), _ranks([scale2 * v for v in row2]))]
        else:
            scores = [weight * _transform(scale1 * a, method, power) + (1 - weight) * _transform(scale2 * b, method,
                                                                                                 power)
                      for a, b in zip(row1, row2)]
        stages.append(max(range(len(scores)), key=lambda k: (scores[k], -k)))
    return stages


def hmm_by_loop(probabilities, recording_ids, train_labels, train_ids, stage_balance: float = 0.0,
                transition_weight: float = 1.0) -> list[int]:
    """Viterbi per recording, with an add-one-smoothed hmm counted from the training rows.

    Transitions are counted between consecutive training rows of one
    recording, first stages per recording, stage shares over all rows (each
    count plus one); the shares the models trained on are the counts to the
    power ``1 - stage_balance``, normalised. Emissions: the row's
    probabilities (normalised) divided by those shares; transitions raised
    to ``transition_weight`` and renormalised. Ties go to the lower stage.
    """
    classes = len(STAGES)
    counts = [[1.0] * classes for _ in range(classes)]
    first = [1.0] * classes
    totals = [1.0] * classes
    previous = {}
    for label, recording in zip(train_labels, train_ids):
        totals[label] += 1
        if recording in previous:
            counts[previous[recording]][label] += 1
        else:
            first[label] += 1
        previous[recording] = label
    # In the order the project's arithmetic takes (probabilities first, then their power, renormalised):
    # the same rounding, so that exact ties (which the fuzz tests draw) fall the same way.
    probabilities_of = [[c / sum(row) for c in row] for row in counts]
    powered = [[p ** transition_weight for p in row] for row in probabilities_of]
    transition = [[p / sum(row) for p in row] for row in powered]
    initial = [f / sum(first) for f in first]
    shares = [t ** (1 - stage_balance) for t in totals]
    shares = [s / sum(shares) for s in shares]

    def log(x):
        return math.log(x) if x > 0 else -math.inf

    result = [0] * len(probabilities)
    rows_of = {}
    for row, recording in enumerate(recording_ids):
        rows_of.setdefault(recording, []).append(row)
    for rows in rows_of.values():
        emissions = []
        for row in rows:
            total = sum(probabilities[row])
            emissions.append([log(probabilities[row][s] / total / shares[s]) for s in range(classes)])
        scores = [log(initial[s]) + emissions[0][s] for s in range(classes)]
        back = []
        for emission in emissions[1:]:
            best_from = [max(range(classes), key=lambda a: (scores[a] + log(transition[a][b]), -a))
                         for b in range(classes)]
            scores = [scores[best_from[b]] + log(transition[best_from[b]][b]) + emission[b] for b in range(classes)]
            back.append(best_from)
        state = max(range(classes), key=lambda s: (scores[s], -s))
        path = [state]
        for best_from in reversed(back):
            state = best_from[state]
            path.append(state)
        for row, stage in zip(rows, reversed(path)):
            result[row] = stage
    return result
