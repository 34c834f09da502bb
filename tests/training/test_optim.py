"""Optimisers and schedules by name: decay where it belongs, schedules that reach their targets."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from training.optim import build_optimizer, build_scheduler, current_lr


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_weight_decay_skips_biases_and_norms(name: str) -> None:
    optimizer = build_optimizer(name, _net(), lr=0.1, weight_decay=1e-3)
    decayed, plain = optimizer.param_groups
    assert {p.dim() for p in decayed["params"]} == {2, 4} and decayed["weight_decay"] == 1e-3
    assert {p.dim() for p in plain["params"]} == {1} and plain["weight_decay"] == 0.0


def test_sgd_uses_nesterov_momentum() -> None:
    optimizer = build_optimizer("sgd", _net(), lr=0.1, momentum=0.9)
    assert optimizer.defaults["nesterov"] and optimizer.defaults["momentum"] == 0.9


def _lrs(schedule: str, steps: int = 100) -> list[float]:
    optimizer = build_optimizer("sgd", _net(), lr=0.1)
    scheduler = build_scheduler(schedule, optimizer, steps)
    lrs = []
    for _ in range(steps):
        lrs.append(current_lr(optimizer))
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    return lrs


def test_schedules() -> None:
    assert set(_lrs("none")) == {0.1}
    step = _lrs("step")
    assert step[0] == 0.1 and step[60] == pytest.approx(0.01) and step[-1] == pytest.approx(0.001)
    cosine = _lrs("cosine")
    assert cosine[0] == 0.1 and cosine[-1] < 0.001
    onecycle = _lrs("onecycle")
    assert max(onecycle) == pytest.approx(0.1, rel=1e-3) and onecycle[0] < 0.01 and onecycle[-1] < 1e-4


def test_unknown_names() -> None:
    with pytest.raises(ValueError, match="optimizer"):
        build_optimizer("rmsprop", _net(), lr=0.1)
    with pytest.raises(ValueError, match="schedule"):
        build_scheduler("linear", torch.optim.SGD(_net().parameters(), lr=0.1), 10)
