"""What a finished run reports for its task: the manifest's metrics, the figures, and the model card.

Multiclass: accuracy, per-class accuracy, the confusion matrix and the worst mistakes. Binary: the same plus
ROC AUC, average precision, precision/recall/F1 of the positive label and ROC/PR curves. Multilabel:
per-label accuracy, precision, recall, F1 and ROC AUC, exact-match accuracy and threshold curves. Models
of two features (the spiral) also get their decision regions drawn.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from training import attributions, reports, taskplots
from training.data import DataSplits, ImageSet
from training.engine import pixels
from training.runlog import RunLog
from training.tasks import Evaluation, Objective

log = logging.getLogger(__name__)

CARD_FILE = "card.md"


def task_metrics(test: Evaluation, classes: tuple[str, ...], objective: Objective) -> dict[str, Any]:
    """The manifest's test metrics for ``objective.task``."""
    metrics: dict[str, Any] = {
        "test_accuracy": round(test.accuracy, 6), "test_loss": round(test.loss, 6),
        "per_class_accuracy": {c: round(a, 6) for c, a in zip(classes, test.per_class_accuracy, strict=True)},
    }
    if objective.task == "multiclass":
        return metrics
    scores, truth = _arrays(test)
    per_label = {label: _binary_scores(scores[:, k], truth[:, k], test.predictions.view(len(truth), -1)[:, k])
                 for k, label in enumerate(classes[-scores.shape[1]:])}
    if objective.task == "binary":
        scores_of_positive = {k: v for k, v in per_label[classes[1]].items() if k != "accuracy"}
        metrics.update(scores_of_positive, confusion=test.confusion.tolist())
    else:
        exact = (test.predictions == torch.from_numpy(truth)).all(dim=1).float().mean().item()
        metrics.update(exact_match=round(exact, 6), per_label=per_label)
    return metrics


def draw(runlog: RunLog, test: Evaluation, test_set: ImageSet, data: DataSplits, objective: Objective,
         model: nn.Module, metrics: dict[str, Any]) -> list[Path]:
    """Every report file of the run, in its run folder (they are copied into the artifact), and the card."""
    folder, classes = runlog.path.parent, data.classes
    epochs = [row for row in runlog.history if "epoch" in row]
    files = [runlog.path, reports.plot_curves(epochs, folder / reports.CURVES_FILE, objective.loss)]
    if objective.task != "multilabel":
        files.append(reports.plot_confusion(test.confusion, classes, folder / reports.CONFUSION_FILE))
        if not data.features:
            files.append(reports.plot_mistakes(test_set.images, _class_labels(test_set), test.predictions,
                                               test.losses, test.confidence, classes,
                                               folder / reports.MISTAKES_FILE))
    if objective.task != "multiclass":
        scores, truth = _arrays(test)
        if objective.task == "binary":
            files.append(taskplots.plot_roc_pr(scores[:, 0], truth[:, 0], classes[1], objective.threshold,
                                               folder / taskplots.ROC_FILE))
        if objective.task == "multilabel":
            files.append(taskplots.plot_labels(scores, truth, classes, metrics["per_label"],
                                               objective.threshold, folder / taskplots.LABELS_FILE))
    if objective.task == "multiclass":  # what each class looks like to the model (the model page shows it)
        device = next(model.parameters()).device
        maps = attributions.class_average(model, test_set, test.predictions, classes, device)
        path = folder / attributions.ATTRIBUTIONS_FILE
        files.append(attributions.plot_class_attributions(maps, classes, path, data.features))
    if len(data.features) == 2 and objective.task != "multilabel":
        files.append(taskplots.plot_regions(_decider(model, objective), test_set.images,
                                            _class_labels(test_set), classes, data.features,
                                            folder / taskplots.REGIONS_FILE))
    # The card stays in the run folder beside the figures it shows; the artifact gets the figures.
    card = write_card(folder / CARD_FILE, data, objective, metrics, [f.name for f in files[1:]])
    log.info("model card: %s", card)
    return files


def write_card(path: Path, data: DataSplits, objective: Objective, metrics: dict[str, Any],
               figures: Sequence[str]) -> Path:
    """A short Markdown model card: what the model takes and says, how well it does, and its figures."""
    names = ", ".join(data.features[:8]) + (", ..." if len(data.features) > 8 else "")
    kind = (f"{len(data.features)} named features ({names}), standardised inside the model"
            if data.features else f"images {list(data.input_shape)}")
    lines = [f"# {data.source.name}: {objective.task} classifier", "",
             f"- input: {kind}", f"- labels: {', '.join(data.classes)}",
             f"- loss: {objective.loss}" + (f"; decision threshold {objective.threshold:g}"
                                            if objective.task != "multiclass" else ""),
             f"- data: {len(data.train)} train, {len(data.val)} validation, {len(data.test)} test "
             "examples", "",
             "| metric (test) | value |", "|---|---|"]
    lines += [f"| {key} | {value:.4f} |" for key, value in metrics.items() if isinstance(value, float)]
    if "per_label" in metrics:
        lines += ["", "| label | accuracy | precision | recall | F1 | ROC AUC |", "|---|---|---|---|---|---|"]
        columns = ("accuracy", "precision", "recall", "f1", "roc_auc")
        lines += [f"| {label} | " + " | ".join(_cell(m[k]) for k in columns) + " |"
                  for label, m in metrics["per_label"].items()]
    lines += [""] + [f"![{name}]({name})" for name in figures if name.endswith(".png")]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _binary_scores(scores: np.ndarray, truth: np.ndarray, decided: torch.Tensor) -> dict[str, float | None]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    predicted = decided.numpy().astype(bool)
    actual = truth.astype(bool)
    tp = float((predicted & actual).sum())
    precision = tp / max(float(predicted.sum()), 1.0)
    recall = tp / max(float(actual.sum()), 1.0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    both = 0 < actual.sum() < len(actual)  # AUC needs positives and negatives
    return {"accuracy": round(float((predicted == actual).mean()), 6), "precision": round(precision, 6),
            "recall": round(recall, 6), "f1": round(f1, 6),
            "roc_auc": round(float(roc_auc_score(actual, scores)), 6) if both else None,
            "average_precision": round(float(average_precision_score(actual, scores)), 6) if both else None}


def _arrays(test: Evaluation) -> tuple[np.ndarray, np.ndarray]:
    assert test.scores is not None and test.targets is not None
    return test.scores.numpy(), test.targets.view(len(test.targets), -1).round().numpy().astype(np.int64)


def _class_labels(split: ImageSet) -> torch.Tensor:
    """Class indices [N] of a multiclass or binary split (binary targets are [N, 1] floats)."""
    labels = split.labels
    return labels.view(-1).round().long() if labels.dim() > 1 else labels


def _decider(model: nn.Module, objective: Objective) -> Any:
    model = model.to("cpu").eval()

    def decide(points: torch.Tensor) -> torch.Tensor:
        return objective.decide(model(pixels(points, torch.device("cpu")))).view(-1)

    return decide
