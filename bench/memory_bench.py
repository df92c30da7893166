"""Peak resident memory of training and inference on 10,000 against 100,000 images.

Memory must not grow with the data set. For each ``--sizes`` this makes a
data root whose CSVs list that many training images and as many test
images, in recordings of 731 images (the challenge's mean), every file a
hard link to one of a few hundred PNGs made once by make_synthetic.py
(links stay inside the root, so the loaders accept them; the cache decodes
every listed file as it would distinct ones). Then, each in a fresh
process with its own cache folder, measures with ``ru_maxrss`` (the
largest process: main, DataLoader workers or cache builders):

- training: ``main_vit_rgb.py`` for one epoch of a tiny model
  (``--model-arch test_vit``) on fold 0 of 5, cache built first, then the
  training pass and validation;
- inference: ``infer_blend.py`` with tiny random checkpoints of both
  models: the validation rows and the whole test set, cache built first.

Prints both figures per size and their ratio; writes
``bench/results/memory.json``.

    python bench/memory_bench.py                      # about 30 min on 2 busy cores
    python bench/memory_bench.py --sizes 2000 20000   # a quick look
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


import numpy as np

from sleepstaging.data import psg_layout
from sleepstaging import script_io

REPO = Path(__file__).resolve().parents[1]
parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
parser.add_argument("--work", type=Path, default=REPO / "bench" / "data" / "memory", help="scratch folder")
parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000], help="training (= test) images")
parser.add_argument("--img-size", type=int, nargs="+", metavar="PIXELS", default=[32],
                    help="model input: one size (square) or HEIGHT WIDTH (memory of a batch is not the question)")
parser.add_argument("--workers", type=int, default=2, help="DataLoader workers and cache builders")
parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "memory.json")

RECORDING_IMAGES = 731  # the challenge's mean images per recording
VIT, EFF = "test_vit", "test_efficientnet"

MEASURE = """
import resource, subprocess, sys, time
started = time.perf_counter()
status = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
if status.returncode:
    sys.exit(status.stderr[-2000:])
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, time.perf_counter() - started)
"""


def source_images(work: Path) -> tuple[list[Path], np.ndarray]:
    """A few hundred synthetic PNGs and their stage labels (made once)."""
    root = work / "source"
    if not (root / psg_layout.TRAIN_CSV).is_file():
        subprocess.run([sys.executable, str(REPO / "make_synthetic.py"), "--out", str(root), "--train-subjects", "4",
                        "--test-subjects", "1", "--hours", "1", "--seed", "0", "--quiet"], check=True)
    table = psg_layout.read_epoch_csv(root / psg_layout.TRAIN_CSV, with_labels=True)
    paths = [psg_layout.image_path(root, r, i) for r, i in zip(table.recording_ids, table.idnums)]
    return paths, table.labels


def linked_root(work: Path, images: int, sources: list[Path], labels: np.ndarray) -> Path:
    """A data root listing ``images`` training and test images, all hard links to ``sources``."""
    root = work / f"DATA-{images}"
    if (root / psg_layout.TEST_CSV).is_file():
        return root
    shutil.rmtree(root, ignore_errors=True)
    for split, prefix in ((psg_layout.TRAIN_CSV, "A2026-MB"), (psg_layout.TEST_CSV, "B2026-MB")):
        rows = []
        for start in range(0, images, RECORDING_IMAGES):
            recording_id = f"{prefix}-{start // RECORDING_IMAGES:05d}"
            (root / recording_id).mkdir(parents=True)
            for number in range(1, min(RECORDING_IMAGES, images - start) + 1):
                source = (start + number) % len(sources)
                name = psg_layout.image_name(recording_id, number)
                os.link(sources[source], root / recording_id / name)
                stage = [psg_layout.STAGES[labels[source]]] if split == psg_layout.TRAIN_CSV else []
                rows.append([recording_id, name, *stage])
        script_io.write_csv_rows(root / split, rows)
    return root


def tiny_checkpoints(folder: Path, root: Path, img_size: list[int]) -> None:
    """Random-weight checkpoints (epoch 0) and configurations of both tiny models for infer_blend.py."""
    from sleepstaging.scoring import models
    from sleepstaging.data import loaders
    from sleepstaging.output_names import checkpoint_path, run_config_path
    table = psg_layout.read_epoch_csv(root / psg_layout.TRAIN_CSV, with_labels=True)
    folds = loaders.make_folds(table, n_folds=5, seed=72, cv="subject")
    valid = sorted({table.recording_ids[r] for r in np.flatnonzero(folds == 0)})
    shape = psg_layout.input_shape(img_size)
    for arch in (VIT, EFF):
        models.save_weights(models.create_model(arch, shape), checkpoint_path(folder, arch, 0, 0))
        config = dict(model_arch=arch, img_size=list(shape), num_classes=5, fold=0, folds=5, seed=72, cv="subject",
                      valid_recordings=valid)
        run_config_path(folder, arch, 0).write_text(json.dumps(config))


def peak(command: list) -> tuple[float, float]:
    """(peak resident MiB of the largest process, seconds) of ``command`` run to completion."""
    result = subprocess.run([sys.executable, "-c", MEASURE, *map(str, command)], capture_output=True, text=True,
                            cwd=REPO)
    if result.returncode:
        raise SystemExit(f"failed: {' '.join(map(str, command))}\n{result.stderr}")
    kib, seconds = result.stdout.split()
    return int(kib) / 1024, float(seconds)


def measure(args, images: int, sources, labels) -> dict:
    root = linked_root(args.work, images, sources, labels)
    run = args.work / f"run-{images}"
    shutil.rmtree(run, ignore_errors=True)
    train_mib, train_s = peak([
        sys.executable, REPO / "main_vit_rgb.py", "--data-root", root, "--weights-dir", run / "weights",
        "--cache-dir", run / "cache-train", "--model-arch", VIT, "--img-size", *args.img_size, "--epochs", 1,
        "--batch-size", 64, "--valid-batch-size", 256, "--workers", args.workers, "--pretrained", "none", "--quiet"])
    print(f"{images:7d} images: training  peak {train_mib:7.1f} MiB ({train_s:.0f} s)", flush=True)
    tiny_checkpoints(run / "tiny", root, args.img_size)
    infer_mib, infer_s = peak([
        sys.executable, REPO / "infer_blend.py", "--data-root", root, "--weights-dir", run / "tiny",
        "--out", run / "outputs", "--cache-dir", run / "cache-infer", "--vit-arch", VIT, "--eff-arch", EFF,
        "--vit-epochs", 0, "--eff-epochs", 0, "--batch-size", 256, "--workers", args.workers, "--quiet"])
    print(f"{images:7d} images: inference peak {infer_mib:7.1f} MiB ({infer_s:.0f} s)", flush=True)
    shutil.rmtree(run)
    return {"images": images, "training_peak_mib": train_mib, "training_seconds": train_s,
            "inference_peak_mib": infer_mib, "inference_seconds": infer_s}


def main() -> None:
    args = parser.parse_args()
    sources, labels = source_images(args.work)
    results = [measure(args, images, sources, labels) for images in args.sizes]
    small, large = results[0], results[-1]
    ratios = {kind: large[f"{kind}_peak_mib"] / small[f"{kind}_peak_mib"] for kind in ("training", "inference")}
    for kind, ratio in ratios.items():
        print(f"{kind}: {small[f'{kind}_peak_mib']:.0f} MiB at {small['images']} images, "
              f"{large[f'{kind}_peak_mib']:.0f} MiB at {large['images']} images: {ratio:.2f}x")
    report = {"what": "peak resident memory (ru_maxrss of the largest process) of training (1 epoch, test_vit) "
                      "and inference (infer_blend.py, test_vit + test_efficientnet), default data path",
              "command": "python bench/memory_bench.py " + " ".join(sys.argv[1:]), "img_size": args.img_size,
              "workers": args.workers, "source_images": len(sources), "cores": os.cpu_count(),
              "results": results, "ratios_largest_to_smallest": ratios, "date": time.strftime("%Y-%m-%d %H:%M")}
    with script_io.atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    script_io.run_main(main)
