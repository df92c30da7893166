"""Where a night's time goes in stage_edf.py: CPU milliseconds per epoch of each part, on one core.

    python bench/night_costs.py --edf bench/data/cohort/nights/A2026-SY-01-0002.edf --weights-dir demo/weights

One process, one thread (torch and OpenCV), CPU time (``time.process_time``,
so the figures hold on a machine others share, up to their use of the
cache and a core's other hyperthread). On one EDF night: opening, planning
and reading it (per night, MNE already imported); then, per epoch over the
first ``--epochs``: cutting the signals, the signal-quality checks, drawing
(``psg_layout.render_epoch``), the PNG file it no longer needs
(``--keep-images`` only), the shrink to the models' input, the review
page's WebP at full and half size; and a forward pass of each model of the
model set (batches of ``--batch-size``). Adds drawing and inference up into
CPU seconds per night at the night's epoch count and writes ``--result``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from cpu_info import cpu_description
from sleepstaging.scoring import rendered_nights

REPO = Path(__file__).resolve().parents[1]

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
parser.add_argument("--edf", type=Path, required=True, help="one EDF night (cohort_bench.py's nights/ hold some)")
parser.add_argument("--weights-dir", type=Path, required=True, help="the model set")
parser.add_argument("--epochs", type=int, default=200, help="epochs timed per part")
parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
parser.add_argument("--result", type=Path, default=REPO / "bench" / "results" / "night_costs.json")


def cpu_ms(function, count: int) -> float:
    """CPU milliseconds per call of ``function(index)`` over ``count`` calls."""
    started = time.process_time()
    for index in range(count):
        function(index)
    return (time.process_time() - started) / count * 1000


def model_inputs(weights_dir: Path) -> dict:
    """The model set's models: ``"vit"``/``"eff"`` -> ``(arch, kept epochs, training configuration, fold)``."""
    from sleepstaging.scoring import model_set

    record = model_set.read_model_set(weights_dir)["models"]
    arch_epochs = {key: (record[f"{key}_arch"], record[f"{key}_epochs"]) for key in ("vit", "eff")}
    configs = model_set.read_model_configs(weights_dir, record["fold"], arch_epochs)
    return {key: (arch, epochs, configs[key], record["fold"]) for key, (arch, epochs) in arch_epochs.items()}


def input_name(config: dict) -> str:
    """A model's input as ``HEIGHTxWIDTH px, RESIZE``."""
    height, width, resize = rendered_nights.input_spec(config)
    return f"{height}x{width} px, {resize}"


def drawing_costs(edf: Path, count: int, configs: list) -> tuple[dict, list, int]:
    """Per-night and per-epoch CPU costs of drawing (and shrinking to each model input of ``configs``, the
    models' training configurations); the grey images drawn; the night's epochs."""
    import cv2

    from sleepstaging.data import image_cache, psg_layout
    from sleepstaging.edf import render, signal_quality
    from sleepstaging.edf.edf_signals import detect_montage, open_edf

    source = render.find_recordings(edf, None, unscored=True)[0]
    open_edf(source.edf)  # MNE imported once per drawing process, not once per night
    started = time.process_time()
    recording = open_edf(source.edf)
    job = render.plan_recording(source, recording, detect_montage(recording), None, edf.parent, {})
    channels = recording.read_channels({row.channel for row in job.rows.values()})
    costs = {"open, plan and read the night (s per night)": round(time.process_time() - started, 2)}
    numbers = [int(n) for n in job.epoch_numbers[:count]]
    fs = {row: row_channel.fs for row, row_channel in job.rows.items()}
    signals = [render.epoch_signals(channels, job.rows, job.origin, n, source.edf) for n in numbers]
    quality = signal_quality.QualityRecorder(source.recording_id, {r: rc.limits for r, rc in job.rows.items()},
                                             job.missing)
    images = [psg_layout.render_epoch(s, fs) for s in signals]
    png = [cv2.IMWRITE_PNG_COMPRESSION, psg_layout.PNG_COMPRESSION, cv2.IMWRITE_PNG_FILTER,
           cv2.IMWRITE_PNG_FILTER_NONE]
    greys = [np.ascontiguousarray(image[:, :, 0]) for image in images]
    costs.update({
        "cut the signals": cpu_ms(lambda i: render.epoch_signals(channels, job.rows, job.origin, numbers[i],
                                                                 source.edf), len(numbers)),
        "signal-quality checks": cpu_ms(lambda i: quality.add_epoch(numbers[i], signals[i]), len(numbers)),
        "draw (render_epoch)": cpu_ms(lambda i: psg_layout.render_epoch(signals[i], fs), len(numbers)),
        "PNG file (--keep-images only)": cpu_ms(lambda i: cv2.imencode(".png", images[i], png), len(numbers)),
    })
    for spec in dict.fromkeys(rendered_nights.input_spec(config) for config in configs):
        costs[f"shrink to {spec[0]}x{spec[1]} px, {spec[2]}"] = cpu_ms(
            lambda i: image_cache.resize_grey(greys[i], spec[:2], spec[2]), len(numbers))
    return costs, greys, len(job.epoch_numbers)


