"""Time to write a night's review page, and where it goes: the images against everything else.

A night of ``--epochs`` rendered epochs (the first test recording of
``--data-root``, its images taken again from the start when it has fewer;
without one, a 9.2-h synthetic night made first: :data:`MAKE_NIGHT`) is
written as
``postprocess.py`` writes a recording (random blend and model
probabilities, seed 0), then its ``review.html`` by
``review_page.write_review_page`` (repeated ``--repeats`` times, the
median kept), and again with the page's earlier image encoder, re-stated
here (OpenCV's WebP at libwebp's default effort 4, one thread, every
image decoded and held first): the ratio of the two is measured in the
same run. Also the parts: decoding the PNGs, encoding every epoch at half
size and at full size, per image, and the rendered PNGs' own size (what
embedding them as they are would take).

    python bench/review_page_time.py [--data-root demo/DATA]

Writes ``bench/results/review_page_time.json`` (``--out``).
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cpu_info import cpu_description
from sleepstaging.data import psg_layout
from sleepstaging.scoring import night_outputs
from sleepstaging.scoring import review_page

REPO = Path(__file__).resolve().parents[1]
MAKE_NIGHT = ("--train-subjects", "1", "--test-subjects", "1", "--hours", "9.2", "--seed", "0", "--quiet")


def earlier_encode_images(paths: list, order: np.ndarray, budget: int = review_page.IMAGE_BUDGET_CHARACTERS,
                          workers: int = 1) -> tuple[list[str], list[bool]]:
    """The page's image encoder before this bench: OpenCV's WebP (effort 4), one thread, all images decoded first."""
    import cv2

    def uri(image, size, quality):
        if (image.shape[1], image.shape[0]) != size:
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        encoded = cv2.imencode(".webp", image, [cv2.IMWRITE_WEBP_QUALITY, quality])[1]
        return "data:image/webp;base64," + base64.b64encode(encoded.tobytes()).decode("ascii")

    images = [cv2.imread(str(p), cv2.IMREAD_COLOR) if p is not None and Path(p).is_file() else None for p in paths]
    for size, quality in review_page.IMAGE_LEVELS:
        uris = ["" if image is None else uri(image, size, quality) for image in images]
        if sum(map(len, uris)) <= budget:
            break
    total, full = sum(map(len, uris)), [False] * len(images)
    for index in order:
        if images[index] is None:
            continue
        bigger = uri(images[index], review_page.FULL_SIZE, review_page.FULL_QUALITY)
        if total - len(uris[index]) + len(bigger) > budget:
            break
        total += len(bigger) - len(uris[index])
        uris[index], full[index] = bigger, True
    return uris, full


def night_images(data_root: Path, epochs: int) -> tuple[str, list[Path]]:
    """The first test recording's image paths, in epoch order, repeated up to ``epochs``."""
    test = psg_layout.read_epoch_csv(data_root / psg_layout.TEST_CSV, with_labels=False)
    recording_id = test.recording_ids[0]
    numbers = sorted(psg_layout.epoch_number_of(i) for r, i in zip(test.recording_ids, test.idnums) if r == recording_id)
    paths = [psg_layout.image_path(data_root, recording_id, psg_layout.image_name(recording_id, n)) for n in numbers]
    return recording_id, [paths[i % len(paths)] for i in range(epochs)]


