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
"""
from __future__ import annotations

import base64
import csv
import json
from pathlib import Path

import numpy as np

from sleepstaging.data import psg_layout
from sleepstaging import script_io
from sleepstaging.data.psg_layout import NUM_CLASSES, STAGES

PAGE_NAME = "review.html"
CORRECTIONS_NAME = "{name}-corrections.csv"
# The corrections file the page saves; review.py apply reads it (corrections.py).
CORRECTION_COLUMNS = ("recording_id", "epoch", "stage_before", "stage_after", "when", "scorer")
# The order of the epochs to check: by the blend's confidence (1 - its largest probability). The
# alternatives (the models' disagreement, the hmm's posterior) are measured by bench/review_yield.py.
ORDERINGS = ("blend", "disagreement", "blend+disagreement")
DEFAULT_ORDERING = "blend"
IMAGE_BUDGET_CHARACTERS = 9_000_000  # data URIs, base64: leaves 1 MB of the 10 MB for the numbers and the page
FULL_SIZE = (psg_layout.IMAGE_WIDTH, psg_layout.IMAGE_HEIGHT)
HALF_SIZE = (psg_layout.IMAGE_WIDTH // 2, psg_layout.IMAGE_HEIGHT // 2)
# (size, WebP quality) from the smallest up; every epoch gets the first level that fits the budget,
# then epochs in check order are raised to full size while the total stays within it.
IMAGE_LEVELS = ((HALF_SIZE, 70), (HALF_SIZE, 40), ((120, 68), 40))
FULL_QUALITY = 70


# --------------------------------------------------------------------------
# Which epochs to check first
# --------------------------------------------------------------------------
def disagreement(p1: np.ndarray, p2: np.ndarray) -> np.ndarray:
    """Total variation distance between two models' stage probabilities, shape (n,), in [0, 1]."""
    return 0.5 * np.abs(np.asarray(p1, dtype=np.float64) - np.asarray(p2, dtype=np.float64)).sum(axis=1)


def doubt(blend: np.ndarray, p1: np.ndarray | None = None, p2: np.ndarray | None = None,
          ordering: str = DEFAULT_ORDERING) -> np.ndarray:
    """How much each epoch needs a scorer's eye, shape (n,): larger first.

    ``blend``: 1 - the blend's largest probability; ``disagreement``: the
    models' :func:`disagreement`; ``blend+disagreement``: their mean. The
    last two need both models' probabilities ``p1``, ``p2`` (n, 5).
    """
    if ordering not in ORDERINGS:
        raise ValueError(f"unknown ordering {ordering!r} (expected {', '.join(ORDERINGS)})")
    unsure = 1.0 - np.asarray(blend, dtype=np.float64).max(axis=1)
    if ordering == "blend":
        return unsure
    if p1 is None or p2 is None:
        raise ValueError(f"ordering {ordering!r} needs both models' probabilities")
    apart = disagreement(p1, p2)
    return apart if ordering == "disagreement" else 0.5 * (unsure + apart)


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
def _webp_uri(image: np.ndarray, size: tuple[int, int], quality: int) -> str:
    import cv2

    if (image.shape[1], image.shape[0]) != size:
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(".webp", image, [cv2.IMWRITE_WEBP_QUALITY, quality])
    if not ok:
        raise ValueError("WebP encoding failed")
    return "data:image/webp;base64," + base64.b64encode(encoded.tobytes()).decode("ascii")


