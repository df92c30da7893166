"""How persistent a model's errors are: the lag-1 autocorrelation of its error indicator within each test night.

    python bench/error_persistence.py --data-root demo/DATA --pred demo/outputs/files_hmm.csv

``--pred`` is a stage file as blend.py and postprocess.py write them (one
stage name per line, in the order of ``testset-for_user.csv``: the demo's
blend, submission or hmm output in demo/outputs); ``--data-root``'s
``testset-labels.csv`` holds the answers. For every test night the
indicator ``error_t`` (1 where the prediction is wrong) is correlated with
``error_t+1``; the figure is the mean over nights (a night without errors,
or all errors, has no correlation and is left out), with each night's
value. Independent errors give about 0; errors that come in runs, where
the signals are ambiguous for minutes, a clearly positive value.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from sleepstaging.data import psg_layout
from sleepstaging import script_io
from sleepstaging.scoring.postprocess import read_stage_lines


def lag1_autocorrelation(errors: np.ndarray) -> float | None:
    """Pearson correlation of ``errors[:-1]`` with ``errors[1:]``; None when either is constant."""
    before, after = errors[:-1].astype(float), errors[1:].astype(float)
    if len(before) < 2 or before.std() == 0 or after.std() == 0:
        return None
    return float(np.corrcoef(before, after)[0, 1])


def nights_true_and_predicted(data_root: Path, pred: Path) -> dict:
    """``{recording ID: (true stages, predicted stages)}``, int arrays in row order, of the answered test rows.

    ``pred`` is a stage file in ``testset-for_user.csv`` order; ``data_root``'s ``testset-labels.csv`` the answers.
    """
    answers = psg_layout.read_epoch_csv(data_root / psg_layout.TEST_LABELS_CSV, with_labels=True)
    test = psg_layout.read_epoch_csv(data_root / psg_layout.TEST_CSV, with_labels=False)
    stages = read_stage_lines(pred, len(test), str(test.path), "blend.py and postprocess.py write it")
    said = {(rec, idnum): stage for rec, idnum, stage in zip(test.recording_ids, test.idnums, stages)}
    pairs: dict = {}
    for rec, idnum, label in zip(answers.recording_ids, answers.idnums, answers.labels):
        if (rec, idnum) not in said:
            raise script_io.InputError(f"no prediction for {idnum} ({rec}) in {pred}")
        truth, predicted = pairs.setdefault(rec, ([], []))
        truth.append(label)
        predicted.append(said[(rec, idnum)])
    return {rec: (np.asarray(truth), np.asarray(predicted)) for rec, (truth, predicted) in pairs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--pred", type=Path, required=True)
    args = parser.parse_args()
    per_night = {rec: lag1_autocorrelation(predicted != truth)
                 for rec, (truth, predicted) in nights_true_and_predicted(args.data_root, args.pred).items()}
    values = [value for value in per_night.values() if value is not None]
    print(json.dumps({"pred": str(args.pred), "mean_lag1_autocorrelation": round(float(np.mean(values)), 3)
                      if values else None, "nights": {k: None if v is None else round(v, 3)
                                                      for k, v in per_night.items()}}, indent=1))


if __name__ == "__main__":
    script_io.run_main(main)
