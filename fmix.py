"""Draw FMix masks as the trainers draw them, and save them as a picture to look at.

FMix (Harris et al. 2020, arXiv:2002.12047) mixes two training images
through a mask cut from low-frequency noise; the original imported it from
the reference library (``ecs-vlc/FMix``). The project's masks are in
``sleepstaging/data/fmix.py`` (the trainers' batch augmentation imports
them); this script draws a few with the recipe's constants and writes them
side by side as one grey PNG (white: the first image's share):

    python fmix.py --count 4 --out fmix_masks.png
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from sleepstaging import script_io
from sleepstaging.data import fmix
from sleepstaging.recipe import FMIX_DECAY_POWER, FMIX_LAMBDA_RANGE, FMIX_MAX_SOFT, RECIPE

# fmt: off
parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=script_io.HelpFormatter)
parser.add_argument("--count", type=int, default=4, help="masks drawn")
parser.add_argument("--lam", type=float, default=round(float(np.mean(FMIX_LAMBDA_RANGE)), 4),
                    help="share of each mask that is 1 (the trainers draw it from the recipe's range "
                         f"{FMIX_LAMBDA_RANGE[0]}-{FMIX_LAMBDA_RANGE[1]})")
parser.add_argument("--img-size", type=int, nargs="+", default=[RECIPE["img_size"]], help="mask height [width], pixels")
parser.add_argument("--spectrum", choices=fmix.SPECTRA, default=RECIPE["fmix_spectrum"],
                    help="original: the masks as the original drew them; isotropic: the paper's spectrum")
parser.add_argument("--seed", type=int, default=RECIPE["seed"], help="random seed")
parser.add_argument("--out", type=Path, default=Path("fmix_masks.png"), help="the PNG written")
# fmt: on


def main(argv=None) -> None:
    args = parser.parse_args(argv)
    if args.count < 1 or not 0.0 <= args.lam <= 1.0 or len(args.img_size) > 2 or min(args.img_size) < 2:
        raise script_io.InputError("--count must be 1 or more, --lam in [0, 1], --img-size one or two sizes of 2 or more")
    print("config: " + json.dumps({key: str(value) for key, value in vars(args).items()}))
    shape = (args.img_size[0], args.img_size[-1])
    rng = np.random.default_rng(args.seed)
    masks = [fmix.sample_mask(args.lam, FMIX_DECAY_POWER, shape, FMIX_MAX_SOFT, rng, args.spectrum)
             for _ in range(args.count)]
    gap = np.full((shape[0], 4), 0.5, dtype=np.float32)
    picture = np.concatenate([part for mask in masks for part in (mask, gap)][:-1], axis=1)
    with script_io.atomic_path(args.out) as tmp:
        if not cv2.imwrite(str(tmp), np.round(picture * 255).astype(np.uint8)):
            raise script_io.InputError(f"cannot write the picture (a .png name is needed) {script_io.where(args.out)}")
    print(f"{args.out} is saved: {args.count} masks of {shape[0]} x {shape[1]}, mean "
          f"{', '.join(f'{mask.mean():.3f}' for mask in masks)}")


if __name__ == "__main__":
    script_io.run_main(main)
