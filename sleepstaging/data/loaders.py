"""The shared data code of both trainers and of inference (the original's loaderViTrgb.py): their data entry point.

What it does, top to bottom:

- reads the challenge CSVs and checks, before any training, that every
  listed image is a file inside the data root (all missing ones reported at
  once);
- splits the training table into folds (by recording, or the original's
  stratified split over epochs);
- a Dataset that reads an epoch image with OpenCV as RGB and applies the
  original's albumentations pipeline, then FMix (and optionally CutMix) with a
  partner image drawn from the training set, producing mixed one-hot targets
  (the per-sample path);
- the samplers of a training epoch (every row once, shuffled, or rows
  drawn with stage weights);
- the DataLoaders for training, validation and inference: by default whole
  batches from the image cache (:mod:`cached_batches`), finished on the
  model's device (:mod:`batch_augment`); the original's per-sample path with
  ``cache_dir=None``. Every batch reaches the model through
  :func:`batch_augment.device_batches`.

Randomness: on the per-sample path every sample draws from its own
generator seeded by ``(seed, epoch, index)``; on the cached path every batch
from one seeded by ``(seed, epoch, rank, step)``. The shuffling sampler is
seeded by ``seed + epoch``. An epoch's augmentations therefore depend only
on the seed and the epoch number (and the number of processes), not on the
number of workers or where a batch is finished, which is what makes
``--resume`` reproduce an uninterrupted run exactly.
"""
from __future__ import annotations

import csv
import functools
import math
import os
import random
import stat
from pathlib import Path

# albumentations asks the package index for a newer version at import unless told not to:
# the project never touches the network by itself.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import albumentations as A  # noqa: E402
import numpy as np
import torch
from albumentations.augmentations.dropout.transforms import BaseDropout
from albumentations.pytorch import ToTensorV2
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, Sampler, SequentialSampler

from sleepstaging.data import fmix
from sleepstaging.data import psg_layout
from sleepstaging.data.batch_augment import cutmix_box, cutout_corners
from sleepstaging.data.cached_batches import CachedEvalBatches, CachedLoader, CachedTrainBatches, NumberedBatches
from sleepstaging.data.image_cache import DEFAULT_CACHE_DIR, DEFAULT_RESIZE, make_resize, open_cache, read_image_rgb
from sleepstaging.data.psg_layout import EpochTable
from sleepstaging.script_io import InputError, where
from sleepstaging.data.worker_transport import collate, input_errors_as_items
from sleepstaging.recipe import (CUTMIX_ALPHA, CUTMIX_LAMBDA_RANGE, CUTMIX_PROBABILITY, DROPOUT_HOLE_PIXELS, DROPOUT_HOLES,
                    DROPOUT_PROBABILITY, FMIX_ALPHA, FMIX_DECAY_POWER, FMIX_LAMBDA_RANGE, FMIX_MAX_SOFT,
                    FMIX_PROBABILITY, IMAGENET_MEAN, IMAGENET_STD)


# --------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------
def _check_data_root(data_root: Path) -> Path:
    if not data_root.is_dir():
        raise InputError(
            f"data root not found: make a data set with `python make_synthetic.py --out {data_root}` "
            f"(or `python render_edf.py` for real EDF recordings), or point to one with --data-root "
            f"{where(data_root)}"
        )
    return data_root


def _csv_row_numbers(csv_path: Path) -> dict[str, int]:
    """1-based file row of each IDnum (only needed to word error messages)."""
    with open(csv_path, newline="", encoding="utf-8") as handle:
        return {fields[1].strip(): number for number, fields in enumerate(csv.reader(handle), start=1)
                if len(fields) >= 2}


