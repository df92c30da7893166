"""The shared training machinery of both trainers.

One place for: the training loop (mixed precision, gradient
accumulation), the learning-rate schedule, checkpoints and ``--resume``,
the log, and data-parallel training under ``torchrun``. The loop itself,
:func:`_run_epochs`, reads top to bottom on one screen. The loss is
:mod:`loss`, validation and its metrics :mod:`validation`; the trainers'
command line is :mod:`train_options`; the models themselves (creation,
weights files, prediction) are :mod:`models`, which inference imports
without this trainer.

Files written into ``--weights-dir`` for architecture ``A`` and fold ``k``
(the original's names, so its README can be followed; output_names.py builds them):

- ``A_fold_k_<epoch>``: model weights after each epoch (safetensors content,
  no extension; epochs count from 0 as in the original);
- ``A_fold_k_last.pt``: optimizer, scheduler, gradient scaler, RNG states
  and the epoch, for ``--resume`` (plain tensors and dicts, loaded with
  ``torch.load(weights_only=True)``);
- ``A_fold_k_config.json``: the resolved configuration (inference reads
  ``model_arch``, ``img_size`` as ``[height, width]``, ``num_classes`` from it);
- ``A_fold_k_log.csv``: one row of validation metrics per epoch.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import csv
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import timm
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from sleepstaging.data import batch_augment
from sleepstaging.data import image_cache
from sleepstaging.data import loaders
from sleepstaging.scoring import model_set
from sleepstaging.data import psg_layout
from sleepstaging import script_io
from sleepstaging.scoring.models import (MEMORY_FORMAT, PRETRAINED_IMAGENET, autocast, check_imagenet_weights_reachable,
                    load_weights, model_for_run, progress_enabled, resolve_amp, resolve_device,
                    save_weights, unwrapped)
from sleepstaging.output_names import checkpoint_path, last_state_path, log_path, run_config_path
from sleepstaging.script_io import InputError, where
from sleepstaging.training.optimizers import LinearWarmup, make_optimizer, make_scheduler, optimizer_steps_per_epoch
from sleepstaging.recipe import DROPOUT_PROBABILITY, INPUT_STATISTICS_ROWS, LABEL_SMOOTHING
from sleepstaging.training.loss import soft_target_cross_entropy, widened
from sleepstaging.training.train_options import RESUME_KEYS, check_args
from sleepstaging.training.validation import classification_metrics, original_validation_metrics, validate


# --------------------------------------------------------------------------
# Device, precision, processes
# --------------------------------------------------------------------------


def _distributed_env() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` as set by torchrun (0, 1, 0 otherwise)."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def _all_reduce_sum(values: torch.Tensor, world_size: int) -> torch.Tensor:
    if world_size > 1:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


# --------------------------------------------------------------------------
# The classifier
# --------------------------------------------------------------------------
def model_classes(args: argparse.Namespace) -> int:
    """The classifier's outputs: the five stages, or with ``--original-defects`` as many as the original's
    model of this trainer had (the EfficientNet's 1000 ImageNet classes)."""
    return args.original_classes if args.original_defects else psg_layout.NUM_CLASSES


# --------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------
def train_one_epoch(model: torch.nn.Module, batches, n_batches: int, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, device: torch.device, amp: str, accum_iter: int,
                    smoothing: float = LABEL_SMOOTHING, progress: bool = False,
                    description: str = "train", warmup: LinearWarmup | None = None,
                    sum_accumulated: bool = False) -> tuple[float, int]:
    """One pass over ``batches`` with gradient accumulation.

    Each batch is finished on ``device`` first (:func:`batch_augment.device_batches`:
    normalisation and the batch augmentation, which mixes images and targets),
    then scored against the label-smoothed targets (:func:`_backward`).

    Parameters
    ----------
    model : torch.nn.Module
        In training mode afterwards; may be wrapped in DistributedDataParallel.
    batches : iterable
        The train loader, or its batches (cached batches with their plan, see
        :class:`cached_batches.CachedTrainBatches`), or ready ``(images, targets)``:
        float (batch, 3, H, W) and soft targets (batch, C).
    n_batches : int
        Number of batches (for the accumulation of the last, partial group).
    optimizer, scaler
        The scaler is a disabled ``GradScaler`` unless ``amp == "fp16"``.
    accum_iter : int
        Batches per optimizer step; the loss is averaged over a group.
    warmup : LinearWarmup, optional
        Sets the learning rate before each optimizer step.
    sum_accumulated : bool
        Sum the group's losses instead (the original's defect: a step of
        ``accum_iter`` times the gradient).

    Returns
    -------
    (loss_sum, images) : (float, int)
        Sum over images of the training loss, and the number of images.
    """
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss_sum, images_seen = torch.zeros((), dtype=torch.float64, device=device), 0
    # The batch augmentation, on the device (as timm's mixup_fn): CoarseDropout and Cutout holes,
    # FMix (and CutMix with --cutmix) mixing the images and, by pixel share, their one-hot targets.
    bar = tqdm(batch_augment.device_batches(batches, device, MEMORY_FORMAT), total=n_batches, desc=description,
               disable=not progress, dynamic_ncols=True)
    for step, (images, targets) in enumerate(bar):
        group_start = step - step % accum_iter
        group_size = min(accum_iter, n_batches - group_start)
        steps_now = step + 1 == group_start + group_size
        loss = _backward(model, images, targets, scaler, device, amp, smoothing, group_size, sum_accumulated,
                         sync=steps_now)
        if steps_now:
            if warmup is not None:
                warmup.before_step()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
        loss_sum += loss.detach().double() * images.shape[0]
        images_seen += images.shape[0]
        if progress and (step % 10 == 0 or step + 1 == n_batches):
            bar.set_postfix(loss=f"{loss_sum.item() / images_seen:.4f}")
    return float(loss_sum.item()), images_seen


def _backward(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor, scaler: torch.amp.GradScaler,
              device: torch.device, amp: str, smoothing: float, group_size: int, sum_accumulated: bool,
              sync: bool) -> torch.Tensor:
    """Forward one finished batch and add its loss / ``group_size`` to the gradients; return the batch's loss.

    ``sum_accumulated``: add the loss itself (the original's defect).
    ``sync``: the last batch of a group, the one whose gradients
    DistributedDataParallel averages over processes (the others accumulate
    without communication).
    """
    sync_context = contextlib.nullcontext() if sync or not isinstance(model, DistributedDataParallel) \
        else model.no_sync()
    with sync_context:
        with autocast(device, amp):
            logits = model(images)
        # label smoothing of the mixed targets, over every output of the classifier
        loss = soft_target_cross_entropy(logits, widened(targets, logits.shape[-1]), smoothing)
        scaler.scale(loss if sum_accumulated else loss / group_size).backward()
    return loss


# --------------------------------------------------------------------------
# Reproducibility and resumable state
# --------------------------------------------------------------------------
def _seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Reseed the global generators from (seed, epoch, rank) at the start of an epoch.

    With the data side keyed by (seed, epoch, sample), this makes an epoch's
    randomness independent of what ran before it, so a resumed run repeats
    the uninterrupted one exactly.
    """
    torch_seed, numpy_seed, python_seed = np.random.SeedSequence([seed, epoch, rank]).generate_state(3)
    torch.manual_seed(int(torch_seed))
    np.random.seed(int(numpy_seed))
    random.seed(int(python_seed))


def _rng_state() -> dict:
    """The global RNG states as plain tensors and numbers (loadable with weights_only=True)."""
    _, numpy_keys, numpy_position, numpy_has_gauss, numpy_gauss = np.random.get_state()
    python_version, python_internal, python_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy_keys": torch.from_numpy(numpy_keys.astype(np.int64)),
        "numpy_position": int(numpy_position), "numpy_has_gauss": int(numpy_has_gauss),
        "numpy_gauss": float(numpy_gauss),
        "python_version": int(python_version), "python_internal": torch.tensor(python_internal, dtype=torch.int64),
        "python_gauss": python_gauss,
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_position"],
                         state["numpy_has_gauss"], state["numpy_gauss"]))
    random.setstate((state["python_version"], tuple(state["python_internal"].tolist()), state["python_gauss"]))


def _save_last_state(path: Path, epoch: int, optimizer, scheduler, scaler) -> None:
    state = {"epoch": epoch, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "scaler": scaler.state_dict(), "rng": _rng_state()}
    # Through a file object: given a path, torch.save names the archive's
    # records after the (random) temporary file name, so equal states would
    # not give equal bytes.
    with script_io.atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.save(state, handle)


def _load_last_state(path: Path) -> dict:
    if not path.is_file():
        raise InputError(f"nothing to resume: no saved training state; run without --resume {where(path)}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError or zip errors for bad files
        raise InputError(f"unreadable training state: {str(err).splitlines()[0]} {where(path)}") from None


def _check_weights_dir(weights_dir: Path) -> None:
    """Refuse, before training, a weights folder that could not be made or written (nothing is created)."""
    existing = weights_dir.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"cannot create the weights folder: {existing} is not a folder {where(weights_dir)}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"cannot create the weights folder: {existing} is not writable {where(weights_dir)}")


def _write_run_config(weights_dir: Path, path: Path, config: dict) -> None:
    try:
        weights_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot create the weights folder: {err.strerror} {where(weights_dir)}") from None
    with script_io.atomic_path(path) as tmp:
        tmp.write_text(json.dumps(config, indent=2) + "\n")


def _check_resume_config(config: dict, weights_dir: Path) -> None:
    path = run_config_path(weights_dir, config["model_arch"], config["fold"])
    saved = model_set.read_run_config(weights_dir, config["model_arch"], config["fold"])
    changed = [f"{key} {saved.get(key)!r} -> {config[key]!r}" for key in RESUME_KEYS if saved.get(key) != config[key]]
    if changed:
        raise InputError(f"--resume with settings that differ from the saved run: {', '.join(changed)} {where(path)}")


# --------------------------------------------------------------------------
# Logs
# --------------------------------------------------------------------------
# valid_*: the stages (a model of more outputs folded into them, as inference does); original_valid_*: the
# argmax over all outputs, as the original validated its 1000-class EfficientNet (empty for a 5-class model)
LOG_COLUMNS = ["epoch", "lr", "train_loss", "train_images_per_s", "valid_loss", "valid_accuracy",
               "valid_macro_f1", "original_valid_accuracy", "original_valid_macro_f1",
               *(f"f1_{stage}" for stage in psg_layout.STAGES), "confusion"]


def _write_log(path: Path, row: dict) -> None:
    """Rewrite the log with the rows of earlier epochs plus ``row`` (atomically).

    Rows of this epoch or later (left by an earlier run of the same fold) are dropped.
    """
    rows = []
    if path.is_file():
        with open(path, newline="") as handle:
            rows = [r for r in csv.DictReader(handle) if int(r["epoch"]) < row["epoch"]]
    rows.append(row)
    # (a log written before a column existed has it empty)
    script_io.write_csv_rows(path, [LOG_COLUMNS] + [[str(r.get(c, "")) for c in LOG_COLUMNS] for r in rows])


def _report(epoch: int, lr: float, train_loss: float, images_per_s: float, valid_loss: float,
            metrics: dict, confusion: np.ndarray, original: dict | None = None) -> None:
    per_class = " ".join(f"{stage} {f1:.3f}" for stage, f1 in zip(psg_layout.STAGES, metrics["f1"]))
    print(f"epoch {epoch}: lr {lr:.3g} train loss {train_loss:.4f} ({images_per_s:.1f} images/s) | "
          f"valid loss {valid_loss:.4f} accuracy {metrics['accuracy']:.4f} macro-F1 {metrics['macro_f1']:.4f} | "
          f"F1 {per_class}")
    if original is not None:
        print(f"  the original's validation (argmax over all outputs): accuracy {original['accuracy']:.4f} "
              f"macro-F1 {original['macro_f1']:.4f} ({original['past_stages']} images predicted past the stages)")
    print("  confusion (rows true, columns predicted, " + " ".join(psg_layout.STAGES) + "):")
    for stage, row in zip(psg_layout.STAGES, confusion):
        print(f"  {stage:>5} " + " ".join(f"{count:6d}" for count in row))
    sys.stdout.flush()


# --------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------
def train(args: argparse.Namespace) -> None:
    """Train one fold as configured by :func:`build_parser`'s options.

    Under ``torchrun`` (``WORLD_SIZE > 1``), trains data-parallel: NCCL on
    CUDA, gloo on CPU; rank 0 prints and writes.
    """
    check_args(args)
    if args.pretrained == PRETRAINED_IMAGENET:  # before the data are read: offline, the answer is at once
        check_imagenet_weights_reachable(args.model_arch)
    rank, world_size, local_rank = _distributed_env()
    device = resolve_device(args.device, local_rank)
    if world_size > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            torch.cuda.set_device(device)
    try:
        _train(args, device, rank, world_size)
    finally:
        if world_size > 1:
            dist.destroy_process_group()


@dataclasses.dataclass
class _TrainingRun:
    """What the epoch loop works on, as :func:`_set_up_training` leaves it."""

    config: dict  # the resolved configuration (saved as <arch>_fold_<k>_config.json)
    model: torch.nn.Module  # on the device; wrapped in DistributedDataParallel under torchrun
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts
    scaler: torch.amp.GradScaler
    train_loader: torch.utils.data.DataLoader
    valid_loader: torch.utils.data.DataLoader
    start_epoch: int  # 0, or the epoch after the saved one with --resume
    warmup: LinearWarmup | None  # with --warmup-epochs


def _train(args: argparse.Namespace, device: torch.device, rank: int, world_size: int) -> None:
    """Train one fold on ``device``, as process ``rank`` of ``world_size``: set up, then run the epochs."""
    run = _set_up_training(args, device, rank, world_size)
    _run_epochs(run, args, device, rank, world_size)


def _set_up_training(args: argparse.Namespace, device: torch.device, rank: int, world_size: int) -> _TrainingRun:
    """The fold's rows, the configuration, the model and its optimizer, scheduler and scaler, and the loaders.

    With ``--resume``, checks the configuration against the saved run's and
    restores the model, optimizer, scheduler, scaler and RNG states of its
    last epoch. Writes nothing (rank 0 prints the configuration); builds
    the image cache last, once the model and any saved state have loaded.
    """
    table = loaders.read_train_table(args.data_root)
    folds = loaders.make_folds(table, n_folds=args.folds, seed=args.seed, cv=args.cv)
    train_rows, valid_rows = np.flatnonzero(folds != args.fold), np.flatnonzero(folds == args.fold)
    config = _run_config(args, device, world_size, table, train_rows, valid_rows)
    if args.resume:
        _check_resume_config(config, Path(args.weights_dir))
    if rank == 0:
        print(json.dumps(config, indent=2))
        # Nothing is written until the first epoch has read every image: input
        # that fails (a corrupt image, a pickled --pretrained file) leaves no file.
        _check_weights_dir(Path(args.weights_dir))

    torch.manual_seed(args.seed)  # the same initial weights on every rank and every run
    model = initial_model(args, config).to(device, memory_format=MEMORY_FORMAT)
    optimizer = make_optimizer(args.optimizer, model.parameters(), args.lr, args.weight_decay, device)
    scheduler = make_scheduler(optimizer, args.t0, args.min_lr)
    scaler = torch.amp.GradScaler(device.type, enabled=config["amp"] == "fp16")
    start_epoch = _restore_last_state(args, rank, model, optimizer, scheduler, scaler) if args.resume else 0

    train_loader, valid_loader = _make_loaders(args, device, rank, world_size, table, train_rows, valid_rows)
    if args.compile:
        model.compile()  # in place: the state dict keeps its names
    if world_size > 1:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    warmup = None
    if args.warmup_epochs > 0:
        steps_per_epoch = optimizer_steps_per_epoch(len(train_loader), args.accum_iter)
        warmup = LinearWarmup(optimizer, max(1, round(args.warmup_epochs * steps_per_epoch)),
                              steps_done=start_epoch * steps_per_epoch)
    return _TrainingRun(config, model, optimizer, scheduler, scaler, train_loader, valid_loader, start_epoch,
                        warmup)


def initial_model(args: argparse.Namespace, config: dict) -> torch.nn.Module:
    """The model a run starts from, as its configuration (:func:`_run_config`) describes it
    (:func:`models.model_for_run`: input size, classes, ``--input-norm``), from ``--pretrained``; under
    ``--original-defects`` a pretrained classifier of that many outputs is kept (the original's EfficientNet
    trained its 1000-class ImageNet classifier)."""
    return model_for_run(args.model_arch, config, pretrained=args.pretrained, keep_classifier=args.original_defects)


def _run_config(args, device, world_size: int, table, train_rows, valid_rows) -> dict:
    """The resolved configuration, as ``<arch>_fold_<k>_config.json`` saves it."""
    config = dict(vars(args))
    config.update(
        device=str(device), amp=resolve_amp(args.amp, device), world_size=world_size,
        num_classes=model_classes(args), label_smoothing=LABEL_SMOOTHING,
        train_images=int(train_rows.size), valid_images=int(valid_rows.size),
        valid_recordings=sorted({table.recording_ids[r] for r in valid_rows}),
        versions={"torch": torch.__version__, "timm": timm.__version__},
    )
    if args.input_norm == "data":  # the training rows' own pixel statistics, from an even sample of them
        spread = np.linspace(0, train_rows.size - 1, min(train_rows.size, INPUT_STATISTICS_ROWS))
        sample = train_rows[spread.astype(int)]
        paths = loaders.table_image_paths(args.data_root, table)
        config["input_mean"], config["input_std"] = image_cache.pixel_statistics(
            [paths[row] for row in sample], args.img_size, args.resize)
    return config


def _restore_last_state(args, rank: int, model, optimizer, scheduler, scaler) -> int:
    """Load the saved run's last checkpoint and states (``--resume``); return the epoch to start from."""
    weights_dir = Path(args.weights_dir)
    state = _load_last_state(last_state_path(weights_dir, args.model_arch, args.fold))
    load_weights(model, checkpoint_path(weights_dir, args.model_arch, args.fold, state["epoch"]))
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler.is_enabled() and state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    _set_rng_state(state["rng"])
    if rank == 0:
        print(f"resuming after epoch {state['epoch']}")
    return state["epoch"] + 1


def _make_loaders(args, device, rank: int, world_size: int, table, train_rows, valid_rows) -> tuple:
    """The training and validation loaders, the image cache built first (by rank 0) unless ``--no-cache``.

    The cache is built (it can take a while) only once the model, a
    ``--pretrained`` file and a ``--resume`` state have loaded: bad ones are
    refused at once, and leave no cache behind.
    """
    cache_dir = None if args.no_cache else args.cache_dir
    if cache_dir is not None:  # built by rank 0 alone; the loaders open it
        if rank == 0:
            image_cache.open_cache(args.data_root, table, args.img_size, cache_dir, workers=args.workers,
                                   progress=rank == 0 and progress_enabled(args.quiet), resize=args.resize)
        if world_size > 1:
            dist.barrier()
    loading = dict(rank=rank, world_size=world_size, pin_memory=device.type == "cuda", cache_dir=cache_dir,
                   device=device, resize=args.resize)
    train_loader = loaders.make_train_loader(
        args.data_root, table, train_rows, args.img_size, args.batch_size, args.workers, args.seed,
        fmix_enabled=not args.no_fmix, cutmix_enabled=args.cutmix, fmix_spectrum=args.fmix_spectrum,
        dropout_probability=0.0 if args.no_holes else DROPOUT_PROBABILITY,
        stage_balance=args.stage_balance, integer_targets=args.original_defects, **loading)
    valid_loader = loaders.make_eval_loader(
        args.data_root, table, args.img_size, args.valid_batch_size, args.workers, rows=valid_rows, **loading)
    return train_loader, valid_loader


def _run_epochs(run: _TrainingRun, args: argparse.Namespace, device: torch.device, rank: int,
                world_size: int) -> None:
    """Epochs ``run.start_epoch`` to ``args.epochs - 1``: train, validate, step the schedule, save.

    Each epoch trains on the fold's training rows (:func:`train_one_epoch`,
    where the batch augmentation and the loss are), validates, steps the
    cosine schedule once or twice, and (rank 0) prints the metrics and
    writes the checkpoint, the ``--resume`` state and the log row; the
    configuration is written after the first epoch.
    """
    progress = rank == 0 and progress_enabled(args.quiet)
    for epoch in range(run.start_epoch, args.epochs):
        _seed_epoch(args.seed, epoch, rank)
        loaders.set_loader_epoch(run.train_loader, epoch)
        lr = run.scheduler.get_last_lr()[0]  # the scheduled rate (a warm-up scales it in the first steps)
        if run.warmup is not None:
            run.warmup.start_epoch(run.scheduler.get_last_lr())
        started = time.perf_counter()
        loss_sum, images = train_one_epoch(
            run.model, run.train_loader, len(run.train_loader), run.optimizer,
            run.scaler, device, run.config["amp"], args.accum_iter, progress=progress, description=f"epoch {epoch}",
            warmup=run.warmup, sum_accumulated=args.original_defects)
        seconds = time.perf_counter() - started
        run.scheduler.step()  # the original stepped once after training ...
        valid_loss_sum, valid_images, confusion, raw_confusion = validate(
            unwrapped(run.model), run.valid_loader, len(run.valid_loader), device,
            progress=progress)
        if args.sched_steps_per_epoch == 2:
            run.scheduler.step()  # ... and once more after validation

        # sums over the ranks: every rank trained and validated its own shard
        totals = _all_reduce_sum(torch.tensor([loss_sum, images, valid_loss_sum, valid_images],
                                              dtype=torch.float64, device=device), world_size).tolist()
        confusion, raw_confusion = (_all_reduce_sum(torch.from_numpy(counts).to(device), world_size).cpu().numpy()
                                    for counts in (confusion, raw_confusion))
        if rank == 0:
            _save_epoch(run, args, epoch, lr, totals, confusion, raw_confusion, images_per_s=totals[1] / seconds)
        if world_size > 1:
            dist.barrier()


def _save_epoch(run: _TrainingRun, args: argparse.Namespace, epoch: int, lr: float, totals: list,
                confusion: np.ndarray, raw_confusion: np.ndarray, images_per_s: float) -> None:
    """Print the epoch's metrics; write its checkpoint, the ``--resume`` state and its log row (and, first, the
    configuration). ``totals``: summed training loss, training images, validation loss, validation images;
    ``confusion`` (5, 5) and ``raw_confusion`` (5, C) as :func:`validate` returns them."""
    weights_dir, arch, fold = Path(args.weights_dir), args.model_arch, args.fold
    train_loss = totals[0] / max(totals[1], 1)
    valid_loss = totals[2] / max(totals[3], 1)
    metrics = classification_metrics(confusion)
    # a model of more outputs than stages (--original-defects): also the original's own figures, unfolded
    original = original_validation_metrics(raw_confusion) if raw_confusion.shape[1] > psg_layout.NUM_CLASSES else None
    _report(epoch, lr, train_loss, images_per_s, valid_loss, metrics, confusion, original)
    if epoch == run.start_epoch:
        _write_run_config(weights_dir, run_config_path(weights_dir, arch, fold), run.config)
    save_weights(run.model, checkpoint_path(weights_dir, arch, fold, epoch))
    _save_last_state(last_state_path(weights_dir, arch, fold), epoch, run.optimizer, run.scheduler, run.scaler)
    _write_log(log_path(weights_dir, arch, fold), {
        "epoch": epoch, "lr": f"{lr:.6g}", "train_loss": f"{train_loss:.6f}",
        "train_images_per_s": f"{images_per_s:.2f}", "valid_loss": f"{valid_loss:.6f}",
        "valid_accuracy": f"{metrics['accuracy']:.6f}", "valid_macro_f1": f"{metrics['macro_f1']:.6f}",
        **{f"original_valid_{name}": f"{original[name]:.6f}" if original else "" for name in ("accuracy", "macro_f1")},
        **{f"f1_{s}": f"{f:.6f}" for s, f in zip(psg_layout.STAGES, metrics["f1"])},
        "confusion": json.dumps(confusion.tolist(), separators=(",", ":")),
    })
