"""What a run learns: the task (multiclass, binary, multilabel), its loss, and what evaluation measures.

Targets travel in the task's own form: class indices ``int64 [N]`` for multiclass, ``float32 [N, 1]`` (0 or 1)
for binary, ``float32 [N, K]`` (one 0/1 column per label) for multilabel. The net always returns logits:
softmax turns them into probabilities for multiclass, one sigmoid per output for the other two.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

TASKS = ("multiclass", "binary", "multilabel")
LOSSES = ("cross-entropy", "nll", "mse", "bce")
TASK_LOSSES = {"multiclass": ("cross-entropy", "nll", "mse"), "binary": ("bce", "mse"),
               "multilabel": ("bce", "mse")}
DEFAULT_LOSS = {"multiclass": "cross-entropy", "binary": "bce", "multilabel": "bce"}


def loss_error(task: str, loss: str) -> str | None:
    """Why ``loss`` does not fit ``task`` (None when it does)."""
    if loss in TASK_LOSSES.get(task, ()):
        return None
    if task == "multiclass":
        return (f"--loss {loss} is for sigmoid outputs (binary, multilabel); a multiclass (softmax) model "
                f"takes {', '.join(TASK_LOSSES['multiclass'])}")
    return (f"--loss {loss} is for a softmax over classes (multiclass); a {task} model (one sigmoid per "
            f"output) takes {', '.join(TASK_LOSSES[task])} (or train with --task multiclass)")


@dataclass(frozen=True)
class Objective:
    """The task and loss of a run, and the decision threshold of the sigmoid tasks."""

    task: str = "multiclass"
    loss: str = "cross-entropy"
    threshold: float = 0.5

    def losses(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The loss of every example ``[N]``; training minimises their mean."""
        if self.task == "multiclass":
            if self.loss == "nll":  # the textbook pairing, numerically the same as cross-entropy
                return F.nll_loss(F.log_softmax(logits, dim=1), targets, reduction="none")
            if self.loss == "mse":  # squared error of the softmax against the one-hot target (Brier score)
                one_hot = F.one_hot(targets, logits.shape[1]).to(logits.dtype)
                return (logits.softmax(dim=1) - one_hot).square().sum(dim=1)
            return F.cross_entropy(logits, targets, reduction="none")
        if self.loss == "mse":
            return (torch.sigmoid(logits) - targets).square().mean(dim=1)
        return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(dim=1)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Softmax for multiclass, a sigmoid per output otherwise (what the service returns)."""
        return logits.softmax(dim=1) if self.task == "multiclass" else torch.sigmoid(logits)

    def decide(self, logits: torch.Tensor) -> torch.Tensor:
        """Multiclass: the class index ``[N]``; otherwise 0/1 per output ``[N, K]`` at the threshold."""
        if self.task == "multiclass":
            return logits.argmax(dim=1)
        return (torch.sigmoid(logits) >= self.threshold).long()

    def correct(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """How many examples are right; for multilabel each example counts its share of right labels."""
        decided = self.decide(logits)
        if self.task == "multiclass":
            return (decided == targets).sum().to(torch.float64)
        return (decided == targets.round().long()).to(torch.float64).mean(dim=1).sum()


@dataclass(frozen=True)
class Evaluation:
    """What one pass over a labelled split says about the model."""

    loss: float
    accuracy: float  # multilabel: the mean accuracy over labels
    # Multiclass [K, K] counts (row = true class, column = predicted); binary [2, 2]; multilabel [K, 2, 2],
    # one binary matrix per label.
    confusion: torch.Tensor
    predictions: torch.Tensor  # [N] predicted class (binary: 0 or 1); multilabel [N, K] 0/1
    losses: torch.Tensor  # [N] loss per example: the largest are the worst mistakes
    confidence: torch.Tensor  # [N] probability of the predicted class (multilabel: of the least sure label)
    scores: torch.Tensor | None = None  # [N, outputs] probabilities, as the service returns them
    targets: torch.Tensor | None = None  # [N] or [N, K], as the split holds them

    @property
    def per_class_accuracy(self) -> list[float]:
        """Multiclass and binary: the recall of each class; multilabel: each label's accuracy."""
        if self.confusion.dim() == 3:
            right = self.confusion.diagonal(dim1=1, dim2=2).sum(dim=1)
            return (right / self.confusion.sum(dim=(1, 2)).clamp_min(1)).tolist()
        totals = self.confusion.sum(dim=1).clamp_min(1)
        return (self.confusion.diagonal() / totals).tolist()


def summarise(objective: Objective, logits: torch.Tensor, targets: torch.Tensor,
              num_classes: int) -> Evaluation:
    """An Evaluation from a split's logits and targets (all on the CPU)."""
    losses = objective.losses(logits, targets)
    probs = objective.probabilities(logits)
    decided = objective.decide(logits)
    if objective.task == "multiclass":
        confusion = torch.bincount(targets * num_classes + decided, minlength=num_classes**2)
        return Evaluation(loss=losses.mean().item(), accuracy=(decided == targets).float().mean().item(),
                          confusion=confusion.view(num_classes, num_classes), predictions=decided,
                          losses=losses, confidence=probs.max(dim=1).values, scores=probs, targets=targets)
    truth = targets.round().long()
    # Per output: index 2 * true + predicted counts the four cells of its binary confusion matrix.
    cells = torch.stack([torch.bincount(2 * truth[:, k] + decided[:, k], minlength=4)
                         for k in range(truth.shape[1])]).view(-1, 2, 2)
    sure = torch.where(decided.bool(), probs, 1.0 - probs).min(dim=1).values
    binary = objective.task == "binary"
    return Evaluation(loss=losses.mean().item(), accuracy=(decided == truth).float().mean().item(),
                      confusion=cells[0] if binary else cells,
                      predictions=decided[:, 0] if binary else decided, losses=losses, confidence=sure,
                      scores=probs, targets=targets)