def _image_problem(path: Path, real_root: str, real_folder: str) -> str | None:
    """Why ``path`` cannot be used as an image inside the data root, or None.

    ``real_folder`` is the resolved folder of ``path`` (resolved once per
    recording rather than per image: a data set has ~470,000 images).
    """
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return "missing"
    real = os.path.realpath(path) if stat.S_ISLNK(mode) else os.path.join(real_folder, path.name)
    if os.path.commonpath([real_root, real]) != real_root:
        return "outside the data root"
    if not os.path.isfile(real):
        return "missing" if stat.S_ISLNK(mode) else "not a file"
    return None


def check_images(data_root: Path | str, table: EpochTable) -> None:
    """Check that every image of ``table`` is a file inside ``data_root``.

    Symbolic links (of images or recording folders) are followed but must
    resolve inside the data root.

    Raises
    ------
    InputError
        Listing every problem in one line; a recording folder missing as a
        whole is named once, with its image count.
    """
    data_root = Path(data_root)
    real_root = os.path.realpath(data_root)
    real_folders: dict[str, str | None] = {}  # recording ID -> resolved folder, None if absent
    missing_folders: dict[str, int] = {}
    problems: dict[str, list[str]] = {}
    for recording_id, idnum in zip(table.recording_ids, table.idnums):
        if recording_id not in real_folders:
            folder = data_root / recording_id
            real_folders[recording_id] = os.path.realpath(folder) if folder.is_dir() else None
        real_folder = real_folders[recording_id]
        if real_folder is None:
            missing_folders[recording_id] = missing_folders.get(recording_id, 0) + 1
            continue
        problem = _image_problem(data_root / recording_id / idnum, real_root, real_folder)
        if problem:
            problems.setdefault(problem, []).append(f"{recording_id}/{idnum}")
    if not problems and not missing_folders:
        return
    rows = _csv_row_numbers(table.path)
    parts = [f"folder {name}/ missing ({count} images)" for name, count in missing_folders.items()]
    for problem, names in problems.items():
        parts.append(f"{len(names)} image(s) {problem}: "
                     + ", ".join(f"{name} (row {rows.get(name.split('/', 1)[1], '?')})" for name in names))
    raise InputError(f"listed images not usable in data root {data_root}: {'; '.join(parts)} {where(table.path)}")


def read_train_table(data_root: Path | str) -> EpochTable:
    """Read ``<data_root>/trainset-for_user.csv`` and check its images.

    Parameters
    ----------
    data_root : path-like
        Folder holding the CSVs and the ``<ID>/<ID>_NNNN.png`` images.

    Returns
    -------
    EpochTable
        With ``labels`` (int64 stage codes, Wake=0 ... REM=4).

    Raises
    ------
    InputError
        No data root (the message says how to make one), a bad CSV, or
        images missing or outside the root.
    """
    data_root = _check_data_root(Path(data_root))
    table = psg_layout.read_epoch_csv(data_root / psg_layout.TRAIN_CSV, with_labels=True)
    check_images(data_root, table)
    return table


def read_test_table(data_root: Path | str) -> EpochTable:
    """Read ``<data_root>/testset-for_user.csv`` (no labels) and check its images.

    See :func:`read_train_table`; the returned table has ``labels=None``.
    """
    data_root = _check_data_root(Path(data_root))
    table = psg_layout.read_epoch_csv(data_root / psg_layout.TEST_CSV, with_labels=False)
    check_images(data_root, table)
    return table


def table_image_paths(data_root: Path | str, table: EpochTable) -> list[Path]:
    """``<data_root>/<ID>/<IDnum>`` of every row, in table order."""
    return [psg_layout.image_path(data_root, r, i) for r, i in zip(table.recording_ids, table.idnums)]


