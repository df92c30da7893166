"""bench/hmm_context.py: the simulated classifier's probabilities and the semi-Markov nights, checked by hand."""
from __future__ import annotations

import numpy as np
import pytest

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
    means = hmm_context.chain_mean_bouts(hmm_context.METZNER_COUNTS)
    assert round(means[1], 2) == 4.33  # N1: 8709 epochs, 8709 - 6697 = 2012 exits
    draw_n1 = hmm_context.geometric_bouts(means)[1]
    assert abs(np.mean([draw_n1(rng) for _ in range(20000)]) - 8709 / 2012) < 0.1
    with pytest.raises(ValueError, match="at least one epoch"):
        hmm_context.geometric_bouts(np.array([2.0, 0.8, 3.0, 3.0, 3.0]))


def test_bouts_balance_and_the_targets_fix_each_stages_mean_bout():
    # Wake -> N1 -> N2, then N3 or REM half and half, both back to Wake: for every Wake bout one of N1 and of N2,
    # half of N3 and half of REM
    changes = np.zeros((5, 5))
    changes[0, 1] = changes[1, 2] = changes[3, 0] = changes[4, 0] = 1.0
    changes[2, 3] = changes[2, 4] = 0.5
    np.testing.assert_allclose(hmm_context.bout_visit_shares(changes), [0.25, 0.25, 0.25, 0.125, 0.125])
    # 10 REM bouts a night of 800 epochs: 20 bouts each of Wake, N1 and N2, 10 of N3; shares 0.1 / 0.1 / 0.5 /
    # 0.2 / 0.1 of 800 epochs over those bouts: 4, 4, 20, 16 and 8 epochs
    means = hmm_context.bouts_for_targets(changes, [0.1, 0.1, 0.5, 0.2, 0.1], rem_bouts=10, epochs=800)
    np.testing.assert_allclose(means, [4.0, 4.0, 20.0, 16.0, 8.0])
    # Metzner's changes: 5.8 N1 bouts to each REM bout
    visits = hmm_context.bout_visit_shares(hmm_context.change_shares(hmm_context.METZNER_COUNTS))
    assert round(visits[1] / visits[4], 1) == 5.8


def test_the_swapped_kinds_take_their_bouts_from_the_kind_they_name():
    # "generator" nights of fixed bouts: Wake 3, N1 2, N2 10, N3 20, REM 15 epochs, in a fixed order (four N1 bouts
    # to a REM bout: Metzner's changes need 5.8 N1 bouts to each REM bout, so each of them lasts 8 / 5.8 epochs)
    cycle = [0] * 3 + ([1] * 2 + [2] * 10) * 2 + [3] * 20 + ([2] * 10 + [1] * 2) * 2 + [4] * 15
    generator = [np.array(cycle * 14, dtype=np.int64) for _ in range(30)]  # some 1,000 N1 bouts of each kind
    kinds = hmm_context.kinds_of_night(generator, seed=0)
    assert all(len(night) == len(generator[0]) for nights in kinds.values() for night in nights)
    means = {kind: hmm_context.bout_summary(nights)["mean_bout_epochs"] for kind, nights in kinds.items()}
    # the generator's bouts, whatever the order of stages (a night's last bout may be cut short)
    assert means["metzner_changes_generator_bouts"][1] <= 2.0 and means["metzner_changes_generator_bouts"][1] > 1.8
    # Metzner's geometric N1 bouts: 1 / (1 - 0.769) = 4.3 epochs
    assert abs(means["generator_changes_metzner_bouts"][1] - 4.3) < 0.5
    # one stage swapped: N1's from Metzner, the rest the generator's
    swapped = means["metzner_changes_generator_bouts_but_N1_metzner"]
    assert abs(swapped[1] - 4.3) < 0.5 and 9.0 < swapped[2] <= 10.0
    # Metzner's changes with the bouts that give the generator's stage shares (N1 8 / 86 of the epochs, REM 15 / 86)
    shares = np.bincount(np.concatenate(kinds["metzner_changes_target_bouts"]), minlength=5) / (30 * 14 * 86)
    assert abs(shares[1] - 8 / 86) < 0.015 and abs(shares[4] - 15 / 86) < 0.04
    assert abs(means["metzner_changes_target_bouts"][1] - 8 / 5.8) < 0.1
    # power-law wake bouts: most of one epoch
    assert hmm_context.bout_summary(kinds["metzner_short_wake_bouts"])["one_epoch_wake_bouts"] > 0.5
    assert hmm_context.bout_summary(kinds["structure_targets_chain"])["one_epoch_wake_bouts"] > 0.5


def test_gain_ranges_take_each_kinds_lowest_and_highest_gain_over_the_seeds():
    seeds = {"1": {"independent": {"generator": {"gain": 0.08}, "gain_difference": 0.05},
                   "in_runs": {"generator": {"gain": 0.004}, "gain_difference": 0.03}},
             "2": {"independent": {"generator": {"gain": 0.09}, "gain_difference": 0.04},
                   "in_runs": {"generator": {"gain": 0.001}, "gain_difference": 0.02}}}
    assert hmm_context.gain_ranges(seeds) == {
        "independent": {"generator": [0.08, 0.09], "gain_difference": [0.04, 0.05]},
        "in_runs": {"generator": [0.001, 0.004], "gain_difference": [0.02, 0.03]}}


def test_the_target_bouts_of_nights_drawn_from_metzners_chain_are_the_chains_own():
    # nights of Metzner's chain have its stage shares and REM bouts, so the bouts that give them are its bouts
    rng = np.random.default_rng(3)
    nights = [hmm_context.chain_night(rng, 2000) for _ in range(40)]
    found = hmm_context.target_bouts(nights)
    expected = hmm_context.chain_mean_bouts(hmm_context.METZNER_COUNTS)  # 18.8 / 4.3 / 13.5 / 19.7 / 31.3
    np.testing.assert_allclose(found[1:], expected[1:], rtol=0.2)  # Wake: every night starts awake


def test_the_structure_targets_chain_moves_no_share_further_than_its_slack_and_sends_fewer_bouts_to_n1():
    metzner = hmm_context.change_shares(hmm_context.METZNER_COUNTS)
    changes = hmm_context.fewest_short_bouts_changes(slack=0.075)
    np.testing.assert_allclose(changes.sum(axis=1), 1.0, atol=1e-9)
    assert np.abs(changes - metzner).max() <= 0.075 + 1e-9
    common = metzner >= hmm_context.EXIT_FLOOR
    assert changes[common].min() >= hmm_context.EXIT_FLOOR - 1e-9  # every change of real nights still occurs
    np.testing.assert_array_equal(changes[~common], metzner[~common])  # the rare ones as they were
    visits = hmm_context.bout_visit_shares(changes)
    per_rem = visits / visits[4]
    assert per_rem[3] <= hmm_context.MAX_N3_BOUTS_PER_REM_BOUT + 1e-6
    # Metzner's own changes make 5.8 N1 and 6.1 N2 bouts to a REM bout; the slack buys at least half of that back
    assert per_rem[1] < 5.8 / 2 and per_rem[2] < 6.1 / 1.5
    # a wider slack can only do better
    wider = hmm_context.bout_visit_shares(hmm_context.fewest_short_bouts_changes(slack=0.10))
    assert wider[1] / wider[4] <= per_rem[1] + 1e-6
