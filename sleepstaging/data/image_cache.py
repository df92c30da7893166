"""Epoch images read from their files, and the preprocessed image cache.

- :func:`read_image_rgb` decodes an epoch image (PNG checked whole first)
  as 8-bit RGB; both the per-sample path and the cache use it;
- the cache: every image of a data set decoded and resized once, as uint8
  arrays (one ``.npy`` file per recording, one channel for grey images),
  rebuilt when its files or the libraries change; :class:`ImageCache`
  reads any rows of a table from it.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import zlib
from pathlib import Path

# albumentations asks the package index for a newer version at import unless told not to:
# the project never touches the network by itself. It is imported where it is used: it imports torch
# (seconds), which a process that only renders and resizes epochs (stage_edf.py's) never needs.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import cv2  # noqa: E402
import numpy as np
from tqdm import tqdm

from sleepstaging.data import psg_layout
from sleepstaging import script_io
from sleepstaging.data.psg_layout import EpochTable
from sleepstaging.script_io import InputError, where

# The preprocessed image cache: default folder (relative to the working
# directory, like DATA and weights) and the layout version in its manifests.
DEFAULT_CACHE_DIR = "cache"
CACHE_FORMAT = 1
# The first bytes of every PNG file.
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



# How an epoch image is shrunk to the model input: the original's albumentations Resize
# (cv2.INTER_LINEAR, which at small sizes samples the 1-pixel signal traces and drops most of
# them), or cv2.INTER_AREA (each output pixel the mean of the input pixels it covers, which
# keeps every trace at any size).
RESIZE_INTERPOLATIONS = {"linear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA}
DEFAULT_RESIZE = "linear"  # the original's


def make_resize(img_size, resize: str = DEFAULT_RESIZE):
    """The albumentations Resize to ``img_size`` ``(height, width)`` with ``resize``'s interpolation.

    Both the cache and the per-sample transforms use it, so their pixels are the same.
    """
    import albumentations as A

    if resize not in RESIZE_INTERPOLATIONS:
        raise InputError(f"--resize must be one of {', '.join(RESIZE_INTERPOLATIONS)}, got {resize!r}")
    return A.Resize(*tuple(img_size), interpolation=RESIZE_INTERPOLATIONS[resize])


def resize_grey(image: np.ndarray, img_size, resize: str = DEFAULT_RESIZE) -> np.ndarray:
    """A grey image shrunk as :func:`make_resize` shrinks each channel of its RGB copy, without albumentations.

    albumentations' Resize is ``cv2.resize`` to the size (the image itself
    when it has it already), and cv2 resizes every channel alike, so this
    gives each channel of the cache's pixels (tests/data/test_image_cache.py
    holds the two to the bit) in a third of the time, in a process that
    need not import albumentations and torch.

    Parameters
    ----------
    image : np.ndarray of uint8, shape (H, W)
    img_size : (int, int)
        (height, width) in pixels.
    resize : {"linear", "area"}

    Returns
    -------
    np.ndarray of uint8, shape img_size
    """
    if resize not in RESIZE_INTERPOLATIONS:
        raise InputError(f"--resize must be one of {', '.join(RESIZE_INTERPOLATIONS)}, got {resize!r}")
    height, width = tuple(img_size)
    if image.shape == (height, width):
        return image
    return cv2.resize(image, (width, height), interpolation=RESIZE_INTERPOLATIONS[resize])


def pixel_statistics(paths, img_size, resize: str = DEFAULT_RESIZE) -> tuple[list[float], list[float]]:
    """Mean and standard deviation of each colour channel over the images, as shrunk for the model.

    Parameters
    ----------
    paths : sequence of path-like
        Epoch images (``--input-norm data`` passes an even sample of the training rows).
    img_size : (int, int)
        (height, width) in pixels: the pixels the model is given (:func:`make_resize`).
    resize : {"linear", "area"}

    Returns
    -------
    mean, std : list of 3 float
        Per RGB channel, as a share of 255 (the units of ``IMAGENET_MEAN`` and ``IMAGENET_STD``).
    """
    resizer = make_resize(img_size, resize)
    pixels = np.stack([resizer(image=read_image_rgb(path))["image"] for path in paths]).reshape(-1, 3)
    pixels = pixels.astype(np.float64) / 255.0
    return [float(value) for value in pixels.mean(axis=0)], [float(value) for value in pixels.std(axis=0)]


def shape_label(img_size) -> str:
    """``"<S>px"`` for a square input, ``"<H>x<W>px"`` otherwise (cache folders, progress, reports).

    ``img_size``: ``(height, width)`` in pixels.
    """
    height, width = tuple(img_size)
    return f"{height}px" if height == width else f"{height}x{width}px"


def cache_folder(cache_dir: Path | str, data_root: Path | str, img_size, resize: str = DEFAULT_RESIZE) -> Path:
    """``<cache_dir>/<root name>-<hash of the root's real path>/<S>px`` (square) or ``.../<H>x<W>px``.

    One folder per data root, input size (``img_size``, ``(height, width)``)
    and resize (``-area`` appended for ``"area"``);
    square inputs with the original's resize keep the folder name they had
    before inputs could be non-square.
    """
    real_root = os.path.realpath(data_root)
    digest = hashlib.sha256(real_root.encode()).hexdigest()[:12]
    suffix = "" if resize == DEFAULT_RESIZE else f"-{resize}"
    return Path(cache_dir) / f"{Path(real_root).name}-{digest}" / f"{shape_label(img_size)}{suffix}"


def check_cache_dir(cache_dir: Path | str, data_root: Path | str) -> None:
    """Refuse a cache folder inside the data root (InputError)."""
    real_root, real_cache = os.path.realpath(data_root), os.path.realpath(cache_dir)
    if os.path.commonpath([real_root, real_cache]) == real_root:
        raise InputError(f"the image cache must not be inside the data root {data_root} (it may be read-only): "
                         f"choose another --cache-dir {where(cache_dir)}")


def _cache_settings(shape: tuple[int, int], resize: str) -> dict:
    """Everything besides the image files that the cached pixels depend on.

    ``img_size`` is the int of before for a square input (so existing caches
    stay valid), ``[height, width]`` otherwise.
    """
    import albumentations as A

    height, width = shape
    return {"format": CACHE_FORMAT, "img_size": height if height == width else [height, width],
            "resize": f"albumentations Resize, cv2.INTER_{resize.upper()}",
            "decode": "cv2.imdecode IMREAD_COLOR", "albumentations": A.__version__, "opencv": cv2.__version__}


def _fingerprint(paths: list[Path], shape: tuple[int, int], resize: str) -> str:
    """SHA-256 of the resize settings and every file's name, size and modification time (ns)."""
    listing = []
    for path in paths:
        status = os.stat(path)
        listing.append([path.name, status.st_size, status.st_mtime_ns])
    text = json.dumps([_cache_settings(shape, resize), listing], separators=(",", ":"))
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


