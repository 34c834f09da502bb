"""Calibration: a temperature that makes the probabilities honest, fitted on the validation split, and the
expected calibration error (ECE) and reliability curve that measure how honest they are.

Temperature scaling divides every logit by one number T before the softmax (or sigmoid): it never changes
a prediction, only how sure it says it is. T is the one that minimises the validation split's loss; the
service divides by the manifest's T (``service/web/confidence.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from training.tasks import Objective

BINS = 15  # the usual number of equal-width confidence bins for ECE
_LOW, _HIGH = math.log(0.05), math.log(20.0)  # the temperatures searched


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, objective: Objective) -> float:
    """The temperature in [0.05, 20] that minimises the mean loss of ``logits`` / T (golden-section search
    on log T; the loss is convex in 1/T, so one minimum)."""
    def loss(log_t: float) -> float:
        return objective.losses(logits.double() / math.exp(log_t), targets).mean().item()

    ratio = (math.sqrt(5) - 1) / 2
    low, high = _LOW, _HIGH
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = loss(a), loss(b)
    for _ in range(60):
        if fa < fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = loss(a)
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = loss(b)
    return round(math.exp((low + high) / 2), 4)


@dataclass(frozen=True)
class Reliability:
    """Per confidence bin: how many predictions fell in it, their mean confidence and their accuracy."""

    counts: list[int]
    confidence: list[float]
    accuracy: list[float]

    @property
    def ece(self) -> float:
        """Expected calibration error: the count-weighted mean gap between confidence and accuracy."""
        total = max(sum(self.counts), 1)
        return sum(n * abs(c - a) for n, c, a in zip(self.counts, self.confidence, self.accuracy, strict=True)
                   ) / total


def decisions(logits: torch.Tensor, targets: torch.Tensor, objective: Objective,
              temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The confidence of every decision and whether it was right. Multiclass: the top probability per
    example; binary and multilabel: each output's yes/no at 0.5, sure by max(p, 1 - p)."""
    probs = objective.probabilities(logits.double() / temperature)
    if objective.task == "multiclass":
        top = probs.max(dim=1)
        return top.values, top.indices == targets
    truth = targets.view(len(targets), -1).round().bool()
    said = probs >= 0.5
    return torch.where(said, probs, 1 - probs).flatten(), (said == truth).flatten()


def reliability(confidence: torch.Tensor, correct: torch.Tensor, bins: int = BINS) -> Reliability:
    """The reliability curve over ``bins`` equal-width bins of [0, 1]."""
    index = (confidence.double() * bins).long().clamp(0, bins - 1)
    counts = torch.bincount(index, minlength=bins)
    conf_sum = torch.bincount(index, weights=confidence.double(), minlength=bins)
    right = torch.bincount(index, weights=correct.double(), minlength=bins)
    used = counts.clamp_min(1).double()
    return Reliability(counts=counts.tolist(), confidence=(conf_sum / used).tolist(),
                       accuracy=(right / used).tolist())
