"""An exponential moving average of a model's weights (Polyak averaging), the model a run evaluates and
exports when ``--ema`` is on.

After every optimiser step each weight and each batch-norm statistic of the average moves a share
``1 - decay`` of the way to the trained model's, so the average is a smoothed copy of the last
``1 / (1 - decay)`` steps or so: the noise of the last steps of SGD averages out, at no cost in serving (the
exported net is the same net). Early on the decay is lowered to ``(1 + t) / (10 + t)`` after ``t`` updates,
so that short runs are not averaged with their random initial weights: until about ``9 / (1 - decay)``
updates the average spans roughly the last ninth of the steps so far, so in a run shorter than that any
higher decay behaves the same (docs/training.md).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightAverage:
    """The running average of ``model``'s parameters and buffers, as a model of its own (in eval mode)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        # The state dicts' tensors share storage with the models' parameters and buffers, which the
        # optimiser and batch norm update in place: pairing them once is enough.
        pairs = list(zip(self.model.state_dict().values(), model.state_dict().values(), strict=True))
        self._floats = [(mine, theirs) for mine, theirs in pairs if mine.is_floating_point()]
        self._others = [(mine, theirs) for mine, theirs in pairs if not mine.is_floating_point()]

    def current_decay(self) -> float:
        """The decay of the next update: ``decay``, lower during the first ``9 / (1 - decay)`` updates."""
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the trained model's current weights (call after each optimiser step)."""
        weight = 1.0 - self.current_decay()
        self.updates += 1
        for mine, theirs in self._floats:
            mine.lerp_(theirs, weight)
        for mine, theirs in self._others:  # batch norm's step counter: the trained model's own
            mine.copy_(theirs)
