"""PNG reports of a run: learning curves, the confusion matrix, and a grid of the worst mistakes.

Figures are drawn with matplotlib's object API (``Figure``), never pyplot, so no global figure state and no
GUI backend are involved.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

CURVES_FILE, CONFUSION_FILE, MISTAKES_FILE = "curves.png", "confusion.png", "mistakes.png"
RELIABILITY_FILE, OUTLIERS_FILE = "reliability.png", "outliers.png"


def plot_curves(history: Sequence[dict[str, Any]], path: Path, loss_name: str = "cross-entropy") -> Path:
    """Loss and accuracy per epoch, train and validation side by side."""
    epochs = [row["epoch"] for row in history]
    fig = Figure(figsize=(10, 4), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    for split, style in (("train", "-o"), ("val", "-s")):
        if all(f"{split}_loss" in row for row in history):
            loss_ax.plot(epochs, [row[f"{split}_loss"] for row in history], style, label=split, ms=3)
            acc_ax.plot(epochs, [100 * row[f"{split}_accuracy"] for row in history], style, label=split, ms=3)
    loss_ax.set(xlabel="epoch", ylabel=loss_name, title="loss", yscale="log")
    acc_ax.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (loss_ax, acc_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.savefig(path, dpi=90)
    return path


def plot_confusion(confusion: torch.Tensor, labels: Sequence[str], path: Path) -> Path:
    """The test confusion matrix: counts, rows true class, columns predicted; the diagonal is right."""
    k = len(labels)
    size = min(4 + 0.45 * k, 16)
    fig = Figure(figsize=(size, size * 0.9), layout="constrained")
    ax = fig.subplots()
    counts = confusion.cpu().numpy()
    image = ax.imshow(counts, cmap="Blues", norm=_log_norm(counts.max()))
    if k <= 20:  # numbers stay legible up to about 20 classes
        for (row, col), n in ((rc, counts[rc]) for rc in _cells(k)):
            if n:
                colour = "white" if n > counts.max() ** 0.5 * 4 else "black"
                ax.text(col, row, str(n), ha="center", va="center", fontsize=7, color=colour)
    ax.set_xticks(range(k), labels, rotation=90 if k > 10 or max(map(len, labels)) > 3 else 0)
    ax.set_yticks(range(k), labels)
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix (test)")
    fig.colorbar(image, ax=ax, shrink=0.8)
    fig.savefig(path, dpi=90)
    return path


def plot_mistakes(images: torch.Tensor, labels: torch.Tensor, predictions: torch.Tensor,
                  losses: torch.Tensor, confidence: torch.Tensor, classes: Sequence[str], path: Path,
                  count: int = 36) -> Path:
    """The misclassified test images with the highest loss, each titled ``true -> predicted (p)``."""
    wrong = torch.nonzero(predictions != labels).flatten()
    worst = wrong[losses[wrong].argsort(descending=True)][:count].tolist()
    cols = max(1, min(9, len(worst)))
    rows = max(1, math.ceil(len(worst) / cols))
    fig = Figure(figsize=(1.3 * cols + 0.4, 1.45 * rows + 0.5), layout="constrained")
    fig.suptitle(f"worst {len(worst)} of {len(wrong)} mistakes (test): true -> predicted (confidence)")
    axes = fig.subplots(rows, cols, squeeze=False).flatten()
    for ax in axes:
        ax.axis("off")
    for ax, i in zip(axes, worst, strict=False):
        picture = images[i].permute(1, 2, 0).numpy()
        ax.imshow(picture.squeeze(-1) if picture.shape[-1] == 1 else picture, cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"{_short(classes[int(labels[i])])} -> {_short(classes[int(predictions[i])])}\n"
                     f"({confidence[i]:.2f})", fontsize=7)
    if not worst:
        axes[0].text(0.5, 0.5, "no mistakes", ha="center", va="center")
    fig.savefig(path, dpi=90)
    return path


def plot_reliability(curves: dict[str, Any], path: Path) -> Path:
    """Reliability diagrams, one per set: accuracy against confidence per bin (the diagonal is honest),
    with each bin's share of the predictions and the set's ECE."""
    fig = Figure(figsize=(4.2 * len(curves), 4.4), layout="constrained")
    axes = fig.subplots(1, len(curves), squeeze=False)[0]
    for ax, (name, curve) in zip(axes, curves.items(), strict=True):
        bins = len(curve.counts)
        centres = [(i + 0.5) / bins for i in range(bins)]
        used = [i for i, n in enumerate(curve.counts) if n]
        ax.bar([centres[i] for i in used], [curve.accuracy[i] for i in used], width=1 / bins, alpha=0.75,
               edgecolor="black", linewidth=0.5, label="accuracy")
        ax.plot([curve.confidence[i] for i in used], [curve.confidence[i] for i in used], "r.", ms=4,
                label="mean confidence")
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        share = ax.twinx()
        total = max(sum(curve.counts), 1)
        share.plot(centres, [n / total for n in curve.counts], "g-", lw=0.8, alpha=0.6)
        share.set(yscale="log", ylim=(1e-4, 1.5), ylabel="share of predictions (green)")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy",
               title=f"{name}: ECE {100 * curve.ece:.2f} % ({total:,})")
        ax.legend(loc="upper left", fontsize=7)
    fig.savefig(path, dpi=90)
    return path


def plot_outliers(scores: dict[str, torch.Tensor], threshold: float, path: Path) -> Path:
    """The "not a digit" score of each set as a histogram, with the threshold the service flags at."""
    fig = Figure(figsize=(8, 3.8), layout="constrained")
    ax = fig.subplots()
    edges = torch.linspace(0, 1, 51).tolist()
    for name, values in scores.items():
        ax.hist(values.clamp(0, 1).numpy(), bins=edges, histtype="step", lw=1.4, density=True, label=name)
    ax.axvline(threshold, color="red", ls="--", lw=1, label=f"threshold {threshold:.3f}")
    ax.set(yscale="log", xlabel="score: 1 - the highest calibrated probability", ylabel="density",
           title="not a digit: flagged at or over the threshold")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=90)
    return path


def _cells(k: int) -> list[tuple[int, int]]:
    return [(row, col) for row in range(k) for col in range(k)]


def _log_norm(top: float) -> Any:
    from matplotlib.colors import SymLogNorm

    # Counts span 1 to thousands: a log-ish scale keeps the off-diagonal mistakes visible.
    return SymLogNorm(linthresh=1, vmin=0, vmax=max(top, 1))


def _short(name: str, width: int = 10) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"
