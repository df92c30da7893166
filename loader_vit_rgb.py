"""Check a data set in the challenge layout and show the training split, as both trainers will read it.

The original's ``loaderViTrgb.py`` was the data entry point of both
trainers; its code lives in ``sleepstaging/data/loaders.py`` (tables and
their checks, folds, datasets, samplers, loaders), which the trainers and
inference import. Run as a script, it reads the data root's CSVs, checks
that every listed image is a file inside the root (all missing ones reported
at once, as a trainer would before its first epoch) and prints the stages
and the fold's split:

    python loader_vit_rgb.py --data-root DATA --fold 0
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from sleepstaging import script_io
from sleepstaging.data import loaders
from sleepstaging.data.psg_layout import NUM_CLASSES, STAGES
from sleepstaging.recipe import RECIPE

# fmt: off
parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=script_io.HelpFormatter)
parser.add_argument("--data-root", default=RECIPE["data_root"], help="folder with the challenge CSVs and images")
parser.add_argument("--folds", type=int, default=RECIPE["folds"], help="number of folds")
parser.add_argument("--fold", type=int, default=RECIPE["fold"], help="the validation fold shown")
parser.add_argument("--cv", choices=("subject", "stratified"), default=RECIPE["cv"],
                    help="subject: folds by recording; stratified: the original's split over single epochs")
parser.add_argument("--seed", type=int, default=RECIPE["seed"], help="the folds' random seed")
# fmt: on


def stage_line(labels: np.ndarray) -> str:
    """``Wake 120 (16.4 %), N1 ...``: each stage's count and share."""
    counts = np.bincount(labels, minlength=NUM_CLASSES)
    return ", ".join(f"{name} {count} ({100 * count / max(len(labels), 1):.1f} %)" for name, count in zip(STAGES, counts))


def main(argv=None) -> None:
    args = parser.parse_args(argv)
    print("config: " + json.dumps(vars(args)))
    train = loaders.read_train_table(args.data_root)
    test = loaders.read_test_table(args.data_root)
    folds = loaders.make_folds(train, n_folds=args.folds, seed=args.seed, cv=args.cv)
    if not 0 <= args.fold < args.folds:
        raise script_io.InputError(f"--fold must lie in 0..{args.folds - 1}, got {args.fold}")
    valid = folds == args.fold
    print(f"training table: {len(train)} epochs of {len(set(train.recording_ids))} recordings: {stage_line(train.labels)}")
    print(f"test table: {len(test)} epochs of {len(set(test.recording_ids))} recordings; every listed image found")
    for name, rows in (("training", ~valid), ("validation", valid)):
        recordings = len({train.recording_ids[r] for r in np.flatnonzero(rows)})
        print(f"fold {args.fold} ({args.cv}) {name}: {int(rows.sum())} epochs of {recordings} recordings: "
              f"{stage_line(train.labels[rows])}")


if __name__ == "__main__":
    script_io.run_main(main)