def review_costs(greys: list) -> dict:
    from sleepstaging.scoring import review_page

    return {"review page WebP, full size": cpu_ms(lambda i: review_page.image_uri(
                greys[i], review_page.FULL_SIZE, review_page.FULL_QUALITY), len(greys)),
            "review page WebP, half size": cpu_ms(lambda i: review_page.image_uri(
                greys[i], *review_page.IMAGE_LEVELS[0]), len(greys))}


def forward_costs(weights_dir: Path, models_of: dict, batch_size: int, count: int) -> dict:
    """CPU ms per epoch of each kept checkpoint's forward pass (random inputs of the models' size);
    ``models_of``: :func:`model_inputs`."""
    import torch

    from sleepstaging.scoring import inference, models

    costs = {}
    for arch, epochs, config, fold in models_of.values():
        model = next(inference.load_checkpoints(arch, epochs, config, weights_dir, fold, torch.device("cpu")))
        model.eval().to(memory_format=models.MEMORY_FORMAT)
        batch = torch.randn(batch_size, 3, *config["img_size"]).contiguous(memory_format=models.MEMORY_FORMAT)
        models.softmax_batch(model, batch, torch.device("cpu"))
        batches = max(1, count // batch_size)
        per_batch = cpu_ms(lambda _: models.softmax_batch(model, batch, torch.device("cpu")), batches)
        costs[f"forward pass, {arch} at {input_name(config)} (x{len(epochs)} checkpoints)"] = \
            (per_batch / batch_size, len(epochs))
    return costs


def main() -> None:
    import cv2
    import torch

    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    load_before = os.getloadavg()
    models_of = model_inputs(args.weights_dir)
    costs, greys, epochs = drawing_costs(args.edf, args.epochs, [config for _, _, config, _ in models_of.values()])
    costs.update(review_costs(greys))
    forwards = forward_costs(args.weights_dir, models_of, args.batch_size, args.epochs)
    per_epoch = {key: round(value, 2) for key, value in costs.items() if not key.endswith("(s per night)")}
    per_epoch.update({key: round(ms, 2) for key, (ms, _) in forwards.items()})
    drawing = sum(v for k, v in per_epoch.items() if k.startswith(("cut", "signal", "draw", "shrink")))
    inference = sum(ms * checkpoints for ms, checkpoints in forwards.values())
    report = {
        "command": "python bench/night_costs.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "result"),
        "machine": cpu_description(), "python": platform.python_version(),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "epochs_in_night": epochs, "per_night_s": {k: v for k, v in costs.items() if k.endswith("(s per night)")},
        "cpu_ms_per_epoch": per_epoch,
        "cpu_s_per_night": {"drawing (without PNG)": round(drawing * epochs / 1000, 1),
                            "inference (every checkpoint)": round(inference * epochs / 1000, 1)},
    }
    args.result.parent.mkdir(parents=True, exist_ok=True)
    args.result.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
