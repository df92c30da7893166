"""The trainers' command line: every option with the script's default, and the checks of their values.

``main_vit_rgb.py`` and ``main_eff.py`` call :func:`build_parser` with their
defaults (``recipe.RECIPE`` plus the architecture, optimizer and classifier
size), ``engine.train`` calls :func:`check_args` first. :data:`RESUME_KEYS`
are the settings a ``--resume`` must share with the saved run. Imports
argparse and the modules whose names for choices it offers: ``fmix`` (the
FMix spectra; torch), ``image_cache`` (the resizes and the cache folder's
check; OpenCV, albumentations) and ``models`` (the ``--pretrained`` names;
torch, timm), so importing it loads torch.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from sleepstaging.data import fmix
from sleepstaging.data import image_cache
from sleepstaging.data import psg_layout
from sleepstaging import script_io
from sleepstaging.scoring.models import PRETRAINED_IMAGENET, PRETRAINED_NONE
from sleepstaging.recipe import RECIPE, TRAINER_KEYS
from sleepstaging.script_io import InputError, where

# Settings a --resume may change (how long, how fast, from where the run goes on);
# it refuses a run whose saved configuration differs in any other.
RESUME_MAY_CHANGE = ("epochs", "valid_batch_size", "workers", "amp", "device", "data_root", "weights_dir",
                     "cache_dir")
# (original_classes is fixed per trainer; the checkpoint's classifier shape is checked on loading.)
RESUME_KEYS = tuple(key for key in (*TRAINER_KEYS, *RECIPE) if key not in (*RESUME_MAY_CHANGE, "original_classes"))


# --------------------------------------------------------------------------
# Command line (shared by main_vit_rgb.py and main_eff.py)
# --------------------------------------------------------------------------
class _HelpFormatter(script_io.HelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults and keeps the script docstring's line breaks."""


def build_parser(defaults: dict, description: str) -> argparse.ArgumentParser:
    """The trainers' argument parser, with a script's seed defaults.

    Parameters
    ----------
    defaults : dict
        :data:`RECIPE` with the trainer's ``model_arch`` and ``optimizer``
        (``"adam"`` or ``"adamp"``, fixed per script): the default of every
        option (keys as the option names with ``_``).
    description : str
        The script's docstring.
    """
    parser = argparse.ArgumentParser(description=description, formatter_class=_HelpFormatter)
    # in this order in --help
    for add_options in (_add_data_options, _add_model_and_batch_options, _add_optimisation_options,
                        _add_run_options, _add_augmentation_and_cache_options):
        add_options(parser, defaults)
    parser.set_defaults(optimizer=defaults["optimizer"], original_classes=defaults["original_classes"])
    return parser


def _add_data_options(parser: argparse.ArgumentParser, d: dict) -> None:
    """Where the data are and go, and the folds."""
    parser.add_argument("--data-root", default=d["data_root"], help="folder with the challenge CSVs and images")
    parser.add_argument("--weights-dir", default=d["weights_dir"], help="where checkpoints, config and log go")
    parser.add_argument("--fold", type=int, default=d["fold"], help="validation fold to train against")
    parser.add_argument("--folds", type=int, default=d["folds"], help="number of folds")
    parser.add_argument("--cv", choices=("subject", "stratified"), default=d["cv"],
                        help="subject: folds by recording (no leak); stratified: the original's split over epochs")


def _add_model_and_batch_options(parser: argparse.ArgumentParser, d: dict) -> None:
    """The epochs, the model, its input and the batches."""
    parser.add_argument("--epochs", type=int, default=d["epochs"], help="number of epochs")
    parser.add_argument("--model-arch", default=d["model_arch"], help="timm architecture name")
    parser.add_argument("--img-size", type=int, nargs="+", metavar="PIXELS", default=d["img_size"],
                        help="model input size: one number for a square input (224: the original's), or two, "
                             "HEIGHT WIDTH (e.g. 128 32: the 21 signal bands twice as tall as at 64 x 64)")
    parser.add_argument("--resize", choices=tuple(image_cache.RESIZE_INTERPOLATIONS), default=d["resize"],
                        help="how images are shrunk to the input: linear, the original's (cv2.INTER_LINEAR, which "
                             "drops most of the 1-pixel signal traces at small sizes), or area (cv2.INTER_AREA: "
                             "each input pixel counts; for small inputs such as the demo's)")
    parser.add_argument("--input-norm", choices=("imagenet", "data"), default=d["input_norm"],
                        help="the scale the network sees: imagenet, the original's (the pixels normalised with "
                             "ImageNet's mean and standard deviation, right for ImageNet weights), or data (the "
                             "same pipeline, then rescaled inside the model to the training images' own mean and "
                             "standard deviation: for training from random initialisation on these mostly black "
                             "images)")
    parser.add_argument("--batch-size", type=int, default=d["batch_size"], help="training batch per process")
    parser.add_argument("--valid-batch-size", type=int, default=d["valid_batch_size"], help="validation batch")
    parser.add_argument("--accum-iter", type=int, default=d["accum_iter"],
                        help="batches accumulated per optimizer step")


