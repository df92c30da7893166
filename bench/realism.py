"""How real the synthetic nights look: an independent stager, EEG spectra, and the images' row profile.

    python bench/realism.py                 # the first set (--seed 11) and seeds 12, 13; about 10 min on 2 cores
    python bench/realism.py --seeds 11      # one set

For every seed, ``make_synthetic.py --edf --train-subjects 2 --test-subjects 1
--hours 7 --seed S`` writes a fixed synthetic set into ``--work``. Then:

- YASA: ``bench/realism_yasa.py`` runs in a separate venv (``--yasa-venv``,
  made from ``bench/requirements-realism.txt`` when missing, so yasa never
  enters the project's environment) and stages every EDF night from
  C4-M1, E1-M2 and Chin EMG with YASA's SleepStaging (LightGBM trained on
  real NSRR nights). Compared with the generator's stages on the scored
  epochs: confusion matrix (rows: generator, columns: YASA), accuracy,
  Cohen's kappa and the F1 of each stage, per seed.
- Spectra of C3-M2 per stage (Welch, 4-s Hann windows, each 30-s epoch):
  power in 0.5-2, 2-4, 4-8, 8-12, 12-16 and 16-30 Hz relative to
  0.5-30 Hz, and the aperiodic exponent (the negative slope of log power
  against log frequency over 2-30 Hz, fitted again on the points under a
  first fit so that oscillatory peaks do not pull it, as FOOOF's robust
  aperiodic fit does), mean over the epochs of each stage.
- Row profile: each pixel row's brightness (the minimum over the three
  colour channels, which removes most of the coloured watermark of the
  real images), averaged over 200 synthetic images spread over the first
  set's nights, correlated with the same profile of the four real
  challenge images (``--real-images``).

Writes ``bench/results/realism.json``.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path


import cv2
import edfio
import numpy as np
from scipy.signal import welch
from sklearn.metrics import cohen_kappa_score, confusion_matrix, f1_score

from sleepstaging.data import psg_layout
from sleepstaging import script_io
from sleepstaging.data.psg_layout import STAGES

REPO = Path(__file__).resolve().parents[1]

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
parser.add_argument("--seeds", type=int, nargs="+", default=[11, 12, 13], help="one synthetic set per seed")
parser.add_argument("--train-subjects", type=int, default=2)
parser.add_argument("--test-subjects", type=int, default=1)
parser.add_argument("--hours", type=float, default=7.0)
parser.add_argument("--workers", type=int, default=2, help="make_synthetic.py --workers")
parser.add_argument("--work", type=Path, default=REPO / "bench" / "data" / "realism", help="where the sets are made")
parser.add_argument("--yasa-venv", type=Path, default=REPO / ".venv-realism",
                    help="venv with bench/requirements-realism.txt (created when missing)")
parser.add_argument("--real-images", type=Path, default=None,
                    help="folder of real challenge images (PNG); default: shared/reference/sample_images beside "
                         "the main checkout (../shared from it, ../../shared from a worktree)")
parser.add_argument("--profile-images", type=int, default=200, help="synthetic images in the row profile")
parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "realism.json")

YASA_STAGES = {"W": 0, "WAKE": 0, "N1": 1, "N2": 2, "N3": 3, "R": 4, "REM": 4}  # both of yasa's spellings
BANDS_HZ = ((0.5, 2), (2, 4), (4, 8), (8, 12), (12, 16), (16, 30))
TOTAL_HZ = (0.5, 30)
APERIODIC_HZ = (2, 30)
WELCH_S = 4
SPECTRUM_CHANNEL = "C3-M2"


# --------------------------------------------------------------------------
# Reading a night back from its EDF export
# --------------------------------------------------------------------------
def read_stages(hypnogram_csv: Path) -> np.ndarray:
    """Stage ints per epoch of ``<ID>.hypnogram.csv``, -1 for the unscored ``?`` epochs, shape (epochs,)."""
    return np.array([psg_layout.STAGE_TO_INT.get(line.strip(), -1)
                     for line in hypnogram_csv.read_text().splitlines()], dtype=np.int64)


def read_epochs(edf_path: Path, channel: str) -> tuple[np.ndarray, float]:
    """``(samples per epoch, rate)``: the channel cut into 30-s epochs, shape (epochs, 30 * rate)."""
    signal = next(s for s in edfio.read_edf(edf_path).signals if s.label == channel)
    per_epoch = round(signal.sampling_frequency * psg_layout.EPOCH_SECONDS)
    data = signal.data
    return data[:len(data) // per_epoch * per_epoch].reshape(-1, per_epoch), signal.sampling_frequency


# --------------------------------------------------------------------------
# Spectra
# --------------------------------------------------------------------------
def epoch_spectra(epochs: np.ndarray, fs: float) -> tuple[np.ndarray, np.ndarray]:
    """Welch power spectral density of every epoch: ``(freqs (Hz), psd (unit^2/Hz, shape (epochs, freqs)))``."""
    return welch(epochs, fs, nperseg=int(WELCH_S * fs), axis=-1)


def relative_band_power(freqs: np.ndarray, psd: np.ndarray) -> np.ndarray:
    """Power of each of ``BANDS_HZ`` over the power in ``TOTAL_HZ``, shape (epochs, bands)."""
    def power(low, high):
        return psd[:, (freqs >= low) & (freqs < high)].sum(axis=1)
    return np.stack([power(low, high) for low, high in BANDS_HZ], axis=1) / power(*TOTAL_HZ)[:, None]


def aperiodic_exponent(freqs: np.ndarray, psd: np.ndarray) -> np.ndarray:
    """The 1/f exponent of each spectrum over ``APERIODIC_HZ``, shape (epochs,).

    A straight line is fitted to log10 power against log10 frequency; then
    refitted to the points that lie on or under it, so that oscillations
    (alpha, spindles, beta bursts), which only add power, do not flatten it.
    """
    used = (freqs >= APERIODIC_HZ[0]) & (freqs <= APERIODIC_HZ[1])
    x = np.log10(freqs[used])
    y = np.log10(np.maximum(psd[:, used], 1e-12))
    design = np.stack([x, np.ones_like(x)], axis=1)
    first = np.linalg.lstsq(design, y.T, rcond=None)[0]  # (2, epochs)
    exponents = np.empty(len(psd))
    for epoch in range(len(psd)):
        under = y[epoch] <= design @ first[:, epoch]
        keep = under if under.sum() >= 5 else np.ones_like(under)
        slope = np.polyfit(x[keep], y[epoch, keep], 1)[0]
        exponents[epoch] = -slope
    return exponents


def spectra_by_stage(nights: list) -> dict:
    """Per stage: mean relative band powers of C3-M2 and the mean and spread of the aperiodic exponent."""
    powers, exponents, stages = [], [], []
    for edf_path, night_stages in nights:
        epochs, fs = read_epochs(edf_path, SPECTRUM_CHANNEL)
        scored = night_stages >= 0
        freqs, psd = epoch_spectra(epochs[scored], fs)
        powers.append(relative_band_power(freqs, psd))
        exponents.append(aperiodic_exponent(freqs, psd))
        stages.append(night_stages[scored])
    powers, exponents, stages = np.concatenate(powers), np.concatenate(exponents), np.concatenate(stages)
    bands = [f"{low:g}-{high:g} Hz" for low, high in BANDS_HZ]
    return {STAGES[s]: {"epochs": int(np.sum(stages == s)),
                        "relative_power": dict(zip(bands, np.round(powers[stages == s].mean(axis=0), 3).tolist())),
                        "aperiodic_exponent": round(float(exponents[stages == s].mean()), 2),
                        "aperiodic_exponent_sd": round(float(exponents[stages == s].std()), 2)}
            for s in range(len(STAGES)) if np.any(stages == s)}


# --------------------------------------------------------------------------
# YASA
# --------------------------------------------------------------------------
def ensure_yasa_venv(venv: Path) -> Path:
    """The venv's python, after creating the venv from bench/requirements-realism.txt if it is missing."""
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"creating {venv} (yasa and its dependencies, bench only)")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-r",
                        str(REPO / "bench" / "requirements-realism.txt")], check=True)
    return python


