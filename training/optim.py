"""Optimisers and learning-rate schedules by name. Every schedule here steps once per batch."""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler, MultiStepLR, OneCycleLR


def build_optimizer(name: str, model: nn.Module, lr: float, momentum: float = 0.9,
                    weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """sgd (Nesterov momentum), adam or adamw over ``model``'s trainable parameters.

    Weight decay applies to weight matrices and kernels only: decaying biases and batch-norm scales towards
    zero only fights the normalisation.
    """
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}")


def build_scheduler(name: str, optimizer: torch.optim.Optimizer, total_steps: int) -> LRScheduler | None:
    """none, step (x0.1 at 50 % and 75 % of the run), cosine (to zero) or onecycle (peak = the set lr)."""
    total_steps = max(total_steps, 1)
    if name == "none":
        return None
    if name == "step":
        return MultiStepLR(optimizer, milestones=[total_steps // 2, total_steps * 3 // 4], gamma=0.1)
    if name == "cosine":
        return CosineAnnealingLR(optimizer, T_max=total_steps)
    if name == "onecycle":
        peak = [group["lr"] for group in optimizer.param_groups]
        return OneCycleLR(optimizer, max_lr=peak, total_steps=total_steps)
    raise ValueError(f"unknown schedule {name!r}")


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The learning rate of the first parameter group (all groups share it here)."""
    return float(optimizer.param_groups[0]["lr"])
