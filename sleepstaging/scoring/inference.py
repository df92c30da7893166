"""Per-model probabilities: checkpoints loaded once, TTA rounds averaged, folded to the five stages, and the
dumps with their record written (infer_blend.py, stage_edf.py).
"""
from __future__ import annotations

import bisect
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, default_collate

from sleepstaging.data import batch_augment
from sleepstaging.data import image_cache
from sleepstaging.data import loaders
from sleepstaging.scoring import models
from sleepstaging import recipe, script_io
from sleepstaging.output_names import checkpoint_path, dump_path, infer_config_path, valid_csv_path
from sleepstaging.data.psg_layout import NUM_CLASSES, STAGES


SPLIT_KEYS = ("folds", "seed", "cv")  # training options that define the validation rows


def tta_loader(data_root, table, rows, img_size: tuple[int, int], batch_size: int, workers: int, tta_round: int,
               pin_memory: bool, cache_dir: str | None, resize: str = image_cache.DEFAULT_RESIZE) -> DataLoader:
    """Images of ``rows`` in order: round 0 as validation reads them, later rounds with the two dropouts.

    Returns
    -------
    DataLoader
        Yields float32 images (batch, 3, height, width), ``img_size`` being
        (height, width), shrunk with the training run's ``resize`` (with targets
        in round 0 when the table has labels; predict ignores them).
    """
    if tta_round == 0:
        return loaders.make_eval_loader(data_root, table, img_size, batch_size, workers, rows=rows,
                                               pin_memory=pin_memory, cache_dir=cache_dir, resize=resize)
    paths = loaders.table_image_paths(data_root, table)
    # No labels, no mixing: only the augmentation part of the training pipeline, drawn image by image by
    # albumentations (the per-sample path, ready batches that batch_augment.finish_batch only moves): a
    # batch_augment.BatchPlan would place other holes, and change every dump of a run with --tta 2 or more.
    dataset = loaders.EpochImageDataset([paths[r] for r in rows], None,
                                               loaders.get_train_transforms(img_size, resize), seed=tta_round)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=pin_memory)


def load_checkpoints(arch: str, epochs, config: dict, weights_dir, fold: int, device: torch.device):
    """Each checkpoint's model, built as it was trained and moved to ``device``, one at a time.

    A generator, so that :func:`checkpoint_probabilities` holds one model in
    memory at a time; ``list()`` it to keep them all (``stage_edf.py`` loads
    the models once for a whole cohort).

    Parameters
    ----------
    arch : str
        timm architecture.
    epochs : sequence of int
        Checkpoint epochs, in the order they are averaged.
    config : dict
        The training configuration (:func:`model_set.read_run_config`):
        ``img_size`` ``(height, width)`` and ``num_classes`` (1000: the original's EfficientNet,
        ``--original-defects``; 5 when absent).
    weights_dir : path-like
    fold : int
    device : torch.device

    Yields
    ------
    torch.nn.Module
    """
    for epoch in epochs:
        model = models.model_for_run(arch, config)
        models.load_weights(model, checkpoint_path(weights_dir, arch, fold, epoch))
        yield model.to(device)


def checkpoint_probabilities(checkpoints, config: dict, args, inputs: dict, device: torch.device,
                             label: str = "") -> dict:
    """Mean softmax over checkpoints and TTA rounds, each folded into the 5 stages.

    A model trained with ``--original-defects`` by ``main_eff.py`` has the
    original's 1000 outputs; its softmax is folded into the 5 stages
    (:func:`models.fold_to_stages`) as the original's ``inferblend.py`` did.

    Parameters
    ----------
    checkpoints : iterable of torch.nn.Module
        The models (:func:`load_checkpoints`), summed in this order.
    config : dict
        Their training configuration (:func:`model_set.read_run_config`):
        ``img_size`` ``(height, width)`` and ``resize``.
    args : argparse.Namespace
        This script's options (``tta``, ``batch_size``, ``workers``,
        ``data_root``, ``amp``, ``quiet``, ``no_cache``, ``cache_dir``).
    inputs : dict
        Split name -> ``(table, rows)`` to predict.
    device : torch.device
    label : str
        Names the model in the progress lines.

    Returns
    -------
    dict
        Split name -> np.ndarray of float32, shape (len(rows), 5).
    """
    img_size = config["img_size"]
    amp = models.resolve_amp(args.amp, device)
    progress = models.progress_enabled(args.quiet)
    sums = {split: np.zeros((len(rows), NUM_CLASSES)) for split, (_, rows) in inputs.items()}
    count = 0
    for count, model in enumerate(checkpoints, start=1):
        for split, (table, rows) in inputs.items():
            for tta_round in range(args.tta):
                if progress:
                    print(f"{label} checkpoint {count}, {split}, TTA round {tta_round + 1}/{args.tta}", flush=True)
                loader = tta_loader(args.data_root, table, rows, img_size, args.batch_size, args.workers, tta_round,
                                    pin_memory=device.type == "cuda",
                                    cache_dir=None if args.no_cache else args.cache_dir, resize=config["resize"])
                sums[split] += models.fold_to_stages(models.predict(model, loader, device, amp, progress))
        del model  # a generator's model is freed (GPU memory too) before the next one is built
    rounds = count * args.tta
    return {split: (total / rounds).astype(np.float32) for split, total in sums.items()}


