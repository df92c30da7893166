"""evaluate.py's sleep statistics: true against predicted hypnograms, Bland-Altman agreement, in the report."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from sleepstaging.data import psg_layout
from sleepstaging import script_io
from sleepstaging.scoring.evaluation import limits_of_agreement, statistics_agreement
from evaluate import main as evaluate_main
from sleepstaging.scoring.sleep_statistics import sleep_statistics

W, N1, N2, N3, R = range(5)


def test_agreement_of_three_recordings_by_hand():
    y_true = np.array([W, N2, N2, W] + [N2, N2, N2, R] + [W, W, W, W])
    y_pred = np.array([W, W, N2, W] + [N2, N2, N2, N2] + [W, N1, W, W])
    ids = ["a"] * 4 + ["b"] * 4 + ["c"] * 4
    result = statistics_agreement(y_true, y_pred, ids)

    a = result["per_recording"]["a"]
    assert a["true"]["TST"] == 1.0 and a["predicted"]["TST"] == 0.5 and a["difference"]["TST"] == -0.5
    assert a["difference"]["SOL"] == 0.5  # sleep onset one epoch later
    assert math.isnan(result["per_recording"]["b"]["difference"]["Lat_REM"])  # no REM predicted
    assert math.isnan(result["per_recording"]["c"]["difference"]["SOL"])  # c truly never sleeps

    # TST differences -0.5, 0, +0.5 min: bias 0, SD 0.5, limits -+0.98
    tst = result["agreement"]["TST"]
    assert tst == {"n": 3, "mean_true": 1.0, "mean_predicted": pytest.approx(1.0), "bias": 0.0, "sd": 0.5,
                   "loa_low": pytest.approx(-0.98), "loa_high": pytest.approx(0.98)}
    # SOL: a +0.5, b 0, c undefined in truth -> left out; SD of (0.5, 0) = sqrt(0.125)
    sol = result["agreement"]["SOL"]
    assert sol["n"] == 2 and sol["bias"] == 0.25 and sol["sd"] == pytest.approx(math.sqrt(0.125))
    assert sol["loa_high"] == pytest.approx(0.25 + 1.96 * math.sqrt(0.125))
    # REM latency: defined in the truth of b only, never predicted -> no recording to compare
    assert result["agreement"]["Lat_REM"]["n"] == 0 and math.isnan(result["agreement"]["Lat_REM"]["bias"])
    assert result["agreement"]["awakenings"]["n"] == 2  # a and b both sleep in truth and prediction


def test_limits_of_agreement_with_one_recording():
    one = limits_of_agreement(np.array([10.0]), np.array([12.0]))
    assert one["n"] == 1 and one["bias"] == 2.0 and math.isnan(one["sd"]) and math.isnan(one["loa_low"])


def test_report_holds_the_statistics(tiny_data, tmp_path):
    answers = psg_layout.read_epoch_csv(tiny_data / psg_layout.TEST_LABELS_CSV, with_labels=True)
    predicted = answers.labels.copy()
    predicted[::5] = W  # Wake every 5th epoch: less sleep predicted than true
    pred = tmp_path / "files_post.csv"
    script_io.write_lines(pred, [psg_layout.STAGES[s] for s in predicted])
    report = tmp_path / "report"
    evaluate_main([str(a) for a in ("--data-root", tiny_data, "--pred", pred, "--out", report,
                                    "--outputs", tmp_path, "--weights-dir", tmp_path, "--quiet")])

    metrics = json.loads((report / "metrics.json").read_text())  # strict JSON: undefined values are null
    statistics = metrics["sleep_statistics"]
    recordings = list(dict.fromkeys(answers.recording_ids))
    assert list(statistics["per_recording"]) == recordings
    ids = np.array(answers.recording_ids)
    tst_differences = []
    for recording in recordings:
        true = sleep_statistics(answers.labels[ids == recording])
        entry = statistics["per_recording"][recording]
        assert entry["true"]["TST"] == true["TST"] and entry["true"]["SE"] == pytest.approx(true["SE"])
        tst_differences.append(entry["predicted"]["TST"] - true["TST"])
        assert entry["difference"]["TST"] == pytest.approx(tst_differences[-1])
        assert entry["difference"]["TST"] < 0
    assert statistics["agreement"]["TST"]["bias"] == pytest.approx(np.mean(tst_differences))
    assert statistics["agreement"]["TST"]["sd"] == pytest.approx(np.std(tst_differences, ddof=1))

    text = (report / "report.md").read_text()
    tst = statistics["agreement"]["TST"]
    assert "## Sleep statistics: predicted against true hypnograms" in text
    assert (f"| TST | min | {tst['mean_true']:.2f} | {tst['mean_predicted']:.2f} | {tst['bias']:.2f} | "
            f"{tst['loa_low']:.2f} to {tst['loa_high']:.2f} | {len(recordings)} |") in text
