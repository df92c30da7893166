"""sleep_statistics.py: the sleep statistics of nights counted by hand; undefined values; bad input."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from sleepstaging.scoring.sleep_statistics import json_ready, sleep_statistics

W, N1, N2, N3, R = range(5)
NAN_KEYS_WITHOUT_SLEEP = {"SOL", "WASO", "SME", "Lat_N1", "Lat_N2", "Lat_N3", "Lat_REM", "Lat_REM_from_onset",
                          "%N1", "%N2", "%N3", "%REM", "%NREM", "awakenings"}


def test_statistics_of_a_night_counted_by_hand():
    #        0  1  2  3   4   5   6  7   8   9   10  11 12 13 14 15  16 17 18
    night = [W, W, W, N1, N2, N2, W, N2, N3, N3, N2, R, R, W, W, N2, R, W, W]
    stats = sleep_statistics(np.array(night))
    # 19 epochs of 0.5 min; sleep from epoch 3 to epoch 16: 14 epochs, 3 of them Wake (6, 13, 14)
    assert stats["TIB"] == 9.5 and stats["SPT"] == 7.0 and stats["WASO"] == 1.5
    assert stats["TST"] == 5.5  # 11 sleep epochs
    assert stats["SOL"] == 1.5 and stats["Lat_N1"] == 1.5 and stats["Lat_N2"] == 2.0 and stats["Lat_N3"] == 4.0
    assert stats["Lat_REM"] == 5.5 and stats["Lat_REM_from_onset"] == 4.0  # epoch 11: 8 epochs after onset
    assert stats["SE"] == pytest.approx(100 * 5.5 / 9.5) and stats["SME"] == pytest.approx(100 * 5.5 / 7)
    assert (stats["W"], stats["N1"], stats["N2"], stats["N3"], stats["REM"], stats["NREM"]) == (4, 0.5, 2.5, 1, 1.5, 4)
    assert stats["%N2"] == pytest.approx(100 * 5 / 11) and stats["%REM"] == pytest.approx(100 * 3 / 11)
    assert stats["%NREM"] == pytest.approx(100 * 8 / 11)
    assert sum(stats[f"%{s}"] for s in ("N1", "N2", "N3", "REM")) == pytest.approx(100)
    # awakenings: [6] and [13, 14] inside the sleep period; 0-2 (before onset) and 17-18 (after) are not
    assert stats["awakenings"] == 2 and isinstance(stats["awakenings"], int)
    assert stats["stage_shifts"] == 11
    assert list(stats)[:7] == ["TIB", "SPT", "TST", "SOL", "WASO", "SE", "SME"]

    twenty = sleep_statistics(np.array(night), epoch_seconds=20)  # durations scale with the epoch, ratios do not
    assert twenty["TIB"] == pytest.approx(19 / 3) and twenty["WASO"] == pytest.approx(1.0)
    assert twenty["SE"] == pytest.approx(stats["SE"]) and twenty["awakenings"] == 2


def test_a_night_without_sleep_has_undefined_values_not_errors():
    stats = sleep_statistics(np.array([W] * 6))
    assert (stats["TIB"], stats["SPT"], stats["TST"], stats["SE"], stats["W"], stats["stage_shifts"]) == (3, 0, 0, 0, 3, 0)
    assert {key for key, value in stats.items() if isinstance(value, float) and math.isnan(value)} == \
        NAN_KEYS_WITHOUT_SLEEP
    as_json = json.loads(json.dumps(json_ready(stats), allow_nan=False))
    assert as_json["SOL"] is None and as_json["awakenings"] is None and as_json["TST"] == 0
    empty = sleep_statistics(np.zeros(0, dtype=np.int64))
    assert empty["TIB"] == 0 and math.isnan(empty["SE"])


def test_a_night_that_starts_asleep():
    stats = sleep_statistics(np.array([N2, N2, R, W, N1]))
    assert stats["SOL"] == 0 and stats["Lat_N2"] == 0 and stats["Lat_N1"] == 2.0
    assert stats["Lat_REM"] == 1.0 and stats["Lat_REM_from_onset"] == 1.0
    assert stats["SPT"] == 2.5 and stats["TST"] == 2.0 and stats["WASO"] == 0.5 and stats["awakenings"] == 1
    assert stats["SE"] == 80 and stats["SME"] == 80 and stats["stage_shifts"] == 3
    assert math.isnan(stats["Lat_N3"]) and stats["%N3"] == 0
    single = sleep_statistics(np.array([N3]))
    assert (single["SPT"], single["TST"], single["SOL"], single["%N3"], single["awakenings"]) == (0.5, 0.5, 0, 100, 0)


@pytest.mark.parametrize("stages, message", [
    ([0, 5], "0..4"), ([-1, 2], "0..4"), ([[0, 1]], "one-dimensional"), ([0.0, 1.5], "integers"),
])
def test_bad_stages_are_refused(stages, message):
    with pytest.raises(ValueError, match=message):
        sleep_statistics(np.array(stages))
