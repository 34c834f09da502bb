"""Report figures beyond the multi-class ones: ROC and precision-recall curves (binary), per-label scores and
threshold curves (multilabel), and decision regions of a model over two features (the spiral).

Matplotlib's object API only (``Figure``), as in training/reports.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

ROC_FILE, LABELS_FILE, REGIONS_FILE = "roc_pr.png", "labels.png", "regions.png"
THRESHOLDS = np.linspace(0.02, 0.98, 49)


def plot_roc_pr(scores: np.ndarray, truth: np.ndarray, positive: str, threshold: float, path: Path) -> Path:
    """ROC and precision-recall curves of the positive label's probability, the threshold marked."""
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

    fpr, tpr, roc_thresholds = roc_curve(truth, scores)
    precision, recall, _ = precision_recall_curve(truth, scores)
    fig = Figure(figsize=(10, 4.4), layout="constrained")
    roc_ax, pr_ax = fig.subplots(1, 2)
    roc_ax.plot(fpr, tpr, label=f"AUC {roc_auc_score(truth, scores):.4f}")
    roc_ax.plot([0, 1], [0, 1], ":", color="grey")
    at = np.argmin(np.abs(roc_thresholds - threshold))
    roc_ax.plot(fpr[at], tpr[at], "o", label=f"threshold {threshold:g}")
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC ({positive}, test)")
    pr_ax.plot(recall, precision, label=f"AP {average_precision_score(truth, scores):.4f}")
    pr_ax.set(xlabel="recall", ylabel="precision", title=f"precision-recall ({positive}, test)")
    for ax in (roc_ax, pr_ax):
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right" if ax is roc_ax else "lower left")
    fig.savefig(path, dpi=90)
    return path


def threshold_curves(scores: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall and F1 of each label at every threshold in THRESHOLDS, arrays [T, K]."""
    decided = scores[None, :, :] >= THRESHOLDS[:, None, None]  # [T, N, K]
    tp = (decided & (truth[None] == 1)).sum(axis=1)
    predicted, actual = decided.sum(axis=1), truth.sum(axis=0)[None]
    precision = np.where(predicted > 0, tp / np.maximum(predicted, 1), 1.0)
    recall = tp / np.maximum(actual, 1)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    return {"precision": precision, "recall": recall, "f1": f1}


def plot_labels(scores: np.ndarray, truth: np.ndarray, labels: Sequence[str], per_label: dict[str, dict],
                threshold: float, path: Path) -> Path:
    """Per-label precision, recall and F1 at the threshold (bars), and F1 against the threshold (curves)."""
    fig = Figure(figsize=(11, 4.4), layout="constrained")
    bars, curves = fig.subplots(1, 2)
    x = np.arange(len(labels))
    for i, metric in enumerate(("precision", "recall", "f1")):
        bars.bar(x + (i - 1) * 0.27, [per_label[label][metric] for label in labels], 0.27, label=metric)
    low = min(per_label[label][m] for label in labels for m in ("precision", "recall", "f1"))
    bars.set_xticks(x, labels, rotation=30 if len(labels) > 6 else 0)
    bars.set(ylim=(max(0.0, low - 0.05), 1.0), title=f"per label at threshold {threshold:g} (test)")
    bars.legend(loc="lower right")
    f1 = threshold_curves(scores, truth)["f1"]
    for k, label in enumerate(labels):
        curves.plot(THRESHOLDS, f1[:, k], label=label)
    curves.axvline(threshold, color="grey", linestyle=":")
    curves.set(xlabel="threshold", ylabel="F1", title="F1 against the decision threshold (test)")
    for ax in (bars, curves):
        ax.grid(alpha=0.3)
    curves.legend(loc="best")
    fig.savefig(path, dpi=90)
    return path


def plot_regions(decide: Callable[[torch.Tensor], torch.Tensor], points: torch.Tensor, labels: torch.Tensor,
                 classes: Sequence[str], names: Sequence[str], path: Path, steps: int = 300) -> Path:
    """The class the model predicts over the plane of two features, with the test points on top."""
    low, high = points.min(dim=0).values, points.max(dim=0).values
    margin = (high - low) * 0.08
    xs = torch.linspace(float(low[0] - margin[0]), float(high[0] + margin[0]), steps)
    ys = torch.linspace(float(low[1] - margin[1]), float(high[1] + margin[1]), steps)
    grid = torch.cartesian_prod(ys, xs).flip(1)  # rows of (x, y), y outer so that it reshapes to [y, x]
    with torch.inference_mode():
        regions = decide(grid).view(steps, steps).numpy()
    fig = Figure(figsize=(6, 5.4), layout="constrained")
    ax = fig.subplots()
    extent = (float(xs[0]), float(xs[-1]), float(ys[0]), float(ys[-1]))
    k = len(classes)
    from matplotlib.colors import ListedColormap

    ax.imshow(regions, origin="lower", extent=extent, cmap=ListedColormap([f"C{c}" for c in range(k)]),
              vmin=-0.5, vmax=k - 0.5, alpha=0.3, aspect="auto", interpolation="nearest")
    for c in range(k):
        chosen = labels == c
        ax.scatter(points[chosen, 0], points[chosen, 1], s=6, label=classes[c], color=f"C{c}")
    ax.set(xlabel=names[0], ylabel=names[1], title="decision regions (test points)")
    ax.legend(loc="upper right", fontsize=8)
    fig.savefig(path, dpi=90)
    return path
