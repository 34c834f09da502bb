"""One training epoch and one evaluation pass. No printing, no argv: callers get records back.

The model takes pixels as the artifact will (uint8 batches are scaled to float [0, 1] here, the model
normalises itself), so the net trained is exactly the net exported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from training.averaging import WeightAverage
from training.tasks import Evaluation, Objective, summarise

__all__ = ["Diverged", "EpochStats", "Evaluation", "evaluate", "pixels", "train_one_epoch"]

MULTICLASS = Objective()  # softmax cross-entropy, what every run trained before tasks existed

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
# Called every few steps with (steps done, running mean loss, running accuracy), e.g. by a progress bar.
StepCallback = Callable[[int, float, float], None]


class Diverged(RuntimeError):
    """The training loss stopped being a finite number; the message says what to change."""


@dataclass(frozen=True)
class EpochStats:
    """Totals over one epoch of training (sums, so that processes can add theirs up)."""

    loss_sum: float
    correct: float  # multilabel counts each example's share of right labels
    examples: int

    @property
    def loss(self) -> float:
        """Mean loss per example."""
        return self.loss_sum / max(self.examples, 1)

    @property
    def accuracy(self) -> float:
        """Fraction of examples classified correctly (with augmentation and dropout on)."""
        return self.correct / max(self.examples, 1)


def pixels(images: torch.Tensor, device: torch.device,
           memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """A batch on ``device`` as float pixels in [0, 1] (uint8 travels, the device converts)."""
    images = images.to(device, non_blocking=True)
    images = images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()
    return images.contiguous(memory_format=memory_format)


def train_one_epoch(
    model: nn.Module,
    batches: Batches,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    *,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    on_step: StepCallback | None = None,
    report_every: int = 10,
    memory_format: torch.memory_format = torch.contiguous_format,
    objective: Objective = MULTICLASS,
    outliers: Iterator[torch.Tensor] | None = None,
    outlier_weight: float = 0.5,
    average: WeightAverage | None = None,
) -> EpochStats:
    """Train ``model`` for one pass over ``batches``; the scheduler, if any, steps once per batch.

    ``memory_format`` is the layout batches are handed to the model in (channels_last suits conv nets);
    ``objective`` is the task and loss. ``outliers`` (outlier exposure, multiclass only) gives a batch of
    images that belong to no class for every step: they share the step's forward pass (and its batch-norm
    statistics: a separate pass on the digits' statistics diverged in our runs, docs/benchmarks.md), and
    ``outlier_weight`` times their cross-entropy against the uniform distribution is added to the loss,
    which teaches the net to spread its probability over every class when it sees one (docs/training.md).
    ``average`` (``--ema``) is updated after every optimiser step.
    """
    model.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.float64, device=device)
    examples = 0
    for step, (images, labels) in enumerate(batches, start=1):
        x, y = pixels(images, device), labels.to(device, non_blocking=True)
        if augment is not None:
            x = augment(x)
        extra = 0
        if outliers is not None:
            odd = pixels(next(outliers), device)
            extra = len(odd)
            x = torch.cat([x, odd])
        x = x.contiguous(memory_format=memory_format)
        logits = model(x)
        if extra:
            logits, odd_logits = logits[:-extra], logits[-extra:]
        loss = objective.losses(logits, y).mean()
        if extra:
            loss = loss - outlier_weight * F.log_softmax(odd_logits, dim=1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if average is not None:
            average.update()
        if scheduler is not None:
            scheduler.step()
        loss_sum += loss.detach() * len(y)
        correct += objective.correct(logits.detach(), y)
        examples += len(y)
        # .item() waits for the device: only every few steps, not every step.
        if on_step is not None and step % report_every == 0:
            on_step(step, loss_sum.item() / examples, correct.item() / examples)
    return EpochStats(loss_sum=loss_sum.item(), correct=correct.item(), examples=examples)


@torch.inference_mode()
def evaluate(model: nn.Module, batches: Batches, device: torch.device, num_classes: int,
             memory_format: torch.memory_format = torch.contiguous_format,
             objective: Objective = MULTICLASS) -> Evaluation:
    """Loss, accuracy, confusion matrix and per-example results of ``model`` over ``batches``."""
    model.eval()
    logits, targets = [], []
    for images, labels in batches:
        logits.append(model(pixels(images, device, memory_format)).float().cpu())
        targets.append(labels.cpu())
    if not targets:
        raise ValueError("evaluate() needs at least one batch")
    return summarise(objective, torch.cat(logits), torch.cat(targets), num_classes)
