"""How much of the sleep stage a small image still shows: a non-deep baseline on the cached images.

Reads the images of a data set at ``--img-size`` through the project's
image cache (the very arrays the models are trained on), describes each
by a few intensity statistics of every pixel row (the signals are stacked
as rows, so a row's statistics along the time axis are amplitude and
activity measures of a signal band), fits scikit-learn's
HistGradientBoostingClassifier on the labelled training rows and scores
it on the test rows (``testset-labels.csv``) and on fold 0 of the
trainers' subject folds; also fitted on fold 0's training rows alone (the
nights the networks train on) and scored on the test rows. Prints the
macro-F1, Cohen's kappa and the F1 of each stage, and writes them to
``bench/results/feature_baseline.json``.

It answers whether a model that scores low at a small input size lacks
information or training: if the trees score high on the same pixels, the
information is there. ``--learner logistic`` fits a logistic regression
instead (standardised features), and ``--features pixels`` gives it the raw
pixels instead of the row statistics: a learner with no idea that the
images are rows of signals, which is what a network must first find out.

    python bench/feature_baseline.py --data-root demo/DATA --cache-dir demo/cache --img-size 64
"""
from __future__ import annotations

import argparse
import functools
import json
import platform
import sys
import time
from pathlib import Path


import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import cohen_kappa_score, f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sleepstaging.data import image_cache
from sleepstaging.data import loaders
from sleepstaging.data import psg_layout
from sleepstaging import script_io
from sleepstaging.scoring.evaluation import read_answers

REPO = Path(__file__).resolve().parents[1]

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
parser.add_argument("--data-root", type=Path, default=Path("demo/DATA"), help="data set with test answers")
parser.add_argument("--cache-dir", type=Path, default=Path("demo/cache"), help="image cache (built when missing)")
parser.add_argument("--img-size", type=int, nargs="+", metavar="PIXELS", default=[64],
                    help="input size in pixels, as the models see it: one (square) or two, HEIGHT WIDTH")
parser.add_argument("--resize", choices=tuple(image_cache.RESIZE_INTERPOLATIONS), default="linear",
                    help="the images' interpolation, as the trainers' --resize (the demo trains on area)")
parser.add_argument("--block", type=int, default=8, help="columns per block of the within-block spread feature")
parser.add_argument("--features", choices=("rows", "pixels"), default="rows",
                    help="per-row intensity statistics, or the raw pixels of the first channel")
parser.add_argument("--learner", choices=("trees", "logistic"), default="trees",
                    help="gradient-boosted trees, or a logistic regression on standardised features")
parser.add_argument("--seed", type=int, default=72, help="the trainers' fold seed (fold 0 of 5, by subject)")
parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "feature_baseline.json")


def row_features(images: np.ndarray, block: int) -> np.ndarray:
    """Per pixel row: mean, standard deviation, mean absolute step along time, mean spread within blocks.

    Parameters
    ----------
    images : np.ndarray of uint8, shape (n, channels, height, width)
        Cached images; the first channel is used (the images are grey).
    block : int
        Columns per block; ``width`` must be a multiple of it.

    Returns
    -------
    np.ndarray of float32, shape (n, 4 * height)
    """
    grey = images[:, 0].astype(np.float32) / 255.0
    count, height, width = grey.shape
    blocks = grey.reshape(count, height, width // block, block)
    return np.concatenate([grey.mean(axis=2), grey.std(axis=2), np.abs(np.diff(grey, axis=2)).mean(axis=2),
                           blocks.std(axis=3).mean(axis=2)], axis=1)


def pixel_features(images: np.ndarray) -> np.ndarray:
    """The first channel's pixels in [0, 1], flattened: float32, shape (n, height * width)."""
    return images[:, 0].reshape(len(images), -1).astype(np.float32) / 255.0


def features_of(table: psg_layout.EpochTable, args: argparse.Namespace) -> np.ndarray:
    cache = image_cache.open_cache(args.data_root, table, args.img_size, args.cache_dir, resize=args.resize)
    rows = np.arange(len(table))
    describe = pixel_features if args.features == "pixels" else functools.partial(row_features, block=args.block)
    return np.concatenate([describe(cache.read(chunk)) for chunk in np.array_split(rows, max(1, len(rows) // 2048))])


def scores(truth: np.ndarray, predicted: np.ndarray) -> dict:
    per_stage = f1_score(truth, predicted, average=None, labels=range(psg_layout.NUM_CLASSES), zero_division=0)
    return {"rows": int(len(truth)), "macro_f1": float(f1_score(truth, predicted, average="macro")),
            "cohen_kappa": float(cohen_kappa_score(truth, predicted)),
            "f1": {stage: round(float(value), 4) for stage, value in zip(psg_layout.STAGES, per_stage)}}


LEARNERS = {
    "trees": lambda: HistGradientBoostingClassifier(max_iter=200, random_state=0),
    # lbfgs on standardised features; 300 iterations reach its tolerance on the demo's rows and pixels
    "logistic": lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=300)),
}
LEARNER_NAMES = {"trees": "HistGradientBoostingClassifier", "logistic": "LogisticRegression (standardised features)"}
FEATURE_NAMES = {"rows": "per-row intensity statistics", "pixels": "the pixels"}


def fit_and_score(learner: str, train_x, train_y, test_x, test_y) -> dict:
    model = LEARNERS[learner]().fit(train_x, train_y)
    return scores(test_y, model.predict(test_x))


def main(args: argparse.Namespace) -> None:
    shape = psg_layout.input_shape(args.img_size)
    if shape[1] % args.block:  # the width: blocks are of columns
        raise script_io.InputError(f"--img-size {' '.join(map(str, args.img_size))} is not a multiple of --block "
                                    f"{args.block}")
    args.img_size = shape  # (height, width) from here on
    started = time.perf_counter()
    train = loaders.read_train_table(args.data_root)
    test = loaders.read_test_table(args.data_root)
    test_y = read_answers(args.data_root / psg_layout.TEST_LABELS_CSV, test)
    train_x, test_x = features_of(train, args), features_of(test, args)
    folds = loaders.make_folds(train, n_folds=5, seed=args.seed, cv="subject")
    result = {
        "what": f"{LEARNER_NAMES[args.learner]} on {FEATURE_NAMES[args.features]} of "
                f"{image_cache.shape_label(shape)} cached images",
        "command": "python bench/feature_baseline.py " + " ".join(sys.argv[1:]),
        "data_root": str(args.data_root), "img_size": list(shape), "resize": args.resize,
        "test": fit_and_score(args.learner, train_x, train.labels, test_x, test_y),
        "fold_0_validation": fit_and_score(args.learner, train_x[folds != 0], train.labels[folds != 0],
                                           train_x[folds == 0], train.labels[folds == 0]),
        # the networks' training nights only: whether the baseline's lead comes from the nights it sees
        "test_fitted_on_fold_0_training": fit_and_score(args.learner, train_x[folds != 0], train.labels[folds != 0],
                                                        test_x, test_y),
        "seconds": round(time.perf_counter() - started, 1),
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
    }
    for part in ("test", "fold_0_validation", "test_fitted_on_fold_0_training"):
        found = result[part]
        stages = " ".join(f"{stage} {value:.3f}" for stage, value in found["f1"].items())
        print(f"{part}: {found['rows']} rows, macro-F1 {found['macro_f1']:.4f}, kappa {found['cohen_kappa']:.4f} "
              f"| F1 {stages}")
    with script_io.atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{args.out} is saved ({result['seconds']} s)")


if __name__ == "__main__":
    script_io.run_main(lambda: main(parser.parse_args()))