# --------------------------------------------------------------------------
# Folds
# --------------------------------------------------------------------------
def make_folds(table: EpochTable, n_folds: int = 5, seed: int = 72, cv: str = "subject") -> np.ndarray:
    """Assign every row of the training table to one of ``n_folds`` folds.

    Parameters
    ----------
    table : EpochTable
        The training table (labels needed for stratification).
    n_folds : int
        Number of folds (the original: 5).
    seed : int
        Shuffling seed (the original: 72).
    cv : {"subject", "stratified"}
        ``"subject"``: StratifiedGroupKFold grouped by recording ID, so no
        recording is on both sides. ``"stratified"``: the original's
        StratifiedKFold over epochs (neighbouring epochs of one night land
        in training and validation alike; kept to reproduce the original).

    Returns
    -------
    np.ndarray of int64, shape (rows,)
        Fold index of each row; fold ``k``'s validation rows are ``folds == k``.
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold  # here: a second to import
    labels = np.asarray(table.labels)
    rows = np.arange(len(table))
    if cv == "subject":
        recordings = sorted(set(table.recording_ids))
        if len(recordings) < n_folds:
            raise InputError(f"--cv subject needs at least {n_folds} recordings for {n_folds} folds, "
                             f"found {len(recordings)} {where(table.path)}")
        splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(rows, labels, groups=table.recording_ids)
    elif cv == "stratified":
        if len(table) < n_folds:
            raise InputError(f"{n_folds} folds need at least {n_folds} rows {where(table.path)}")
        splits = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(rows, labels)
    else:
        raise ValueError(f"unknown cv {cv!r}")
    folds = np.empty(len(table), dtype=np.int64)
    for fold, (_, valid_rows) in enumerate(splits):
        folds[valid_rows] = fold
    return folds


# --------------------------------------------------------------------------
# Per-sample transforms
# --------------------------------------------------------------------------
class Cutout(BaseDropout):
    """The original's second dropout: albumentations 1.0's ``Cutout`` with its defaults (removed in 2.0).

    ``DROPOUT_HOLES`` holes of up to ``DROPOUT_HOLE_PIXELS`` square, each
    placed by :func:`batch_augment.cutout_corners` (unlike ``CoarseDropout``, whose holes
    always lie whole inside the image), filled with 0; applied with
    probability ``p``.
    """

    def __init__(self, p: float = DROPOUT_PROBABILITY):
        super().__init__(fill=0, fill_mask=None, p=p)

    def get_params_dependent_on_data(self, params: dict, data: dict) -> dict:
        height, width = params["shape"][:2]
        top = cutout_corners(self.random_generator.integers(0, height + 1, size=DROPOUT_HOLES))
        left = cutout_corners(self.random_generator.integers(0, width + 1, size=DROPOUT_HOLES))
        holes = np.stack([left, top, np.minimum(left + DROPOUT_HOLE_PIXELS, width),
                          np.minimum(top + DROPOUT_HOLE_PIXELS, height)], axis=-1)
        return {"holes": holes, "seed": 0}  # the seed of a random fill; the fill is 0


def get_train_transforms(img_size, resize: str = DEFAULT_RESIZE,
                         dropout_probability: float = DROPOUT_PROBABILITY) -> A.Compose:
    """The original's training pipeline: Resize, Normalize, CoarseDropout, Cutout, to tensor.

    Parameters
    ----------
    img_size : (int, int)
        Output size in pixels, (height, width).
    resize : {"linear", "area"}
        The resize's interpolation (:func:`image_cache.make_resize`; linear is the original's).
    dropout_probability : float
        Of each dropout (the original's 0.5; 0: no holes, ``--no-holes``).

    Returns
    -------
    albumentations.Compose
        Maps ``image`` (uint8 HWC RGB) to a float32 tensor (3, height, width).
    """
    return A.Compose([
        make_resize(img_size, resize),
        A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD, max_pixel_value=255.0),
        A.CoarseDropout(num_holes_range=(DROPOUT_HOLES, DROPOUT_HOLES),
                        hole_height_range=(DROPOUT_HOLE_PIXELS, DROPOUT_HOLE_PIXELS),
                        hole_width_range=(DROPOUT_HOLE_PIXELS, DROPOUT_HOLE_PIXELS),
                        fill=0, p=dropout_probability),
        Cutout(p=dropout_probability),
        ToTensorV2(),
    ])


def get_valid_transforms(img_size, resize: str = DEFAULT_RESIZE) -> A.Compose:
    """Validation and inference pipeline: Resize (``img_size`` and ``resize`` as for
    :func:`get_train_transforms`), Normalize, to tensor (no randomness)."""
    return A.Compose([
        make_resize(img_size, resize),
        A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD, max_pixel_value=255.0),
        ToTensorV2(),
    ])


class EpochImageDataset(Dataset):
    """Epoch images with the original's augmentations and mixed one-hot targets.

    Parameters
    ----------
    image_paths : sequence of Path
        One image file per sample.
    labels : np.ndarray of int64, shape (samples,), or None
        Stage codes; None for unlabelled (test) images.
    transforms : albumentations.Compose
        :func:`get_train_transforms` or :func:`get_valid_transforms`.
    seed : int
        Base seed of the per-sample generators.
    fmix_enabled, cutmix_enabled : bool
        Mix with a partner sample (needs labels).
    fmix_spectrum : {"original", "isotropic"}
        The FMix masks' spectrum (:mod:`fmix`; the original's by default).
    integer_targets : bool
        The original's defect (``--original-defects``): a mixed sample's
        target is the one-hot of its class indices mixed by the same shares
        and cast to an integer (Wake 0.6 + REM 0.4: 1.6, N1).

    Items
    -----
    An item's key is a row, whose augmentation and partner are drawn from
    a generator keyed by ``(seed, epoch, row)`` (the original's sampling:
    every row once per epoch), or a ``(row, draw)`` pair from a
    :class:`StageBalancedSampler` with ``numbered=True``, keyed by
    ``(seed, epoch, STAGE_BALANCE_STREAM, draw)``: a row drawn twice in
    an epoch is augmented and mixed differently each time.
    With labels: ``(image, target)``, image float32 (3, H, W), target
    float32 (5,), a one-hot vector or the mixture of two (weights = the share
    of pixels each image contributes, summing to 1). Without labels: the image.
    Label smoothing is applied by the loss (it commutes with mixing).
    """

    def __init__(self, image_paths, labels, transforms, seed: int = 0,
                 fmix_enabled: bool = False, cutmix_enabled: bool = False,
                 fmix_spectrum: str = fmix.DEFAULT_SPECTRUM, integer_targets: bool = False):
        if (fmix_enabled or cutmix_enabled) and labels is None:
            raise ValueError("mixing needs labels")
        self.image_paths = list(image_paths)
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.transforms = transforms
        self.seed = seed
        self.epoch = 0
        self.fmix_enabled = fmix_enabled
        self.cutmix_enabled = cutmix_enabled
        self.fmix_spectrum = fmix_spectrum
        self.integer_targets = integer_targets

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random stream the next items draw from."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.image_paths)

    def _one_hot(self, index: int) -> np.ndarray:
        return self._one_hot_class(self.labels[index])

    @staticmethod
    def _one_hot_class(stage: int) -> np.ndarray:
        return np.eye(psg_layout.NUM_CLASSES, dtype=np.float64)[stage]

    def _image(self, index: int) -> np.ndarray:
        """Sample ``index``'s image, uint8 RGB (height, width, 3)."""
        return read_image_rgb(self.image_paths[index])

    def _transformed(self, index: int, rng: np.random.Generator) -> torch.Tensor:
        self.transforms.set_random_state(rng, random.Random(int(rng.integers(2**63))))
        return self.transforms(image=self._image(index))["image"]

    @input_errors_as_items
    def __getitem__(self, key: int | tuple[int, int]):
        if isinstance(key, tuple):
            index, draw = key
            rng = np.random.default_rng([self.seed, self.epoch, STAGE_BALANCE_STREAM, draw])
        else:
            index = key
            rng = np.random.default_rng([self.seed, self.epoch, index])
        image = self._transformed(index, rng)
        if self.labels is None:
            return image
        target = self._one_hot(index)
        class_index = float(self.labels[index])  # what the original mixed, with --original-defects
        if self.fmix_enabled and rng.random() < FMIX_PROBABILITY:
            lam = float(np.clip(rng.beta(FMIX_ALPHA, FMIX_ALPHA), *FMIX_LAMBDA_RANGE))
            mask = fmix.sample_mask(lam, FMIX_DECAY_POWER, tuple(image.shape[1:]), FMIX_MAX_SOFT, rng,
                                    self.fmix_spectrum)
            partner = int(rng.integers(len(self)))
            mask_tensor = torch.from_numpy(mask)
            image = mask_tensor * image + (1.0 - mask_tensor) * self._transformed(partner, rng)
            share = fmix.mask_share(lam, mask.size)
            target = share * target + (1.0 - share) * self._one_hot(partner)
            class_index = share * class_index + (1.0 - share) * float(self.labels[partner])
        if self.cutmix_enabled and rng.random() < CUTMIX_PROBABILITY:
            lam = float(np.clip(rng.beta(CUTMIX_ALPHA, CUTMIX_ALPHA), *CUTMIX_LAMBDA_RANGE))
            height, width = image.shape[1:]
            top, bottom, left, right = cutmix_box((height, width), lam, rng)
            partner = int(rng.integers(len(self)))
            image = image.clone()
            image[:, top:bottom, left:right] = self._transformed(partner, rng)[:, top:bottom, left:right]
            share = 1.0 - (bottom - top) * (right - left) / (height * width)
            target = share * target + (1.0 - share) * self._one_hot(partner)
            class_index = share * class_index + (1.0 - share) * float(self.labels[partner])
        if self.integer_targets:
            target = self._one_hot_class(int(class_index))
        return image, torch.from_numpy(target.astype(np.float32))


