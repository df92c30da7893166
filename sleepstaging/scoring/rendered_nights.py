"""Rendered nights straight to the models: each epoch drawn once and shrunk once for every checkpoint.

``stage_edf.py``'s way from an EDF night to the models, without image files
between them: a render worker draws the night (``render.render_unscored_night``,
its sidecars as before), shrinks each epoch's grey image to every input the
loaded models take (:func:`image_cache.resize_grey`: the trainers' cache's
pixels) and hands the arrays back (:class:`RenderedNight`). The PNG files are
written only when asked (``--keep-images``: the same pixels), and the
full-size images, which the review pages and TTA rounds after the first
need, go to one ``.npy`` file in the night's folder (:data:`RENDERED_EPOCHS`).

:class:`RenderAhead` keeps a pool of processes rendering the nights ahead
of the one being inferred, so that rendering overlaps inference. This
module imports no torch: the render processes never load it.
"""
from __future__ import annotations

import contextlib
import resource
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sleepstaging import script_io
from sleepstaging.data import image_cache, psg_layout

# A night's full-size grey images, uint8 (epochs, 270, 480), in epoch order (the order of its timing sidecar)
RENDERED_EPOCHS = "rendered_epochs.npy"


def input_spec(config: dict) -> tuple[int, int, str]:
    """What a model's input is made of: ``(height, width, resize)`` from its training configuration."""
    height, width = config["img_size"]
    return int(height), int(width), config["resize"]


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, MiB (``getrusage``; Linux counts it in KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


class EpochArrays:
    """A render sink (``render.render_recording``): every epoch shrunk to each model input, and the full-size
    images written to the night's :data:`RENDERED_EPOCHS` when ``keep_full``.

    Attributes
    ----------
    inputs : dict
        ``(height, width, resize)`` -> np.ndarray of uint8, shape (epochs, 1, height, width): one grey
        channel, as the image cache holds grey recordings (the models see it in three equal channels).
    """

    def __init__(self, specs, keep_full: bool):
        self.specs, self.keep_full = tuple(dict.fromkeys(specs)), keep_full
        self.inputs, self.full, self.writing = {}, None, None

    def begin(self, epochs: int, folder: Path) -> None:
        self.inputs = {spec: np.empty((epochs, 1, spec[0], spec[1]), np.uint8) for spec in self.specs}
        if self.keep_full:  # a file mapped epoch by epoch: the night never sits whole in this process's memory
            self.writing = contextlib.ExitStack()  # renamed into place by finish(), never seen half-written
            tmp = self.writing.enter_context(script_io.atomic_path(folder / RENDERED_EPOCHS))
            self.full = np.lib.format.open_memmap(
                tmp, mode="w+", dtype=np.uint8, shape=(epochs, psg_layout.IMAGE_HEIGHT, psg_layout.IMAGE_WIDTH))

    def add(self, index: int, image: np.ndarray) -> None:
        """Epoch ``index``'s grey image, uint8 (270, 480)."""
        for (height, width, resize), pixels in self.inputs.items():
            pixels[index, 0] = image_cache.resize_grey(image, (height, width), resize)
        if self.full is not None:
            self.full[index] = image

    def finish(self) -> None:
        if self.full is not None:
            self.full.flush()
            self.full = None
            self.writing.close()
            self.writing = None


@dataclass
class RenderSettings:
    """What every night of a run is rendered with (sent to the render processes)."""

    montage: str  # a montages.load_montage spec or "auto"
    data: Path  # where each night's folder goes
    config: dict  # the run's settings, in each night's render_edf.json
    specs: tuple  # the models' inputs, (height, width, resize) each
    keep_images: bool  # write the PNG files too
    keep_full: bool  # keep the full-size images (RENDERED_EPOCHS)


@dataclass
class RenderedNight:
    """One drawn night, as a render process hands it back.

    ``inputs`` is :attr:`EpochArrays.inputs`; ``seconds`` the wall time its
    drawing took; ``peak_rss_mib`` the drawing process's peak memory after it.
    """

    recording_id: str
    epochs: int
    inputs: dict
    seconds: float
    peak_rss_mib: float


def render_night(source, settings: RenderSettings, lights: dict) -> RenderedNight:
    """Draw one night into ``settings.data/<ID>/`` and return its model inputs (in a render process or here).

    ``lights``: its lights options (``render.plan_recording``'s). Raises as
    ``render.render_unscored_night``: the night's folder is then absent.
    """
    from sleepstaging.edf import render

    started = time.perf_counter()
    arrays = EpochArrays(settings.specs, settings.keep_full)
    record = render.render_unscored_night(source, settings.montage, settings.data, settings.config,
                                          write_images=settings.keep_images, sink=arrays, **lights)
    return RenderedNight(source.recording_id, record["epochs_rendered"], arrays.inputs,
                         time.perf_counter() - started, peak_rss_mib())


def one_thread_each() -> None:
    """A drawing process's set-up: OpenCV on one thread (the processes side by side share the cores)."""
    import cv2

    cv2.setNumThreads(1)


def outcome(function, *arguments):
    """``function(*arguments)``'s result, or the exception it raised (one bad night stops only itself)."""
    try:
        return function(*arguments)
    except Exception as err:
        return err


class RenderAhead:
    """The run's nights, rendered in order, each handed over as a :class:`RenderedNight` or its exception.

    With ``ahead`` 0 a chunk's nights are all drawn (by ``pool``'s processes,
    or here without one) before the first is handed over, and
    :meth:`draw_next` has the pool draw the next chunk's while the caller
    does what follows inference. Otherwise up to ``ahead`` nights past the
    last one handed over are being drawn by ``pool`` while the caller infers
    that one, across chunks. ``waited`` sums the seconds the caller spent
    waiting for them.
    """

    def __init__(self, nights: list, settings: RenderSettings, lights_of, pool, ahead: int):
        if ahead and pool is None:
            raise ValueError("rendering ahead needs a pool of render processes")
        self.queue, self.submitted = deque(nights), {}
        self.settings, self.lights_of, self.pool, self.ahead = settings, lights_of, pool, ahead
        self.waited, self.renders = 0.0, []

    def _submit(self, count: int) -> None:
        while self.queue and len(self.submitted) < count:
            source = self.queue.popleft()
            job = (render_night, source, self.settings, self.lights_of(source.recording_id))
            self.submitted[source.recording_id] = self.pool.submit(outcome, *job) if self.pool else job

    def _take(self, source):
        started = time.perf_counter()
        job = self.submitted.pop(source.recording_id)
        night = outcome(*job) if isinstance(job, tuple) else outcome(job.result)  # a broken pool fails the night
        self.waited += time.perf_counter() - started
        if isinstance(night, RenderedNight):
            self.renders.append({"recording_id": night.recording_id, "epochs": night.epochs,
                                 "seconds": round(night.seconds, 2), "peak_rss_mib": night.peak_rss_mib})
        return night

    def nights(self, chunk: list):
        """``(source, RenderedNight or exception)`` for each night of ``chunk`` (the next nights of the run)."""
        if not self.ahead:
            self._submit(len(chunk))
            return [(source, self._take(source)) for source in chunk]
        return self._ahead(chunk)

    def draw_next(self, nights: int) -> None:
        """With ``ahead`` 0 and a pool: start drawing the next ``nights`` nights (the next chunk) now."""
        if not self.ahead and self.pool is not None:
            self._submit(nights)

    def _ahead(self, chunk: list):
        for source in chunk:
            self._submit(self.ahead + 1)  # this night and the next ``ahead``: drawn on while the caller infers it
            yield source, self._take(source)


def rendered_images(data: Path, recording_id: str) -> np.ndarray | None:
    """A night's full-size grey images (:data:`RENDERED_EPOCHS`, memory-mapped), or None when not kept."""
    path = Path(data) / recording_id / RENDERED_EPOCHS
    return np.load(path, mmap_mode="r") if path.is_file() else None
