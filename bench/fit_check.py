"""Does a checkpoint under- or over-fit? Its macro-F1 on training rows beside the validation rows.

Scores one trained checkpoint (``<arch>_fold_<k>_<epoch>`` in
``--weights-dir``, built as its training configuration says) on a sample of
the rows it was trained on (the other folds) and on its validation fold, with
the evaluation loader (no augmentation), and prints macro-F1, accuracy and
the F1 of each stage for both. Equal figures: the network has not learnt
more of its training nights than it carries to new ones (under-fitting);
training far above validation: over-fitting.

    python bench/fit_check.py --data-root demo/DATA --weights-dir demo/weights \\
        --arch tf_efficientnet_b0 --epoch 1 --cache-dir demo/cache
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.metrics import f1_score

from sleepstaging.data import loaders
from sleepstaging.scoring import inference
from sleepstaging.scoring import model_set
from sleepstaging.scoring import models

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
parser.add_argument("--data-root", default="demo/DATA", help="the data set the checkpoint was trained on")
parser.add_argument("--weights-dir", default="demo/weights")
parser.add_argument("--arch", default="tf_efficientnet_b0", help="timm architecture of the checkpoint")
parser.add_argument("--epoch", type=int, default=1, help="the checkpoint's epoch")
parser.add_argument("--fold", type=int, default=0)
parser.add_argument("--cache-dir", default="demo/cache", help="image cache (built when missing)")
parser.add_argument("--rows", type=int, default=2500, help="rows drawn from each side (all when fewer)")
parser.add_argument("--seed", type=int, default=0, help="seed of the row sample")


def scored(model, data_root, table, rows, config: dict, cache_dir) -> str:
    """Macro-F1, accuracy and per-stage F1 of ``model`` on ``rows`` of ``table``, as one line."""
    loader = loaders.make_eval_loader(data_root, table, tuple(config["img_size"]), 64, 0, rows=rows,
                                      cache_dir=cache_dir, resize=config.get("resize", "linear"))
    predicted = models.predict(model, loader, torch.device("cpu")).argmax(axis=1)
    truth = table.labels[rows]
    per_stage = " ".join(f"{f:.3f}" for f in f1_score(truth, predicted, average=None, labels=range(5)))
    return (f"macro-F1 {f1_score(truth, predicted, average='macro'):.3f} accuracy {(predicted == truth).mean():.3f} "
            f"| F1 Wake N1 N2 N3 REM {per_stage}")


def main() -> None:
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = model_set.read_run_config(args.weights_dir, args.arch, args.fold)
    table = loaders.read_train_table(args.data_root)
    folds = loaders.make_folds(table, n_folds=config["folds"], seed=config["seed"], cv=config["cv"])
    model = next(inference.load_checkpoints(args.arch, [args.epoch], config, args.weights_dir, args.fold,
                                            torch.device("cpu")))
    rng = np.random.default_rng(args.seed)
    for side, rows in (("training rows", np.flatnonzero(folds != args.fold)),
                       ("validation rows", np.flatnonzero(folds == args.fold))):
        rows = np.sort(rng.choice(rows, min(len(rows), args.rows), replace=False))
        print(f"{args.arch} epoch {args.epoch}, {len(rows)} {side}: "
              f"{scored(model, args.data_root, table, rows, config, args.cache_dir)}", flush=True)


if __name__ == "__main__":
    main()
