"""Calibrated answers and the "not a digit" flag: pure functions of logits, the manifest and plain request
values, no HTTP and no state, so that every door into the service (the Flask handlers, an event loop's)
answers the same.

- The manifest's temperature divides the logits before any probability is taken (``calibrated``).
- A model whose manifest has ``outliers`` scores each example (one minus its highest calibrated
  probability) and flags it at or over the manifest's threshold (``judge``). A flagged example gets no
  label (v1 ``null``, OIP ``""``) unless the request asks for the plain answer (``plain``); the flag and the
  score are always given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from service.contract.manifest import Manifest

OUTLIER_OUTPUTS = ("outlier", "outlier_score")  # the OIP outputs of a model with a "not a digit" score


@dataclass(frozen=True)
class Verdict:
    """Per example of a batch: the "not a digit" score and whether it reaches the threshold."""

    scores: np.ndarray  # float32 [N], in [0, 1]
    flagged: np.ndarray  # bool [N]


def calibrated(logits: np.ndarray, manifest: Manifest) -> np.ndarray:
    """The logits divided by the manifest's temperature (the same array at temperature 1)."""
    temperature = manifest.calibration.temperature
    if temperature == 1.0:
        return logits
    return (logits * np.float32(1.0 / temperature)).astype(np.float32, copy=False)


def judge(logits: np.ndarray, manifest: Manifest, probs: np.ndarray | None = None) -> Verdict | None:
    """The verdict on calibrated ``logits`` [N, classes] (``probs``: their softmax, when the caller has it
    already); None for a model without a "not a digit" score."""
    spec = manifest.outliers
    if spec is None:
        return None
    if probs is None:
        shifted = logits - logits.max(axis=1, keepdims=True)
        top = 1.0 / np.exp(shifted).sum(axis=1)  # the highest softmax probability, without the whole softmax
    else:
        top = probs.max(axis=1)
    scores = (1.0 - top).astype(np.float32)
    return Verdict(scores=scores, flagged=scores >= spec.threshold)


def annotate(predictions: list[dict[str, Any]], verdict: Verdict | None, plain: bool) -> list[dict[str, Any]]:
    """v1 answers with each example's ``outlier`` flag and ``outlier_score``; a flagged example's ``label`` is
    null unless ``plain``. Without a verdict the answers are returned as they are."""
    if verdict is None:
        return predictions
    for prediction, score, flagged in zip(predictions, verdict.scores.tolist(), verdict.flagged.tolist(),
                                          strict=True):
        if flagged and not plain:
            prediction["label"] = None
        prediction["outlier"] = flagged
        prediction["outlier_score"] = score
    return predictions


def withheld_labels(labels: np.ndarray, verdict: Verdict | None, plain: bool) -> np.ndarray:
    """OIP ``label`` strings with a flagged example's replaced by "" (unless ``plain``)."""
    if verdict is None or plain or not verdict.flagged.any():
        return labels
    return np.where(verdict.flagged, "", labels).astype(object)


def outlier_tensors(verdict: Verdict) -> dict[str, tuple[str, np.ndarray]]:
    """The OIP outputs of a verdict by name: (datatype, values [N])."""
    return {"outlier": ("BOOL", verdict.flagged), "outlier_score": ("FP32", verdict.scores)}


def describe(manifest: Manifest) -> dict[str, Any]:
    """What model listings and metadata say about calibration and the "not a digit" score."""
    out: dict[str, Any] = {"temperature": manifest.calibration.temperature}
    spec = manifest.outliers
    if spec is not None:
        out["outliers"] = {"score": spec.score, "threshold": spec.threshold, "meaning": spec.meaning}
    return out
