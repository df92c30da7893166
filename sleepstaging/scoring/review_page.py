"""A scored night's review page: one static HTML file a scorer opens from disk to check and correct the machine.

``<ID>/review.html`` holds everything it shows (no server, no network):
the night's hypnogram with each epoch's confidence, the epochs to check
first in order (:func:`check_order`), and for the selected epoch its PSG
image with its neighbours, the probabilities of each model and of the
blend, the signal-quality flags and the clock time. The scorer sets stages
with the keys W 1 2 3 R (or 0-4), moves with the arrows, jumps to the next
epoch to check with N, and saves ``<ID>-corrections.csv``
(:data:`CORRECTION_COLUMNS`) with a button; ``review.py apply`` writes the
corrections back into every output.

Everything that comes from a recording (its ID, stage names, quality flags,
file names) is data: it goes into one JSON block (``<``, ``>`` and ``&`` as
``\\u`` escapes, so no text can close the script element) and the page builds its DOM with
``textContent``, never markup.

Size: the images are embedded as WebP data URIs, the epochs to check first
at the models' full 480 x 270 and the others at half size (240 x 135), as
many full-size as :data:`IMAGE_BUDGET_CHARACTERS` allows
(:func:`encode_images`): a 9-h night (1,080 epochs) stays under 10 MB.
Time: the images are most of it; each is encoded about once (Pillow's
WebP at effort :data:`WEBP_METHOD`), on ``workers`` threads.
"""
from __future__ import annotations

import base64
import csv
import io
import json
import os
from pathlib import Path

import numpy as np

from sleepstaging.data import psg_layout
from sleepstaging import script_io
from sleepstaging.data.psg_layout import NUM_CLASSES, STAGES

