"""The original's context rules: seven stage patterns, each rewriting one epoch.

What ``postprocess.py --method rules`` applies to the blend (the
challenge flow's default) and ``model_set.py`` scores on validation. Each
pattern is matched on the stages as given, inside one recording (the
original matched across the whole test prediction:
``across_recordings=True``); where two rules write one epoch, the later
write in the original's order (position, then rule number) stays.
"""
from __future__ import annotations

import numpy as np

from sleepstaging.scoring.hmm import group_by_recording
from sleepstaging.data.psg_layout import STAGE_TO_INT

_S = STAGE_TO_INT
# (pattern, position in the pattern that is rewritten, new stage), in the original's order
RULES = (
    ((_S["N1"], _S["N3"]), 1, _S["N2"]),
    ((_S["N2"], _S["N2"], _S["REM"], _S["N2"], _S["N2"]), 2, _S["N2"]),
    ((_S["N3"], _S["N3"], _S["REM"], _S["N3"], _S["N3"]), 2, _S["N3"]),
    ((_S["N1"], _S["REM"], _S["REM"]), 0, _S["REM"]),
    ((_S["N2"], _S["REM"], _S["REM"]), 0, _S["REM"]),
    ((_S["REM"], _S["N1"], _S["REM"]), 1, _S["REM"]),
    ((_S["REM"], _S["N2"], _S["REM"]), 1, _S["REM"]),
)



def rule_matches(stages: np.ndarray, segment: np.ndarray, pattern) -> np.ndarray:
    """Start positions i where ``stages[i:i+len(pattern)] == pattern`` inside one segment.

    ``segment`` must be non-decreasing (rows grouped by recording), so a
    window lies in one recording when its two ends do.
    """
    width, n = len(pattern), len(stages)
    if n < width:
        return np.empty(0, dtype=np.int64)
    starts = n - width + 1
    match = segment[:starts] == segment[width - 1:]
    for offset, stage in enumerate(pattern):
        match &= stages[offset:offset + starts] == stage
    return np.flatnonzero(match)


def apply_rules(stages: np.ndarray, recording_ids, across_recordings: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Apply the original's context rules (see the module docstring).

    Parameters
    ----------
    stages : np.ndarray of int, shape (rows,)
        Predicted stage ints (Wake=0 ... REM=4) in CSV order.
    recording_ids : sequence of str, length rows
        Recording of each row; patterns never span two recordings.
    across_recordings : bool
        Ignore recordings and treat the rows, in CSV order, as one sequence
        (the original's behaviour).

    Returns
    -------
    new_stages : np.ndarray of int64, shape (rows,)
        The post-processed stages, CSV order.
    matches : np.ndarray of int64, shape (7,)
        How many times each rule matched.
    """
    stages = np.asarray(stages, dtype=np.int64)
    if across_recordings:
        order, segment = np.arange(len(stages)), np.zeros(len(stages), dtype=np.int64)
    else:
        order, segment = group_by_recording(recording_ids)
    sequence = stages[order]

    targets, starts, rule_numbers, values = [], [], [], []
    for number, (pattern, position, new_stage) in enumerate(RULES):
        found = rule_matches(sequence, segment, pattern)
        targets.append(found + position)
        starts.append(found)
        rule_numbers.append(np.full(found.size, number))
        values.append(np.full(found.size, new_stage))
    targets, starts, rule_numbers, values = map(np.concatenate, (targets, starts, rule_numbers, values))

    # Replay the writes in the original's order (i ascending, then rule number):
    # the last write to each position is the one that stays.
    replay = np.lexsort((rule_numbers, starts))
    targets, values = targets[replay][::-1], values[replay][::-1]
    positions, last_write = np.unique(targets, return_index=True)
    sequence = sequence.copy()
    sequence[positions] = values[last_write]

    new_stages = np.empty_like(stages)
    new_stages[order] = sequence
    return new_stages, np.bincount(rule_numbers, minlength=len(RULES))
