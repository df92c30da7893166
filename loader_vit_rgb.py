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
- the preprocessed image cache: every image decoded and resized once, as
  uint8 arrays (one file per recording, one channel for grey images);
- whole batches read from the cache and augmented on the model's device
  (normalisation, the two dropouts, FMix with torch masks, CutMix), with the
  per-sample path's distributions and, without augmentation, its tensors to
  the bit;
- the DataLoaders for training, validation and inference: cached by
  default, the seed's per-sample path with ``cache_dir=None``.

Randomness: on the per-sample path every sample draws from its own
generator seeded by ``(seed, epoch, index)``; on the cached path every batch
from one seeded by ``(seed, epoch, rank, step)``. The shuffling sampler is
seeded by ``seed + epoch``. An epoch's augmentations therefore depend only
on the seed and the epoch number (and the number of processes), not on the
number of workers or where a batch is finished, which is what makes
``--resume`` reproduce an uninterrupted run exactly.
"""
from __future__ import annotations

import concurrent.futures
import csv
import functools
import hashlib
import json
import math
import os
import random
import stat
import zlib
from pathlib import Path

# albumentations asks the package index for a newer version at import unless told not to:
# the project never touches the network by itself.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import albumentations as A  # noqa: E402
import cv2
import numpy as np
import torch
import torch.nn.functional as F
from albumentations.augmentations.dropout.transforms import BaseDropout
from albumentations.pytorch import ToTensorV2
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, Sampler, SequentialSampler
from tqdm import tqdm

import fmix
import psg_layout
from psg_layout import EpochTable, InputError, where

# ImageNet statistics, as the seed normalised with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The seed's CoarseDropout and Cutout with the albumentations 1.0 defaults it
# ran: 8 holes of 8 x 8 pixels each, filled with 0 after normalisation;
# CoarseDropout's holes lie inside the image, Cutout's are placed by a
# centre anywhere in it and clipped at the bottom and right borders (see Cutout).
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
# The preprocessed image cache: default folder (relative to the working
# directory, like DATA and weights) and the layout version in its manifests.
DEFAULT_CACHE_DIR = "cache"
CACHE_FORMAT = 1


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


def cutout_corners(centres: np.ndarray) -> np.ndarray:
    """albumentations 1.0 ``Cutout``'s hole corner (top or left) from its centre: ``max(centre - 4, 0)``.

    ``centres`` are uniform over ``0 .. size`` inclusive (Python's
    ``random.randint(0, size)``); the hole then spans ``corner`` up to
    ``min(corner + 8, size)``: full 8 pixels at the top and left borders
    (centres 0 to 4 all give corner 0), clipped to 4 to 7 pixels at the
    bottom and right ones.
    """
    return np.maximum(centres - DROPOUT_HOLE_PIXELS // 2, 0)


class Cutout(BaseDropout):
    """The seed's second dropout: albumentations 1.0's ``Cutout`` with its defaults (removed in 2.0).

    ``DROPOUT_HOLES`` holes of up to ``DROPOUT_HOLE_PIXELS`` square, each
    placed by :func:`cutout_corners` (unlike ``CoarseDropout``, whose holes
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


def get_train_transforms(img_size: int) -> A.Compose:
    """The seed's training pipeline: Resize, Normalize, CoarseDropout, Cutout, to tensor.

    Parameters
    ----------
    img_size : int
        Output height and width in pixels.

    Returns
    -------
    albumentations.Compose
        Maps ``image`` (uint8 HWC RGB) to a float32 tensor (3, img_size, img_size).
    """
    return A.Compose([
        A.Resize(img_size, img_size),
        A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD, max_pixel_value=255.0),
        A.CoarseDropout(num_holes_range=(DROPOUT_HOLES, DROPOUT_HOLES),
                        hole_height_range=(DROPOUT_HOLE_PIXELS, DROPOUT_HOLE_PIXELS),
                        hole_width_range=(DROPOUT_HOLE_PIXELS, DROPOUT_HOLE_PIXELS),
                        fill=0, p=DROPOUT_PROBABILITY),
        Cutout(p=DROPOUT_PROBABILITY),
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
    fmix_spectrum : {"original", "isotropic"}
        The FMix masks' spectrum (:mod:`fmix`; the original's by default).

    Items
    -----
    With labels: ``(image, target)``, image float32 (3, H, W), target
    float32 (5,), a one-hot vector or the mixture of two (weights = the share
    of pixels each image contributes, summing to 1). Without labels: the image.
    Label smoothing is applied by the loss (it commutes with mixing).
    """

    def __init__(self, image_paths, labels, transforms, seed: int = 0,
                 fmix_enabled: bool = False, cutmix_enabled: bool = False,
                 fmix_spectrum: str = fmix.DEFAULT_SPECTRUM):
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
            mask = fmix.sample_mask(lam, FMIX_DECAY_POWER, tuple(image.shape[1:]), FMIX_MAX_SOFT, rng,
                                    self.fmix_spectrum)
            partner = int(rng.integers(len(self)))
            mask_tensor = torch.from_numpy(mask)
            image = mask_tensor * image + (1.0 - mask_tensor) * self._transformed(partner, rng)
            share = fmix.mask_share(lam, mask.size)
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
# The preprocessed image cache
# --------------------------------------------------------------------------
def cache_folder(cache_dir: Path | str, data_root: Path | str, img_size: int) -> Path:
    """``<cache_dir>/<root name>-<hash of the root's real path>/<img_size>px``: one folder per data root and size."""
    real_root = os.path.realpath(data_root)
    digest = hashlib.sha256(real_root.encode()).hexdigest()[:12]
    return Path(cache_dir) / f"{Path(real_root).name}-{digest}" / f"{img_size}px"


def check_cache_dir(cache_dir: Path | str, data_root: Path | str) -> None:
    """Refuse a cache folder inside the data root (InputError)."""
    real_root, real_cache = os.path.realpath(data_root), os.path.realpath(cache_dir)
    if os.path.commonpath([real_root, real_cache]) == real_root:
        raise InputError(f"the image cache must not be inside the data root {data_root} (it may be read-only): "
                         f"choose another --cache-dir {where(cache_dir)}")


def _cache_settings(img_size: int) -> dict:
    """Everything besides the image files that the cached pixels depend on."""
    return {"format": CACHE_FORMAT, "img_size": img_size, "resize": "albumentations Resize, cv2.INTER_LINEAR",
            "decode": "cv2.imdecode IMREAD_COLOR", "albumentations": A.__version__, "opencv": cv2.__version__}


def _fingerprint(paths: list[Path], img_size: int) -> str:
    """SHA-256 of the resize settings and every file's name, size and modification time (ns)."""
    listing = []
    for path in paths:
        status = os.stat(path)
        listing.append([path.name, status.st_size, status.st_mtime_ns])
    text = json.dumps([_cache_settings(img_size), listing], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _read_manifest(manifest_path: Path, array_path: Path, fingerprint: str) -> dict | None:
    """The recording's manifest if it matches ``fingerprint`` and its array is complete, else None."""
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        size = array_path.stat().st_size
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("fingerprint") != fingerprint or manifest.get("bytes") != size:
        return None
    return manifest


def _build_recording(paths: list[Path], img_size: int, array_path: Path, manifest_path: Path,
                     fingerprint: str) -> dict:
    """Decode and resize one recording's images into ``array_path``; then write its manifest.

    The array is a ``.npy`` file of uint8, shape (images, channels, S, S),
    with 1 channel while every image is grey (R = G = B after the resize) and
    3 from the first that is not. Both files are written under temporary
    names and renamed into place, the manifest last, so a half-built
    recording has no manifest and is rebuilt.
    """
    manifest_path.unlink(missing_ok=True)
    resize = A.Resize(img_size, img_size)  # the per-sample path's resize, so the pixels are the same
    count = len(paths)
    with psg_layout.atomic_path(array_path) as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(count, 1, img_size, img_size))
        for index, path in enumerate(paths):
            image = resize(image=read_image_rgb(path))["image"].transpose(2, 0, 1)
            if array.shape[1] == 1 and not (np.array_equal(image[0], image[1]) and np.array_equal(image[0], image[2])):
                done = np.array(array[:index])
                del array
                array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(count, 3, img_size, img_size))
                array[:index] = done
            array[index] = image[:array.shape[1]]
        channels = array.shape[1]
        array.flush()
        del array
    size = array_path.stat().st_size
    manifest = {"fingerprint": fingerprint, "images": count, "channels": channels,
                "header": size - count * channels * img_size * img_size, "bytes": size,
                "files": [path.name for path in paths], **_cache_settings(img_size)}
    with psg_layout.atomic_path(manifest_path) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return manifest


