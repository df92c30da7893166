"""YASA's automatic sleep staging of EDF nights (runs in the bench-only venv that holds yasa).

    .venv-realism/bin/python bench/realism_yasa.py --out stages.json NIGHT.edf [NIGHT.edf ...]

For every EDF file, YASA's ``SleepStaging`` (LightGBM classifiers trained
on thousands of real NSRR nights, shipped inside the yasa package) stages
each 30-s epoch from one EEG, one EOG and one EMG channel. Writes
``{"<file name>": ["WAKE", "N1", ...], ...}`` (one label per epoch, YASA's
spelling) to ``--out``. bench/realism.py calls this in its own venv, so
yasa and its pins never enter the project's environment.

Kept free of the project's modules on purpose: this venv holds yasa,
mne and their dependencies, not torch or the pipeline's pins.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
parser.add_argument("edf", type=Path, nargs="+", help="EDF files to stage")
parser.add_argument("--out", type=Path, required=True, help="JSON file of the predicted stages")
parser.add_argument("--eeg", default="C4-M1", help="EEG channel")
parser.add_argument("--eog", default="E1-M2", help="EOG channel")
parser.add_argument("--emg", default="Chin EMG", help="EMG channel")


def stage_night(path: Path, args: argparse.Namespace) -> list:
    """YASA's stage for every 30-s epoch of one EDF file, as a list of yasa's labels (``WAKE``, ``N1``, ``N2``, ``N3``, ``REM``)."""
    import warnings

    import mne
    import yasa

    # yasa's classifiers were pickled with an older scikit-learn; its LabelEncoder loads the same
    warnings.filterwarnings("ignore", message="Trying to unpickle estimator")

    raw = mne.io.read_raw_edf(path, include=[args.eeg, args.eog, args.emg], preload=True, verbose="error")
    staging = yasa.SleepStaging(raw, eeg_name=args.eeg, eog_name=args.eog, emg_name=args.emg)
    return [str(stage) for stage in staging.predict().hypno.tolist()]


def main() -> None:
    args = parser.parse_args()
    missing = [str(path) for path in args.edf if not path.is_file()]
    if missing:
        print(f"error: EDF file not found ({missing[0]})", file=sys.stderr)
        sys.exit(2)
    stages = {path.name: stage_night(path, args) for path in args.edf}
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(json.dumps(stages) + "\n")
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
