"""Hidden Markov model of a night's stages: counted from labelled nights, decoded per recording.

The hmm post-processing (``postprocess.py --method hmm``, the scoring
default of ``stage_edf.py`` for a recorded model set) treats the blended
class probabilities of each epoch as the evidence of a hidden stage
sequence whose transitions and first stage are counted from labelled
nights (add-one smoothed), and decodes each recording with Viterbi (log
space); :func:`hmm_posterior` gives each epoch's stage probabilities under
the same model (forward-backward), which the review page orders by.

Emissions: a model's posterior over the stage shares it was trained on is
proportional to a likelihood, so the blended probabilities are divided by
those shares (:func:`training_stage_shares`: the labels' shares for the
original's sampling, equal shares for ``--stage-balance 1``).

Transition weight ``w``: decoding uses ``P(b | a) ** w``, renormalised
per row. 1 is the counted matrix; smaller weights trust the epoch's own
evidence more (up to the renormalisation, as raising the emissions to the
power 1 / w). The networks are trained towards soft targets (label
smoothing, FMix's mixtures), so their posteriors are flatter than the
likelihoods the model assumes, and at weight 1 Viterbi smooths away short
true awakenings and N1; ``model_set.py`` chooses ``w`` on the fold's
validation nights.

Imports no torch.
"""
from __future__ import annotations

import numpy as np

from sleepstaging.scoring.blend import macro_f1
from sleepstaging.data.psg_layout import NUM_CLASSES

# Transition weights model_set.py tries on the validation nights, and how far below the best
# validation macro-F1 a weight still counts as level with it (a few nights measure F1 no finer).
TRANSITION_WEIGHTS = tuple(round(0.1 * step, 1) for step in range(1, 11))
F1_TOLERANCE = 0.005


def group_by_recording(recording_ids) -> tuple[np.ndarray, np.ndarray]:
    """Order rows recording by recording, each recording's rows in CSV order.

    Parameters
    ----------
    recording_ids : sequence of str, length rows

    Returns
    -------
    order : np.ndarray of int64, shape (rows,)
        Row indices such that ``x[order]`` lists the first recording's rows,
        then the second's... (recordings in order of first appearance). The
        identity when every recording's rows are contiguous, as in the
        challenge CSVs.
    segment : np.ndarray of int64, shape (rows,)
        Recording number of each row of ``x[order]`` (0, 0, ..., 1, 1, ...).
    """
    first_seen: dict[str, int] = {}
    codes = np.fromiter((first_seen.setdefault(r, len(first_seen)) for r in recording_ids),
                        dtype=np.int64, count=len(recording_ids))
    order = np.argsort(codes, kind="stable")
    return order, codes[order]


def training_stage_shares(counts: np.ndarray, stage_balance: float) -> np.ndarray:
    """Each stage's share of the training draws, from the stages' row counts.

    Parameters
    ----------
    counts : np.ndarray of float, shape (5,)
        Training rows per stage (positive; smoothed by the caller).
    stage_balance : float
        The trainers' ``--stage-balance``, at least 0: 0, every row once per
        epoch (the shares are the counts'); P, rows drawn with probability
        proportional to ``count ** -P`` (``loaders.StageBalancedSampler``),
        so stage ``s`` fills ``count_s ** (1 - P)`` over the sum of the
        draws; 1, equal shares.

    Returns
    -------
    np.ndarray of float64, shape (5,), summing to 1
    """
    weights = np.asarray(counts, dtype=np.float64) ** (1.0 - stage_balance)
    return weights / weights.sum()


def count_stage_sequences(labels: np.ndarray, recording_ids) -> dict:
    """What the hmm learns from labelled nights: raw counts of stages, first stages and transitions.

    Parameters
    ----------
    labels : np.ndarray of int, shape (rows,)
        True stages (0..4).
    recording_ids : sequence of str, length rows
        Their recordings; transitions are counted between consecutive rows
        (CSV order) of the same recording.

    Returns
    -------
    dict
        ``stages`` (5 ints: rows per stage), ``first_stages`` (5 ints: first
        stage of each recording), ``transitions`` (5 x 5 ints: ``[a][b]``
        rows of stage a followed by stage b), ``recordings`` (int), as JSON
        lists: what a model set records (``model_set.py``).
    """
    order, segment = group_by_recording(recording_ids)
    sequence = np.asarray(labels, dtype=np.int64)[order]
    same_recording = segment[1:] == segment[:-1]
    pairs = sequence[:-1][same_recording] * NUM_CLASSES + sequence[1:][same_recording]
    first_rows = np.flatnonzero(np.r_[True, ~same_recording]) if len(sequence) else np.empty(0, dtype=np.int64)
    return {
        "stages": np.bincount(sequence, minlength=NUM_CLASSES).tolist(),
        "first_stages": np.bincount(sequence[first_rows], minlength=NUM_CLASSES).tolist(),
        "transitions": np.bincount(pairs, minlength=NUM_CLASSES**2).reshape(NUM_CLASSES, NUM_CLASSES).tolist(),
        "recordings": int(len(first_rows)),
    }


