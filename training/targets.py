"""Targets for the task a run learns, derived from a dataset's classes.

``--task binary --positive 7`` turns MNIST into "is it a 7?" (labels "not 7" and "7"); a two-class dataset
is binary as it is (its second class is the positive one). ``--task multilabel --label-set even=0,2,4,6,8
--label-set prime=2,3,5,7`` gives every example one 0/1 target per named set of classes. CSV files with
several ``--target`` columns are multi-label as read (training/tabular.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch

from training.datasets import DataError, ImageSet, Source


@dataclass(frozen=True)
class TargetSpec:
    """What a run's targets are: the task, CSV target columns, and how classes map to binary/multi-label."""

    task: str = "multiclass"
    columns: tuple[str, ...] = ()  # csv:PATH only
    positive: tuple[str, ...] = ()  # binary: the classes that count as positive
    label_sets: tuple[str, ...] = ()  # multilabel: "NAME=CLASS,CLASS,..." each


def parse_label_set(text: str) -> tuple[str, tuple[str, ...]]:
    """``"even=0,2,4"`` -> ``("even", ("0", "2", "4"))``; ValueError when it is not of that form."""
    name, sep, members = text.partition("=")
    classes = tuple(c.strip() for c in members.split(",") if c.strip())
    if not sep or not name.strip() or "," in name or not classes:
        raise ValueError(f"label set {text!r} must look like NAME=CLASS,CLASS,... (e.g. even=0,2,4,6,8)")
    return name.strip(), classes


def derive(source: Source, spec: TargetSpec) -> Source:
    """``source`` with targets in the task's form (see training/tasks.py); multiclass sources pass through."""
    if source.train.labels.dim() > 1:  # already multi-label (a CSV with several target columns)
        return source
    if spec.task == "binary":
        positive = spec.positive or _second_of_two(source)
        index = _indices(source.classes, positive, "--positive")
        name = "+".join(positive)
        classes = source.classes if not spec.positive else (f"not {name}", name)
        return _mapped(source, classes, lambda y: torch.isin(y, index).float().unsqueeze(1))
    if spec.task == "multilabel":
        if not spec.label_sets:
            raise DataError(f"--task multilabel on {source.name} needs --label-set NAME=CLASS,... (one per "
                            "label) or a CSV with several --target columns")
        sets = [parse_label_set(text) for text in spec.label_sets]
        members = torch.zeros(len(source.classes), len(sets))
        for k, (_, classes) in enumerate(sets):
            members[_indices(source.classes, classes, "--label-set"), k] = 1.0
        return _mapped(source, tuple(name for name, _ in sets), lambda y: members[y])
    return source


def _second_of_two(source: Source) -> tuple[str, ...]:
    if len(source.classes) != 2:
        raise DataError(f"--task binary on {source.name} ({len(source.classes)} classes) needs --positive "
                        f"CLASS[,CLASS] to say which classes are positive, e.g. --positive "
                        f"{source.classes[-1]}")
    return (source.classes[1],)


def _indices(classes: Sequence[str], chosen: Sequence[str], flag: str) -> torch.Tensor:
    unknown = [c for c in chosen if c not in classes]
    if unknown:
        raise DataError(f"{flag}: {unknown} not among the dataset's classes {list(classes)}")
    return torch.tensor([classes.index(c) for c in chosen])


def _mapped(source: Source, classes: tuple[str, ...],
            target: Callable[[torch.Tensor], torch.Tensor]) -> Source:
    def convert(split: ImageSet) -> ImageSet:
        return ImageSet(split.images, target(split.labels))

    return replace(source, classes=classes, train=convert(source.train), test=convert(source.test))
