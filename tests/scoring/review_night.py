"""A scored night made for the review tests: hypnogram outputs, PSG-like images and two models' probabilities."""
from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np

from sleepstaging.scoring import night_outputs
from sleepstaging.data import psg_layout
START = datetime.datetime(2026, 1, 5, 22, 30, 0)


def trace_image(rng: np.random.Generator) -> np.ndarray:
    """A 480 x 270 white image with 15 noisy traces, about as hard to compress as a rendered epoch."""
    import cv2

    image = np.full((psg_layout.IMAGE_HEIGHT, psg_layout.IMAGE_WIDTH, 3), 255, np.uint8)
    x = np.arange(psg_layout.IMAGE_WIDTH)
    for row in range(15):
        y = 9 + 17 * row + 5 * np.sin(x / rng.uniform(2, 30)) + rng.normal(0, 1.5, x.size)
        points = np.stack([x, y], axis=1).astype(np.int32)
        cv2.polylines(image, [points], False, (0, 0, 0) if row % 3 else (0, 0, 200), 1)
    return image


def make_night(folder: Path, recording_id: str, stages: list[int], seed: int = 0, images: bool = True) -> dict:
    """Write ``folder/<ID>/`` as postprocess.py would, with the images in ``folder/images/<ID>/``.

    The blend's probabilities put 0.9 on the given stage except at every
    third epoch (0.4: uncertain); model 1 agrees with the blend, model 2
    disagrees on the uncertain epochs. Returns ``models`` (name -> (n, 5))
    and ``images`` (paths in epoch order).
    """
    import cv2

    rng = np.random.default_rng(seed)
    n = len(stages)
    stages = np.asarray(stages, dtype=np.int64)
    confidence = np.where(np.arange(n) % 3 == 1, 0.4, 0.9)
    blend = np.full((n, 5), 0.0)
    blend[np.arange(n), stages] = confidence
    blend += ((1 - confidence) / 4)[:, None] * (np.arange(5)[None, :] != stages[:, None])
    other = (stages + 1) % 5
    model_2 = blend.copy()
    uncertain = confidence < 0.5
    model_2[uncertain] = 0.05
    model_2[np.flatnonzero(uncertain), other[uncertain]] = 0.8
    epochs = np.arange(1, n + 1)
    night_outputs.write_recording_outputs(folder, recording_id, 30.0 * (epochs - 1), stages, stages, blend, START, epochs,
                                      30.0, figure=True)
    paths = []
    for number in epochs:
        path = folder / "images" / recording_id / psg_layout.image_name(recording_id, int(number))
        if images:
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), trace_image(rng))
        paths.append(path)
    return {"models": {"model 1": blend, "model 2": model_2}, "images": paths, "blend": blend}
