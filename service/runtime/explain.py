"""Attributions for ``:explain``, computed in the model runtime with Captum: which input pixels (or
features) pushed a model towards a class, and which against.

Integrated Gradients (Sundararajan et al., 2017) where the served file has gradients (TorchScript, an
exported program); where it has none (an AOTInductor package runs forward only), occlusion for images
and feature ablation for a row of features, both forward passes alike. The baseline is the input of no
information: black pixels (MNIST's background), or every feature at zero. Why these defaults, and what
each costs: docs/serving.md#explanations.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from captum.attr import FeatureAblation, IntegratedGradients, Occlusion

from service.contract.loading import LoadedModel, merge_inputs
from service.errors import QueueFull
from service.handoff.protocol import GRADIENT_FORMATS, OCCLUSION_STRIDE, OCCLUSION_WINDOW

INTEGRATED_GRADIENTS, OCCLUSION = "integrated_gradients", "occlusion"


class ExplainError(ValueError):
    """An explanation this model cannot give (the method needs gradients the served file lacks)."""


@dataclass(frozen=True)
class Explained:
    """Attributions [rows, *input shape] and the rows' logits [rows, classes]."""

    attributions: np.ndarray
    logits: np.ndarray


def default_method(model: LoadedModel) -> str:
    """Integrated Gradients when the served file has gradients, else occlusion."""
    return INTEGRATED_GRADIENTS if model.format in GRADIENT_FORMATS else OCCLUSION


def attribute(model: LoadedModel, rows: np.ndarray, targets: list[int], method: str, steps: int,
              internal_batch: int) -> Explained:
    """Attributions of each row for its target class (``predicted``: the model's own answer for it).

    ``internal_batch`` bounds the rows of one forward pass (Captum expands a row into ``steps`` or into
    one row per patch); the runtime gives its batch size.
    """
    if method == "default":
        method = default_method(model)
    if method == INTEGRATED_GRADIENTS and model.format not in GRADIENT_FORMATS:
        raise ExplainError(f"model {model.key} is served as {model.format}, which has no gradients: ask for "
                           f"method {OCCLUSION}")
    x = torch.from_numpy(merge_inputs([rows], model.manifest.input.shape).astype(np.float32, copy=False))
    if rows.dtype == np.uint8:
        x = x * (1.0 / 255.0)
    x = x.to(model.device)
    if model.half:
        x = x.half()
    with torch.inference_mode():
        logits = model.module(x).float()
    target = torch.tensor([int(logits[i].argmax()) if t < 0 else t for i, t in enumerate(targets)],
                          device=model.device)
    if method == INTEGRATED_GRADIENTS:
        ig = IntegratedGradients(model.module)
        attributions = ig.attribute(x.clone().requires_grad_(True), target=target, n_steps=steps,
                                    internal_batch_size=internal_batch)
    else:
        with torch.no_grad():
            if model.manifest.input.kind == "features":
                attributions = FeatureAblation(model.module).attribute(
                    x, target=target, perturbations_per_eval=max(1, internal_batch // len(x)))
            else:
                window = (x.shape[1], OCCLUSION_WINDOW, OCCLUSION_WINDOW)
                attributions = Occlusion(model.module).attribute(
                    x, target=target, sliding_window_shapes=window,
                    strides=(x.shape[1], OCCLUSION_STRIDE, OCCLUSION_STRIDE),
                    perturbations_per_eval=max(1, internal_batch // len(x)))
    return Explained(attributions.detach().float().cpu().numpy(), logits.cpu().numpy())


@dataclass(eq=False, slots=True)
class Job:
    """One EXPLAIN message waiting in the runtime: its rows sit in ``conn``'s arena at ``slot``."""

    conn: Any
    slot: int
    index: int  # the model's index in the table
    rows: np.ndarray
    targets: list[int]  # -1: the predicted class
    method: str
    steps: int
    deadline: float
    queued_at: float


class ExplainQueue:
    """The runtime's explanations: FIFO, at most ``max_queue`` waiting (QueueFull beyond), run one at a time
    between batches. While the runtime is busy with predictions (some wait, or a batch ran since the last
    explanation), the next one starts only once ``1 / share - 1`` times the last explanation's compute has
    passed, so that explanations take at most ``share`` of a busy runtime's time and are never starved
    either; an idle runtime runs them back to back. (Predictions' queues are often empty for a moment
    between two batches, while the workers wait for an answer before sending more: "a prediction waits"
    alone would let explanations take the runtime; scripts/bench_explain_mix.py measured it.)"""

    def __init__(self, max_queue: int, share: float) -> None:
        self.max_queue = max_queue
        self.share = share
        self._jobs: deque[Job] = deque()
        self._after = 0.0  # while predictions wait, no explanation starts before this (time.monotonic())

    def __len__(self) -> int:
        return len(self._jobs)

    def put(self, job: Job, key: str) -> None:
        """Queue one explanation; QueueFull when ``max_queue`` wait already."""
        if len(self._jobs) >= self.max_queue:
            raise QueueFull(f"{len(self._jobs)} explanations are queued (TRAINSERVE_EXPLAIN_MAX_QUEUE); "
                            f"model {key} answers predictions meanwhile: retry the explanation shortly")
        self._jobs.append(job)

    def take(self, busy: bool, now: float) -> Job | None:
        """The next explanation to run now, if its turn has come (``busy``: predictions are being served)."""
        if not self._jobs or (busy and now < self._after):
            return None
        return self._jobs.popleft()

    def wait_s(self, now: float) -> float | None:
        """How long the loop may sleep before the next explanation's turn (None: none waits)."""
        return max(0.0, self._after - now) if self._jobs else None

    def done(self, took: float, now: float) -> None:
        """Record an explanation's compute time: the share rule's next opening."""
        self._after = now + took * (1 - self.share) / self.share

    def depth(self, index: int) -> int:
        """Explanations of the model at ``index`` waiting."""
        return sum(1 for job in self._jobs if job.index == index)

    def drop(self, keep: Callable[[Job], bool]) -> list[Job]:
        """Remove and return every job for which ``keep`` is false."""
        dropped = [job for job in self._jobs if not keep(job)]
        self._jobs = deque(job for job in self._jobs if keep(job))
        return dropped