PAGE_NAME = "review.html"
CORRECTIONS_NAME = "{name}-corrections.csv"
# The corrections file the page saves; review.py apply reads it (corrections.py).
CORRECTION_COLUMNS = ("recording_id", "epoch", "stage_before", "stage_after", "when", "scorer")
# How the epochs to check are ordered (doubt); bench/review_yield.py measures each on a demo's test
# nights (the share of the errors the first 10 % and 20 % hold). The default, the hmm's doubt, led at 20 %
# in the three latest demos and at 10 % in two of them (docs/review.md).
ORDERINGS = ("blend", "disagreement", "blend+disagreement", "hmm")
DEFAULT_ORDERING = "hmm"
IMAGE_BUDGET_CHARACTERS = 9_000_000  # data URIs, base64: leaves 1 MB of the 10 MB for the numbers and the page
FULL_SIZE = (psg_layout.IMAGE_WIDTH, psg_layout.IMAGE_HEIGHT)
HALF_SIZE = (psg_layout.IMAGE_WIDTH // 2, psg_layout.IMAGE_HEIGHT // 2)
# (size, WebP quality) from the smallest up; every epoch gets the first level that fits the budget,
# then epochs in check order are raised to full size while the total stays within it.
IMAGE_LEVELS = ((HALF_SIZE, 70), (HALF_SIZE, 40), ((120, 68), 40))
FULL_QUALITY = 70
FULL_LEVEL = (FULL_SIZE, FULL_QUALITY)
SIZE_SAMPLE = 16  # epochs encoded at each end of the check order to guess how many fit at full size
# libwebp's effort, 0 (fastest) to 6 (its default 4): at 2 these trace images come out within 2 % of 4's
# size in about 60 % of the time (docs/review.md).
WEBP_METHOD = 2
IMAGE_WORKERS = min(4, os.cpu_count() or 1)  # threads decoding and encoding images (both release the GIL)


# --------------------------------------------------------------------------
# Which epochs to check first
# --------------------------------------------------------------------------
def disagreement(p1: np.ndarray, p2: np.ndarray) -> np.ndarray:
    """Total variation distance between two models' stage probabilities, shape (n,), in [0, 1]."""
    return 0.5 * np.abs(np.asarray(p1, dtype=np.float64) - np.asarray(p2, dtype=np.float64)).sum(axis=1)


def doubt(blend: np.ndarray, p1: np.ndarray | None = None, p2: np.ndarray | None = None,
          ordering: str = "blend", hmm_confidence: np.ndarray | None = None) -> np.ndarray:
    """How much each epoch needs a scorer's eye, shape (n,): larger first.

    ``blend``: 1 - the blend's largest probability; ``disagreement``: the
    models' :func:`disagreement`; ``blend+disagreement``: their mean (these
    two need both models' probabilities ``p1``, ``p2``, (n, 5)); ``hmm``:
    1 - ``hmm_confidence``, the hmm's posterior (``hmm.hmm_posterior``) of
    the stage the scoring assigned, shape (n,).
    """
    if ordering not in ORDERINGS:
        raise ValueError(f"unknown ordering {ordering!r} (expected {', '.join(ORDERINGS)})")
    if ordering == "hmm":
        if hmm_confidence is None:
            raise ValueError("ordering 'hmm' needs the hmm's posterior of the stages assigned")
        return 1.0 - np.asarray(hmm_confidence, dtype=np.float64)
    unsure = 1.0 - np.asarray(blend, dtype=np.float64).max(axis=1)
    if ordering == "blend":
        return unsure
    if p1 is None or p2 is None:
        raise ValueError(f"ordering {ordering!r} needs both models' probabilities")
    apart = disagreement(p1, p2)
    return apart if ordering == "disagreement" else 0.5 * (unsure + apart)


def usable_ordering(ordering: str, has_models: bool, has_posterior: bool) -> str:
    """``ordering`` when the night has what it needs (both models; the hmm's posterior), else ``blend``."""
    needs_models = ordering in ("disagreement", "blend+disagreement")
    return "blend" if (needs_models and not has_models) or (ordering == "hmm" and not has_posterior) else ordering


def check_order(scores: np.ndarray) -> np.ndarray:
    """Epoch indices by decreasing ``scores`` (ties: earlier epoch first), shape (n,)."""
    return np.lexsort((np.arange(len(scores)), -np.asarray(scores)))


def disagreement_runs(p1: np.ndarray, p2: np.ndarray) -> list[list[int]]:
    """``[first, last]`` index pairs of the runs of epochs where the two models' stages differ."""
    differ = np.concatenate([[0], (np.argmax(p1, axis=1) != np.argmax(p2, axis=1)).astype(int), [0]])
    changes = np.diff(differ)
    return [[int(a), int(b) - 1] for a, b in zip(np.flatnonzero(changes == 1), np.flatnonzero(changes == -1))]


# --------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------
def webp_uri(image: np.ndarray, size: tuple[int, int], quality: int) -> str:
    """A BGR image (h, w, 3) of uint8 as a WebP data URI at ``size`` (w, h): area-resized, Pillow's encoder at
    effort :data:`WEBP_METHOD` and ``quality`` (0-100)."""
    import cv2
    from PIL import Image

    if (image.shape[1], image.shape[0]) != tuple(size):
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    buffer = io.BytesIO()
    Image.fromarray(cv2.cvtColor(image, cv2.COLOR_BGR2RGB)).save(buffer, "WEBP", quality=quality,
                                                                 method=WEBP_METHOD)
    return "data:image/webp;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def file_uri(path: Path | None, size: tuple[int, int], quality: int) -> str:
    """:func:`webp_uri` of a PNG file; "" for None or a missing file (the page then shows no image)."""
    import cv2

    if path is None or not Path(path).is_file():
        return ""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return "" if image is None else webp_uri(image, size, quality)


def image_uri(image, size: tuple[int, int], quality: int) -> str:
    """:func:`file_uri` of a file (Path or None), or :func:`webp_uri` of a drawn image in memory: uint8 BGR
    (h, w, 3), or grey (h, w), which is the PNG file's pixels in one channel (stage_edf.py keeps its nights so)."""
    import cv2

    if image is None or isinstance(image, (str, Path)):
        return file_uri(image, size, quality)
    image = np.asarray(image)
    return webp_uri(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image, size, quality)


def _present(image) -> bool:
    """Whether an epoch has an image to show: an array, or a file that exists."""
    return image is not None and (not isinstance(image, (str, Path)) or Path(image).is_file())


class _EpochImages:
    """Each epoch's data URI and whether it is full size, encoded on a thread pool."""

    def __init__(self, pool, paths: list) -> None:
        self.pool, self.paths = pool, paths
        self.uris, self.full = [""] * len(paths), [False] * len(paths)

    def encoded(self, indices: list[int], level: tuple) -> list[str]:
        """The epochs' images at ``level`` ((width, height), quality), not kept."""
        return list(self.pool.map(lambda index: image_uri(self.paths[index], *level), indices))

    def put(self, index: int, uri: str, level: tuple) -> None:
        self.uris[index], self.full[index] = uri, level == FULL_LEVEL

    def encode(self, indices: list[int], level: tuple) -> None:
        for index, uri in zip(indices, self.encoded(indices, level)):
            self.put(index, uri, level)

    def total(self) -> int:
        return sum(map(len, self.uris))


def encode_images(paths: list[Path | None], order: np.ndarray, budget: int = IMAGE_BUDGET_CHARACTERS,
                  workers: int = IMAGE_WORKERS) -> tuple[list[str], list[bool]]:
    """Each epoch's image as a data URI, full size for the epochs checked first, within ``budget`` characters.

    The full-size epochs are the longest start of the check order for
    which the images, the others at the first :data:`IMAGE_LEVELS` level,
    fit the budget together (if not even every epoch at that level fits:
    the same over the first level at which all do). Most epochs are
    encoded once: :data:`SIZE_SAMPLE` epochs from each end of the order
    (at full size and at the first level) give the mean sizes that guess
    that start, and :func:`_settle` moves the guess to the exact answer
    with a few more encodings. Files are read again for each size (a 9-h
    night's decoded images would take 400 MB).

    Parameters
    ----------
    paths : list of Path, np.ndarray or None
        Each epoch's PNG (None or a missing file: no image, an empty string),
        or its image (:func:`image_uri`: the same page from the same pixels).
    order : np.ndarray of int, shape (n,)
        :func:`check_order`: who is raised to full size first.
    budget : int
        Characters the data URIs may take together.
    workers : int
        Threads reading and encoding (OpenCV and libwebp release the GIL).

    Returns
    -------
    uris : list of str
    full : list of bool
        Per epoch, whether its image is at full size.
    """
    from concurrent.futures import ThreadPoolExecutor

    ranked = [int(i) for i in order if _present(paths[i])]
    with ThreadPoolExecutor(max(1, workers)) as pool:
        images = _EpochImages(pool, paths)
        sample = min(SIZE_SAMPLE, len(ranked) // 2)
        images.encode(ranked[:sample], FULL_LEVEL)
        images.encode(ranked[len(ranked) - sample:], IMAGE_LEVELS[0])
        guess = _guess_full_count(images.uris, ranked, sample, budget)
        images.encode(ranked[sample:guess], FULL_LEVEL)
        images.encode(ranked[guess:len(ranked) - sample], IMAGE_LEVELS[0])
        batch = 4 * max(1, workers)
        if _settle(images, ranked, guess, budget, batch, IMAGE_LEVELS[0]) == 0 and images.total() > budget:
            for level in IMAGE_LEVELS[1:]:  # not every epoch fits at the first level: the first level that does
                images.encode(ranked, level)
                if images.total() <= budget:
                    _settle(images, ranked, 0, budget, batch, level)
                    break
    return images.uris, images.full


def _guess_full_count(uris: list[str], ranked: list[int], sample: int, budget: int) -> int:
    """How many epochs of ``ranked`` fit at full size, from the mean sizes of the ``sample`` full-size ones at its
    start and first-level ones at its end; at least ``sample``, at most all but the ``sample`` at its end."""
    if sample == 0:
        return 0
    full_mean = np.mean([len(uris[i]) for i in ranked[:sample]])
    small_mean = np.mean([len(uris[i]) for i in ranked[len(ranked) - sample:]])
    room = (budget - small_mean * len(ranked)) / max(full_mean - small_mean, 1.0)
    return int(np.clip(room, sample, len(ranked) - sample))


def _settle(images: _EpochImages, ranked: list[int], count: int, budget: int, batch: int, base: tuple) -> int:
    """Move the end ``count`` of the full-size start of ``ranked`` to the longest start that fits ``budget``.

    The other epochs are at level ``base``. Over budget, full-size epochs
    go back to it from the end of that start; within it, the next epochs
    are raised while they fit. ``batch`` epochs are encoded at once; those
    not needed are thrown away. Returns the new count (0: maybe still over
    budget).
    """
    total, demoted = images.total(), False
    while count > 0 and total > budget:
        chunk = ranked[max(0, count - batch):count][::-1]
        for index, smaller in zip(chunk, images.encoded(chunk, base)):
            if total <= budget:
                break
            total += len(smaller) - len(images.uris[index])
            images.put(index, smaller, base)
            count, demoted = count - 1, True
    if demoted or total > budget:  # the epoch after the start was at full size and did not fit
        return count
    while count < len(ranked):
        chunk = ranked[count:count + batch]
        for index, bigger in zip(chunk, images.encoded(chunk, FULL_LEVEL)):
            if total - len(images.uris[index]) + len(bigger) > budget:
                return count
            total += len(bigger) - len(images.uris[index])
            images.put(index, bigger, FULL_LEVEL)
            count += 1
    return count


# --------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------
def embedded_json(data) -> str:
    """``data`` as JSON safe inside a ``<script>`` element: ASCII only, every ``<``, ``>`` and ``&`` escaped.

    No recording text can then close the element (``</script>``) or open a
    comment; ``JSON.parse`` reads the escapes back as the characters.
    """
    text = json.dumps(data, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def read_hypnogram_table(path: Path) -> dict:
    """A night's ``<ID>-hypnogram.csv`` (hypnogram.py) as columns: lists of str, probabilities (n, 5) floats."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    columns = {key: [row[key] for row in rows] for key in (rows[0] if rows else [])}
    columns["probabilities"] = np.array([[float(row[f"p_{name}"]) for name in STAGES] for row in rows]).reshape(
        -1, NUM_CLASSES)
    return columns


def night_ranking(table: dict, models: dict, ordering: str, posterior: np.ndarray | None) -> dict:
    """The night's check order: ``ordering`` (:func:`usable_ordering` of it), ``order``, per-epoch ``doubt``
    and the hmm's ``posterior`` (or None), from the table's (calibrated) probabilities and stages."""
    pair = list(models.values()) if len(models) == 2 else [None, None]
    used = usable_ordering(ordering, len(models) == 2, posterior is not None)
    confidence = None
    if posterior is not None:  # the hmm's probability of the stage the machine assigned
        assigned = np.array([STAGES.index(s) for s in table["stage_after"]], dtype=np.int64)
        confidence = np.asarray(posterior)[np.arange(len(assigned)), assigned]
    scores = doubt(table["probabilities"], *pair, used, confidence)
    return {"ordering": used, "order": check_order(scores), "doubt": scores, "posterior": posterior}


def night_data(recording_id: str, table: dict, statistics: dict, models: dict, images: tuple[list, list],
               ranking: dict, temperature: float) -> dict:
    """Everything the page shows of one night, as JSON values (see :func:`write_review_page`)."""
    def rounded(p):
        return np.round(np.asarray(p, dtype=np.float64), 3).tolist()

    shown = {key: statistics.get(key) for key in ("TST", "SE", "SOL", "WASO", "REM", "N3")}
    p_pairs = list(models.values())
    posterior = ranking["posterior"]
    return {
        "id": recording_id, "corrections_file": CORRECTIONS_NAME.format(name=recording_id),
        "stages": list(STAGES), "epoch": [int(e) for e in table["epoch"]],
        "clock": table["clock_time"], "onset": [float(o) for o in table["onset_s"]],
        "stage": [STAGES.index(s) for s in table["stage_after"]],
        "inside": [int(v) for v in table["in_lights_period"]],
        "quality": table.get("quality", [""] * len(table["epoch"])),
        "flags": [";".join(x for x in cells if x) for cells in zip(
            *(table.get(key, [""] * len(table["epoch"])) for key in ("flat_signals", "clipped_signals",
                                                                     "missing_signals")))],
        "blend": rounded(table["probabilities"]), "models": {name: rounded(p) for name, p in models.items()},
        "hmm": None if posterior is None else rounded(posterior),
        "disagree": disagreement_runs(*p_pairs) if len(p_pairs) == 2 else [],
        "order": [int(i) for i in ranking["order"]], "ordering": ranking["ordering"],
        "doubt": rounded(ranking["doubt"]), "temperature": temperature,
        "images": images[0], "full": images[1], "statistics": shown,
        "warnings": statistics.get("quality_warnings") or "",
    }


def write_review_page(night_dir: Path, recording_id: str, models: dict, image_paths: list, temperature: float = 1.0,
                      ordering: str = DEFAULT_ORDERING, posterior: np.ndarray | None = None,
                      workers: int = IMAGE_WORKERS) -> Path:
    """Write ``<night_dir>/review.html`` from the night's hypnogram table and statistics, atomically.

    Parameters
    ----------
    night_dir : Path
        The night's folder (``night_outputs.write_recording_outputs``' files in it).
    recording_id : str
    models : dict
        Model name -> its probabilities (n, 5) in the table's epoch order, as
        the models gave them; empty when unknown (the page then shows the
        blend's only).
    image_paths : list of Path, np.ndarray or None, length n
        Each epoch's rendered PSG image (its file, or its pixels: :func:`image_uri`),
        in the table's epoch order.
    temperature : float
        The calibration temperature the table's blended probabilities were
        written with (``postprocess.write_recordings``), said on the page;
        the page shows and orders by the table's numbers as they are.
    ordering : str
        One of :data:`ORDERINGS`; ``blend`` when the night lacks what it
        needs (:func:`usable_ordering`), and the page says which it used.
    posterior : np.ndarray or None, shape (n, 5)
        The hmm's posterior (``hmm.hmm_posterior``) in the table's epoch
        order; shown beside the blend and needed by the ``hmm`` ordering.
    workers : int
        Threads encoding the images (:func:`encode_images`).
    """
    from sleepstaging.scoring import night_outputs
    names = {key: night_dir / pattern.format(name=recording_id) for key, pattern in night_outputs.OUTPUT_FILES.items()}
    table = read_hypnogram_table(names["table"])
    statistics = json.loads(names["statistics"].read_text())
    ranking = night_ranking(table, models, ordering, posterior)
    images = encode_images(image_paths, ranking["order"], workers=workers)
    data = night_data(recording_id, table, statistics, models, images, ranking, temperature)
    path = night_dir / PAGE_NAME
    with script_io.atomic_path(path) as tmp:
        tmp.write_text(page_html(data), encoding="utf-8")
    return path


def read_page_data(path: Path) -> dict:
    """The JSON block of a review page (what :func:`write_review_page` embedded)."""
    text = path.read_text(encoding="utf-8")
    start = text.index(DATA_OPEN) + len(DATA_OPEN)
    return json.loads(text[start:text.index("</script>", start)])


def rewrite_page_stages(path: Path, stages: list[int], out: Path | None = None) -> None:
    """Replace a review page's stages (after corrections were applied), keeping everything else.

    Written atomically to ``out`` (default: ``path`` itself).
    """
    text = path.read_text(encoding="utf-8")
    start = text.index(DATA_OPEN) + len(DATA_OPEN)
    stop = text.index("</script>", start)
    data = json.loads(text[start:stop])
    data["stage"] = [int(s) for s in stages]
    with script_io.atomic_path(path if out is None else out) as tmp:
        tmp.write_text(text[:start] + embedded_json(data) + text[stop:], encoding="utf-8")


DATA_OPEN = '<script type="application/json" id="night-data">'


def page_html(data: dict) -> str:
    """The whole page: :data:`PAGE_TEMPLATE` with the night's JSON in its data block."""
    from sleepstaging.scoring import review_page_assets
    return review_page_assets.PAGE_TEMPLATE.replace("@@DATA@@", DATA_OPEN + embedded_json(data) + "</script>")


def write_layout_pages(data_root: Path, recordings_out: Path, model_dumps: dict, temperature: float = 1.0,
                       ordering: str = DEFAULT_ORDERING, posterior_file: Path | None = None,
                       workers: int = IMAGE_WORKERS, rendered=None) -> list[Path]:
    """A review page for every test recording of a data root whose outputs are in ``recordings_out``.

    Parameters
    ----------
    data_root : Path
        Holds the test CSV and each recording's images (``<ID>/<ID>_NNNN.png``).
    recordings_out : Path
        postprocess.py's per-recording outputs (``<ID>/`` folders).
    model_dumps : dict
        Model name -> its test probability dump (``.npy``, test CSV order);
        a missing file leaves that model out.
    temperature, ordering, workers
        As :func:`write_review_page`.
    posterior_file : Path or None
        The hmm's posterior (``.npy``, test CSV order) that ``postprocess.py
        --method hmm`` writes (``output_names.posterior_path``); None or a
        missing file: none.
    rendered : callable or None
        Recording ID -> its images in memory, one per listed epoch in epoch
        order (uint8, grey (n, h, w) or BGR (n, h, w, 3)), or None: its PNG
        files (always without ``rendered``).
    """
    test = psg_layout.read_epoch_csv(Path(data_root) / psg_layout.TEST_CSV, with_labels=False)
    dumps = {name: np.load(path, allow_pickle=False) for name, path in model_dumps.items() if Path(path).is_file()}
    dumps = {name: p for name, p in dumps.items() if p.shape == (len(test), NUM_CLASSES)}
    posterior = (np.load(posterior_file, allow_pickle=False)
                 if posterior_file is not None and Path(posterior_file).is_file() else None)
    if posterior is not None and posterior.shape != (len(test), NUM_CLASSES):
        posterior = None
    rows_of: dict[str, list[int]] = {}
    for row, recording_id in enumerate(test.recording_ids):
        rows_of.setdefault(recording_id, []).append(row)
    pages = []
    for recording_id, rows in rows_of.items():
        night = Path(recordings_out) / recording_id
        if not night.is_dir():
            continue
        rows = sorted(rows, key=lambda r: psg_layout.epoch_number_of(test.idnums[r]))  # the table's epoch order
        images = None if rendered is None else rendered(recording_id)
        if images is not None and len(images) != len(rows):
            raise ValueError(f"{recording_id}: {len(images)} images in memory for {len(rows)} listed epochs")
        if images is None:
            images = [psg_layout.image_path(data_root, recording_id, test.idnums[r]) for r in rows]
        pages.append(write_review_page(night, recording_id, {name: p[rows] for name, p in dumps.items()}, images,
                                       temperature, ordering, None if posterior is None else posterior[rows],
                                       workers))
    return pages


def blend_model_dumps(blend_csv: Path) -> dict:
    """The two models' test dumps behind a blend CSV, from blend.py's record beside it (``<blend>.json``); {} without."""
    from sleepstaging.output_names import dump_path

    record_path = Path(blend_csv).with_suffix(".json")
    if not record_path.is_file():
        return {}
    record = script_io.read_json_object(record_path)
    try:
        return {f"model {n} ({record[f'{key}_arch']})": dump_path(Path(blend_csv).parent, record[f"{key}_arch"],
                                                                  record["fold"], record[f"{key}_epochs"])
                for n, key in enumerate(("vit", "eff"), start=1)}
    except (KeyError, TypeError):
        return {}