def _build_recording(paths: list[Path], shape: tuple[int, int], resize: str, array_path: Path,
                     manifest_path: Path, fingerprint: str) -> dict:
    """Decode and resize one recording's images into ``array_path``; then write its manifest.

    The array is a ``.npy`` file of uint8, shape (images, channels, height, width),
    with 1 channel while every image is grey (R = G = B after the resize) and
    3 from the first that is not. Both files are written under temporary
    names and renamed into place, the manifest last, so a half-built
    recording has no manifest and is rebuilt.
    """
    manifest_path.unlink(missing_ok=True)
    resizer = make_resize(shape, resize)  # the per-sample path's, so the pixels are the same
    count = len(paths)
    with script_io.atomic_path(array_path) as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(count, 1, *shape))
        for index, path in enumerate(paths):
            image = resizer(image=read_image_rgb(path))["image"].transpose(2, 0, 1)
            if array.shape[1] == 1 and not (np.array_equal(image[0], image[1]) and np.array_equal(image[0], image[2])):
                done = np.array(array[:index])
                del array
                array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(count, 3, *shape))
                array[:index] = done
            array[index] = image[:array.shape[1]]
        channels = array.shape[1]
        array.flush()
        del array
    size = array_path.stat().st_size
    manifest = {"fingerprint": fingerprint, "images": count, "channels": channels,
                "header": size - count * channels * shape[0] * shape[1], "bytes": size,
                "files": [path.name for path in paths], **_cache_settings(shape, resize)}
    with script_io.atomic_path(manifest_path) as tmp:
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
    shape : (int, int)
        Height and width in pixels.
    channels : int
        1 when every opened recording is grey, else 3 (grey ones are
        broadcast to 3 when read together with colour ones).
    """

    def __init__(self, files: list[str], headers: list[int], file_channels: list[int], row_file: np.ndarray,
                 row_position: np.ndarray, shape: tuple[int, int]):
        self.files = files
        self.headers = headers
        self.file_channels = file_channels
        self.channels = max(file_channels, default=1)
        self.row_file = row_file
        self.row_position = row_position
        self.shape = shape

    def read(self, rows) -> np.ndarray:
        """Images of table ``rows``.

        Returns
        -------
        np.ndarray of uint8, shape (len(rows), channels, height, width)
        """
        rows = np.asarray(rows, dtype=np.int64)
        height, width = self.shape
        out = np.empty((len(rows), self.channels, height, width), dtype=np.uint8)
        files, positions = self.row_file[rows], self.row_position[rows]
        for file in np.unique(files):
            members = np.flatnonzero(files == file)
            channels = self.file_channels[file]
            image_bytes = channels * height * width
            target = out if channels == self.channels else np.empty((len(rows), channels, height, width), np.uint8)
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


def open_cache(data_root: Path | str, table: EpochTable, img_size, cache_dir: Path | str,
               rows: np.ndarray | None = None, workers: int = 0, progress: bool = False,
               resize: str = DEFAULT_RESIZE) -> ImageCache:
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
    img_size : (int, int)
        Model input size in pixels, (height, width) (``--img-size`` and saved
        configurations are brought to that form where they enter).
    cache_dir : path-like
        Folder of caches, outside the data root (see :func:`cache_folder`).
    rows : np.ndarray of int, optional
        Rows that will be read (all by default); only their recordings are opened.
    workers : int
        Processes building recordings in parallel (0: in this process).
    progress : bool
        Show a progress bar while building.
    resize : {"linear", "area"}
        The interpolation of the resize (:data:`RESIZE_INTERPOLATIONS`); each has its own folder.

    Raises
    ------
    InputError
        A cache folder inside the data root or that cannot be made, or an
        image that cannot be decoded.
    """
    data_root = Path(data_root)
    check_cache_dir(cache_dir, data_root)
    shape = tuple(img_size)
    make_resize(shape, resize)  # an unknown resize fails before anything is built
    folder = cache_folder(cache_dir, data_root, shape, resize)
    names = _recording_names(table, rows)
    manifests, stale = {}, []
    for recording_id, recording_names in names.items():
        paths = [psg_layout.image_path(data_root, recording_id, name) for name in recording_names]
        array_path, manifest_path = folder / f"{recording_id}.npy", folder / f"{recording_id}.json"
        fingerprint = _fingerprint(paths, shape, resize)
        manifests[recording_id] = _read_manifest(manifest_path, array_path, fingerprint)
        if manifests[recording_id] is None:
            stale.append((recording_id, (paths, shape, resize, array_path, manifest_path, fingerprint)))
    if stale:
        _build_recordings(folder, stale, manifests, shape, workers, progress)
    order = list(names)
    row_file, row_position = _row_places(table, names)
    return ImageCache([str(folder / f"{r}.npy") for r in order], [manifests[r]["header"] for r in order],
                      [manifests[r]["channels"] for r in order], row_file, row_position, shape)