# --------------------------------------------------------------------------
# Samplers
# --------------------------------------------------------------------------
# Third key of the balanced draws' generator (seed, epoch, this) and of the per-sample path's generators
# of those draws (seed, epoch, this, draw): above any row index, so apart from the per-sample generators
# keyed by (seed, epoch, row).
STAGE_BALANCE_STREAM = 2**40 + 1


class StageBalancedSampler(Sampler):
    """An epoch of training rows drawn with replacement, each stage weighted by its count to the ``-power``.

    A row of a stage with ``n`` training rows is drawn with probability
    proportional to ``n ** -power``: stage ``s`` then fills
    ``n_s ** (1 - power) / sum(n ** (1 - power))`` of the epoch (``power``
    1: every stage equally; 0.5: between the data's shares and equal ones).
    An epoch has as many draws as rows, from a generator keyed by
    ``(seed, epoch)``; with ``world_size > 1`` rank ``r`` takes draws
    ``r::world_size`` (every rank the same number, as DistributedSampler).
    Not the original's sampling (each row once per epoch, shuffled): an
    option for small, short runs in which a rare stage such as N1 is
    otherwise never predicted. Every draw gets its own augmentation: on the
    cached path keyed by its batch, on the per-sample path (``--no-cache``)
    by its number in the epoch, which the sampler yields with the row when
    ``numbered`` (see :class:`EpochImageDataset`).

    Parameters
    ----------
    labels : np.ndarray of int, shape (rows,)
        Stage of each training row (0..4).
    power : float
        At least 0 (0: rows drawn with replacement with equal probability).
    seed : int
    rank, world_size : int
    numbered : bool
        Yield ``(row, draw)`` pairs, ``draw`` the draw's number in the
        epoch over all ranks, instead of rows.
    """

    def __init__(self, labels: np.ndarray, power: float, seed: int, rank: int = 0, world_size: int = 1,
                 numbered: bool = False):
        counts = np.bincount(labels, minlength=psg_layout.NUM_CLASSES).astype(np.float64)
        weights = counts[labels] ** -power
        self.probabilities = weights / weights.sum()
        self.seed, self.rank, self.world_size, self.numbered = seed, rank, world_size, numbered
        self.per_rank = math.ceil(len(labels) / world_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch, STAGE_BALANCE_STREAM])
        draws = rng.choice(len(self.probabilities), size=self.per_rank * self.world_size, p=self.probabilities)
        rows = draws[self.rank::self.world_size].tolist()
        if not self.numbered:
            return iter(rows)
        return zip(rows, range(self.rank, len(draws), self.world_size))