def hmm_from_counts(counts: dict, stage_balance: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The hmm's probabilities from :func:`count_stage_sequences`' counts, add-one smoothed.

    Parameters
    ----------
    counts : dict
        ``stages``, ``first_stages``, ``transitions`` as
        :func:`count_stage_sequences` returns them.
    stage_balance : float
        The ``--stage-balance`` the models were trained with (0: the
        original's sampling); sets ``priors``.

    Returns
    -------
    transition : np.ndarray, shape (5, 5)
        ``transition[a, b]`` = P(next stage b | stage a); rows sum to 1.
    initial : np.ndarray, shape (5,)
        P(first stage of a recording).
    priors : np.ndarray, shape (5,)
        The stage shares the models were trained on
        (:func:`training_stage_shares` of the smoothed counts): with
        ``stage_balance`` 0, P(stage) over all rows.
    """
    transition = np.asarray(counts["transitions"], dtype=np.float64) + 1.0
    initial = np.asarray(counts["first_stages"], dtype=np.float64) + 1.0
    stages = np.asarray(counts["stages"], dtype=np.float64) + 1.0
    return (transition / transition.sum(axis=1, keepdims=True), initial / initial.sum(),
            training_stage_shares(stages, stage_balance))


def estimate_hmm(labels: np.ndarray, recording_ids,
                 stage_balance: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`hmm_from_counts` of :func:`count_stage_sequences`: the hmm of labelled nights."""
    return hmm_from_counts(count_stage_sequences(labels, recording_ids), stage_balance)


def weighted_transition(transition: np.ndarray, weight: float) -> np.ndarray:
    """``transition ** weight``, each row renormalised to sum to 1 (weight 0: uniform rows).

    Examples
    --------
    Rows [0.9, 0.1] at weight 0.5: [0.75, 0.25] (3 : 1 = sqrt(9) : sqrt(1)).
    """
    powered = np.asarray(transition, dtype=np.float64) ** weight
    return powered / powered.sum(axis=1, keepdims=True)


def viterbi(log_emissions: np.ndarray, lengths: np.ndarray, log_transition: np.ndarray,
            log_initial: np.ndarray) -> np.ndarray:
    """Most likely state paths of several sequences at once (log space).

    Parameters
    ----------
    log_emissions : np.ndarray, shape (sequences, T, K)
        log P(observation_t | state); positions t >= the sequence's length
        are padding and ignored.
    lengths : np.ndarray of int, shape (sequences,)
        Length of each sequence, 1..T.
    log_transition : np.ndarray, shape (K, K)
        log P(state_t+1 = b | state_t = a) at ``[a, b]``.
    log_initial : np.ndarray, shape (K,)
        log P(state_0).

    Returns
    -------
    np.ndarray of int64, shape (sequences, T)
        The decoded states; at padding positions the sequence's last state.
        Ties go to the lower state index.
    """
    sequences, steps, classes = log_emissions.shape
    valid = np.arange(steps)[None, :] < np.asarray(lengths)[:, None]
    stay = np.broadcast_to(np.arange(classes), (sequences, classes))
    delta = log_initial[None, :] + log_emissions[:, 0]
    backpointers = np.empty((sequences, steps, classes), dtype=np.int64)
    backpointers[:, 0] = stay
    for t in range(1, steps):
        candidates = delta[:, :, None] + log_transition[None, :, :]  # (sequences, from, to)
        best_previous = candidates.argmax(axis=1)
        step = np.take_along_axis(candidates, best_previous[:, None, :], axis=1)[:, 0] + log_emissions[:, t]
        # a finished sequence carries its scores and keeps its state, so
        # backtracking from the last column walks back to its own end
        delta = np.where(valid[:, t, None], step, delta)
        backpointers[:, t] = np.where(valid[:, t, None], best_previous, stay)
    path = np.empty((sequences, steps), dtype=np.int64)
    path[:, -1] = delta.argmax(axis=1)
    for t in range(steps - 1, 0, -1):
        path[:, t - 1] = np.take_along_axis(backpointers[:, t], path[:, t, None], axis=1)[:, 0]
    return path


def _padded_log_inputs(probabilities: np.ndarray, recording_ids, transition: np.ndarray, initial: np.ndarray,
                       priors: np.ndarray, transition_weight: float) -> tuple:
    """What :func:`viterbi` and :func:`forward_backward` read, and where each row of the padded arrays goes.

    Returns
    -------
    log_emissions : np.ndarray, shape (recordings, longest, 5)
        log(blended probability / training stage share), recording by
        recording (padding: 0).
    lengths : np.ndarray of int, shape (recordings,)
    log_transition, log_initial : np.ndarray, shapes (5, 5) and (5,)
    rows : tuple of np.ndarray
        ``(order, segment, position)``: CSV row ``order[i]`` is at
        ``[segment[i], position[i]]`` of the padded arrays.
    """
    posteriors = probabilities / probabilities.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore"):  # a zero probability is log 0 = -inf: that stage is impossible there
        log_emissions = np.log(posteriors / priors[None, :])
        log_transition = np.log(weighted_transition(transition, transition_weight))
        log_initial = np.log(initial)
    order, segment = group_by_recording(recording_ids)
    lengths = np.bincount(segment)
    position = np.arange(len(segment)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    padded = np.zeros((len(lengths), lengths.max(), NUM_CLASSES))
    padded[segment, position] = log_emissions[order]
    return padded, lengths, log_transition, log_initial, (order, segment, position)


def hmm_decode(probabilities: np.ndarray, recording_ids, transition: np.ndarray, initial: np.ndarray,
               priors: np.ndarray, transition_weight: float = 1.0) -> np.ndarray:
    """Decode each recording's stages with :func:`viterbi`.

    Parameters
    ----------
    probabilities : np.ndarray, shape (rows, 5)
        Blended class probabilities (>= 0, positive row sums), CSV order.
    recording_ids : sequence of str, length rows
    transition, initial, priors : np.ndarray
        From :func:`estimate_hmm` or :func:`hmm_from_counts`.
    transition_weight : float
        Decode with :func:`weighted_transition` of ``transition`` (1: as counted).

    Returns
    -------
    np.ndarray of int64, shape (rows,)
        Decoded stage ints, CSV order.
    """
    padded, lengths, log_transition, log_initial, (order, segment, position) = _padded_log_inputs(
        probabilities, recording_ids, transition, initial, priors, transition_weight)
    paths = viterbi(padded, lengths, log_transition, log_initial)
    stages = np.empty(len(segment), dtype=np.int64)
    stages[order] = paths[segment, position]
    return stages


def _log_sum_exp(values: np.ndarray, axis: int) -> np.ndarray:
    """log(sum(exp(values))) along ``axis``, exact for large values and -inf where every value is -inf."""
    peak = values.max(axis=axis, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    with np.errstate(divide="ignore"):
        return np.log(np.exp(values - peak).sum(axis=axis)) + np.squeeze(peak, axis=axis)


def forward_backward(log_emissions: np.ndarray, lengths: np.ndarray, log_transition: np.ndarray,
                     log_initial: np.ndarray) -> np.ndarray:
    """Posterior probability of each state at each position, several sequences at once (log space).

    The forward pass sums ``log P(o_0..o_t, state_t)`` over the paths into
    each state, the backward pass ``log P(o_t+1..o_end | state_t)``; their
    sum, normalised per position, is ``P(state_t | every observation of the
    sequence)``. Inputs as :func:`viterbi`.

    Returns
    -------
    np.ndarray, shape (sequences, T, K)
        Rows sum to 1 at the positions t < length; padding positions hold
        numbers of no meaning.
    """
    sequences, steps, classes = log_emissions.shape
    valid = np.arange(steps)[None, :] < np.asarray(lengths)[:, None]
    log_forward = np.empty_like(log_emissions)
    log_forward[:, 0] = log_initial[None, :] + log_emissions[:, 0]
    for t in range(1, steps):  # (sequences, from, to), summed over from
        log_forward[:, t] = _log_sum_exp(log_forward[:, t - 1, :, None] + log_transition[None], axis=1) \
            + log_emissions[:, t]
    log_backward = np.zeros_like(log_emissions)  # log 1 at each sequence's last position
    for t in range(steps - 2, -1, -1):  # (sequences, from, to), summed over to
        following = _log_sum_exp(log_transition[None] + (log_emissions[:, t + 1] + log_backward[:, t + 1])[:, None, :],
                                 axis=2)
        log_backward[:, t] = np.where(valid[:, t + 1, None], following, 0.0)
    joint = log_forward + log_backward
    return np.exp(joint - _log_sum_exp(joint, axis=2)[..., None])


def hmm_posterior(probabilities: np.ndarray, recording_ids, transition: np.ndarray, initial: np.ndarray,
                  priors: np.ndarray, transition_weight: float = 1.0) -> np.ndarray:
    """Each epoch's stage probabilities given its whole recording, under the hmm :func:`hmm_decode` decodes with.

    Parameters and inputs as :func:`hmm_decode`.

    Returns
    -------
    np.ndarray of float64, shape (rows, 5)
        ``P(stage of the epoch | the recording's blended probabilities)``
        (:func:`forward_backward`), CSV order; rows sum to 1. Its value at
        the decoded stage is how sure the hmm is of the stage it assigns.
    """
    padded, lengths, log_transition, log_initial, (order, segment, position) = _padded_log_inputs(
        probabilities, recording_ids, transition, initial, priors, transition_weight)
    posterior = forward_backward(padded, lengths, log_transition, log_initial)
    rows = np.empty((len(segment), NUM_CLASSES))
    rows[order] = posterior[segment, position]
    return rows


def stage_shifts_per_night(stages: np.ndarray, recording_ids) -> float:
    """Mean number of stage changes between consecutive epochs of a recording (rows in CSV order)."""
    order, segment = group_by_recording(recording_ids)
    sequence = np.asarray(stages)[order]
    same_recording = segment[1:] == segment[:-1]
    return float((sequence[1:] != sequence[:-1])[same_recording].sum() / (segment[-1] + 1)) if len(segment) else 0.0


def tune_transition_weight(probabilities: np.ndarray, labels: np.ndarray, recording_ids, model: tuple,
                           weights=TRANSITION_WEIGHTS, tolerance: float = F1_TOLERANCE) -> tuple[float, dict]:
    """The transition weight for labelled nights: macro-F1 first, then nights that change stage as often as true ones.

    The weights whose decoding scores within ``tolerance`` of the best
    macro-F1 are taken as equally good (a few validation nights measure F1
    no finer); of those, the one whose hypnograms have the number of stage
    shifts per night nearest the true hypnograms' (the larger weight on a tie).

    Parameters
    ----------
    probabilities : np.ndarray, shape (rows, 5)
        Blended probabilities of labelled rows (the fold's validation rows).
    labels : np.ndarray of int, shape (rows,)
    recording_ids : sequence of str, length rows
    model : tuple
        ``(transition, initial, priors)``, counted from other nights than these.
    weights : sequence of float
        The weights tried.
    tolerance : float
        Macro-F1 below the best that still counts as level with it.

    Returns
    -------
    best : float
    table : dict
        ``by_weight``: weight -> ``{"macro_f1", "stage_shifts_per_night"}`` of
        its decoding; ``true_stage_shifts_per_night``.
    """
    table = {}
    for weight in weights:
        decoded = hmm_decode(probabilities, recording_ids, *model, transition_weight=weight)
        table[float(weight)] = {"macro_f1": macro_f1(labels, decoded),
                                "stage_shifts_per_night": stage_shifts_per_night(decoded, recording_ids)}
    true_shifts = stage_shifts_per_night(labels, recording_ids)
    top = max(entry["macro_f1"] for entry in table.values())
    level = [weight for weight, entry in table.items() if entry["macro_f1"] >= top - tolerance]
    best = min(level, key=lambda weight: (abs(table[weight]["stage_shifts_per_night"] - true_shifts), -weight))
    return best, {"by_weight": table, "true_stage_shifts_per_night": true_shifts}