class ImageCache:
    """Read access to the cached images of a table's rows.

    Holds only file names and index arrays (cheap to send to DataLoader
    workers). Images are read with positioned reads of the ``.npy`` files
    (``np.load(path, mmap_mode="r")`` maps one as an array): pages of a
    memory map stay in the process's resident memory once touched, reads
    leave them to the page cache, so memory does not grow with the data set.

    Attributes
    ----------
    img_size : int
        Height and width in pixels.
    channels : int
        1 when every opened recording is grey, else 3 (grey ones are
        broadcast to 3 when read together with colour ones).
    """

    def __init__(self, files: list[str], headers: list[int], file_channels: list[int], row_file: np.ndarray,
                 row_position: np.ndarray, img_size: int):
        self.files = files
        self.headers = headers
        self.file_channels = file_channels
        self.channels = max(file_channels, default=1)
        self.row_file = row_file
        self.row_position = row_position
        self.img_size = img_size

    def read(self, rows) -> np.ndarray:
        """Images of table ``rows``.

        Returns
        -------
        np.ndarray of uint8, shape (len(rows), channels, img_size, img_size)
        """
        rows = np.asarray(rows, dtype=np.int64)
        size = self.img_size
        out = np.empty((len(rows), self.channels, size, size), dtype=np.uint8)
        files, positions = self.row_file[rows], self.row_position[rows]
        for file in np.unique(files):
            members = np.flatnonzero(files == file)
            channels = self.file_channels[file]
            image_bytes = channels * size * size
            target = out if channels == self.channels else np.empty((len(rows), channels, size, size), np.uint8)
            descriptor = os.open(self.files[file], os.O_RDONLY)
            try:
                for member in members:
                    offset = self.headers[file] + int(positions[member]) * image_bytes
                    if os.preadv(descriptor, [target[member]], offset) != image_bytes:
                        raise InputError(f"image cache file shorter than its manifest says: delete it to rebuild "
                                         f"{where(self.files[file])}")
            finally:
                os.close(descriptor)
            if target is not out:
                out[members] = target[members]
        return out


