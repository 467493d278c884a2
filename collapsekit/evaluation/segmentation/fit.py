"""The one training loop of segmentation evaluation, shared by the linear probe and fine-tuning.

Each epoch visits the training slices in a seeded shuffled order (:func:`epoch_batches`), calls
``batch_loss(idx)`` and takes an optimiser and a scheduler step; the per-epoch record is
``{"epoch", "loss" (slice-weighted mean), "lr", "seconds"}``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn

from collapsekit.evaluation.segmentation._data import epoch_batches
from collapsekit.progress import ProgressCallback, TaskAdvanced, TaskFinished, TaskStarted, emit

__all__ = ["segmentation_loss", "schedule_steps", "fit"]


def segmentation_loss(
    num_classes: int, dice_loss: bool
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Cross-entropy on ``(B, K, S, S)`` logits vs ``(B, S, S)`` indices, plus soft Dice if asked."""
    dice = None
    if dice_loss:
        dice = DiceLoss(include_background=False, to_onehot_y=True, softmax=True)

    def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(logits, target)
        if dice is not None:
            loss = loss + dice(logits, target[:, None])
        return loss

    return loss_fn


def schedule_steps(n: int, batch_size: int, epochs: int) -> int:
    """Optimiser steps of ``epochs`` passes over ``n`` slices (the cosine schedule's length)."""
    return epochs * len(epoch_batches(n, batch_size, None))


def fit(
    module: nn.Module,
    batch_loss: Callable[[torch.Tensor], torch.Tensor],
    n: int,
    *,
    epochs: int,
    batch_size: int,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    generator: torch.Generator,
    task: str,
    description: str,
    progress: ProgressCallback | None = None,
) -> list[dict[str, Any]]:
    """Train for ``epochs`` over ``n`` slices; ``batch_loss(idx)`` returns the loss of a batch.

    Args:
        module: put in train mode at the start of every epoch (the trained part).
        batch_loss: maps a 1-D tensor of slice indices to a scalar loss.
        n: number of training slices.
        epochs, batch_size: the schedule.
        optimizer, scheduler: stepped once per batch.
        generator: seeds the shuffle (and whatever ``batch_loss`` draws from it).
        task, description: progress task name and label.

    Returns:
        One record per epoch: ``epoch``, ``loss``, ``lr``, ``seconds``.
    """
    history: list[dict[str, Any]] = []
    emit(progress, TaskStarted(task, total=epochs, description=description))
    for epoch in range(epochs):
        t_epoch = time.perf_counter()
        module.train()
        total, count = 0.0, 0
        for idx in epoch_batches(n, batch_size, generator):
            loss = batch_loss(idx)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        rec = {
            "epoch": epoch + 1,
            "loss": total / count,
            "lr": float(optimizer.param_groups[0]["lr"]),
            "seconds": time.perf_counter() - t_epoch,
        }
        history.append(rec)
        emit(progress, TaskAdvanced(task, 1, {"loss": rec["loss"]}))
    emit(progress, TaskFinished(task, {"loss": history[-1]["loss"]}))
    return history