# --------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------
def _finish_in_workers(device) -> bool:
    """Batches for a CPU model are finished in the loader's workers, beside the model's work."""
    return torch.device(device).type == "cpu"


def make_train_loader(data_root, table: EpochTable, rows: np.ndarray, img_size, batch_size: int,
                      workers: int, seed: int, fmix_enabled: bool = True, cutmix_enabled: bool = False,
                      rank: int = 0, world_size: int = 1, pin_memory: bool = False,
                      cache_dir: Path | str | None = DEFAULT_CACHE_DIR, device: torch.device | str = "cpu",
                      progress: bool = False, fmix_spectrum: str = fmix.DEFAULT_SPECTRUM,
                      resize: str = DEFAULT_RESIZE, stage_balance: float = 0.0, integer_targets: bool = False,
                      dropout_probability: float = DROPOUT_PROBABILITY) -> DataLoader:
    """The training DataLoader over ``rows`` of the table (shuffled; augmented).

    Call :func:`set_loader_epoch` before iterating each epoch, and take the batches through
    :func:`batch_augment.device_batches`. With ``world_size > 1`` each rank gets its shard of every epoch's permutation.

    Parameters
    ----------
    cache_dir : path-like or None
        The image cache's folder (built on the first pass): whole batches
        read from the cache (:class:`cached_batches.CachedTrainBatches`) and augmented by
        :func:`batch_augment.finish_batch`. None: the original's per-sample path (decode, albumentations, FMix per image).
    device : torch.device or str
        The model's device. On CUDA the loader yields uint8 pixels with the
        batch's random plan (:class:`batch_augment.CachedBatch`), and
        :func:`batch_augment.finish_batch` augments them on the GPU; for a
        CPU model the workers finish the batches with the same function.
    progress : bool
        Progress bar while the cache is built.
    img_size : (int, int)
        Model input size in pixels, (height, width).
    fmix_spectrum, resize : str
        The FMix masks' spectrum (:mod:`fmix`), the resize's interpolation (:func:`image_cache.make_resize`).
    stage_balance : float
        0: every row once per epoch in a shuffled order (the original's);
        above 0: rows drawn by :class:`StageBalancedSampler` with this power.
    integer_targets, dropout_probability : bool, float
        The original's integer mixed targets (``--original-defects``); each hole dropout's (0: ``--no-holes``).
    (The other parameters as for :class:`EpochImageDataset` and DataLoader.)

    Yields
    ------
    (images, targets) : float32 tensors (batch, 3, height, width), (batch, 5), or a
    :class:`batch_augment.CachedBatch`, which :func:`batch_augment.finish_batch` makes into them.
    """
    sampler_of = functools.partial(_train_sampler, table.labels[rows], stage_balance, seed, rank, world_size)
    if cache_dir is None:
        paths = table_image_paths(data_root, table)
        dataset = EpochImageDataset(
            [paths[r] for r in rows], table.labels[rows], get_train_transforms(img_size, resize, dropout_probability), seed=seed,
            fmix_enabled=fmix_enabled, cutmix_enabled=cutmix_enabled, fmix_spectrum=fmix_spectrum,
            integer_targets=integer_targets,
        )
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler_of(dataset, numbered=True),
                          num_workers=workers, collate_fn=collate, pin_memory=pin_memory, drop_last=False)
    opener = functools.partial(open_cache, data_root, table, img_size, cache_dir, rows=rows, workers=workers,
                               progress=progress, resize=resize)
    dataset = CachedTrainBatches(opener, rows, table.labels[rows], img_size, seed, rank, fmix_enabled,
                                 cutmix_enabled, finish=_finish_in_workers(device), fmix_spectrum=fmix_spectrum,
                                 workers=workers, integer_targets=integer_targets,
                                 dropout_probability=dropout_probability)
    return CachedLoader(dataset, batch_size=None, sampler=NumberedBatches(sampler_of(dataset), batch_size),
                        num_workers=workers, pin_memory=pin_memory, persistent_workers=workers > 0)