def open_cache(data_root: Path | str, table: EpochTable, img_size: int, cache_dir: Path | str,
               rows: np.ndarray | None = None, workers: int = 0, progress: bool = False) -> ImageCache:
    """Open the image cache of the recordings holding ``rows``, building what is missing or stale.

    A recording's cache holds every image the table lists for it, sorted by
    file name, decoded and resized exactly as the per-sample path does
    (:func:`read_image_rgb`, albumentations ``Resize``). It is rebuilt when
    the list of files, their sizes or modification times, the size or the
    library versions change (a fingerprint in its manifest).

    Parameters
    ----------
    data_root : path-like
        Data root of the table (never written to).
    table : EpochTable
        The table whose rows are read.
    img_size : int
        Model input size in pixels.
    cache_dir : path-like
        Folder of caches, outside the data root (see :func:`cache_folder`).
    rows : np.ndarray of int, optional
        Rows that will be read (all by default); only their recordings are opened.
    workers : int
        Processes building recordings in parallel (0: in this process).
    progress : bool
        Show a progress bar while building.

    Raises
    ------
    InputError
        A cache folder inside the data root or that cannot be made, or an
        image that cannot be decoded.
    """
    data_root = Path(data_root)
    check_cache_dir(cache_dir, data_root)
    folder = cache_folder(cache_dir, data_root, img_size)
    wanted = set(table.recording_ids) if rows is None else {table.recording_ids[r] for r in rows}
    listed: dict[str, set[str]] = {}
    for recording_id, idnum in zip(table.recording_ids, table.idnums):
        if recording_id in wanted:
            listed.setdefault(recording_id, set()).add(idnum)
    names = {recording_id: sorted(idnums) for recording_id, idnums in listed.items()}
    manifests, stale = {}, []
    for recording_id, recording_names in names.items():
        paths = [psg_layout.image_path(data_root, recording_id, name) for name in recording_names]
        array_path, manifest_path = folder / f"{recording_id}.npy", folder / f"{recording_id}.json"
        fingerprint = _fingerprint(paths, img_size)
        manifests[recording_id] = _read_manifest(manifest_path, array_path, fingerprint)
        if manifests[recording_id] is None:
            stale.append((recording_id, (paths, img_size, array_path, manifest_path, fingerprint)))
    if stale:
        _build_recordings(folder, stale, manifests, img_size, workers, progress)
    order = list(names)
    file_of = {recording_id: number for number, recording_id in enumerate(order)}
    position_of = {(recording_id, name): position for recording_id in order
                   for position, name in enumerate(names[recording_id])}
    row_file = np.full(len(table), -1, dtype=np.int64)
    row_position = np.full(len(table), -1, dtype=np.int64)
    for row, (recording_id, idnum) in enumerate(zip(table.recording_ids, table.idnums)):
        if recording_id in file_of:
            row_file[row], row_position[row] = file_of[recording_id], position_of[recording_id, idnum]
    return ImageCache([str(folder / f"{r}.npy") for r in order], [manifests[r]["header"] for r in order],
                      [manifests[r]["channels"] for r in order], row_file, row_position, img_size)


