"""Where a model's errors fall on synthetic nights: per test night, the subject's chin tone and N2 read as REM.

    python bench/errors_by_subject.py --data-root demo/DATA --pred demo/outputs/files_post.csv

``--data-root`` is a data set of ``make_synthetic.py`` (its
``make_synthetic.json`` gives the seed, and each recording ID its index, so
the subject's traits are drawn again exactly as the generator drew them);
``--pred`` a stage file as blend.py and postprocess.py write them (one stage
name per line, in ``testset-for_user.csv`` order). Per test night: the
subject's wake chin EMG (rms in uV, uniform over 4-10 across subjects), its
true N2 epochs, how many of them the prediction calls REM, and the night's
macro-F1. The demo's networks read REM from a dark chin band, and in
subjects whose chin is quiet even in N2 they call N2 REM
([docs/demo.md](../docs/demo.md#what-the-networks-miss)).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.metrics import f1_score

from error_persistence import nights_true_and_predicted
from sleepstaging import script_io
from sleepstaging.data import psg_layout
from sleepstaging.synthetic import physiology
from sleepstaging.synthetic.hypnogram import recording_rngs
from sleepstaging.synthetic.recording import ID_FORMAT

N2, REM = psg_layout.STAGE_TO_INT["N2"], psg_layout.STAGE_TO_INT["REM"]


def subject_of(seed: int, recording_id: str) -> physiology.Subject:
    """The traits the generator drew for ``recording_id`` of the data set made with ``seed``."""
    prefix = ID_FORMAT.split("{")[0]
    if not recording_id.startswith(prefix) or not recording_id[len(prefix):].isdigit():
        raise script_io.InputError(f"{recording_id} is not an ID of make_synthetic.py ({ID_FORMAT.format(1)})")
    index = int(recording_id[len(prefix):]) - 1
    return physiology.draw_subject(recording_rngs(seed, index)[1])  # the signals' generator draws the subject first


def night_errors(truth: np.ndarray, predicted: np.ndarray) -> dict:
    """True N2 epochs, those predicted REM, and macro-F1 over the stages present, of one night."""
    n2 = truth == N2
    return {"n2_epochs": int(n2.sum()), "n2_called_rem": int((predicted[n2] == REM).sum()),
            "macro_f1": round(float(f1_score(truth, predicted, average="macro")), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, required=True, help="a data set of make_synthetic.py")
    parser.add_argument("--pred", type=Path, required=True, help="a stage file in testset-for_user.csv order")
    args = parser.parse_args()
    made = args.data_root / "make_synthetic.json"
    if not made.is_file():
        raise script_io.InputError(f"{made}: not found; --data-root must be a data set of make_synthetic.py")
    seed = int(json.loads(made.read_text())["seed"])
    nights = {rec: {"chin_uv": round(subject_of(seed, rec).chin_uv, 1), **night_errors(truth, predicted)}
              for rec, (truth, predicted) in nights_true_and_predicted(args.data_root, args.pred).items()}
    print(json.dumps({"pred": str(args.pred), "nights": nights}, indent=1))


if __name__ == "__main__":
    script_io.run_main(main)
