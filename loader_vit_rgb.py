"""The shared data code of both trainers and of inference (the seed's loaderViTrgb.py).

What it does, top to bottom:

- reads the challenge CSVs and checks, before any training, that every
  listed image is a file inside the data root (all missing ones reported at
  once);
- splits the training table into folds (by recording, or the seed's
  stratified split over epochs);
- a Dataset that reads an epoch image with OpenCV as RGB and applies the
  seed's albumentations pipeline, then FMix (and optionally CutMix) with a
  partner image drawn from the training set, producing mixed one-hot targets;
- the DataLoaders for training, validation and inference.

Randomness: every sample draws from its own generator seeded by
``(seed, epoch, index)``, and the shuffling sampler is seeded by
``seed + epoch``. An epoch's augmentations therefore depend only on the seed
and the epoch number, not on the number of workers or processes, which is
what makes ``--resume`` reproduce an uninterrupted run exactly.
"""
from __future__ import annotations

import csv
import os
import random
import stat
import zlib
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from torch.utils.data import DataLoader, Dataset, DistributedSampler

import fmix
import psg_layout
from psg_layout import EpochTable, InputError, where

# ImageNet statistics, as the seed normalised with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The seed's CoarseDropout and Cutout with the albumentations 1.0 defaults it
# ran: 8 holes of 8 x 8 pixels each, filled with 0 after normalisation.
DROPOUT_HOLES = 8
DROPOUT_HOLE_PIXELS = 8
DROPOUT_PROBABILITY = 0.5
# The seed's FMix: applied to half of the samples, lambda ~ Beta(1, 1)
# clipped to [0.6, 0.7], decay power 3, max_soft=True (read as 1.0).
FMIX_PROBABILITY = 0.5
FMIX_ALPHA = 1.0
FMIX_LAMBDA_RANGE = (0.6, 0.7)
FMIX_DECAY_POWER = 3.0
FMIX_MAX_SOFT = 1.0
# The seed's CutMix (off by default): lambda ~ Beta(1, 1) clipped to [0.3, 0.4].
CUTMIX_PROBABILITY = 0.5
CUTMIX_ALPHA = 1.0
CUTMIX_LAMBDA_RANGE = (0.3, 0.4)


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
        Number of folds (the seed: 5).
    seed : int
        Shuffling seed (the seed: 72).
    cv : {"subject", "stratified"}
        ``"subject"``: StratifiedGroupKFold grouped by recording ID, so no
        recording is on both sides. ``"stratified"``: the seed's
        StratifiedKFold over epochs (neighbouring epochs of one night land
        in training and validation alike; kept to reproduce the seed).

    Returns
    -------
    np.ndarray of int64, shape (rows,)
        Fold index of each row; fold ``k``'s validation rows are ``folds == k``.
    """
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
# Images and transforms
# --------------------------------------------------------------------------
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_intact(encoded: np.ndarray) -> bool:
    """Whether a file that starts with the PNG signature has whole chunks up to ``IEND``, CRCs right.

    Microseconds per image; a truncated or damaged file is refused here rather
    than by libpng, which would print its complaint to stderr beside ours.
    """
    position, size = len(PNG_SIGNATURE), encoded.size
    while position + 12 <= size:
        length = int.from_bytes(encoded[position:position + 4].tobytes(), "big")
        end = position + 12 + length
        if end > size:
            return False
        if zlib.crc32(encoded[position + 4:end - 4]) != int.from_bytes(encoded[end - 4:end].tobytes(), "big"):
            return False
        if encoded[position + 4:position + 8].tobytes() == b"IEND":
            return True
        position = end
    return False


def read_image_rgb(path: Path | str) -> np.ndarray:
    """Decode an image file as 8-bit RGB.

    Grey, palette, 16-bit and RGBA files are converted to 3-channel uint8
    (OpenCV's ``IMREAD_COLOR``); sizes are left as they are (the transforms
    resize).

    Returns
    -------
    np.ndarray of uint8, shape (height, width, 3)

    Raises
    ------
    InputError
        The file cannot be read or is not a decodable image (corrupt or truncated).
    """
    try:
        encoded = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise InputError(f"cannot read image: {err.strerror} {where(path)}") from None
    damaged = encoded[:len(PNG_SIGNATURE)].tobytes() == PNG_SIGNATURE and not _png_intact(encoded)
    image = cv2.imdecode(encoded, cv2.IMREAD_COLOR) if encoded.size and not damaged else None
    if image is None:
        raise InputError(f"not a decodable image (corrupt or truncated PNG?) {where(path)}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def get_train_transforms(img_size: int) -> A.Compose:
    """The seed's training pipeline: Resize, Normalize, two dropouts, to tensor.

    Parameters
    ----------
    img_size : int
        Output height and width in pixels.

    Returns
    -------
    albumentations.Compose
        Maps ``image`` (uint8 HWC RGB) to a float32 tensor (3, img_size, img_size).
    """
    def dropout():
        return A.CoarseDropout(
            num_holes_range=(DROPOUT_HOLES, DROPOUT_HOLES),
            hole_height_range=(DROPOUT_HOLE_PIXELS, DROPOUT_HOLE_PIXELS),
            hole_width_range=(DROPOUT_HOLE_PIXELS, DROPOUT_HOLE_PIXELS),
            fill=0, p=DROPOUT_PROBABILITY,
        )

    return A.Compose([
        A.Resize(img_size, img_size),
        A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD, max_pixel_value=255.0),
        dropout(),  # the seed's CoarseDropout
        dropout(),  # the seed's Cutout (same defaults; removed from albumentations 2)
        ToTensorV2(),
    ])


def get_valid_transforms(img_size: int) -> A.Compose:
    """Validation and inference pipeline: Resize, Normalize, to tensor (no randomness)."""
    return A.Compose([
        A.Resize(img_size, img_size),
        A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD, max_pixel_value=255.0),
        ToTensorV2(),
    ])


def _cutmix_box(shape: tuple[int, int], lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A box of ``1 - lam`` of the area around a uniform centre, clipped: (top, bottom, left, right)."""
    height, width = shape
    cut = np.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * cut), int(width * cut)
    centre_y, centre_x = rng.integers(height), rng.integers(width)
    top, bottom = np.clip([centre_y - cut_h // 2, centre_y + cut_h // 2], 0, height)
    left, right = np.clip([centre_x - cut_w // 2, centre_x + cut_w // 2], 0, width)
    return int(top), int(bottom), int(left), int(right)


class EpochImageDataset(Dataset):
    """Epoch images with the seed's augmentations and mixed one-hot targets.

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

    Items
    -----
    With labels: ``(image, target)``, image float32 (3, H, W), target
    float32 (5,), a one-hot vector or the mixture of two (weights = the share
    of pixels each image contributes, summing to 1). Without labels: the image.
    Label smoothing is applied by the loss (it commutes with mixing).
    """

    def __init__(self, image_paths, labels, transforms, seed: int = 0,
                 fmix_enabled: bool = False, cutmix_enabled: bool = False):
        if (fmix_enabled or cutmix_enabled) and labels is None:
            raise ValueError("mixing needs labels")
        self.image_paths = list(image_paths)
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.transforms = transforms
        self.seed = seed
        self.epoch = 0
        self.fmix_enabled = fmix_enabled
        self.cutmix_enabled = cutmix_enabled

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random stream the next items draw from."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.image_paths)

    def _one_hot(self, index: int) -> np.ndarray:
        return np.eye(psg_layout.NUM_CLASSES, dtype=np.float64)[self.labels[index]]

    def _transformed(self, index: int, rng: np.random.Generator) -> torch.Tensor:
        self.transforms.set_random_state(rng, random.Random(int(rng.integers(2**63))))
        return self.transforms(image=read_image_rgb(self.image_paths[index]))["image"]

    def __getitem__(self, index: int):
        rng = np.random.default_rng([self.seed, self.epoch, index])
        image = self._transformed(index, rng)
        if self.labels is None:
            return image
        target = self._one_hot(index)
        if self.fmix_enabled and rng.random() < FMIX_PROBABILITY:
            lam = float(np.clip(rng.beta(FMIX_ALPHA, FMIX_ALPHA), *FMIX_LAMBDA_RANGE))
            mask = fmix.sample_mask(lam, FMIX_DECAY_POWER, tuple(image.shape[1:]), FMIX_MAX_SOFT, rng)
            partner = int(rng.integers(len(self)))
            mask_tensor = torch.from_numpy(mask)
            image = mask_tensor * image + (1.0 - mask_tensor) * self._transformed(partner, rng)
            share = float(mask.mean(dtype=np.float64))
            target = share * target + (1.0 - share) * self._one_hot(partner)
        if self.cutmix_enabled and rng.random() < CUTMIX_PROBABILITY:
            lam = float(np.clip(rng.beta(CUTMIX_ALPHA, CUTMIX_ALPHA), *CUTMIX_LAMBDA_RANGE))
            height, width = image.shape[1:]
            top, bottom, left, right = _cutmix_box((height, width), lam, rng)
            partner = int(rng.integers(len(self)))
            image = image.clone()
            image[:, top:bottom, left:right] = self._transformed(partner, rng)[:, top:bottom, left:right]
            share = 1.0 - (bottom - top) * (right - left) / (height * width)
            target = share * target + (1.0 - share) * self._one_hot(partner)
        return image, torch.from_numpy(target.astype(np.float32))


# --------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------
def make_train_loader(data_root, table: EpochTable, rows: np.ndarray, img_size: int, batch_size: int,
                      workers: int, seed: int, fmix_enabled: bool = True, cutmix_enabled: bool = False,
                      rank: int = 0, world_size: int = 1, pin_memory: bool = False) -> DataLoader:
    """The training DataLoader over ``rows`` of the table (shuffled; augmented).

    Call :func:`set_loader_epoch` before iterating each epoch. With
    ``world_size > 1`` each rank gets its shard of every epoch's permutation.

    Yields
    ------
    (images, targets) : float32 tensors (batch, 3, img_size, img_size), (batch, 5)
    """
    paths = table_image_paths(data_root, table)
    dataset = EpochImageDataset(
        [paths[r] for r in rows], table.labels[rows], get_train_transforms(img_size), seed=seed,
        fmix_enabled=fmix_enabled, cutmix_enabled=cutmix_enabled,
    )
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=pin_memory, drop_last=False)


def make_eval_loader(data_root, table: EpochTable, img_size: int, batch_size: int, workers: int,
                     rows: np.ndarray | None = None, rank: int = 0, world_size: int = 1,
                     pin_memory: bool = False) -> DataLoader:
    """The validation / inference DataLoader: table order, no augmentation.

    Parameters
    ----------
    data_root : path-like
        Data root of the table.
    table : EpochTable
        Rows to read; with labels the items are ``(image, one-hot target)``,
        without (the test table) the image alone.
    img_size : int
        Model input size in pixels.
    batch_size, workers : int
        DataLoader settings.
    rows : np.ndarray of int, optional
        Subset of table rows (validation fold); all rows by default.
    rank, world_size : int
        With ``world_size > 1``, this rank reads rows ``rank::world_size``
        of the subset (every row exactly once over all ranks).
    pin_memory : bool
        Pin batches for faster copies to CUDA.

    Returns
    -------
    torch.utils.data.DataLoader
        Yields float32 images (batch, 3, img_size, img_size) [, targets (batch, 5)].
    """
    rows = np.arange(len(table)) if rows is None else np.asarray(rows)
    rows = rows[rank::world_size]
    paths = table_image_paths(data_root, table)
    labels = None if table.labels is None else table.labels[rows]
    dataset = EpochImageDataset([paths[r] for r in rows], labels, get_valid_transforms(img_size))
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                      pin_memory=pin_memory)


def set_loader_epoch(loader: DataLoader, epoch: int) -> None:
    """Make the loader's next pass epoch ``epoch``'s permutation and augmentations."""
    loader.sampler.set_epoch(epoch)
    loader.dataset.set_epoch(epoch)


def iterate_batches(loader: DataLoader):
    """Iterate ``loader``; an InputError raised in a worker keeps its one-line message.

    DataLoader re-raises a worker's exception with the worker's whole
    traceback as its message; the original message is its last line.
    """
    try:
        yield from loader
    except InputError as err:
        last_line = str(err).strip().splitlines()[-1]
        raise InputError(last_line.split("InputError: ", 1)[-1]) from None