def timed_page(folder: Path, recording_id: str, models: dict, paths: list, repeats: int) -> dict:
    """Median wall and CPU seconds (this process, every thread) of writing the page, and its size."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        page = review_page.write_review_page(folder, recording_id, models, paths)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    data = review_page.read_page_data(page)
    return {"wall_s": float(np.median(walls)), "cpu_s": float(np.median(cpus)), "walls_s": walls,
            "bytes": page.stat().st_size, "full_size_images": int(sum(data["full"]))}


def counted_encodings(folder: Path, recording_id: str, models: dict, paths: list) -> int:
    """How many images one page writing encodes (epochs at full size and the rest, plus any thrown away)."""
    calls, encode = [], review_page.file_uri
    review_page.file_uri = lambda *a: calls.append(1) or encode(*a)
    try:
        review_page.write_review_page(folder, recording_id, models, paths)
    finally:
        review_page.file_uri = encode
    return len(calls)


def image_parts(paths: list, sample: int = 100) -> dict:
    """CPU ms per image of decoding a PNG and of encoding at half and full size (the page's encoder), on a
    sample; the PNGs' mean size and the WebP's."""
    import cv2

    chosen = paths[:sample]
    start = time.process_time()
    images = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in chosen]
    parts = {"decode_png_ms": 1000 * (time.process_time() - start) / len(chosen)}
    for name, size, quality in (("half", review_page.HALF_SIZE, 70), ("full", review_page.FULL_SIZE, 70)):
        start = time.process_time()
        uris = [review_page.webp_uri(image, size, quality) for image in images]
        parts[f"encode_{name}_ms"] = 1000 * (time.process_time() - start) / len(chosen)
        parts[f"webp_{name}_bytes"] = float(np.mean([len(u) for u in uris]) * 3 / 4)  # base64 -> bytes
    parts["png_bytes"] = float(np.mean([p.stat().st_size for p in chosen]))
    return parts


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, default=None, help="rendered epochs (default: made, MAKE_NIGHT)")
    parser.add_argument("--epochs", type=int, default=1100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "review_page_time.json")
    args = parser.parse_args(argv)
    made = args.data_root is None
    with tempfile.TemporaryDirectory() as scratch:
        if made:
            args.data_root = Path(scratch) / "DATA"
            subprocess.run([sys.executable, str(REPO / "make_synthetic.py"), "--out", str(args.data_root), *MAKE_NIGHT],
                           check=True, stdout=subprocess.DEVNULL)
        result = measure(args, Path(scratch) / "scored")
    result["data"] = "make_synthetic.py " + " ".join(MAKE_NIGHT) if made else str(args.data_root)
    result["command"] = "python bench/review_page_time.py " + " ".join(sys.argv[1:] if argv is None else argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    now, earlier = result["now"], result["earlier_encoder"]
    print(f"{args.epochs} epochs: page {now['wall_s']:.1f} s wall, {now['cpu_s']:.1f} s CPU, "
          f"{now['bytes'] / 1e6:.2f} MB, {now['full_size_images']} full-size, {now['encodings']} images encoded; "
          f"earlier encoder {earlier['wall_s']:.1f} s wall, {earlier['cpu_s']:.1f} s CPU, {earlier['bytes'] / 1e6:.2f} "
          f"MB, {earlier['full_size_images']} full-size ({result['speedup_wall']:.1f}x wall, "
          f"{result['speedup_cpu']:.1f}x CPU); per image: " +
          ", ".join(f"{k} {v:.1f}" for k, v in result["parts"].items()) + f"; load {os.getloadavg()[0]:.1f}")


def measure(args, scored: Path) -> dict:
    """The page's times with the encoder now and the earlier one (same night, same run), and the parts per image."""
    recording_id, paths = night_images(args.data_root, args.epochs)
    rng = np.random.default_rng(0)
    blend, other = rng.dirichlet(np.full(5, 0.5), (2, args.epochs))
    epochs = np.arange(1, args.epochs + 1)
    night_outputs.write_recording_outputs(scored, recording_id, 30.0 * (epochs - 1), blend.argmax(1), blend.argmax(1),
                                      blend, None, epochs, figure=False)
    night, models = scored / recording_id, {"model 1": blend, "model 2": other}
    now = timed_page(night, recording_id, models, paths, args.repeats)
    now["encodings"] = counted_encodings(night, recording_id, models, paths)
    current = review_page.encode_images
    review_page.encode_images = earlier_encode_images
    try:
        earlier = timed_page(night, recording_id, models, paths, args.repeats)
    finally:
        review_page.encode_images = current
    return {"epochs": args.epochs, "recording": recording_id, "now": now, "earlier_encoder": earlier,
            "speedup_wall": earlier["wall_s"] / now["wall_s"], "speedup_cpu": earlier["cpu_s"] / now["cpu_s"],
            "image_workers": review_page.IMAGE_WORKERS, "webp_method": review_page.WEBP_METHOD,
            "parts": image_parts(paths), "machine": cpu_description(), "load_average": os.getloadavg()}


if __name__ == "__main__":
    main()
