"""Pure pre- and post-processing between request data and model tensors: no HTTP, no torch, no state.

Every function works on whole numpy arrays, never one image at a time in Python, so that a request with
many instances costs a few vectorised steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from service.errors import InvalidInput
from service.manifest import InputSpec

# Open Inference Protocol datatype -> numpy dtype, for the inputs the module takes.
DATATYPES: dict[str, type[np.generic]] = {"FP32": np.float32, "UINT8": np.uint8}

OUTPUTS = ("logits", "probabilities", "label")


def example_shapes(spec: InputSpec) -> list[tuple[int, ...]]:
    """Shapes one example may have in a request: [1,28,28], [28,28] (no channel axis) or [784]."""
    shapes = [tuple(spec.shape)]
    if len(spec.shape) == 3 and spec.shape[0] == 1:
        shapes.append(tuple(spec.shape[1:]))
    shapes.append((math.prod(spec.shape),))
    return list(dict.fromkeys(shapes))


def parse_tensor(data: Any, datatype: str, shape: Sequence[int] | None, spec: InputSpec) -> np.ndarray:
    """Validate request data (flat or nested) and return it as an array [N, *spec.shape].

    FP32 values must be finite and inside ``spec.range``; UINT8 values integers in 0..255. ``shape`` is
    the declared one (the OIP ``shape``); None means "infer it from nested data" (the v1 API).
    """
    if datatype not in DATATYPES or (datatype == "UINT8" and not spec.accepts_uint8):
        allowed = "FP32 or UINT8" if spec.accepts_uint8 else "FP32"
        raise InvalidInput(f"datatype {datatype!r} is not supported: use {allowed}")
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError):
        raise InvalidInput("data must be a flat or evenly nested list of numbers") from None
    if arr.dtype.kind not in "iuf" or arr.size == 0:
        raise InvalidInput("data must be a non-empty, evenly nested list of numbers")
    if shape is None:
        shape = arr.shape
    shape = tuple(int(d) for d in shape)
    allowed_shapes = example_shapes(spec)
    if len(shape) < 2 or shape[0] < 1 or shape[1:] not in allowed_shapes:
        options = " or ".join(str([-1, *s]).replace("-1", "N") for s in allowed_shapes)
        raise InvalidInput(f"shape {list(shape)} is not accepted: use {options}")
    if arr.size != math.prod(shape):
        raise InvalidInput(f"data has {arr.size} values but shape {list(shape)} needs {math.prod(shape)}")
    return _checked_values(arr, datatype, spec).reshape(shape[0], *spec.shape)


def _checked_values(arr: np.ndarray, datatype: str, spec: InputSpec) -> np.ndarray:
    if datatype == "UINT8":
        if arr.dtype == np.uint8:
            return arr  # binary data: every byte is a valid pixel
        # JSON has one number type: 7.0 is the integer 7 (as JSON Schema, and so the API document, says).
        if arr.dtype.kind == "f" and not (arr == np.floor(arr)).all():
            raise InvalidInput("UINT8 data must be integers 0..255")
        if arr.min() < 0 or arr.max() > 255:
            raise InvalidInput(f"UINT8 values must be in 0..255, got {arr.min():g}..{arr.max():g}")
        return arr.astype(np.uint8)
    # The range is checked on the values as sent, before the cast: a value past float32's range would
    # overflow in it (and a value just over the range would round into it).
    low, high = spec.range
    least, most = float(arr.min()), float(arr.max())  # NaN in the data makes both NaN
    if low <= least and most <= high:
        return arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise InvalidInput("FP32 data must not contain NaN or infinity")
    hint = " (for 0..255 pixels send UINT8 data)" if most > high and high <= 1 else ""
    raise InvalidInput(f"FP32 values must be in [{low}, {high}], got [{least:.4g}, {most:.4g}]{hint}")


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise probabilities from logits, numerically stable."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def predictions(logits: np.ndarray, labels: Sequence[str], top_k: int | None = None) -> list[dict[str, Any]]:
    """The v1 answer: per example the best label and the probabilities of the ``top_k`` best (all if None)."""
    probs = softmax(logits)
    k = len(labels) if top_k is None else min(top_k, len(labels))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k].tolist()
    # Plain Python over the (few) labels of each row: cheaper than more numpy calls for one image.
    return [{"label": labels[best[0]], "probabilities": {labels[i]: row[i] for i in best}}
            for best, row in zip(order, probs.tolist(), strict=True)]


def oip_outputs(logits: np.ndarray, requested: Sequence[dict[str, Any]] | None,
                labels: Sequence[str]) -> list[dict[str, Any]]:
    """OIP output tensors: every output when none is requested; ``classification: k`` gives top-k strings."""
    wanted = requested or [{"name": name} for name in OUTPUTS]
    tensors = {"logits": logits, "probabilities": None}
    out = []
    for item in wanted:
        name = item["name"]
        if name not in OUTPUTS:
            raise InvalidInput(f"unknown output {name!r}: the model gives {', '.join(OUTPUTS)}")
        if name == "probabilities" and tensors["probabilities"] is None:
            tensors["probabilities"] = softmax(logits)
        k = int((item.get("parameters") or {}).get("classification") or 0)
        if name == "label":
            out.append(_tensor(name, "BYTES", np.asarray(labels, dtype=object)[logits.argmax(axis=1)]))
        elif k > 0:
            out.append(_tensor(name, "BYTES", classification(tensors[name], labels, k)))
        else:
            out.append(_tensor(name, "FP32", tensors[name]))
    return out


def classification(scores: np.ndarray, labels: Sequence[str], k: int) -> np.ndarray:
    """Triton's classification extension: per example the k best as "score:index:label" strings [N, k]."""
    k = min(k, len(labels))
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    best = np.take_along_axis(scores, order, axis=1)
    names = np.asarray(labels, dtype=object)
    return np.array([[f"{s:f}:{i}:{names[i]}" for s, i in zip(srow, irow, strict=True)]
                     for srow, irow in zip(best.tolist(), order.tolist(), strict=True)], dtype=object)


def _tensor(name: str, datatype: str, values: np.ndarray) -> dict[str, Any]:
    data = values.ravel().tolist() if values.dtype == object else np.ascontiguousarray(values).ravel()
    return {"name": name, "datatype": datatype, "shape": list(values.shape), "data": data}
