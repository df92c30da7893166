"""Training and inference images per second of whole models, with the project's loader and without.

For each ``--models`` (timm name at ``--img-size``), on ``--device``:

- training: the trainer's step (``engine.train_one_epoch``: autocast, loss,
  gradient accumulation over 2 batches, optimizer as in the original: Adam,
  fused on CUDA, for ViT, AdamP for EfficientNet; channels_last)
  fed by ``make_train_loader`` with the image cache and augmentation on the
  device, against the same step on one random batch already on the device
  (the ceiling: no loader at all). Their ratio is the share of the ceiling
  the loader keeps; the loader's rate projects one fold-0 epoch of the
  challenge (468,000 images) against the original's 1.5-2 h;
- inference: ``models.predict`` over the test set through
  ``make_eval_loader`` (cache), projected to the challenge's 138,925 test
  images.

Makes (once) a small synthetic data set with make_synthetic.py. Prints the
device's name and the figures; writes ``bench/results/model_<device>.json``.
Run by ``bench/gpu_bench.sh`` on a GPU machine; on the CPU
(``--device cpu``) use small ``--steps``.

    python bench/model_bench.py --device cuda
    python bench/model_bench.py --device cpu --models test_vit test_efficientnet --img-size 64 --steps 20
    python bench/model_bench.py --device cpu --skip-training --infer-images 64   # challenge-sized, on the CPU
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path


import numpy as np
import timm
import torch

from sleepstaging.training import engine
from sleepstaging.scoring import models
from sleepstaging.data import image_cache
from sleepstaging.data import loaders
from sleepstaging.training import optimizers
from sleepstaging.data import psg_layout
from sleepstaging import script_io
from cpu_info import cpu_description

REPO = Path(__file__).resolve().parents[1]

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
parser.add_argument("--models", nargs="+", default=["vit_base_patch16_224", "tf_efficientnet_b4_ns"])
parser.add_argument("--img-size", type=int, nargs="+", metavar="PIXELS", default=224,
                    help="model input: one size (square; 224 the original's) or two, HEIGHT WIDTH")
parser.add_argument("--batch-size", type=int, default=32, help="the original's training batch")
parser.add_argument("--infer-batch-size", type=int, default=128)
parser.add_argument("--amp", choices=("fp16", "bf16", "off"), default="fp16", help="on CUDA; off on the CPU")
parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="DataLoader workers")
parser.add_argument("--steps", type=int, default=200, help="timed training batches (after 10 warm-up batches)")
parser.add_argument("--infer-images", type=int, default=20_000,
                    help="images predicted in the timed inference passes over the test set (at least one pass)")
parser.add_argument("--skip-training", action="store_true", help="inference only")
parser.add_argument("--compile", action="store_true", help="torch.compile the models")
parser.add_argument("--data-root", type=Path, default=REPO / "bench" / "data" / "model" / "DATA")
parser.add_argument("--cache-dir", type=Path, default=REPO / "bench" / "data" / "model" / "cache")
parser.add_argument("--out", type=Path, default=None, help="default: bench/results/model_<device type>.json")

FOLD0_TRAIN_IMAGES = 468_000  # 4/5 of the challenge's ~585,000 training images
TEST_IMAGES = 138_925
SEED_EPOCH_HOURS = (1.5, 2.0)
WARMUP = 10
OPTIMIZER = {"vit": "adam", "eff": "adamp"}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_description()


def ensure_data(root: Path) -> None:
    if not (root / psg_layout.TEST_CSV).is_file():
        subprocess.run([sys.executable, str(REPO / "make_synthetic.py"), "--out", str(root), "--train-subjects", "6",
                        "--test-subjects", "2", "--hours", "1", "--seed", "0", "--workers", str(os.cpu_count()),
                        "--quiet"], check=True)


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def repeat(loader):
    """Batches of ``loader`` without end, one epoch after another."""
    epoch = 0
    while True:
        loaders.set_loader_epoch(loader, epoch)
        yield from loader  # train_one_epoch raises an InputError met in a worker (batch_augment.device_batches)
        epoch += 1


def training_rate(model, optimizer, scaler, batches, steps: int, device, amp: str) -> float:
    """Images per second of the training step over ``steps`` batches of ``batches`` (after warm-up)."""
    warmup = itertools.islice(batches, WARMUP)
    engine.train_one_epoch(model, warmup, WARMUP, optimizer, scaler, device, amp, accum_iter=2)
    synchronise(device)
    started = time.perf_counter()
    timed = itertools.islice(batches, steps)
    _, images = engine.train_one_epoch(model, timed, steps, optimizer, scaler, device, amp, accum_iter=2)
    synchronise(device)
    return images / (time.perf_counter() - started)


def new_model(arch: str, args, device: torch.device):
    model = models.create_model(arch, args.img_size).to(device, memory_format=models.MEMORY_FORMAT)
    if args.compile:
        model.compile()
    return model


def train_figures(arch: str, args, device, amp: str, table) -> dict:
    """Loader-fed and ceiling training rates of one model."""
    name = OPTIMIZER["vit" if "vit" in arch else "eff"]
    rows = np.arange(len(table))
    loader = loaders.make_train_loader(args.data_root, table, rows, args.img_size, args.batch_size,
                                              args.workers, seed=72, pin_memory=device.type == "cuda",
                                              cache_dir=args.cache_dir, device=device)
    rates = {}
    for source in ("ceiling", "loader"):
        torch.manual_seed(0)
        model = new_model(arch, args, device)
        optimizer = optimizers.make_optimizer(name, model.parameters(), 1e-4, 1e-6, device)
        scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
        if source == "ceiling":
            images = torch.randn(args.batch_size, 3, *args.img_size, device=device)
            images = images.contiguous(memory_format=models.MEMORY_FORMAT)
            targets = torch.eye(psg_layout.NUM_CLASSES, device=device)[torch.arange(args.batch_size) % 5]
            batches = iter(lambda: (images, targets), None)
        else:
            batches = repeat(loader)  # train_one_epoch finishes (augments) them on the device
        rates[source] = training_rate(model, optimizer, scaler, batches, args.steps, device, amp)
        del model, optimizer
    return {"optimizer": name + (" (fused)" if device.type == "cuda" and name == "adam" else ""),
            "train_images_per_s_loader": rates["loader"], "train_images_per_s_ceiling": rates["ceiling"],
            "loader_share_of_ceiling": rates["loader"] / rates["ceiling"],
            "fold0_epoch_hours_projected": FOLD0_TRAIN_IMAGES / rates["loader"] / 3600}


def inference_figures(arch: str, args, device, amp: str, test) -> dict:
    """Inference rate over the synthetic test set: passes until ``--infer-images`` images, after one warm-up batch."""
    model = new_model(arch, args, device)
    options = dict(pin_memory=device.type == "cuda", cache_dir=args.cache_dir, device=device)
    rows = np.arange(min(len(test), args.infer_images))
    warmup = loaders.make_eval_loader(args.data_root, test, args.img_size, args.infer_batch_size, 0,
                                             rows=rows[:args.infer_batch_size], **options)
    models.predict(model, warmup, device, amp)
    loader = loaders.make_eval_loader(args.data_root, test, args.img_size, args.infer_batch_size,
                                             args.workers, rows=rows, **options)
    synchronise(device)
    started, images = time.perf_counter(), 0
    while images < args.infer_images:
        images += len(models.predict(model, loader, device, amp))
    synchronise(device)
    rate = images / (time.perf_counter() - started)
    return {"infer_images_per_s": rate, "infer_images": images,
            "challenge_test_minutes_projected": TEST_IMAGES / rate / 60}


def main() -> None:
    args = parser.parse_args()
    args.img_size = psg_layout.input_shape(args.img_size)  # (height, width)
    device = models.resolve_device(args.device)
    amp = models.resolve_amp(args.amp, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    ensure_data(args.data_root)
    train = loaders.read_train_table(args.data_root)
    test = loaders.read_test_table(args.data_root)
    image_cache.open_cache(args.data_root, train, args.img_size, args.cache_dir, workers=args.workers)
    image_cache.open_cache(args.data_root, test, args.img_size, args.cache_dir, workers=args.workers)
    print(f"device: {device_name(device)}; torch {torch.__version__}, timm {timm.__version__}; amp {amp}; "
          f"batch {args.batch_size}; {args.workers} workers; {len(train)} training and {len(test)} test images",
          flush=True)
    results = []
    for arch in args.models:
        result = {"model": arch, "img_size": list(args.img_size)}
        if not args.skip_training:
            result.update(train_figures(arch, args, device, amp, train))
            low, high = (FOLD0_TRAIN_IMAGES / hours / 3600 for hours in SEED_EPOCH_HOURS)
            print(f"{arch} @ {image_cache.shape_label(args.img_size)}: training "
                  f"{result['train_images_per_s_loader']:.1f} images/s with the "
                  f"loader, {result['train_images_per_s_ceiling']:.1f} on random tensors on the device "
                  f"({100 * result['loader_share_of_ceiling']:.0f} % of the ceiling); one fold-0 epoch "
                  f"(468,000 images) {result['fold0_epoch_hours_projected']:.2f} h (the original: 1.5-2 h, "
                  f"{high:.0f}-{low:.0f} images/s)", flush=True)
        result.update(inference_figures(arch, args, device, amp, test))
        print(f"{arch} @ {image_cache.shape_label(args.img_size)}: inference "
              f"{result['infer_images_per_s']:.1f} images/s; the challenge's "
              f"138,925 test images in {result['challenge_test_minutes_projected']:.1f} min", flush=True)
        results.append(result)
    out = args.out or REPO / "bench" / "results" / f"model_{device.type}.json"
    report = {"device": device_name(device), "torch": torch.__version__, "timm": timm.__version__, "amp": amp,
              "batch_size": args.batch_size, "infer_batch_size": args.infer_batch_size, "workers": args.workers,
              "compile": args.compile, "torch_threads": torch.get_num_threads(),
              "command": "python bench/model_bench.py " + " ".join(sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d %H:%M"), "results": results}
    with script_io.atomic_path(out) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    script_io.run_main(main)