def model_probabilities(arch: str, epochs, config: dict, args, inputs: dict, device: torch.device) -> dict:
    """Mean softmax of one architecture over its checkpoints (``args.weights_dir``, ``args.fold``) and TTA rounds.

    :func:`checkpoint_probabilities` over :func:`load_checkpoints`; same
    parameters and return value.
    """
    checkpoints = load_checkpoints(arch, epochs, config, args.weights_dir, args.fold, device)
    return checkpoint_probabilities(checkpoints, config, args, inputs, device, label=arch)


def write_outputs(out: Path, args, arch_epochs: dict, probabilities: dict, train, valid_rows, config: dict) -> None:
    """The test dumps, the validation dumps with ``fold_<k>_valid.csv`` when there are validation
    rows (``valid_rows`` not None), and this run's configuration, each atomically.

    Without validation rows, validation dumps of the same models and epochs left by an earlier
    run are removed (and named): they would not belong to these test dumps, and ``blend.py
    --tune`` would tune on them.
    """
    splits = ("valid", "test") if valid_rows is not None else ("test",)
    if valid_rows is None:
        stale = [path for arch, epochs in arch_epochs.values()
                 if (path := dump_path(out, arch, args.fold, epochs, "valid")).exists()]
        for path in stale:
            path.unlink()
        if stale:
            print(f"removed the validation dumps of an earlier run, which do not belong to these test dumps: "
                  f"{', '.join(map(str, stale))}")
    for key, (arch, epochs) in arch_epochs.items():
        for split in splits:
            with script_io.atomic_path(dump_path(out, arch, args.fold, epochs, split)) as tmp:
                np.save(tmp, probabilities[key][split], allow_pickle=False)
        print(f"{dump_path(out, arch, args.fold, epochs)}{' and its _valid.npy' if valid_rows is not None else ''}"
              f" {'are' if valid_rows is not None else 'is'} saved")
    if valid_rows is not None:
        script_io.write_csv_rows(valid_csv_path(out, args.fold), (
            (train.recording_ids[r], train.idnums[r], STAGES[train.labels[r]]) for r in valid_rows))
        print(f"{valid_csv_path(out, args.fold)} is saved")
    with script_io.atomic_path(infer_config_path(out, args.fold)) as tmp:
        tmp.write_text(json.dumps(config, indent=2))


@dataclass
class InferenceOptions:
    """How checkpoints are run over a data root: what :func:`checkpoint_probabilities` and
    :func:`write_outputs` read (infer_blend.py's options of the same names)."""
    data_root: Path
    weights_dir: Path
    out: Path
    fold: int
    tta: int = recipe.INFERENCE["tta"]
    batch_size: int = recipe.INFERENCE["batch_size"]
    workers: int = 0
    amp: str = "off"
    quiet: bool = True
    no_cache: bool = True
    cache_dir: Path | None = None


# --------------------------------------------------------------------------
# Rendered nights, inferred as they come (stage_edf.py)
# --------------------------------------------------------------------------
class RenderedEpochDataset(loaders.EpochImageDataset):
    """:class:`loaders.EpochImageDataset` over rendered grey images in memory (TTA rounds after the first).

    ``images``: a sequence of uint8 (height, width) images, item ``i`` keyed
    (its augmentation's generator) by ``i`` as the file-backed dataset keys it.
    """

    def __init__(self, images, transforms, seed: int):
        super().__init__([], None, transforms, seed=seed)
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def _image(self, index: int) -> np.ndarray:
        import cv2

        return cv2.cvtColor(np.asarray(self.images[index]), cv2.COLOR_GRAY2RGB)


class _ChunkImages:
    """The full-size images of a chunk's nights as one sequence over the chunk's rows."""

    def __init__(self):
        self.starts, self.nights, self.count = [], [], 0

    def add(self, images) -> None:
        self.starts.append(self.count)
        self.nights.append(images)
        self.count += len(images)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, row: int) -> np.ndarray:
        night = bisect.bisect_right(self.starts, row) - 1
        return self.nights[night][row - self.starts[night]]


