"""bench/hmm_context.py: the simulated classifier's probabilities and the semi-Markov nights, checked by hand."""
from __future__ import annotations

import numpy as np

import hmm_context
from sleepstaging.scoring import hmm


def test_calibrated_probabilities_are_the_likelihood_times_the_stage_shares():
    shares = np.array([0.1, 0.2, 0.4, 0.2, 0.1])
    said = np.array([0, 4])
    # said Wake: likelihood column 0 = (0.88, 0.15, 0.01, 0, 0.02); times the shares
    # (0.088, 0.03, 0.004, 0, 0.002), sum 0.124
    expected_wake = np.array([0.088, 0.03, 0.004, 0.0, 0.002]) / 0.124
    found = hmm_context.calibrated_probabilities(said, shares)
    np.testing.assert_allclose(found[0], expected_wake, rtol=1e-12)
    np.testing.assert_allclose(found.sum(axis=1), 1.0)
    # what the hmm reads, the probability over the stage share, is the likelihood again (up to a constant)
    ratio = found[1] / shares
    np.testing.assert_allclose(ratio / ratio.sum(), hmm_context.CONFUSION[:, 4] / hmm_context.CONFUSION[:, 4].sum())


def test_the_decoder_keeps_a_confident_classifier_and_mends_a_lone_error():
    # nights of long N2 bouts; a classifier that says REM once inside N2 is overruled by the transitions
    truth = np.array([2] * 30)
    model = hmm.estimate_hmm(np.tile(truth, 4), np.repeat(np.arange(4).astype(str), 30))
    said = truth.copy()
    said[15] = 4
    decoded = hmm.hmm_decode(hmm_context.calibrated_probabilities(said, model[2]), ["a"] * 30, *model)
    assert decoded.tolist() == truth.tolist()


def test_a_semi_markov_night_follows_its_changes_and_bouts():
    changes = np.zeros((5, 5))
    changes[0, 1] = changes[1, 2] = changes[2, 0] = 1.0  # Wake -> N1 -> N2 -> Wake
    changes[3, 0] = changes[4, 0] = 1.0
    bouts = [lambda rng, n=n: n for n in (2, 1, 3, 1, 1)]
    night = hmm_context.semi_markov_night(np.random.default_rng(0), 10, changes, bouts)
    assert night.tolist() == [0, 0, 1, 2, 2, 2, 0, 0, 1, 2]
    lengths = hmm_context.stage_bouts([night])
    assert [found.tolist() for found in lengths[:3]] == [[2, 2], [1, 1], [3, 1]]


def test_change_shares_leave_out_staying():
    counts = np.array([[8.0, 1, 1, 0, 0], [2, 2, 2, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1], [0, 0, 3, 0, 1]])
    shares = hmm_context.change_shares(counts)
    np.testing.assert_allclose(np.diag(shares), 0.0)
    np.testing.assert_allclose(shares[0], [0, 0.5, 0.5, 0, 0])
    np.testing.assert_allclose(shares[4], [0, 0, 1.0, 0, 0])


def test_power_law_wake_bouts_end_after_one_epoch_as_often_as_their_survival_says():
    rng = np.random.default_rng(1)
    drawn = np.array([hmm_context.power_law_bout(rng) for _ in range(40000)])
    exponent, scale = hmm_context.WAKE_POWER_LAW
    one_epoch = 1 - (scale / (1 + scale)) ** exponent  # survival (1 + d / scale) ** -exponent at d = 1: 0.594
    assert abs(np.mean(drawn == 1) - one_epoch) < 0.01
    ten_or_more = (scale / (9 + scale)) ** exponent  # past 9 epochs: 0.050
    assert abs(np.mean(drawn >= 10) - ten_or_more) < 0.006


def test_geometric_bouts_have_the_chains_mean():
    rng = np.random.default_rng(2)
    draw_n1 = hmm_context.geometric_bouts(hmm_context.METZNER_COUNTS)[1]
    stay = hmm_context.METZNER_COUNTS[1, 1] / hmm_context.METZNER_COUNTS[1].sum()  # 0.769
    assert abs(np.mean([draw_n1(rng) for _ in range(20000)]) - 1 / (1 - stay)) < 0.1
