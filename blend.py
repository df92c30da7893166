"""Blend the two models' test probabilities into one prediction per epoch.

Reads the per-model probability dumps written by infer_blend.py
(``outputs/<arch>_fold_<k>_<epochs>.npy``, float32 [rows, 5], classes Wake,
N1, N2, N3, REM, rows in test CSV order, each row summing to 1), combines
them with one of the original's blend methods and writes

* ``outputs/filesblend_<method>_<vit-epochs>_<eff-epochs>.csv``: one stage
  name per line, no header, test CSV order (the original's pre-post-processing
  submission), and
* ``outputs/filesblend_<method>_<vit-epochs>_<eff-epochs>.npy``: the blend
  beside it as probabilities, float32 [rows, 5] (see
  :func:`blend_probabilities`), which ``postprocess.py --method hmm`` uses
  for its emissions.

Dump scales. The original's dumps were not on one scale: its inferblend.py
multiplied every softmax row by ``weights[i] / sum(weights) / tta`` with
``weights = [1, 1, 1, 1]`` (so model 1's rows summed to 1/(4*tta)), and
folded the EfficientNet's 1000 outputs into 5 by adding 200 slices of 5 and
dividing by 200 (so model 2's rows summed to 1/(800*tta)); it ran with
``tta = 1``. Its blend.py applied its weight to those rows. With
``--dump-scale original`` (the default) the rows are multiplied by
a = 1/(4*tta) and b = 1/(800*tta) before the method's formula, so every
method and weight means what it meant in the original and ``python
blend.py`` reproduces the original's submitted blend (sqrt, w = 0.06).
``--dump-scale unit`` blends the unit-sum rows with plain weights. ``tta``
is infer_blend.py's ``--tta``, read from ``outputs/infer_blend_fold_<k>.json``
(1, the original's, when that file is absent), or given with ``--tta``; it
only matters to log1p and expm1 (the other methods are unchanged by a
factor common to both models).

With p1 = model 1 (ViT), p2 = model 2 (EfficientNet), a and b their row
scales (1 under ``--dump-scale unit``) and w = ``--ens-weight``:

==========  ==================================================
``avg``     w*(a*p1) + (1-w)*(b*p2)
``sqrt``    w*sqrt(a*p1) + (1-w)*sqrt(b*p2)          (the original, w=0.06)
``log1p``   w*log1p(a*p1) + (1-w)*log1p(b*p2)
``square``  w*(a*p1)**power + (1-w)*(b*p2)**power     (power 0.25)
``expm1``   w*expm1(a*p1) + (1-w)*expm1(b*p2)
``rank``    per row, each model's classes ranked 0..4 (ties: the lower
            class index gets the lower rank), ranks summed; w and the
            scales change nothing (``--tune`` records w as 0.5)
==========  ==================================================

The predicted stage is the argmax (the first class on ties).

Effective ViT weight: the weight w' that gives the same blend with the same
method on the unit-sum dumps. ``avg``, ``sqrt`` and ``square`` are
homogeneous of degree k = 1, 1/2 and ``power`` (f(c*x) = c**k * f(x)), so
w' = w*a**k / (w*a**k + (1-w)*b**k), independent of tta since a/b = 200:
the original's sqrt blend with w = 0.06 is w' = 0.474 on unit-sum dumps.
``log1p`` and ``expm1`` are not homogeneous: no w' exists (the ViT's share
depends on the probabilities; both are close to ``avg`` since log1p(x) and
expm1(x) are near x for x <= 1/4). ``rank`` counts both models equally. The
script prints w' of the blend it makes.

``--tune`` searches method x effective ViT weight w' (0 to 1 in steps of
0.01) on the validation dumps (``..._valid.npy`` with
``fold_<k>_valid.csv``): each w' is turned into the weight w of the scaled
rows that gives it (:func:`raw_weight`), so the grid is as fine at the
original's scales as on unit-sum rows (a grid in w itself would jump from
w' = 0 to 0.67 at w = 0.01 for ``avg``). ``log1p`` and ``expm1`` have no
w'; their grid is ``avg``'s. The best setting, with its w, scale and tta,
is saved as ``outputs/blend_tune.json``; ``--from-tune`` applies it (its
method, weight, power, dump scale and tta). The original chose w=0.06 by
probing the public leaderboard.

This module imports no torch, so it stays fast; infer_blend.py and
evaluate.py import its blend functions (file names: output_names.py).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sleepstaging import script_io
from sleepstaging.data import psg_layout
from sleepstaging.output_names import dump_path, tune_json_path, valid_csv_path
from sleepstaging.recipe import ORIGINAL_BLEND, ORIGINAL_MODELS
from sleepstaging.scoring.blend import (
    DUMP_HINT,
    DUMP_SCALES,
    ORIGINAL_TTA,
    blend_test_dumps,
    check_blend_settings,
    describe_effective_weight,
    effective_vit_weight,
    format_tune_table,
    load_probabilities,
    read_tune_json,
    resolve_tta,
    row_scales,
    tune_blend,
)
from sleepstaging.script_io import InputError, where

# fmt: off
parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=script_io.HelpFormatter)
parser.add_argument("--data-root", default="DATA", help="folder with testset-for_user.csv")
parser.add_argument("--out", default="outputs", help="folder with the .npy dumps; the blend is written here")
parser.add_argument("--method", default=ORIGINAL_BLEND["method"], help="avg, sqrt, log1p, square, expm1 or rank")
parser.add_argument("--ens-weight", type=float, default=ORIGINAL_BLEND["ens_weight"], help="weight w of model 1 (ViT), in [0, 1], on the rows as --dump-scale scales them")
parser.add_argument("--power", type=float, default=ORIGINAL_BLEND["power"], help="exponent of the 'square' method, > 0")
parser.add_argument("--dump-scale", choices=DUMP_SCALES, default=ORIGINAL_BLEND["dump_scale"],
                    help="original: scale the unit-sum rows as the original's dumps were, 1/(4*tta) for model 1 "
                         "and 1/(800*tta) for model 2, before blending (its weights mean what they meant there); "
                         "unit: blend the unit-sum rows with plain weights")
parser.add_argument("--tta", type=int, default=None,
                    help="TTA rounds of the dumps, for --dump-scale original; None: infer_blend.py's --tta from "
                         "<out>/infer_blend_fold_<k>.json, else 1 (the original's)")
parser.add_argument("--vit-arch", default=ORIGINAL_MODELS["vit_arch"])
parser.add_argument("--eff-arch", default=ORIGINAL_MODELS["eff_arch"])
parser.add_argument("--vit-epochs", type=int, nargs="+", default=ORIGINAL_MODELS["vit_epochs"], help="checkpoint epochs of model 1's dump")
parser.add_argument("--eff-epochs", type=int, nargs="+", default=ORIGINAL_MODELS["eff_epochs"], help="checkpoint epochs of model 2's dump")
parser.add_argument("--fold", type=int, default=ORIGINAL_MODELS["fold"], help="the fold the models were trained on")
parser.add_argument("--tune", action="store_true",
                    help="search method x weight on the fold's validation dumps, save outputs/blend_tune.json")
parser.add_argument("--from-tune", type=Path, default=None, metavar="JSON",
                    help="take method, ens-weight, power, dump scale and tta from a blend_tune.json")
parser.add_argument("--quiet", action="store_true", help="no progress bar")
# fmt: on


def run_tune(args, config: dict, quiet: bool) -> None:
    """``--tune``: search on the validation dumps, print the table, save blend_tune.json."""
    out = Path(args.out)
    labels_csv = valid_csv_path(out, args.fold)
    if not labels_csv.is_file():
        raise InputError(f"no validation rows {where(labels_csv)}; make them with infer_blend.py "
                         f"(it writes the validation dumps and this CSV), or point --out at them")
    labels = psg_layout.read_epoch_csv(labels_csv, with_labels=True).labels
    p1, p2 = (load_probabilities(dump_path(out, arch, args.fold, epochs, "valid"), len(labels), str(labels_csv),
                                 DUMP_HINT)
              for arch, epochs in ((args.vit_arch, args.vit_epochs), (args.eff_arch, args.eff_epochs)))
    scales = row_scales(args.dump_scale, args.tta)
    result = tune_blend(p1, p2, labels, args.power, quiet, scales)
    print(format_tune_table(result))
    print(f"best: --method {result['method']} --ens-weight {result['ens_weight']} (power {result['power']}, "
          f"--dump-scale {args.dump_scale}, tta {args.tta}): "
          f"validation macro-F1 {result['val_macro_f1']:.4f} on {len(labels)} rows")
    print(describe_effective_weight(result["method"], result["ens_weight"], result["power"], scales))
    result.update(dump_scale=args.dump_scale, tta=args.tta,
                  effective_vit_weight=effective_vit_weight(result["method"], result["ens_weight"], result["power"],
                                                            scales),
                  config=config, valid_rows=len(labels))
    with script_io.atomic_path(tune_json_path(out)) as tmp:
        tmp.write_text(json.dumps(result, indent=2))
    print(f"{tune_json_path(out)} is saved")


def run_blend(args, config: dict) -> Path:
    """Blend the test dumps as the command line says; return the blend CSV's path."""
    return blend_test_dumps(args.out, args.data_root, args.fold, (args.vit_arch, args.vit_epochs),
                            (args.eff_arch, args.eff_epochs), args.method, args.ens_weight, args.power,
                            row_scales(args.dump_scale, args.tta), config)

def main(argv=None) -> Path | None:
    """Run the script; return the blend CSV written (its name is fixed here, by the settings), None with --tune."""
    args = parser.parse_args(argv)
    given_tta = "--tta"
    if args.from_tune is not None:
        for key, value in read_tune_json(args.from_tune).items():
            setattr(args, key, value)
        given_tta = str(args.from_tune)
    check_blend_settings(args.method, args.ens_weight, args.power)
    if args.dump_scale == "unit" and args.tta is None:
        args.tta, tta_source = ORIGINAL_TTA, "unused under --dump-scale unit"
    else:
        args.tta, tta_source = resolve_tta(args.tta, args.out, args.fold, given_tta)
    config = {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()}
    config.update(tta_source=tta_source, row_scales=row_scales(args.dump_scale, args.tta))
    print("config: " + json.dumps(config))
    if args.tune:
        run_tune(args, config, quiet=args.quiet or not sys.stderr.isatty())
        return None
    return run_blend(args, config)


if __name__ == "__main__":
    script_io.run_main(main)
