"""A stand-in model set for timing: random-initialised checkpoints with a model set record, no training.

A lent GPU machine starts bare, and a trained set (the demo's two
checkpoints, about 37 MB) would take most of what can be carried to it
beside the wheels and the venv. Timing
``stage_edf.py`` there needs only what sets its cost: the two
architectures, their input size and resize, how many checkpoints each
averages (each a forward pass per image), and a model set record, so the
run takes the trained set's path (the tuned blend's place, the hmm).
This writes that into ``--out``:

- per model, ``<arch>_fold_0_config.json`` (architecture, input size,
  resize, stage balance, 5 classes) and one checkpoint per kept epoch,
  each initialised at random (seeded by model and epoch) as the trainers'
  ``--pretrained none`` does, saved as the trainers save theirs;
- ``model_set.json``: the models and kept epochs, the original's blend
  (recipe), post-processing ``hmm`` with stage, first-stage and transition
  counts from the synthetic generator's hypnograms of ``--hypnogram-nights``
  nights (seed 0, as the demo's training set; no signal drawn), the stage
  balance, and transition weight 1 (the hmm's own default; decoding costs
  the same at any weight).

The stages a run gives with it mean nothing; its times are those of a
trained set of the same shape.

    python bench/stand_in_model_set.py --out bench/data/stand_in --vit-arch vit_tiny_patch16_224 \\
        --eff-arch tf_efficientnet_b0 --vit-epochs 2 --eff-epochs 1 --vit-img-size 96 64 --eff-img-size 96 48 \\
        --resize area --stage-balance 0.5
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import torch

from sleepstaging import recipe, script_io
from sleepstaging.data import image_cache, psg_layout
from sleepstaging.output_names import checkpoint_path, model_set_path, run_config_path
from sleepstaging.scoring import hmm, model_set, models
from sleepstaging.script_io import InputError, where
from sleepstaging.synthetic import hypnogram as synthetic_hypnogram

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
parser.add_argument("--out", type=Path, required=True,
                    help="the stand-in weights folder: new, empty, or an earlier stand-in's (replaced)")
parser.add_argument("--vit-arch", required=True, help="model 1's timm architecture")
parser.add_argument("--eff-arch", required=True, help="model 2's timm architecture")
parser.add_argument("--vit-epochs", type=int, nargs="+", required=True, help="model 1's kept checkpoints")
parser.add_argument("--eff-epochs", type=int, nargs="+", required=True, help="model 2's kept checkpoints")
parser.add_argument("--vit-img-size", type=int, nargs="+", metavar="PIXELS", required=True,
                    help="model 1's input in pixels: one (square) or two, HEIGHT WIDTH")
parser.add_argument("--eff-img-size", type=int, nargs="+", metavar="PIXELS", required=True,
                    help="model 2's input in pixels: one (square) or two, HEIGHT WIDTH")
parser.add_argument("--resize", choices=tuple(image_cache.RESIZE_INTERPOLATIONS), required=True,
                    help="how images are resized to the input (the trainers' --resize)")
parser.add_argument("--stage-balance", type=float, required=True, help="the trainers' --stage-balance")
parser.add_argument("--hypnogram-nights", type=int, default=16, help="synthetic hypnograms the hmm counts")
parser.add_argument("--hypnogram-hours", type=float, default=6.0, help="their length")

FOLD = 0
STAND_IN = ("a stand-in model set for timing (bench/stand_in_model_set.py): random-initialised checkpoints, "
            "no training; the stages it gives mean nothing")


def write_checkpoints(out: Path, arch: str, epochs: list[int], img_size: list[int], number: int, args) -> None:
    """One model's configuration and a random-initialised checkpoint per kept epoch (seed ``10 * number + epoch``)."""
    shape = psg_layout.input_shape(img_size)
    for epoch in epochs:
        torch.manual_seed(10 * number + epoch)
        model = models.create_model(arch, shape)
        models.save_weights(model, checkpoint_path(out, arch, FOLD, epoch))
    config = dict(model_arch=arch, img_size=list(shape),
                  num_classes=psg_layout.NUM_CLASSES, fold=FOLD, resize=args.resize, stage_balance=args.stage_balance,
                  pretrained="none", stand_in=STAND_IN)
    run_config_path(out, arch, FOLD).write_text(json.dumps(config, indent=2) + "\n")


def hypnogram_counts(nights: int, hours: float) -> dict:
    """:func:`hmm.count_stage_sequences` of the generator's seed-0 hypnograms (their unscored lead left out)."""
    stages, ids = [], []
    for index in range(nights):
        night = synthetic_hypnogram.recording_hypnogram(0, index, hours)
        night = night[night != synthetic_hypnogram.UNSCORED]
        stages.append(night.astype(np.int64))
        ids += [str(index)] * len(night)
    return hmm.count_stage_sequences(np.concatenate(stages), ids)


def replace_stand_in(out: Path) -> None:
    """An empty ``out``: new, or an earlier stand-in's folder emptied; a folder holding anything else is refused."""
    if out.is_dir() and any(out.iterdir()):
        record = model_set_path(out)
        earlier = json.loads(record.read_text()).get("what") if record.is_file() else None
        if earlier != STAND_IN:
            raise InputError(f"--out holds files that are not a stand-in model set; choose another folder {where(out)}")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def main() -> None:
    args = parser.parse_args()
    print("config: " + json.dumps({key: str(value) if isinstance(value, Path) else value
                                   for key, value in vars(args).items()}))
    if not psg_layout.is_stage_balance(args.stage_balance):
        raise InputError(f"--stage-balance must be a finite number, 0 or more, got {args.stage_balance}")
    replace_stand_in(args.out)
    write_checkpoints(args.out, args.vit_arch, args.vit_epochs, args.vit_img_size, 0, args)
    write_checkpoints(args.out, args.eff_arch, args.eff_epochs, args.eff_img_size, 1, args)
    record = {"what": STAND_IN, "fold": FOLD,
              "vit": {"arch": args.vit_arch, "epochs": args.vit_epochs},
              "eff": {"arch": args.eff_arch, "epochs": args.eff_epochs},
              "blend": dict(recipe.ORIGINAL_BLEND, tta=recipe.INFERENCE["tta"]),
              "postprocess": "hmm",  # the most a night can cost: the hmm decodes and writes its posterior
              "hmm": {"counts": hypnogram_counts(args.hypnogram_nights, args.hypnogram_hours),
                      "stage_balance": args.stage_balance, "transition_weight": 1.0,
                      "counted_from": f"{args.hypnogram_nights} synthetic hypnograms of {args.hypnogram_hours} h, "
                                      f"seed 0"}}
    with script_io.atomic_path(model_set_path(args.out)) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    model_set.read_model_set(args.out)  # the record reads back as a model set, or this stops here
    print(f"{args.out}: {len(args.vit_epochs)} + {len(args.eff_epochs)} random-initialised checkpoints of "
          f"{args.vit_arch} at {image_cache.shape_label(psg_layout.input_shape(args.vit_img_size))} and "
          f"{args.eff_arch} at {image_cache.shape_label(psg_layout.input_shape(args.eff_img_size))}, "
          f"and {model_set_path(args.out).name}")


if __name__ == "__main__":
    script_io.run_main(main)