def _recording_names(table: EpochTable, rows: np.ndarray | None) -> dict[str, list[str]]:
    """Recording ID -> the sorted image names the table lists for it, for the recordings holding ``rows``
    (all when None), in the table's order of first appearance."""
    wanted = set(table.recording_ids) if rows is None else {table.recording_ids[r] for r in rows}
    listed: dict[str, set[str]] = {}
    for recording_id, idnum in zip(table.recording_ids, table.idnums):
        if recording_id in wanted:
            listed.setdefault(recording_id, set()).add(idnum)
    return {recording_id: sorted(idnums) for recording_id, idnums in listed.items()}


def _row_places(table: EpochTable, names: dict[str, list[str]]) -> tuple[np.ndarray, np.ndarray]:
    """Each table row's cache file (its recording's place in ``names``) and position in it; -1 for rows of
    recordings not in ``names``. Both int64, shape (rows,)."""
    file_of = {recording_id: number for number, recording_id in enumerate(names)}
    position_of = {(recording_id, name): position for recording_id in names
                   for position, name in enumerate(names[recording_id])}
    row_file = np.full(len(table), -1, dtype=np.int64)
    row_position = np.full(len(table), -1, dtype=np.int64)
    for row, (recording_id, idnum) in enumerate(zip(table.recording_ids, table.idnums)):
        if recording_id in file_of:
            row_file[row], row_position[row] = file_of[recording_id], position_of[recording_id, idnum]
    return row_file, row_position


def _build_recordings(folder: Path, stale: list, manifests: dict, shape: tuple[int, int], workers: int,
                      progress: bool) -> None:
    """Build the ``stale`` recordings' caches (in ``workers`` processes), filling ``manifests``."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot create the image cache folder: {err.strerror} {where(folder)}") from None
    total = sum(len(job[0]) for _, job in stale)
    with tqdm(total=total, desc=f"caching {shape_label(shape)} images", unit="image", disable=not progress,
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

