"""Images per second delivered as training batches: the original's loader and per-sample path against the project's default.

Makes (once) a synthetic data set with make_synthetic.py under
``bench/data/``, then, for each ``--sizes``:

- builds the image cache from nothing in a fresh folder (timed: the one-off
  cost of a data set and size; later runs only check its manifests);
- (o) the original's loader, re-stated operation for operation
  (``bench/original_loader.py``): per image ``cv2.imread``, albumentations
  Resize, Normalize, CoarseDropout, Cutout, ToTensorV2, and FMix by the
  FMix reference code's algorithm (float64 grey image, full ``argsort``,
  float64 mixing) with a second decoded partner image;
- (a) the project's per-sample path, ``make_train_loader(cache_dir=None)``
  (``--no-cache``): the same steps with the project's FMix masks (ranked in
  float32 by selection, mixed in float32), a seeded generator per sample
  and a check of every PNG's chunks;
- (b) the default path, ``make_train_loader(cache_dir=...)`` plus
  ``finish_batch`` on the model's device: whole batches read from the
  cache, dropouts and FMix (masks in torch) on the batch. With a CPU model,
  as here, the loader's workers finish the batches;
- (c) the default path's CPU side for a GPU model (``device="cuda"``): the
  workers read the batches and draw their plans; finishing them is the
  GPU's work (``bench/gpu_bench.sh`` measures training with it), not
  counted here;

all with the same workers, batch size, data and FMix on, one untimed
epoch each first, then alternating ``--repeats`` timed epochs (o, a, b,
c, o, ...), each timed from its first batch to its last (worker start-up
excluded). Prints the median images/s of each, the ratios of (b) and (c)
to (o) and to (a), and the CPU time per batch the workers and the training
process spent in the timed epochs (from ``/proc``; Linux), and writes them
with the machine's description to ``bench/results/loader.json``.

Then where path (b)'s time goes: the steps a worker runs for each of
``--breakdown-batches`` batches, run one after another in this process on
one thread (the fastest of five passes), in CPU milliseconds per batch:
the cache read and random plan, and ``finish_batch`` (the FMix masks also
timed on their own). The finished batch is written straight into a
shared-memory block its worker holds (``worker_transport.WorkerBlocks``), so
handing it over costs no copy. The steps' sum bounds path (b) at
``cores x batch / sum`` images/s; the workers' measured CPU per batch
shows how far two workers on two cores fall short of it.

    python bench/loader_bench.py                  # ~3 min on 2 cores, data set made the first time (~1 min)
    python bench/loader_bench.py --sizes 224 --repeats 5
    python bench/loader_bench.py --sizes 64 128x32     # square 64 and 128 high x 32 wide
"""
from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


from sleepstaging.data import batch_augment  # before albumentations: it keeps albumentations from asking the package index
from sleepstaging.data import image_cache
from sleepstaging.data import loaders
import albumentations
import numpy as np
import torch

from sleepstaging.data import psg_layout
from sleepstaging import script_io
from original_loader import make_original_loader
from cpu_info import cpu_description

REPO = Path(__file__).resolve().parents[1]


def input_size(text: str) -> tuple[int, int]:
    """A ``--sizes`` item: ``S`` (square) or ``HxW`` (height x width), in pixels."""
    try:
        return psg_layout.input_shape([int(part) for part in text.split("x")])
    except (ValueError, script_io.InputError):
        raise argparse.ArgumentTypeError(f"not S or HxW pixels: {text!r}") from None


parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
parser.add_argument("--data-root", type=Path, default=REPO / "bench" / "data" / "loader" / "DATA",
                    help="synthetic data set (made here when missing)")
parser.add_argument("--train-subjects", type=int, default=8, help="recordings of the data set when made")
parser.add_argument("--hours", type=float, default=1.0, help="hours per recording when made")
parser.add_argument("--cache-dir", type=Path, default=REPO / "bench" / "data" / "loader" / "cache",
                    help="image cache of path (b)")
parser.add_argument("--sizes", type=input_size, nargs="+", default=[224, 64],
                    help="model input sizes, each S (square) or HxW: the original's 224 and the demo's small one")
parser.add_argument("--batch-size", type=int, default=32, help="the original's batch")
parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of both paths")
parser.add_argument("--repeats", type=int, default=3, help="timed epochs of each path per size")
parser.add_argument("--seed", type=int, default=72)
parser.add_argument("--breakdown-batches", type=int, default=10, help="batches timed step by step (0: none)")
parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "loader.json")