def _add_optimisation_options(parser: argparse.ArgumentParser, d: dict) -> None:
    """The optimizer, the learning-rate schedule and the rows drawn."""
    parser.add_argument("--lr", type=float, default=d["lr"], help="initial learning rate")
    parser.add_argument("--min-lr", type=float, default=d["min_lr"], help="cosine schedule's minimum (eta_min)")
    parser.add_argument("--weight-decay", type=float, default=d["weight_decay"], help="optimizer weight decay")
    parser.add_argument("--t0", type=int, default=d["t0"], help="scheduler steps per cosine cycle (T_0)")
    parser.add_argument("--sched-steps-per-epoch", type=int, choices=(1, 2), default=d["sched_steps_per_epoch"],
                        help="2: the original's steps after training and after validation (a cycle of T_0/2 "
                             "epochs); 1: one step per epoch (a cycle of T_0 epochs)")
    parser.add_argument("--warmup-epochs", type=float, default=d["warmup_epochs"],
                        help="linear learning-rate warm-up over this many epochs' optimizer steps, from 1/steps of "
                             "the scheduled rate up to it (0: none, as the original)")
    parser.add_argument("--stage-balance", type=float, default=d["stage_balance"],
                        help="0: every training row once per epoch (the original's); POWER > 0: rows drawn with "
                             "replacement, a stage of n rows weighted n**-POWER (1: all stages equally often)")


def _add_run_options(parser: argparse.ArgumentParser, d: dict) -> None:
    """Workers, seed, initial weights, precision, resuming, device."""
    parser.add_argument("--workers", type=int, default=d["workers"], help="DataLoader worker processes")
    parser.add_argument("--seed", type=int, default=d["seed"], help="seed of folds, initialisation and augmentation")
    parser.add_argument("--pretrained", default=d["pretrained"],
                        help="imagenet: timm's ImageNet weights of the architecture (downloaded once, needs the "
                             "network; the original's start); none: random initialisation; or a local file of "
                             "weights (safetensors or a plain state dict, never unpickled)")
    parser.add_argument("--amp", choices=("fp16", "bf16", "off"), default=d["amp"],
                        help="mixed precision on CUDA (fp16 with a gradient scaler); always off on CPU")
    parser.add_argument("--resume", action="store_true", help="continue from <arch>_fold_<k>_last.pt")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=d["device"],
                        help="auto: CUDA when available")


def _add_augmentation_and_cache_options(parser: argparse.ArgumentParser, d: dict) -> None:
    """Batch augmentation, the original's defects, the image cache, compiling, progress bars."""
    parser.add_argument("--no-fmix", action="store_true", default=d["no_fmix"], help="turn off FMix (on in the original)")
    parser.add_argument("--fmix-spectrum", choices=fmix.SPECTRA, default=d["fmix_spectrum"],
                        help="original: FMix masks as the original's FMix code made them (one smooth region, "
                             "at most one cycle along the width); isotropic: the FMix paper's masks")
    parser.add_argument("--cutmix", action="store_true", default=d["cutmix"], help="turn on CutMix (off in the original)")
    parser.add_argument("--no-holes", action="store_true", default=d["no_holes"],
                        help="turn off the two hole dropouts, CoarseDropout and Cutout (on in the original)")
    parser.add_argument("--original-defects", action="store_true", default=d["original_defects"],
                        help="train as the original did, defects included: mixed targets as the mixed class index cast "
                             "to an integer, summed accumulated losses, and (main_eff.py) a 1000-class classifier, kept as "
                             "--pretrained loads it, trained against the stages, validated by the argmax over its "
                             "1000 outputs (logged beside the folded figures), folded into 5 at inference")
    parser.add_argument("--cache-dir", default=d["cache_dir"],
                        help="image cache (decoded, resized uint8 arrays; built on first use), outside the data root")
    parser.add_argument("--no-cache", action="store_true", default=d["no_cache"],
                        help="the original's per-sample path: decode and augment every image in the workers, every epoch")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def check_args(args: argparse.Namespace) -> None:
    """Refuse option values no run can use (one line each); ``args.img_size`` becomes ``(height, width)``."""
    args.img_size = psg_layout.input_shape(args.img_size)  # (height, width) from here on
    positive = ("folds", "epochs", "batch_size", "valid_batch_size", "accum_iter", "t0")
    for name in positive:
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.folds < 2:
        raise InputError(f"--folds must be at least 2, got {args.folds}")
    if not 0 <= args.fold < args.folds:
        raise InputError(f"--fold must be in 0..{args.folds - 1}, got {args.fold}")
    if args.workers < 0:
        raise InputError(f"--workers must be 0 or more, got {args.workers}")
    if not args.lr > 0 or args.min_lr < 0 or args.weight_decay < 0:
        raise InputError("--lr must be positive, --min-lr and --weight-decay not negative")
    if not psg_layout.is_stage_balance(args.stage_balance):
        raise InputError(f"--stage-balance must be a finite number, 0 or more, got {args.stage_balance}")
    if not 0 <= args.warmup_epochs <= args.epochs:
        raise InputError(f"--warmup-epochs must be in 0..--epochs ({args.epochs}), got {args.warmup_epochs}")
    if args.pretrained not in (PRETRAINED_IMAGENET, PRETRAINED_NONE) and not Path(args.pretrained).is_file():
        raise InputError(f"pretrained weights file not found (or pass --pretrained {PRETRAINED_IMAGENET} or "
                         f"{PRETRAINED_NONE}) {where(args.pretrained)}")
    if not args.no_cache:
        image_cache.check_cache_dir(args.cache_dir, args.data_root)
