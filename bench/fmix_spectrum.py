"""How much structure FMix's grey images have along each axis: the original's masks against isotropic ones.

The original called the FMix reference code's ``make_low_freq_image``,
which builds its complex spectrum from the first two rows of the sampled
half-spectrum (``spectrum[:, 0] + 1j * spectrum[:, 1]`` on an array shaped
(1, H, W // 2 + 1, 2)). This script measures, over ``--masks`` draws at
``--size`` pixels of that algorithm re-stated
(:func:`bench.original_loader.reference_low_frequency_image`) and of the project's:

- the share of the grey images' power beyond one cycle along the height
  and along the width (:func:`fmix.power_beyond_one_cycle`), for the
  re-stated reference algorithm, the project's ``--fmix-spectrum original``
  and ``--fmix-spectrum isotropic``;
- the share of the hard masks' rows (and columns) at lambda 0.65 that hold
  more than one run of ones, read cyclically (a grey image with at most
  one cycle along the width gives rows of one run each).

Writes the figures to ``bench/results/fmix_spectrum.json``.

    python bench/fmix_spectrum.py                 # ~10 s
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


import numpy as np

from sleepstaging.data import fmix
from sleepstaging import script_io
from original_loader import reference_low_frequency_image

REPO = Path(__file__).resolve().parents[1]

DECAY_POWER = 3.0  # the original's
LAMBDA = 0.65  # the middle of the original's clipped range [0.6, 0.7]


def grey_images(kind: str, count: int, size: int, seed: int) -> np.ndarray:
    """``count`` grey images of ``kind`` ("reference", "original" or "isotropic"), shape (count, size, size)."""
    rng = np.random.default_rng(seed)
    shape = (size, size)
    if kind == "reference":
        return np.stack([reference_low_frequency_image(rng, shape, DECAY_POWER) for _ in range(count)])
    scales_shape = fmix.spectrum_scales(shape, DECAY_POWER, kind).shape
    return np.stack([fmix.low_frequency_image(rng.standard_normal(scales_shape), shape, DECAY_POWER, kind)
                     for _ in range(count)])


def split_lines(masks: np.ndarray, axis: int) -> float:
    """Share of the lines along ``axis`` (-1: rows, -2: columns) of hard 0/1 ``masks`` with several runs of ones.

    Runs are counted cyclically (the last pixel of a line next to the
    first), as the starts of runs: pixels that are 1 after a 0.
    """
    starts = (masks == 1) & (np.roll(masks, 1, axis=axis) == 0)
    return float((starts.sum(axis=axis) > 1).mean())


def measure(kind: str, count: int, size: int, seed: int) -> dict:
    """Power shares beyond one cycle and mask regions of ``count`` draws of ``kind``."""
    greys = grey_images(kind, count, size, seed)
    height_share, width_share = fmix.power_beyond_one_cycle(greys)
    masks = np.stack([fmix.mask_from_grey(grey, LAMBDA, 0.0) for grey in greys])
    return {"power_beyond_one_cycle_height": height_share, "power_beyond_one_cycle_width": width_share,
            "hard_mask_rows_with_several_runs": split_lines(masks, -1),
            "hard_mask_columns_with_several_runs": split_lines(masks, -2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--masks", type=int, default=100, help="draws per kind")
    parser.add_argument("--size", type=int, default=224, help="mask height and width, pixels (the original's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "fmix_spectrum.json")
    args = parser.parse_args()
    results = {kind: measure(kind, args.masks, args.size, args.seed) for kind in ("reference", "original", "isotropic")}
    for kind, result in results.items():
        print(f"{kind:>9}: power beyond one cycle along the height {result['power_beyond_one_cycle_height']:.4f}, "
              f"along the width {result['power_beyond_one_cycle_width']:.4f}; "
              f"hard masks at lambda {LAMBDA}: rows with several runs of ones "
              f"{result['hard_mask_rows_with_several_runs']:.4f}, columns {result['hard_mask_columns_with_several_runs']:.4f}")
    report = {"command": " ".join(["python bench/fmix_spectrum.py", *sys.argv[1:]]), "masks": args.masks,
              "size": args.size, "decay_power": DECAY_POWER, "lambda": LAMBDA, "seed": args.seed,
              "kinds": {"reference": "the FMix reference code's make_low_freq_image as the original ran it",
                        "original": "the project's --fmix-spectrum original",
                        "isotropic": "the project's --fmix-spectrum isotropic"},
              "results": results}
    with script_io.atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    script_io.run_main(main)
