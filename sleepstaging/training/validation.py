"""Validation of a model during training, and its metrics.

:func:`validate` scores the validation batches (loss, confusion matrices,
in float32 outside autocast as the original validated);
:func:`classification_metrics` turns a confusion matrix into accuracy and
F1 by scikit-learn; :func:`original_validation_metrics` gives the figures
the original printed for a model of more outputs than the stages.
"""
from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from sleepstaging.data import batch_augment
from sleepstaging.data import psg_layout
from sleepstaging.recipe import LABEL_SMOOTHING
from sleepstaging.scoring.models import MEMORY_FORMAT, fold_to_stages, unwrapped
from sleepstaging.training.loss import soft_target_cross_entropy, widened


def classification_metrics(confusion: np.ndarray) -> dict:
    """Accuracy, macro-F1 and per-class F1 from a confusion matrix, by scikit-learn.

    The matrix's cells are given to ``sklearn.metrics`` as (true, predicted)
    pairs weighted by their counts; empty cells are left out, so that the
    classes averaged are those that occur in truth or prediction.

    Parameters
    ----------
    confusion : np.ndarray of int, shape (C, C)
        Rows: true class; columns: predicted class.

    Returns
    -------
    dict
        ``accuracy`` (float), ``macro_f1`` (float: ``f1_score(average="macro")``,
        the mean F1 over the classes that occur in truth or prediction),
        ``f1`` (np.ndarray (C,), NaN for classes that occur in neither); NaN
        throughout for an empty matrix.
    """
    from sklearn.metrics import accuracy_score, f1_score  # here: sklearn takes a second to import
    confusion = np.asarray(confusion, dtype=np.int64)
    classes = np.arange(len(confusion))
    truth, predicted = (grid.ravel() for grid in np.meshgrid(classes, classes, indexing="ij"))
    counted = confusion.ravel() > 0
    if not counted.any():
        return {"accuracy": float("nan"), "macro_f1": float("nan"), "f1": np.full(len(classes), np.nan)}
    pairs = dict(y_true=truth[counted], y_pred=predicted[counted], sample_weight=confusion.ravel()[counted])
    return {
        "accuracy": float(accuracy_score(**pairs)),
        "macro_f1": float(f1_score(**pairs, average="macro")),
        "f1": f1_score(**pairs, labels=classes, average=None, zero_division=np.nan),
    }


@torch.no_grad()
def validate(model: torch.nn.Module, batches, n_batches: int, device: torch.device,
             smoothing: float = LABEL_SMOOTHING, progress: bool = False) -> tuple[float, int, np.ndarray, np.ndarray]:
    """Loss and confusion matrices of ``model`` over ``batches`` of (images, one-hot targets).

    ``batches``: the validation loader, or its batches, finished on
    ``device`` by :func:`batch_augment.device_batches` (normalisation alone:
    their plan is none). In float32, without autocast, as the original
    validated (its ``valid_one_epoch`` ran outside the training loop's
    ``autocast()``), whatever precision training uses.

    Returns
    -------
    (loss_sum, images, confusion, raw_confusion)
        Summed (label-smoothed, as the original) loss and image count of
        this process; ``confusion``, int64 (5, 5), rows true and columns
        predicted stage, a model of more outputs folded into the stages as
        inference folds them; ``raw_confusion``, int64 (5, C) for a model of C
        outputs, columns the argmax over all C (the original's validation of
        its 1000-class EfficientNet; the same as ``confusion`` for C = 5).
    """
    model.eval()
    stages = psg_layout.NUM_CLASSES
    confusion = raw_confusion = None
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    images_seen = 0
    for images, targets in tqdm(batch_augment.device_batches(batches, device, MEMORY_FORMAT), total=n_batches,
                                desc="valid", disable=not progress, dynamic_ncols=True):
        logits = model(images.float())
        classes = logits.shape[-1]
        if confusion is None:
            confusion = torch.zeros(stages * stages, dtype=torch.int64, device=device)
            raw_confusion = torch.zeros(stages * classes, dtype=torch.int64, device=device)
        loss_sum += soft_target_cross_entropy(logits, widened(targets, classes), smoothing).double() \
            * images.shape[0]
        truth = targets.argmax(dim=1)
        raw_confusion += torch.bincount(truth * classes + logits.argmax(dim=1), minlength=stages * classes)
        if classes > stages:  # the original's 1000-class EfficientNet: stages as inference folds them
            logits = fold_to_stages(torch.softmax(logits, dim=-1))
        confusion += torch.bincount(truth * stages + logits.argmax(dim=1), minlength=stages * stages)
        images_seen += images.shape[0]
    if confusion is None:  # no batches: the classifier's width is the model's
        classes = getattr(unwrapped(model), "num_classes", stages)
        confusion, raw_confusion = (torch.zeros(stages * width, dtype=torch.int64) for width in (stages, classes))
    return (float(loss_sum.item()), images_seen, confusion.reshape(stages, stages).cpu().numpy(),
            raw_confusion.reshape(stages, -1).cpu().numpy())


def original_validation_metrics(raw_confusion: np.ndarray) -> dict:
    """Accuracy and macro-F1 as the original's ``valid_one_epoch`` printed them for a model of C outputs.

    The prediction is the argmax over all C outputs, so an output past the
    five stages counts as wrong, and each such class predicted is one more
    class of F1 0 in the macro average (scikit-learn's average over the
    classes in truth or prediction).

    Parameters
    ----------
    raw_confusion : np.ndarray of int, shape (5, C)
        Rows true stage, columns the argmax output (:func:`validate`).

    Returns
    -------
    dict
        ``accuracy``, ``macro_f1`` (floats) and ``past_stages`` (int: images
        predicted as an output past the stages).
    """
    stages, classes = raw_confusion.shape
    square = np.zeros((classes, classes), dtype=np.int64)
    square[:stages] = raw_confusion
    metrics = classification_metrics(square)
    return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
            "past_stages": int(raw_confusion[:, stages:].sum())}