class ChunkInference:
    """Both models' mean probabilities over a chunk's epochs, inferred night by night as the nights come.

    What :func:`checkpoint_probabilities` computes from the chunk's image
    files, to the bit (tests/scoring/test_rendered_nights.py): the same
    batches (``batch_size`` rows in chunk order across the nights'
    boundaries, the last one short), the same pixels (the cache's, normalised
    as its batches are, :func:`batch_augment.finish_batch`), TTA rounds after
    the first drawn as :func:`tta_loader` draws them (a row's holes keyed by
    its place in the chunk), summed over checkpoints and rounds in the same
    order. Each batch is normalised once for all the checkpoints that take
    its input.

    Parameters
    ----------
    loaded : dict
        ``key`` -> ``(arch, epochs, training configuration, [models])`` (``cohort.load_models``).
    options : InferenceOptions
        ``batch_size``, ``tta`` and ``amp`` are read.
    device : torch.device
    """

    def __init__(self, loaded: dict, options, device: torch.device):
        from sleepstaging.scoring.rendered_nights import input_spec

        self.loaded, self.options, self.device = loaded, options, device
        self.amp = models.resolve_amp(options.amp, device)
        self.specs = {key: input_spec(config) for key, (_, _, config, _) in loaded.items()}
        self.waiting = {spec: [] for spec in self.specs.values()}  # model inputs not yet in a batch
        self.transforms = {spec: loaders.get_train_transforms(spec[:2], spec[2]) for spec in self.waiting}
        self.images, self.rows, self.done = _ChunkImages(), 0, 0
        self.sums = {key: [] for key in loaded}  # per batch, float64 (rows, 5)
        for _, _, _, checkpoints in loaded.values():
            for model in checkpoints:
                model.eval().to(memory_format=models.MEMORY_FORMAT)

    def add_night(self, inputs: dict, images=None) -> None:
        """One night's model inputs (``rendered_nights.RenderedNight.inputs``), inferred batch by batch.

        ``images``: its full-size grey images, uint8 (epochs, 270, 480), which
        TTA rounds after the first need (``options.tta`` > 1).
        """
        if self.options.tta > 1 and images is None:
            raise ValueError("TTA rounds after the first augment the full-size images: none were kept")
        for spec, queue in self.waiting.items():
            queue.append(inputs[spec])
        if self.options.tta > 1:
            self.images.add(images)
        self.rows += len(inputs[next(iter(self.waiting))])
        while self.rows - self.done >= self.options.batch_size:
            self._batch(self.options.batch_size)

    def finish(self) -> dict:
        """``key`` -> np.ndarray of float32 (rows, 5): each model's mean over its checkpoints and TTA rounds."""
        if self.rows > self.done:
            self._batch(self.rows - self.done)
        means = {}
        for key, (_, _, _, checkpoints) in self.loaded.items():
            total = np.concatenate(self.sums[key]) if self.sums[key] else np.zeros((0, NUM_CLASSES))
            means[key] = (total / (len(checkpoints) * self.options.tta)).astype(np.float32)
        return means

    def _take(self, spec, count: int) -> np.ndarray:
        """The next ``count`` waiting rows of input ``spec``, uint8 (count, 1, height, width)."""
        queue, parts = self.waiting[spec], []
        while count:
            piece = queue[0][:count]
            parts.append(piece)
            count -= len(piece)
            queue[0] = queue[0][len(piece):]
            if not len(queue[0]):
                queue.pop(0)
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def _augmented(self, spec, tta_round: int, count: int) -> torch.Tensor:
        """TTA round ``tta_round``'s batch of the next ``count`` rows, finished on the device."""
        dataset = RenderedEpochDataset(self.images, self.transforms[spec], seed=tta_round)
        batch = default_collate([dataset[row] for row in range(self.done, self.done + count)])
        return batch_augment.finish_batch(batch, self.device, models.MEMORY_FORMAT)

    def _batch(self, count: int) -> None:
        finished = {spec: batch_augment.finish_batch(
            batch_augment.CachedBatch(torch.from_numpy(np.ascontiguousarray(self._take(spec, count))), None, None),
            self.device, models.MEMORY_FORMAT) for spec in self.waiting}
        augmented = {}
        for key, (_, _, _, checkpoints) in self.loaded.items():
            spec, total = self.specs[key], np.zeros((count, NUM_CLASSES))
            for model in checkpoints:
                for tta_round in range(self.options.tta):
                    if tta_round and (spec, tta_round) not in augmented:
                        augmented[spec, tta_round] = self._augmented(spec, tta_round, count)
                    images = augmented[spec, tta_round] if tta_round else finished[spec]
                    total += models.fold_to_stages(models.softmax_batch(model, images, self.device, self.amp).numpy())
            self.sums[key].append(total)
        self.done += count