def _train_sampler(labels: np.ndarray, stage_balance: float, seed: int, rank: int, world_size: int, dataset,
                   numbered: bool = False):
    """The training rows' order each epoch: a :class:`StageBalancedSampler` over ``labels`` (the rows' stage
    codes, shape (rows,)) when ``stage_balance`` is above 0, else a shuffling ``DistributedSampler`` of
    ``dataset`` (one rank's shard of each epoch's permutation)."""
    if stage_balance > 0:
        return StageBalancedSampler(labels, stage_balance, seed, rank, world_size, numbered)
    return DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)


def make_eval_loader(data_root, table: EpochTable, img_size, batch_size: int, workers: int,
                     rows: np.ndarray | None = None, rank: int = 0, world_size: int = 1,
                     pin_memory: bool = False, cache_dir: Path | str | None = DEFAULT_CACHE_DIR,
                     device: torch.device | str = "cpu", progress: bool = False,
                     resize: str = DEFAULT_RESIZE) -> DataLoader:
    """The validation / inference DataLoader: table order, no augmentation.

    Parameters
    ----------
    data_root : path-like
        Data root of the table.
    table : EpochTable
        Rows to read; with labels the items are ``(image, one-hot target)``,
        without (the test table) the image alone.
    img_size : (int, int)
        Model input size in pixels, (height, width).
    batch_size, workers : int
        DataLoader settings.
    rows : np.ndarray of int, optional
        Subset of table rows (validation fold); all rows by default.
    rank, world_size : int
        With ``world_size > 1``, this rank reads rows ``rank::world_size``
        of the subset (every row exactly once over all ranks).
    pin_memory : bool
        Pin batches for faster copies to CUDA.
    cache_dir, device, progress, resize
        As for :func:`make_train_loader`; the images are the same to the
        bit either way.

    Returns
    -------
    torch.utils.data.DataLoader
        Yields float32 images (batch, 3, height, width) [, targets (batch, 5)],
        or cached batches without a plan (:class:`batch_augment.CachedBatch`), which
        :func:`batch_augment.finish_batch` makes into them.
    """
    rows = np.arange(len(table)) if rows is None else np.asarray(rows)
    rows = rows[rank::world_size]
    labels = None if table.labels is None else table.labels[rows]
    if cache_dir is None:
        paths = table_image_paths(data_root, table)
        dataset = EpochImageDataset([paths[r] for r in rows], labels, get_valid_transforms(img_size, resize))
        return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate,
                          pin_memory=pin_memory)
    opener = functools.partial(open_cache, data_root, table, img_size, cache_dir, rows=rows, workers=workers,
                               progress=progress, resize=resize)
    dataset = CachedEvalBatches(opener, rows, labels, finish=_finish_in_workers(device), workers=workers)
    batches = BatchSampler(SequentialSampler(dataset), batch_size, drop_last=False)
    return CachedLoader(dataset, batch_size=None, sampler=batches, num_workers=workers, pin_memory=pin_memory,
                        persistent_workers=workers > 0)


def set_loader_epoch(loader: DataLoader, epoch: int) -> None:
    """Make the loader's next pass epoch ``epoch``'s permutation and augmentations."""
    loader.sampler.set_epoch(epoch)
    if isinstance(loader.dataset, EpochImageDataset):
        loader.dataset.set_epoch(epoch)
