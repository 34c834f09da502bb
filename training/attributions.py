"""What each class looks like to the model: Integrated Gradients (Captum, as the service's ``:explain``
uses) averaged over test examples of each class that the model gets right, drawn into the artifact as
``attributions.png`` for the model page.

Inputs are scaled as the service explains them: pixels in [0, 1] against a black image, features as given
against zeros. Red pushes towards the class, blue against; each class's map is scaled by its own largest
magnitude. Multi-class models (an output per class).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from captum.attr import IntegratedGradients
from matplotlib.figure import Figure
from torch import nn

from training.data import ImageSet

ATTRIBUTIONS_FILE = "attributions.png"
PER_CLASS = 16  # examples averaged per class: a stable picture in a few seconds on a CPU
STEPS = 32  # the service's default for :explain


def class_average(model: nn.Module, examples: ImageSet, predictions: torch.Tensor, classes: Sequence[str],
                  device: torch.device, per_class: int = PER_CLASS, steps: int = STEPS) -> np.ndarray:
    """Mean attribution towards each class over up to ``per_class`` of its examples predicted right:
    ``[classes, *input shape]`` (zeros for a class with none). Multi-class models."""
    model.eval()
    ig = IntegratedGradients(model)
    out = np.zeros((len(classes), *examples.images.shape[1:]), np.float32)
    right = predictions.cpu() == examples.labels
    for k in range(len(classes)):
        index = torch.nonzero(right & (examples.labels == k)).flatten()[:per_class]
        if len(index):
            x = _scaled(examples.images[index]).to(device).requires_grad_(True)
            attributions = ig.attribute(x, target=k, n_steps=steps, internal_batch_size=len(index) * 8)
            out[k] = attributions.detach().float().mean(dim=0).cpu().numpy()
    return out


def plot_class_attributions(maps: np.ndarray, classes: Sequence[str], path: Path,
                            features: Sequence[str] = (), per_class: int = PER_CLASS) -> Path:
    """Images: one map per class, red towards it and blue against. Features: a bar per feature per class."""
    k = len(classes)
    if features:
        fig = Figure(figsize=(min(4 + 2.2 * k, 18), 1.2 + 0.28 * len(features)), layout="constrained")
        axes = np.atleast_1d(fig.subplots(1, k, sharey=True))
        for ax, name, values in zip(axes, classes, maps, strict=True):
            top = float(np.abs(values).max()) or 1.0
            ax.barh(range(len(features)), values / top, color=np.where(values >= 0, "#e62828", "#285ae6"))
            ax.set(title=str(name), xlim=(-1.05, 1.05))
            ax.axvline(0, color="black", lw=0.6)
        axes[0].set_yticks(range(len(features)), list(features))
        axes[0].invert_yaxis()
    else:
        columns = min(k, 10)
        rows = -(-k // columns)
        fig = Figure(figsize=(1.5 * columns, 1.7 * rows + 0.4), layout="constrained")
        axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
        for ax in axes:
            ax.axis("off")
        for ax, name, values in zip(axes, classes, maps, strict=False):
            heat = values.sum(axis=0)  # over channels
            top = float(np.abs(heat).max()) or 1.0
            ax.imshow(heat / top, cmap="bwr", vmin=-1, vmax=1)
            ax.set_title(str(name)[:10], fontsize=9)
    fig.suptitle(f"Integrated Gradients towards each class, mean of up to {per_class} test examples "
                 "it gets right (red: towards, blue: against)", fontsize=9)
    fig.savefig(path, dpi=90)
    return path


def _scaled(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