def encode_images(paths: list[Path | None], order: np.ndarray,
                  budget: int = IMAGE_BUDGET_CHARACTERS) -> tuple[list[str], list[bool]]:
    """Each epoch's image as a data URI, full size for the epochs checked first, within ``budget`` characters.

    Parameters
    ----------
    paths : list of Path or None
        Each epoch's PNG (None or a missing file: no image, an empty string).
    order : np.ndarray of int, shape (n,)
        :func:`check_order`: who is raised to full size first.
    budget : int
        Characters the data URIs may take together.

    Returns
    -------
    uris : list of str
    full : list of bool
        Per epoch, whether its image is at full size.
    """
    import cv2

    images = [cv2.imread(str(p), cv2.IMREAD_COLOR) if p is not None and Path(p).is_file() else None for p in paths]
    uris = [""] * len(images)
    for size, quality in IMAGE_LEVELS:
        uris = ["" if image is None else _webp_uri(image, size, quality) for image in images]
        if sum(map(len, uris)) <= budget:
            break
    total, full = sum(map(len, uris)), [False] * len(images)
    for index in order:
        if images[index] is None:
            continue
        bigger = _webp_uri(images[index], FULL_SIZE, FULL_QUALITY)
        if total - len(uris[index]) + len(bigger) > budget:
            break
        total += len(bigger) - len(uris[index])
        uris[index], full[index] = bigger, True
    return uris, full


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
    """A night's ``<ID>-hypnogram.csv`` (night_outputs.py) as columns: lists of str, probabilities (n, 5) floats."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    columns = {key: [row[key] for row in rows] for key in (rows[0] if rows else [])}
    columns["probabilities"] = np.array([[float(row[f"p_{name}"]) for name in STAGES] for row in rows]).reshape(
        -1, NUM_CLASSES)
    return columns


def night_data(recording_id: str, table: dict, statistics: dict, models: dict, images: tuple[list, list],
               order: np.ndarray, ordering: str, temperature: float) -> dict:
    """Everything the page shows of one night, as JSON values (see :func:`write_review_page`)."""
    def rounded(p):
        return np.round(np.asarray(p, dtype=np.float64), 3).tolist()

    shown = {key: statistics.get(key) for key in ("TST", "SE", "SOL", "WASO", "REM", "N3")}
    p_pairs = list(models.values())
    return {
        "id": recording_id, "stages": list(STAGES), "epoch": [int(e) for e in table["epoch"]],
        "clock": table["clock_time"], "onset": [float(o) for o in table["onset_s"]],
        "stage": [STAGES.index(s) for s in table["stage_after"]],
        "inside": [int(v) for v in table["in_lights_period"]],
        "quality": table.get("quality", [""] * len(table["epoch"])),
        "flags": [";".join(x for x in cells if x) for cells in zip(
            *(table.get(key, [""] * len(table["epoch"])) for key in ("flat_signals", "clipped_signals",
                                                                     "missing_signals")))],
        "blend": rounded(table["probabilities"]), "models": {name: rounded(p) for name, p in models.items()},
        "disagree": disagreement_runs(*p_pairs) if len(p_pairs) == 2 else [],
        "order": [int(i) for i in order], "ordering": ordering, "temperature": temperature,
        "images": images[0], "full": images[1], "statistics": shown,
        "warnings": statistics.get("quality_warnings") or "",
    }


def write_review_page(night_dir: Path, recording_id: str, models: dict, image_paths: list, temperature: float = 1.0,
                      ordering: str = DEFAULT_ORDERING) -> Path:
    """Write ``<night_dir>/review.html`` from the night's hypnogram table and statistics, atomically.

    Parameters
    ----------
    night_dir : Path
        The night's folder (``night_outputs.write_recording_outputs``' files in it).
    recording_id : str
    models : dict
        Model name -> its probabilities (n, 5) in the table's epoch order;
        empty when unknown (the page then shows the blend's only).
    image_paths : list of Path or None, length n
        Each epoch's rendered PSG image, in the table's epoch order.
    temperature : float
        The model set's calibration (calibration.py): the blend's
        probabilities shown and ordered are ``softmax(log p / T)``.
    ordering : str
        One of :data:`ORDERINGS`.
    """
    from sleepstaging.scoring import calibration
    from sleepstaging.scoring import night_outputs
    names = {key: night_dir / pattern.format(name=recording_id) for key, pattern in night_outputs.OUTPUT_FILES.items()}
    table = read_hypnogram_table(names["table"])
    table["probabilities"] = calibration.apply_temperature(table["probabilities"], temperature)
    statistics = json.loads(names["statistics"].read_text())
    pair = list(models.values())
    order = check_order(doubt(table["probabilities"], *(pair if len(pair) == 2 else (None, None)), ordering))
    data = night_data(recording_id, table, statistics, models, encode_images(image_paths, order), order, ordering,
                      temperature)
    path = night_dir / PAGE_NAME
    with script_io.atomic_path(path) as tmp:
        tmp.write_text(page_html(data), encoding="utf-8")
    return path


def read_page_data(path: Path) -> dict:
    """The JSON block of a review page (what :func:`write_review_page` embedded)."""
    text = path.read_text(encoding="utf-8")
    start = text.index(DATA_OPEN) + len(DATA_OPEN)
    return json.loads(text[start:text.index("</script>", start)])


def rewrite_page_stages(path: Path, stages: list[int]) -> None:
    """Replace a review page's stages (after corrections were applied), keeping everything else."""
    text = path.read_text(encoding="utf-8")
    start = text.index(DATA_OPEN) + len(DATA_OPEN)
    stop = text.index("</script>", start)
    data = json.loads(text[start:stop])
    data["stage"] = [int(s) for s in stages]
    with script_io.atomic_path(path) as tmp:
        tmp.write_text(text[:start] + embedded_json(data) + text[stop:], encoding="utf-8")


DATA_OPEN = '<script type="application/json" id="night-data">'


def page_html(data: dict) -> str:
    """The whole page: :data:`PAGE_TEMPLATE` with the night's JSON in its data block."""
    from sleepstaging.scoring import review_page_assets
    return review_page_assets.PAGE_TEMPLATE.replace("@@DATA@@", DATA_OPEN + embedded_json(data) + "</script>")


def write_layout_pages(data_root: Path, recordings_out: Path, model_dumps: dict, temperature: float = 1.0,
                       ordering: str = DEFAULT_ORDERING) -> list[Path]:
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
    temperature, ordering
        As :func:`write_review_page`.
    """
    test = psg_layout.read_epoch_csv(Path(data_root) / psg_layout.TEST_CSV, with_labels=False)
    dumps = {name: np.load(path, allow_pickle=False) for name, path in model_dumps.items() if Path(path).is_file()}
    dumps = {name: p for name, p in dumps.items() if p.shape == (len(test), NUM_CLASSES)}
    rows_of: dict[str, list[int]] = {}
    for row, recording_id in enumerate(test.recording_ids):
        rows_of.setdefault(recording_id, []).append(row)
    pages = []
    for recording_id, rows in rows_of.items():
        night = Path(recordings_out) / recording_id
        if not night.is_dir():
            continue
        rows = sorted(rows, key=lambda r: psg_layout.epoch_number_of(test.idnums[r]))  # the table's epoch order
        images = [psg_layout.image_path(data_root, recording_id, test.idnums[r]) for r in rows]
        pages.append(write_review_page(night, recording_id, {name: p[rows] for name, p in dumps.items()}, images,
                                       temperature, ordering))
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