def yasa_stages(python: Path, edf_paths: list, scratch: Path) -> dict:
    """``{EDF file name: stage ints per epoch}`` predicted by YASA, run in its own venv."""
    out = scratch / "yasa_stages.json"
    subprocess.run([str(python), str(REPO / "bench" / "realism_yasa.py"), "--out", str(out),
                    *map(str, edf_paths)], check=True)
    return {name: np.array([YASA_STAGES[s] for s in stages]) for name, stages in json.loads(out.read_text()).items()}


def agreement(truth: np.ndarray, predicted: np.ndarray) -> dict:
    """Confusion matrix (rows: truth, columns: predicted, order Wake N1 N2 N3 REM), accuracy, kappa, F1 per stage."""
    labels = list(range(len(STAGES)))
    f1 = f1_score(truth, predicted, labels=labels, average=None, zero_division=0)
    return {"epochs": int(len(truth)),
            "accuracy": round(float(np.mean(truth == predicted)), 4),
            "kappa": round(float(cohen_kappa_score(truth, predicted)), 4),
            "f1": {stage: round(float(value), 4) for stage, value in zip(STAGES, f1)},
            "confusion": confusion_matrix(truth, predicted, labels=labels).tolist()}


def score_nights(nights: list, predicted: dict) -> dict:
    """YASA against the generator on the scored epochs of ``nights`` [(edf path, stages)]."""
    truth, guess = [], []
    for edf_path, stages in nights:
        yasa = predicted[edf_path.name]
        scored = np.flatnonzero(stages[:len(yasa)] >= 0)
        truth.append(stages[scored])
        guess.append(yasa[scored])
    return agreement(np.concatenate(truth), np.concatenate(guess))


