"""The training loss: label-smoothed cross entropy against soft (mixed) targets.

Shared by the training loop (:mod:`engine`) and validation (:mod:`validation`),
which score every batch the same way. Imports torch and the recipe.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from sleepstaging.recipe import LABEL_SMOOTHING


def widened(targets: torch.Tensor, classes: int) -> torch.Tensor:
    """Stage targets (batch, 5) with zero columns added up to ``classes``: the original trained its
    1000-class EfficientNet against labels 0-4, so the other 995 classes were never anyone's stage."""
    return F.pad(targets, (0, classes - targets.shape[-1])) if classes > targets.shape[-1] else targets


def smooth_targets(targets: torch.Tensor, smoothing: float) -> torch.Tensor:
    """The original's label smoothing: one-hot 1 -> ``1 - eps``, 0 -> ``eps / (C - 1)``.

    Being affine, it maps a mixture of one-hot targets (weights summing to
    1) to the same mixture of smoothed targets, so applying it after FMix
    equals applying it to each one-hot target before mixing.

    Parameters
    ----------
    targets : torch.Tensor, shape (batch, C)
        Rows summing to 1.
    smoothing : float
        eps, in [0, 1).
    """
    classes = targets.shape[-1]
    off_value = smoothing / (classes - 1)
    return targets * (1.0 - smoothing - off_value) + off_value


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor,
                              smoothing: float = LABEL_SMOOTHING) -> torch.Tensor:
    """Mean cross entropy of ``logits`` (batch, C) against smoothed soft ``targets`` (batch, C), in nats."""
    log_probabilities = F.log_softmax(logits.float(), dim=-1)
    return -(smooth_targets(targets.float(), smoothing) * log_probabilities).sum(dim=-1).mean()
