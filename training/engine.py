"""One training epoch and one evaluation pass. No printing, no argv: callers get records back.

The model takes pixels as the artifact will (uint8 batches are scaled to float [0, 1] here, the model
normalises itself), so the net trained is exactly the net exported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
# Called every few steps with (steps done, running mean loss, running accuracy), e.g. by a progress bar.
StepCallback = Callable[[int, float, float], None]


@dataclass(frozen=True)
class EpochStats:
    """Totals over one epoch of training (sums, so that processes can add theirs up)."""

    loss_sum: float
    correct: int
    examples: int

    @property
    def loss(self) -> float:
        """Mean cross-entropy per example."""
        return self.loss_sum / max(self.examples, 1)

    @property
    def accuracy(self) -> float:
        """Fraction of examples classified correctly (with augmentation and dropout on)."""
        return self.correct / max(self.examples, 1)


@dataclass(frozen=True)
class Evaluation:
    """What one pass over a labelled split says about the model."""

    loss: float
    accuracy: float
    confusion: torch.Tensor  # [K, K] counts; row = true class, column = predicted class
    predictions: torch.Tensor  # [N] predicted class per example, in the split's order
    losses: torch.Tensor  # [N] cross-entropy per example: the largest are the worst mistakes
    confidence: torch.Tensor  # [N] softmax probability of the predicted class

    @property
    def per_class_accuracy(self) -> list[float]:
        """Recall of each class: the fraction of its examples predicted correctly."""
        totals = self.confusion.sum(dim=1).clamp_min(1)
        return (self.confusion.diagonal() / totals).tolist()


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
) -> EpochStats:
    """Train ``model`` for one pass over ``batches``; the scheduler, if any, steps once per batch.

    ``memory_format`` is the layout batches are handed to the model in (channels_last suits conv nets).
    """
    model.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    examples = 0
    for step, (images, labels) in enumerate(batches, start=1):
        x, y = pixels(images, device), labels.to(device, non_blocking=True)
        if augment is not None:
            x = augment(x)
        x = x.contiguous(memory_format=memory_format)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        loss_sum += loss.detach() * len(y)
        correct += (logits.detach().argmax(dim=1) == y).sum()
        examples += len(y)
        # .item() waits for the device: only every few steps, not every step.
        if on_step is not None and step % report_every == 0:
            on_step(step, loss_sum.item() / examples, correct.item() / examples)
    return EpochStats(loss_sum=loss_sum.item(), correct=int(correct.item()), examples=examples)


@torch.inference_mode()
def evaluate(model: nn.Module, batches: Batches, device: torch.device, num_classes: int,
             memory_format: torch.memory_format = torch.contiguous_format) -> Evaluation:
    """Loss, accuracy, confusion matrix and per-example results of ``model`` over ``batches``."""
    model.eval()
    losses, predictions, confidence, targets = [], [], [], []
    for images, labels in batches:
        logits = model(pixels(images, device, memory_format)).float()
        y = labels.to(device, non_blocking=True)
        losses.append(F.cross_entropy(logits, y, reduction="none").cpu())
        probs, predicted = logits.softmax(dim=1).max(dim=1)
        predictions.append(predicted.cpu())
        confidence.append(probs.cpu())
        targets.append(labels.cpu())
    if not targets:
        raise ValueError("evaluate() needs at least one batch")
    loss, pred, target = torch.cat(losses), torch.cat(predictions), torch.cat(targets)
    confusion = torch.bincount(target * num_classes + pred, minlength=num_classes**2)
    return Evaluation(
        loss=loss.mean().item(),
        accuracy=(pred == target).float().mean().item(),
        confusion=confusion.view(num_classes, num_classes),
        predictions=pred,
        losses=loss,
        confidence=torch.cat(confidence),
    )