# --------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------
def row_profile(paths: list) -> np.ndarray:
    """Mean over images of each pixel row's mean brightness, the minimum over the colour channels, shape (270,)."""
    return np.mean([cv2.imread(str(path)).min(axis=2).mean(axis=1) for path in paths], axis=0)


def spread_sample(paths: list, count: int) -> list:
    """``count`` of ``paths`` (sorted) taken at even steps."""
    paths = sorted(paths)
    return [paths[i] for i in np.linspace(0, len(paths) - 1, min(count, len(paths))).round().astype(int)]


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------
def make_set(args: argparse.Namespace, seed: int) -> Path:
    """The synthetic set of ``seed`` (made once; make_synthetic.py skips an up-to-date folder)."""
    out = args.work / f"seed_{seed}"
    subprocess.run([sys.executable, str(REPO / "make_synthetic.py"), "--out", str(out), "--edf", "--quiet",
                    "--train-subjects", str(args.train_subjects), "--test-subjects", str(args.test_subjects),
                    "--hours", str(args.hours), "--seed", str(seed), "--workers", str(args.workers)],
                   check=True, stdout=subprocess.DEVNULL)
    return out


def set_nights(data_root: Path) -> list:
    """``[(edf path, stage ints per epoch), ...]`` of a set's EDF exports."""
    return [(path, read_stages(path.with_suffix(".hypnogram.csv")))
            for path in sorted((data_root / "edf").glob("*.edf"))]


def real_images_folder(given: Path | None) -> Path:
    """``--real-images``, or the first of the shared reference folders that exists."""
    if given is not None:
        return given
    candidates = [base / "shared" / "reference" / "sample_images" for base in (REPO.parent, REPO.parent.parent)]
    return next((folder for folder in candidates if folder.is_dir()), candidates[0])


def main(args: argparse.Namespace) -> None:
    args.real_images = real_images_folder(args.real_images)
    config = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    print(json.dumps(config, indent=2))
    real = sorted(args.real_images.glob("*.png"))
    if not real:
        raise script_io.InputError(f"no PNG images in --real-images {script_io.where(args.real_images)}")
    started = time.perf_counter()
    python = ensure_yasa_venv(args.yasa_venv)
    result = {"command": "python bench/realism.py " + " ".join(sys.argv[1:]), "config": config,
              "set": {"train_subjects": args.train_subjects, "test_subjects": args.test_subjects,
                      "hours": args.hours},
              "yasa": {}, "spectra": {}}
    roots = {}
    for seed in args.seeds:
        roots[seed] = make_set(args, seed)
        nights = set_nights(roots[seed])
        predicted = yasa_stages(python, [path for path, _ in nights], roots[seed])
        result["yasa"][str(seed)] = score_nights(nights, predicted)
        result["spectra"][str(seed)] = spectra_by_stage(nights)
        found = result["yasa"][str(seed)]
        print(f"seed {seed}: YASA accuracy {found['accuracy']:.3f}, kappa {found['kappa']:.3f}, F1 "
              + " ".join(f"{stage} {value:.2f}" for stage, value in found["f1"].items()))
    first = roots[args.seeds[0]]
    synthetic = spread_sample([p for folder in sorted(first.iterdir()) if folder.is_dir() and folder.name != "edf"
                               for p in folder.glob("*.png")], args.profile_images)
    real_profile, synthetic_profile = row_profile(real), row_profile(synthetic)
    result["row_profile"] = {"real_images": len(real), "synthetic_images": len(synthetic),
                             "correlation": round(float(np.corrcoef(real_profile, synthetic_profile)[0, 1]), 4),
                             "real": np.round(real_profile, 2).tolist(),
                             "synthetic": np.round(synthetic_profile, 2).tolist()}
    print(f"row profile correlation with the real images: {result['row_profile']['correlation']:.3f}")
    for seed in args.seeds:
        print(f"seed {seed} C3-M2 per stage (relative power in {', '.join(f'{a:g}-{b:g}' for a, b in BANDS_HZ)} Hz; "
              "aperiodic exponent):")
        for stage, found in result["spectra"][str(seed)].items():
            print(f"  {stage:5s} " + " ".join(f"{v:.2f}" for v in found["relative_power"].values())
                  + f"  exponent {found['aperiodic_exponent']:.2f}")
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["machine"] = {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()}
    with script_io.atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{args.out} is saved ({result['seconds']} s)")


if __name__ == "__main__":
    script_io.run_main(lambda: main(parser.parse_args()))
