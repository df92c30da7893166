"""Per-model probabilities of the test set and, where possible, of the fold's validation rows.

For each of the two models (ViT, EfficientNet) trained on fold ``k``, loads
the checkpoints of the chosen epochs (the fold, architectures and epochs
not given as options are the weights folder's recorded model set's,
``model_set.json``, else the original's: ``model_set.py``)
(``weights/<arch>_fold_<k>_<epoch>``, architecture and image size from
``weights/<arch>_fold_<k>_config.json``) and writes the mean softmax over
those checkpoints and over the TTA rounds:

* ``outputs/<arch>_fold_<k>_<epochs>.npy``: test rows, in
  ``testset-for_user.csv`` order (the original's name, the epoch list written
  as Python prints it: ``vit_base_patch16_224_fold_0_[4].npy``,
  ``..._fold_0_[3, 4].npy``);
* ``outputs/<arch>_fold_<k>_<epochs>_valid.npy``: the fold's validation rows,
  with ``outputs/fold_<k>_valid.csv`` (``ID,IDnum,label`` of those rows, same
  order), for ``blend.py --tune`` and ``evaluate.py``.

All arrays are float32 [rows, 5], classes Wake, N1, N2, N3, REM, rows
summing to 1. The validation rows are the fold's rows of the split the
models were trained with (``folds``, ``seed`` and ``cv`` from the training
configuration; both models must share it). Prints validation accuracy and
macro-F1 of each model and of their 50/50 average of unit-sum rows. (The
original printed its ``ens_weight`` 0.5 average of its scaled dumps, ViT
rows summing to 1/(4 tta) and EfficientNet rows to 1/(800 tta): in effect
the ViT with weight 200 / 201 = 0.995, nearly the ViT alone.)

Scoring needs only the test CSV, its images and the checkpoints: when the
data root has no training CSV, or its fold is no longer the one the models
were validated on (another data set, a changed CSV), or the two models were
validated on different splits, one line says why the validation dumps are
skipped and the test dumps are written alone.

TTA: round 1 reads the images as validation does (resize, normalise);
each further round adds the training pipeline's two dropouts, CoarseDropout
and Cutout (8 holes of 8 x 8 pixels each, Cutout's clipped at the border;
each applied with probability 0.5), drawn from a seed fixed per round and
image, so reruns give the same numbers.

``outputs/infer_blend_fold_<k>.json`` records the run's configuration, the
TTA rounds (``blend.py`` reads them) and the two models' ``--stage-balance``
(``stage_balance``, ViT then EfficientNet; ``postprocess.py --method hmm``
reads it).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.metrics import f1_score

from sleepstaging import script_io
from sleepstaging.data import loaders, psg_layout
from sleepstaging.output_names import run_config_path
from sleepstaging.recipe import INFERENCE
from sleepstaging.scoring import model_set, models
from sleepstaging.scoring.inference import SPLIT_KEYS, model_probabilities, write_outputs
from sleepstaging.script_io import InputError, where

# fmt: off
parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=script_io.HelpFormatter)
parser.add_argument("--data-root", default="DATA", help="folder with the challenge CSVs and images")
parser.add_argument("--weights-dir", default="weights", help="checkpoints and training configurations")
parser.add_argument("--out", default="outputs", help="where the .npy dumps and fold_<k>_valid.csv go")
model_set.add_model_options(parser)  # --fold, --vit-arch, --eff-arch, --vit-epochs, --eff-epochs
parser.add_argument("--tta", type=int, default=INFERENCE["tta"], help="rounds per checkpoint; rounds after the first add dropouts")
parser.add_argument("--batch-size", type=int, default=INFERENCE["batch_size"])
parser.add_argument("--workers", type=int, default=4, help="DataLoader worker processes")
parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto: CUDA when available")
parser.add_argument("--amp", default="off", choices=("fp16", "bf16", "off"),
                    help="mixed precision on CUDA (the original inferred in float32)")
parser.add_argument("--cache-dir", default=str(loaders.DEFAULT_CACHE_DIR),
                    help="image cache (decoded, resized uint8 arrays; built on first use), outside the data root")
parser.add_argument("--no-cache", action="store_true", help="decode every image from its PNG (the original's path)")
parser.add_argument("--quiet", action="store_true", help="no progress bars")
# fmt: on


def check_args(args) -> None:
    for name in ("tta", "batch_size"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.workers < 0:
        raise InputError(f"--workers must be 0 or more, got {args.workers}")
    for option, epochs in (("--vit-epochs", args.vit_epochs), ("--eff-epochs", args.eff_epochs)):
        if min(epochs) < 0 or len(set(epochs)) != len(epochs):
            raise InputError(f"{option} must list distinct epochs >= 0, got {epochs}")


def validation_rows(args, configs: dict) -> tuple[psg_layout.EpochTable | None, np.ndarray | None, str]:
    """The training table and the rows (train CSV order) of fold ``args.fold`` of the models' split.

    Returns
    -------
    train : EpochTable or None
    rows : np.ndarray of int64 or None
        None (with ``train`` None) when the validation rows cannot be found.
    reason : str
        Why they cannot be found (a sentence ending in the file concerned);
        empty when they can.
    """
    train_csv = Path(args.data_root) / psg_layout.TRAIN_CSV
    if not train_csv.is_file():
        return None, None, f"no training CSV {where(train_csv)}"
    config_path = run_config_path(args.weights_dir, args.vit_arch, args.fold)
    missing = [key for key in SPLIT_KEYS if key not in configs["vit"]]
    if missing:
        return None, None, f"the training configuration lacks {', '.join(missing)} {where(config_path)}"
    split, other = ({key: configs[model].get(key) for key in SPLIT_KEYS} for model in ("vit", "eff"))
    if split != other:
        path = run_config_path(args.weights_dir, args.eff_arch, args.fold)
        return None, None, f"the two models were trained on different splits ({split} and {other}) {where(path)}"
    config = configs["vit"]
    try:  # a training CSV that cannot be read or split gives no validation rows; the test rows still score
        train = loaders.read_train_table(args.data_root)
        folds = loaders.make_folds(train, n_folds=config["folds"], seed=config["seed"], cv=config["cv"])
    except InputError as err:
        return None, None, str(err)
    rows = np.flatnonzero(folds == args.fold)
    trained_against = config.get("valid_recordings")
    if trained_against is not None and sorted({train.recording_ids[r] for r in rows}) != sorted(trained_against):
        return None, None, (f"fold {args.fold} of {train.path} no longer holds the recordings the models were "
                            f"validated on (another data set, or the training CSV changed) {where(config_path)}")
    return train, rows, ""


def main(argv=None) -> None:
    args = parser.parse_args(argv)
    models_source = model_set.resolve_models(args, model_set.read_model_set(args.weights_dir))
    check_args(args)
    device = models.resolve_device(args.device)
    config = dict(vars(args), device=str(device), amp=models.resolve_amp(args.amp, device), models_source=models_source)
    print("config: " + json.dumps(config))

    test = loaders.read_test_table(args.data_root)
    arch_epochs = {"vit": (args.vit_arch, args.vit_epochs), "eff": (args.eff_arch, args.eff_epochs)}
    configs = model_set.read_model_configs(args.weights_dir, args.fold, arch_epochs)
    train, valid_rows, reason = validation_rows(args, configs)
    inputs = {"test": (test, np.arange(len(test)))}
    if valid_rows is None:
        print(f"validation dumps skipped: {reason}; writing the test dumps only")
        print(f"{len(test)} test rows")
    else:
        inputs["valid"] = (train, valid_rows)
        print(f"{len(valid_rows)} validation rows (fold {args.fold}), {len(test)} test rows")

    probabilities = {key: model_probabilities(arch, epochs, configs[key], args, inputs, device)
                     for key, (arch, epochs) in arch_epochs.items()}
    # Recorded for postprocess.py --method hmm, which divides the blend by the stage shares the models saw.
    config["stage_balance"] = [configs[key]["stage_balance"] for key in arch_epochs]

    if valid_rows is not None:
        labels = train.labels[valid_rows]
        vit, eff = probabilities["vit"]["valid"], probabilities["eff"]["valid"]
        for name, valid in ((args.vit_arch, vit), (args.eff_arch, eff), ("50/50 average", 0.5 * vit + 0.5 * eff)):
            predicted = valid.argmax(axis=1)
            print(f"fold {args.fold} {name}: validation accuracy {np.mean(predicted == labels):.5f}, "
                  f"macro-F1 {f1_score(labels, predicted, average='macro'):.5f}")
    write_outputs(Path(args.out), args, arch_epochs, probabilities, train, valid_rows, config)


if __name__ == "__main__":
    script_io.run_main(main)