def machine() -> dict:
    """CPU model, cores, load and library versions of this machine."""
    return {"cpu": cpu_description(), "cores": os.cpu_count(), "load_average_1_5_15": os.getloadavg(),
            "python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "albumentations": albumentations.__version__, "torch_threads": torch.get_num_threads()}


def ensure_data(args) -> None:
    """Make the synthetic data set unless it is there."""
    if (args.data_root / psg_layout.TRAIN_CSV).is_file():
        return
    print(f"making the synthetic data set in {args.data_root} ...", flush=True)
    subprocess.run([sys.executable, str(REPO / "make_synthetic.py"), "--out", str(args.data_root),
                    "--train-subjects", str(args.train_subjects), "--test-subjects", "1",
                    "--hours", str(args.hours), "--seed", "0", "--workers", str(max(args.workers, 1)), "--quiet"],
                   check=True)


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of process ``pid`` so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def images_per_second(loader, epoch: int, finish: bool = True) -> dict:
    """One epoch of training batches (finished on the CPU unless ``finish`` is False), first to last arrival.

    Returns images/s and the CPU milliseconds per batch of the loader's
    workers (together) and of this process over the same span.
    """
    if hasattr(loader.sampler, "set_epoch"):  # the project's loaders; the original's reshuffles by itself
        loaders.set_loader_epoch(loader, epoch)
    cpu = torch.device("cpu")
    iterator = iter(loader)
    workers = [worker.pid for worker in getattr(iterator, "_workers", [])]  # DataLoader's worker processes
    counted = 0
    for step, batch in enumerate(iterator):
        images = batch_augment.finish_batch(batch, cpu)[0] if finish else batch.pixels
        if step == 0:
            started = time.perf_counter()
            own_cpu, workers_cpu = time.process_time(), sum(map(_cpu_seconds, workers))
        else:
            counted += images.shape[0]
        if step == len(loader) - 1:  # before the workers of a non-persistent loader exit
            seconds = time.perf_counter() - started
            own_cpu, workers_cpu = time.process_time() - own_cpu, sum(map(_cpu_seconds, workers)) - workers_cpu
    return {"images_per_s": counted / seconds, "workers_cpu_ms_per_batch": 1000 * workers_cpu / step,
            "training_process_cpu_ms_per_batch": 1000 * own_cpu / step}


def _fastest_ms(step, items, passes: int = 5) -> float:
    """Milliseconds of ``step(item)`` per item: the fastest of ``passes`` passes over ``items``."""
    fastest = math.inf
    for _ in range(passes):
        started = time.perf_counter()
        for item in items:
            step(item)
        fastest = min(fastest, (time.perf_counter() - started) / len(items))
    return 1000 * fastest


def breakdown(loader, batches: int) -> dict:
    """CPU milliseconds per batch of each step a worker runs on path (b), one thread, and the bound their sum sets."""
    cpu = torch.device("cpu")
    dataset = copy.copy(loader.dataset)
    dataset.finish = False  # the item as read and planned; finish_batch timed on its own
    loaders.set_loader_epoch(loader, 1)
    keys = list(itertools.islice(iter(loader.sampler), batches))
    dataset.prepare()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a DataLoader worker's setting
    try:
        items = [dataset[key] for key in keys]
        steps = {"cache read and random plan": _fastest_ms(dataset.__getitem__, keys),
                 "finish_batch": _fastest_ms(lambda item: batch_augment.finish_batch(item, cpu), items)}
        masks = _fastest_ms(
            lambda item: batch_augment.draw_fmix_masks(item.plan, tuple(item.pixels.shape[-2:]), cpu), items)
    finally:
        torch.set_num_threads(threads)
    total = sum(steps.values())
    return {"ms_per_batch": steps, "of_which_fmix_masks_ms": masks, "total_ms_per_batch": total,
            "bound_images_per_s": os.cpu_count() * statistics.mean(len(indices) for _, _, indices in keys) / total * 1000}


def measure_size(args, table, rows, size) -> dict:
    """Cache build time and the paths' rates at one input size (one int, square, or (height, width))."""
    shape = psg_layout.input_shape(size)
    fresh = args.cache_dir / "fresh"
    shutil.rmtree(fresh, ignore_errors=True)
    started = time.perf_counter()
    image_cache.open_cache(args.data_root, table, shape, fresh, workers=args.workers)
    build_seconds = time.perf_counter() - started
    shutil.rmtree(fresh)

    common = dict(img_size=shape, batch_size=args.batch_size, workers=args.workers, seed=args.seed)
    image_paths = loaders.table_image_paths(args.data_root, table)
    original = make_original_loader([image_paths[row] for row in rows], np.asarray(table.labels)[rows], **common)
    per_sample = loaders.make_train_loader(args.data_root, table, rows, cache_dir=None, **common)
    cached = loaders.make_train_loader(args.data_root, table, rows, cache_dir=args.cache_dir, **common)
    for_gpu = loaders.make_train_loader(args.data_root, table, rows, cache_dir=args.cache_dir,
                                               device="cuda", **common)  # nothing here touches CUDA
    paths = {"original": (original, True), "per_sample": (per_sample, True), "cached": (cached, True),
             "cached_for_gpu": (for_gpu, False)}
    for loader, finish in paths.values():
        images_per_second(loader, 0, finish)
    runs = {path: [] for path in paths}
    for repeat in range(1, args.repeats + 1):
        for path, (loader, finish) in paths.items():
            runs[path].append(images_per_second(loader, repeat, finish))
        print(f"  {image_cache.shape_label(shape)}, epoch {repeat}: "
              + ", ".join(f"{path} {runs[path][-1]['images_per_s']:7.1f}" for path in paths) + " images/s", flush=True)
    result = {"img_size": list(shape)}
    for path, path_runs in runs.items():
        for measure in path_runs[0]:
            result[f"{path}_{measure}"] = statistics.median(run[measure] for run in path_runs)
    result["ratio"] = result["cached_images_per_s"] / result["per_sample_images_per_s"]
    result["ratio_for_gpu"] = result["cached_for_gpu_images_per_s"] / result["per_sample_images_per_s"]
    result["ratio_to_original"] = result["cached_images_per_s"] / result["original_images_per_s"]
    result["ratio_for_gpu_to_original"] = result["cached_for_gpu_images_per_s"] / result["original_images_per_s"]
    result.update(original_runs=[run["images_per_s"] for run in runs["original"]],
                  per_sample_runs=[run["images_per_s"] for run in runs["per_sample"]],
                  cached_runs=[run["images_per_s"] for run in runs["cached"]],
                  cache_build_seconds=build_seconds, cache_build_images_per_s=len(table) / build_seconds)
    if args.breakdown_batches:
        result["breakdown"] = breakdown(cached, args.breakdown_batches)
    return result


def main() -> None:
    args = parser.parse_args()
    ensure_data(args)
    table = loaders.read_train_table(args.data_root)
    rows = np.arange(len(table))
    before = machine()
    print(f"{len(table)} training images, batch {args.batch_size}, {args.workers} workers, FMix on; "
          f"{before['cpu']}, load {before['load_average_1_5_15'][0]:.1f}", flush=True)
    results = [measure_size(args, table, rows, size) for size in args.sizes]
    for result in results:
        print(f"{image_cache.shape_label(result['img_size']):>9}: "
              f"(o) the original's loader {result['original_images_per_s']:7.1f} images/s | "
              f"(a) per-sample {result['per_sample_images_per_s']:7.1f} images/s | "
              f"(b) cache + batch augmentation {result['cached_images_per_s']:7.1f} images/s: "
              f"{result['ratio_to_original']:.1f}x (o), {result['ratio']:.1f}x (a) | "
              f"cache built once at {result['cache_build_images_per_s']:.0f} images/s")
        print(f"{'':>11}(c) its CPU side for a GPU model (read and plan; the GPU finishes) "
              f"{result['cached_for_gpu_images_per_s']:7.0f} images/s: {result['ratio_for_gpu_to_original']:.0f}x (o), "
              f"{result['ratio_for_gpu']:.0f}x (a)")
        for path, label in (("original", "(o)"), ("per_sample", "(a)"), ("cached", "(b)"),
                            ("cached_for_gpu", "(c)")):
            print(f"{'':>11}{label} CPU per batch, measured: workers "
                  f"{result[f'{path}_workers_cpu_ms_per_batch']:5.1f} ms, training process "
                  f"{result[f'{path}_training_process_cpu_ms_per_batch']:4.1f} ms")
        if "breakdown" in result:
            parts = result["breakdown"]
            for step, ms in parts["ms_per_batch"].items():
                print(f"{'':>11}{step:<46}{ms:6.1f} ms per batch")
                if step == "finish_batch":
                    print(f"{'':>13}{'of which the FMix masks':<44}{parts['of_which_fmix_masks_ms']:6.1f} ms per batch")
            print(f"{'':>11}{'sum (one core)':<46}{parts['total_ms_per_batch']:6.1f} ms per batch: (b) at most "
                  f"{parts['bound_images_per_s']:.0f} images/s on {os.cpu_count()} cores, "
                  f"{parts['bound_images_per_s'] / result['original_images_per_s']:.1f}x (o), "
                  f"{parts['bound_images_per_s'] / result['per_sample_images_per_s']:.1f}x (a)")
    report = {"what": "training batches delivered per second (FMix and both dropouts on), median of the runs; "
                      "original: the original's loader re-stated (bench/original_loader.py); per_sample: the "
                      "project's --no-cache path; cached_for_gpu: read and planned only, finished later on the GPU",
              "command": "python bench/loader_bench.py " + " ".join(sys.argv[1:]),
              "images": len(table), "batch_size": args.batch_size, "workers": args.workers,
              "machine": before, "load_average_after": os.getloadavg(), "results": results}
    with script_io.atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    script_io.run_main(main)