def _build_recordings(folder: Path, stale: list, manifests: dict, img_size: int, workers: int,
                      progress: bool) -> None:
    """Build the ``stale`` recordings' caches (in ``workers`` processes), filling ``manifests``."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot create the image cache folder: {err.strerror} {where(folder)}") from None
    total = sum(len(job[0]) for _, job in stale)
    with tqdm(total=total, desc=f"caching {img_size}px images", unit="image", disable=not progress,
              dynamic_ncols=True) as bar:
        if workers == 0:
            for recording_id, job in stale:
                manifests[recording_id] = _build_recording(*job)
                bar.update(len(job[0]))
            return
        with concurrent.futures.ProcessPoolExecutor(min(workers, len(stale))) as pool:
            futures = {pool.submit(_build_recording, *job): (recording_id, len(job[0])) for recording_id, job in stale}
            for future in concurrent.futures.as_completed(futures):
                recording_id, count = futures[future]
                manifests[recording_id] = future.result()
                bar.update(count)


# --------------------------------------------------------------------------
# Whole batches from the cache, augmented on the model's device
# --------------------------------------------------------------------------
class _NumberedBatches(Sampler):
    """The batches of ``sampler``'s order as ``(epoch, step, sample indices)`` keys.

    The epoch travels in the key (not in the dataset), so persistent
    workers see :meth:`set_epoch`.
    """

    def __init__(self, sampler: DistributedSampler, batch_size: int):
        self.sampler = sampler
        self.batch_size = batch_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    def __iter__(self):
        indices = list(self.sampler)
        for step, start in enumerate(range(0, len(indices), self.batch_size)):
            yield self.epoch, step, indices[start:start + self.batch_size]


class _CachedBatches(Dataset):
    """Rows of a table read from the image cache, a whole batch per item.

    The cache is opened by :meth:`prepare` (the loader calls it before its
    first pass, in the main process), not on construction.

    Parameters
    ----------
    opener : callable
        Returns the :class:`ImageCache` (``open_cache`` with its arguments).
    rows : np.ndarray of int
        Table row of each sample.
    labels : np.ndarray of int64 or None
        Stage of each sample.
    finish : bool
        Finish batches here (:func:`finish_batch` on the CPU, in the worker)
        rather than leave the pixels and the plan to the model's device.
    """

    def __init__(self, opener, rows: np.ndarray, labels: np.ndarray | None, finish: bool):
        self.opener = opener
        self.cache: ImageCache | None = None
        self.rows = np.asarray(rows, dtype=np.int64)
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.finish = finish

    def prepare(self) -> None:
        """Open the cache, building what is missing or stale (once)."""
        if self.cache is None:
            self.cache = self.opener()

    def __len__(self) -> int:
        return len(self.rows)

    def _finished(self, batch: dict):
        return finish_batch(batch, torch.device("cpu")) if self.finish else batch


class CachedEvalBatches(_CachedBatches):
    """Validation / inference batches: items are lists of sample indices (in order).

    Items: ``{"pixels": uint8 (batch, C, S, S)[, "labels": int64 (batch,)]}``,
    or finished: float32 images [, one-hot targets].
    """

    def __getitem__(self, indices):
        batch = {"pixels": torch.from_numpy(self.cache.read(self.rows[indices]))}
        if self.labels is not None:
            batch["labels"] = torch.from_numpy(self.labels[indices])
        return self._finished(batch)


class CachedTrainBatches(_CachedBatches):
    """Training batches with the random plan of their augmentation.

    An item's key is ``(epoch, step, sample indices)``; everything random
    about the batch comes from a generator seeded by ``(seed, epoch, rank,
    step)``, drawn with the per-sample path's distributions: per image (the
    batch's own and every partner) each of the two dropouts with p = 0.5,
    the CoarseDropout's 8 hole corners uniform over the positions where an
    8 x 8 hole fits, the Cutout's from centres uniform over the image
    (:func:`cutout_corners`); per sample FMix with p = 0.5, lambda ~ Beta(1, 1)
    clipped to [0.6, 0.7] and a partner uniform over all training samples;
    the same for CutMix when enabled, with its box. The FMix masks
    themselves are drawn where the batch is finished, from ``noise_seed``,
    with the spectrum ``fmix_spectrum``.

    Items: ``pixels`` uint8 (n, C, S, S) holding the batch's images, then
    the FMix partners, then the CutMix partners; ``labels`` (n,); ``dropout``
    bool (n, 2); ``corners`` int64 (n, 2, holes, 2) as (top, left);
    ``fmix_rows`` (m,) and ``fmix_lams`` float64 (m,); ``cutmix_rows`` (k,)
    and ``cutmix_boxes`` int64 (k, 4) as (top, bottom, left, right);
    ``noise_seed`` int; ``fmix_spectrum`` str. Or, finished: float32 images
    and targets.
    """

    def __init__(self, opener, rows: np.ndarray, labels: np.ndarray, img_size: int, seed: int, rank: int,
                 fmix_enabled: bool, cutmix_enabled: bool, finish: bool,
                 dropout_probability: float = DROPOUT_PROBABILITY, fmix_spectrum: str = fmix.DEFAULT_SPECTRUM):
        super().__init__(opener, rows, labels, finish)
        self.img_size = img_size
        self.seed, self.rank = seed, rank
        self.fmix_enabled, self.cutmix_enabled = fmix_enabled, cutmix_enabled
        self.dropout_probability = dropout_probability
        self.fmix_spectrum = fmix_spectrum

    def __getitem__(self, key):
        epoch, step, indices = key
        rng = np.random.default_rng([self.seed, epoch, self.rank, step])
        own, size, count = np.asarray(indices, dtype=np.int64), self.img_size, len(indices)
        fmix_on = self.fmix_enabled & (rng.random(count) < FMIX_PROBABILITY)
        fmix_lams = np.clip(rng.beta(FMIX_ALPHA, FMIX_ALPHA, count), *FMIX_LAMBDA_RANGE)[fmix_on]
        fmix_partners = rng.integers(len(self), size=count)[fmix_on]
        cutmix_on = self.cutmix_enabled & (rng.random(count) < CUTMIX_PROBABILITY)
        cutmix_lams = np.clip(rng.beta(CUTMIX_ALPHA, CUTMIX_ALPHA, count), *CUTMIX_LAMBDA_RANGE)[cutmix_on]
        cutmix_partners = rng.integers(len(self), size=count)[cutmix_on]
        boxes = np.array([_cutmix_box((size, size), lam, rng) for lam in cutmix_lams], dtype=np.int64)
        members = np.concatenate([own, fmix_partners, cutmix_partners])
        holes = (len(members), DROPOUT_HOLES, 2)
        corners = np.stack([rng.integers(0, size - DROPOUT_HOLE_PIXELS + 1, size=holes),  # CoarseDropout
                            cutout_corners(rng.integers(0, size + 1, size=holes))], axis=1)  # Cutout
        batch = {
            "pixels": torch.from_numpy(self.cache.read(self.rows[members])),
            "labels": torch.from_numpy(self.labels[members]),
            "dropout": torch.from_numpy(rng.random((len(members), 2)) < self.dropout_probability),
            "corners": torch.from_numpy(corners),
            "fmix_rows": torch.from_numpy(np.flatnonzero(fmix_on)), "fmix_lams": torch.from_numpy(fmix_lams),
            "cutmix_rows": torch.from_numpy(np.flatnonzero(cutmix_on)),
            "cutmix_boxes": torch.from_numpy(boxes.reshape(-1, 4)),
            "noise_seed": int(rng.integers(2**62)), "fmix_spectrum": self.fmix_spectrum,
        }
        return self._finished(batch)


class CachedLoader(DataLoader):
    """A DataLoader over :class:`_CachedBatches`: opens the cache before its first pass."""

    def __iter__(self):
        self.dataset.prepare()
        return super().__iter__()


@functools.lru_cache(maxsize=None)
def _normalisation(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """albumentations Normalize's own float32 constants: pixel mean and 1 / (std * 255), shape (1, 3, 1, 1)."""
    normalize = A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD, max_pixel_value=255.0)
    mean = torch.tensor(normalize.mean_np, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    scale = torch.tensor(normalize.denominator, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    return mean, scale


def _empty_images(shape: tuple[int, int, int, int], device: torch.device,
                  memory_format: torch.memory_format) -> torch.Tensor:
    """An uninitialised float32 batch; in a DataLoader worker, in shared memory.

    A worker's batch travels to the main process in shared memory: made
    there from the start (as DataLoader's own collate does), it is sent
    without a copy.
    """
    if device.type != "cpu" or torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, device=device, memory_format=memory_format)
    strides = torch.empty(shape, device="meta", memory_format=memory_format).stride()
    storage = torch.UntypedStorage._new_shared(math.prod(shape) * 4)
    return torch.empty(0, dtype=torch.float32).set_(storage, 0, shape, strides)


def _model_input(pixels: torch.Tensor, keep: torch.Tensor | None, memory_format: torch.memory_format) -> torch.Tensor:
    """``(pixels - keep * mean) / (std * 255)``: float32 (n, 3, S, S) from (n, C, S, S), C = 1 or 3.

    Normalising a pixel ``p`` and then dropping it (0) or mixing it with a
    share ``m``, as the per-sample path does, equals normalising
    ``m * keep * p`` with the mean taken ``m * keep`` times: augmentation
    works on one channel and the three are made only here. With ``keep``
    None or all 1 (no augmentation) it is albumentations' Normalize to the bit.
    """
    mean, scale = _normalisation(pixels.device)
    count, _, height, width = pixels.shape
    out = _empty_images((count, 3, height, width), pixels.device, memory_format)
    if keep is None:
        torch.sub(pixels, mean, out=out)
    else:
        torch.addcmul(pixels, keep, -mean, out=out)
    return out.mul_(scale)


def dropout_keep(corners: torch.Tensor, applied: torch.Tensor, img_size: int) -> torch.Tensor:
    """0 where a hole of an applied dropout covers a pixel, else 1.

    Parameters
    ----------
    corners : torch.Tensor of int64, shape (n, dropouts, holes, 2)
        (top, left) of each hole of ``DROPOUT_HOLE_PIXELS`` x
        ``DROPOUT_HOLE_PIXELS``, clipped at the bottom and right borders.
    applied : torch.Tensor of bool, shape (n, dropouts)
    img_size : int

    Returns
    -------
    torch.Tensor of float32, shape (n, 1, img_size, img_size)
    """
    keep = torch.ones((corners.shape[0], 1, img_size, img_size), device=corners.device)
    _drop_holes(keep, corners, applied)
    return keep


def _drop_holes(planes: torch.Tensor, corners: torch.Tensor, applied: torch.Tensor) -> None:
    """In place: 0 in every plane of (n, planes, S, S) where a hole of an applied dropout lies.

    A product with 0 (dropped) or 1 (a dropout not applied), only at the
    holes' pixels. A hole's part beyond the bottom or right border is
    clamped onto its own last row or column, which it covers anyway.
    """
    count, depth, img_size = planes.shape[0], planes.shape[1], planes.shape[-1]
    span = torch.arange(DROPOUT_HOLE_PIXELS, device=corners.device)
    rows = (corners[..., 0, None, None] + span[:, None]).clamp(max=img_size - 1)
    cols = (corners[..., 1, None, None] + span[None, :]).clamp(max=img_size - 1)
    pixels = (rows * img_size + cols).reshape(count, 1, -1)
    kept = (~applied)[..., None, None, None].expand(*applied.shape, DROPOUT_HOLES, DROPOUT_HOLE_PIXELS,
                                                    DROPOUT_HOLE_PIXELS).reshape(count, 1, -1).to(planes.dtype)
    planes.view(count, depth, img_size * img_size).scatter_reduce_(
        2, pixels.expand(-1, depth, -1), kept.expand(-1, depth, -1), reduce="prod")


def _mix(planes, targets, rows, partners, weight, share) -> None:
    """In place: samples ``rows`` become ``weight`` of themselves plus ``1 - weight`` of ``partners``.

    ``partners`` is a slice of ``planes``; ``weight`` holds one (1, S, S) plane per row.
    """
    for row, partner, row_weight in zip(rows.tolist(), range(partners.start, partners.stop), weight):
        torch.lerp(planes[partner], planes[row], row_weight, out=planes[row])
    targets[rows] = torch.lerp(targets[partners], targets[rows], share)


def finish_batch(batch, device: torch.device, memory_format: torch.memory_format = torch.contiguous_format):
    """Move a loader's batch to ``device`` and finish it for the model.

    A cached batch (a dict, see :class:`CachedTrainBatches` and
    :class:`CachedEvalBatches`) is normalised there and, for training,
    augmented: the two dropouts, FMix with masks drawn by
    :func:`fmix.sample_masks_torch` on ``device`` (generator seeded by the
    batch's ``noise_seed``), then CutMix. Targets are the one-hot labels
    mixed by the share of pixels each image contributes. Ready batches (the
    per-sample path, or batches finished in workers) are only moved.

    Returns
    -------
    images, or (images, targets) : float32 (batch, 3, S, S) in ``memory_format``, (batch, 5)
    """
    if not isinstance(batch, dict):
        if isinstance(batch, (list, tuple)):  # (images, targets), or (images,) from a TensorDataset
            images, *others = batch
            return (images.to(device, non_blocking=True).contiguous(memory_format=memory_format),
                    *(other.to(device, non_blocking=True) for other in others))
        return batch.to(device, non_blocking=True).contiguous(memory_format=memory_format)
    batch = {key: value.to(device, non_blocking=True) if torch.is_tensor(value) else value
             for key, value in batch.items()}
    pixels = batch["pixels"]
    if "corners" not in batch:
        images = _model_input(pixels.float(), None, memory_format)
        if "labels" not in batch:
            return images
        return images, F.one_hot(batch["labels"], psg_layout.NUM_CLASSES).float()
    members, channels, size, _ = pixels.shape
    # The C pixel planes and the keep plane of every member (see _model_input), dropped and mixed together.
    planes = torch.empty((members, channels + 1, size, size), device=device)
    planes[:, :channels] = pixels
    planes[:, channels] = 1.0
    _drop_holes(planes, batch["corners"], batch["dropout"])
    targets = F.one_hot(batch["labels"], psg_layout.NUM_CLASSES).double()
    fmix_rows, cutmix_rows = batch["fmix_rows"], batch["cutmix_rows"]
    count = members - len(fmix_rows) - len(cutmix_rows)
    if len(fmix_rows):
        generator = torch.Generator(device=device).manual_seed(batch["noise_seed"])
        masks = fmix.sample_masks_torch(batch["fmix_lams"], FMIX_DECAY_POWER, (size, size), FMIX_MAX_SOFT,
                                        generator=generator, device=device, spectrum=batch["fmix_spectrum"])[:, None]
        share = torch.tensor([fmix.mask_share(lam, size * size) for lam in batch["fmix_lams"].tolist()],
                             dtype=torch.float64, device=device)[:, None]
        _mix(planes, targets, fmix_rows, slice(count, count + len(fmix_rows)), masks, share)
    if len(cutmix_rows):
        span = torch.arange(size, device=device)
        top, bottom, left, right = (batch["cutmix_boxes"][:, i, None] for i in range(4))
        outside = ~(((span >= top) & (span < bottom))[:, :, None] & ((span >= left) & (span < right))[:, None, :])
        share = outside.sum(dim=(1, 2), dtype=torch.float64)[:, None] / (size * size)
        first = count + len(fmix_rows)
        _mix(planes, targets, cutmix_rows, slice(first, first + len(cutmix_rows)), outside[:, None].float(), share)
    own = planes[:count]
    return _model_input(own[:, :channels], own[:, channels:], memory_format), targets[:count].float()


# --------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------
def _finish_in_workers(device) -> bool:
    """Batches for a CPU model are finished in the loader's workers, beside the model's work."""
    return torch.device(device).type == "cpu"


def make_train_loader(data_root, table: EpochTable, rows: np.ndarray, img_size: int, batch_size: int,
                      workers: int, seed: int, fmix_enabled: bool = True, cutmix_enabled: bool = False,
                      rank: int = 0, world_size: int = 1, pin_memory: bool = False,
                      cache_dir: Path | str | None = DEFAULT_CACHE_DIR, device: torch.device | str = "cpu",
                      progress: bool = False, fmix_spectrum: str = fmix.DEFAULT_SPECTRUM) -> DataLoader:
    """The training DataLoader over ``rows`` of the table (shuffled; augmented).

    Call :func:`set_loader_epoch` before iterating each epoch, and pass
    every batch through :func:`finish_batch`. With ``world_size > 1`` each
    rank gets its shard of every epoch's permutation.

    Parameters
    ----------
    cache_dir : path-like or None
        The image cache's folder (built on the first pass): whole batches
        read from the cache and augmented by :func:`finish_batch`. None: the
        seed's per-sample path (decode, albumentations, FMix per image).
    device : torch.device or str
        The model's device. On CUDA the loader yields uint8 pixels plus the
        batch's random plan, and :func:`finish_batch` augments them on the
        GPU; for a CPU model the workers finish the batches.
    progress : bool
        Progress bar while the cache is built.
    fmix_spectrum : {"original", "isotropic"}
        The FMix masks' spectrum (:mod:`fmix`).
    (The other parameters as for :class:`EpochImageDataset` and DataLoader.)

    Yields
    ------
    (images, targets) : float32 tensors (batch, 3, img_size, img_size), (batch, 5), or a
    cached batch's dict, which :func:`finish_batch` makes into them.
    """
    sampler_of = functools.partial(DistributedSampler, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    if cache_dir is None:
        paths = table_image_paths(data_root, table)
        dataset = EpochImageDataset(
            [paths[r] for r in rows], table.labels[rows], get_train_transforms(img_size), seed=seed,
            fmix_enabled=fmix_enabled, cutmix_enabled=cutmix_enabled, fmix_spectrum=fmix_spectrum,
        )
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler_of(dataset), num_workers=workers,
                          pin_memory=pin_memory, drop_last=False)
    opener = functools.partial(open_cache, data_root, table, img_size, cache_dir, rows=rows, workers=workers,
                               progress=progress)
    dataset = CachedTrainBatches(opener, rows, table.labels[rows], img_size, seed, rank, fmix_enabled,
                                 cutmix_enabled, finish=_finish_in_workers(device), fmix_spectrum=fmix_spectrum)
    return CachedLoader(dataset, batch_size=None, sampler=_NumberedBatches(sampler_of(dataset), batch_size),
                        num_workers=workers, pin_memory=pin_memory, persistent_workers=workers > 0)


def make_eval_loader(data_root, table: EpochTable, img_size: int, batch_size: int, workers: int,
                     rows: np.ndarray | None = None, rank: int = 0, world_size: int = 1,
                     pin_memory: bool = False, cache_dir: Path | str | None = DEFAULT_CACHE_DIR,
                     device: torch.device | str = "cpu", progress: bool = False) -> DataLoader:
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
    cache_dir, device, progress
        As for :func:`make_train_loader`; the images are the same to the
        bit either way.

    Returns
    -------
    torch.utils.data.DataLoader
        Yields float32 images (batch, 3, img_size, img_size) [, targets (batch, 5)],
        or cached batches that :func:`finish_batch` makes into them.
    """
    rows = np.arange(len(table)) if rows is None else np.asarray(rows)
    rows = rows[rank::world_size]
    labels = None if table.labels is None else table.labels[rows]
    if cache_dir is None:
        paths = table_image_paths(data_root, table)
        dataset = EpochImageDataset([paths[r] for r in rows], labels, get_valid_transforms(img_size))
        return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                          pin_memory=pin_memory)
    opener = functools.partial(open_cache, data_root, table, img_size, cache_dir, rows=rows, workers=workers,
                               progress=progress)
    dataset = CachedEvalBatches(opener, rows, labels, finish=_finish_in_workers(device))
    batches = BatchSampler(SequentialSampler(dataset), batch_size, drop_last=False)
    return CachedLoader(dataset, batch_size=None, sampler=batches, num_workers=workers, pin_memory=pin_memory,
                        persistent_workers=workers > 0)


def set_loader_epoch(loader: DataLoader, epoch: int) -> None:
    """Make the loader's next pass epoch ``epoch``'s permutation and augmentations."""
    loader.sampler.set_epoch(epoch)
    if isinstance(loader.dataset, EpochImageDataset):
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
