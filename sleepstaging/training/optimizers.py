"""The trainers' optimizers and learning-rate schedule.

The original's: Adam for the ViT, AdamP for the EfficientNet (lr and weight
decay from ``recipe.RECIPE``), CosineAnnealingWarmRestarts stepped by the
epoch loop (``T_0`` = ``--t0`` scheduler steps, every cycle as long as the
first: ``recipe.T_MULT``), and the optional linear warm-up of
``--warmup-epochs`` (not in the original).
"""
from __future__ import annotations

import math

import adamp
import torch

from sleepstaging.recipe import T_MULT


class AdamP(adamp.AdamP):
    """adamp's AdamP for weights in any memory layout.

    adamp 0.3.0 flattens weights with ``Tensor.view``, which fails on the
    channels_last convolution weights the trainer uses ("view size
    is not compatible with input tensor's size and stride"). Its flattened
    tensors are only read (norms, sums, cosine similarities), so
    ``reshape`` gives the same step for every layout.
    """

    def _channel_view(self, x):
        return x.reshape(x.size(0), -1)

    def _layer_view(self, x):
        return x.reshape(1, -1)


OPTIMIZERS = {"adam": torch.optim.Adam, "adamp": AdamP}


def make_optimizer(name: str, parameters, lr: float, weight_decay: float,
                   device: torch.device) -> torch.optim.Optimizer:
    """The trainer's optimizer; on CUDA torch's Adam runs its fused kernel (AdamP has none)."""
    options = {"fused": True} if device.type == "cuda" and name == "adam" else {}
    return OPTIMIZERS[name](parameters, lr=lr, weight_decay=weight_decay, **options)


class LinearWarmup:
    """Linear learning-rate warm-up over the first optimizer steps of a run.

    Optimizer step ``k`` (counted from 0 over the whole run) takes
    ``(k + 1) / total_steps`` of the scheduled learning rate while
    ``k < total_steps``, the scheduled rate itself afterwards. The schedule
    (CosineAnnealingWarmRestarts, a closed form of its step count) is not
    changed: each epoch hands the warm-up its current rates.

    Parameters
    ----------
    optimizer : torch.optim.Optimizer
    total_steps : int
        Optimizer steps of warm-up (0: none).
    steps_done : int
        Optimizer steps already taken (a resumed run).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, steps_done: int = 0):
        self.optimizer, self.total_steps, self.steps_done = optimizer, total_steps, steps_done
        self.scheduled = [group["lr"] for group in optimizer.param_groups]

    def start_epoch(self, scheduled_lrs: list[float]) -> None:
        """The schedule's rates for this epoch (``scheduler.get_last_lr()``)."""
        self.scheduled = list(scheduled_lrs)

    def before_step(self) -> None:
        """Set the rates of the next optimizer step."""
        factor = min(1.0, (self.steps_done + 1) / self.total_steps) if self.total_steps else 1.0
        for group, lr in zip(self.optimizer.param_groups, self.scheduled):
            group["lr"] = lr * factor
        self.steps_done += 1


def make_scheduler(optimizer: torch.optim.Optimizer, t0: int,
                   min_lr: float) -> torch.optim.lr_scheduler.CosineAnnealingWarmRestarts:
    """The original's schedule: cosine from the optimizer's rate down to ``min_lr`` over ``t0`` scheduler
    steps, then restarting at the top, every cycle as long as the first (:data:`recipe.T_MULT`)."""
    return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=t0, T_mult=T_MULT, eta_min=min_lr)


def optimizer_steps_per_epoch(n_batches: int, accum_iter: int) -> int:
    """Optimizer steps in an epoch of ``n_batches`` batches (the last group may be partial)."""
    return math.ceil(n_batches / accum_iter)
