"""Pure pre- and post-processing between request data and model tensors: no HTTP, no torch, no state.

Every function works on whole numpy arrays, never one image at a time in Python, so that a request with
many instances costs a few vectorised steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from service.contract.manifest import InputSpec, Manifest
from service.errors import InvalidInput
from service.web.confidence import OUTLIER_OUTPUTS, Verdict, outlier_tensors, withheld_labels

# Open Inference Protocol datatype -> numpy dtype, for the numeric inputs a request may send. The model
# takes FP32 (or UINT8 pixels): other types are converted when every value fits, refused otherwise.
DATATYPES: dict[str, type[np.generic]] = {
    "FP32": np.float32, "UINT8": np.uint8, "FP16": np.float16, "FP64": np.float64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64}
_FLOATS = frozenset({"FP16", "FP32", "FP64"})
# The integer datatypes (pixels), typed as np.iinfo takes them.
INTEGERS: dict[str, type[np.integer]] = {k: t for k, t in DATATYPES.items() if issubclass(t, np.integer)}
# The largest magnitude a float value may have: beyond it the float32 cast would overflow.
FLOAT32_MAX = float(np.finfo(np.float32).max)

OUTPUTS = ("logits", "probabilities", "label")
# Sigmoid tasks also give their yes/no decision per output, at the threshold.
SIGMOID_OUTPUTS = (*OUTPUTS, "decisions")


def outputs_for(task: str, outliers: bool = False) -> tuple[str, ...]:
    """The OIP outputs a model of ``task`` gives (with ``outliers``: its "not a digit" flag and score too)."""
    names = OUTPUTS if task == "multiclass" else SIGMOID_OUTPUTS
    return (*names, *OUTLIER_OUTPUTS) if outliers else names


def example_shapes(spec: InputSpec) -> list[tuple[int, ...]]:
    """Shapes one example may have in a request: [1,28,28], [28,28] (no channel axis) or [784]."""
    shapes = [tuple(spec.shape)]
    if len(spec.shape) == 3 and spec.shape[0] == 1:
        shapes.append(tuple(spec.shape[1:]))
    shapes.append((math.prod(spec.shape),))
    return list(dict.fromkeys(shapes))


def check_input_name(name: str, spec: InputSpec, model: str) -> None:
    """An OIP input must carry the name the model's metadata gives it (400 otherwise, as Triton)."""
    if name != spec.name:
        raise InvalidInput(f"unexpected input {name[:100]!r} for model {model!r}: its input is {spec.name!r}")


def parse_tensor(data: Any, datatype: str, shape: Sequence[int] | None, spec: InputSpec) -> np.ndarray:
    """Validate request data (flat or nested) and return it as an array [N, *spec.shape].

    FP16/FP32/FP64 values must be finite and inside ``spec.range`` (then FP32); integer types' values
    integers in 0..255 that the type holds (then UINT8). ``shape`` is
    the declared one (the OIP ``shape``); None means "infer it from nested data" (the v1 API).
    """
    if datatype not in DATATYPES:
        raise InvalidInput(f"datatype {datatype!r} is not supported: use {', '.join(DATATYPES)}")
    if datatype not in _FLOATS and not spec.accepts_uint8:
        raise InvalidInput(f"datatype {datatype!r} is not supported by this model (it takes no pixels "
                           "0..255): use FP32, FP16 or FP64")
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
    # Integers are pixels 0..255 (a model that takes no UINT8 refused them above).
    if datatype not in _FLOATS:
        return _checked_pixels(arr, datatype)
    # The range is checked on the values as sent, before the cast: a value past float32's range would
    # overflow in it (and a value just over the range would round into it).
    if spec.range is None:  # a feature vector: any finite float32 value (the module standardises it)
        if not (np.isfinite(arr).all() and np.abs(arr).max() <= FLOAT32_MAX):
            raise InvalidInput(f"{datatype} data must be finite numbers within float32's range "
                               "(no NaN or infinity)")
        return arr.astype(np.float32, copy=False)
    low, high = spec.range
    least, most = float(arr.min()), float(arr.max())  # NaN in the data makes both NaN
    if max(low, -FLOAT32_MAX) <= least and most <= min(high, FLOAT32_MAX):
        return arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise InvalidInput(f"{datatype} data must not contain NaN or infinity")
    if least < -FLOAT32_MAX or most > FLOAT32_MAX:
        raise InvalidInput(f"{datatype} data holds values beyond FP32's range: [{least:.4g}, {most:.4g}]")
    hint = " (for 0..255 pixels send UINT8 data)" if most > high and high <= 1 else ""
    raise InvalidInput(f"{datatype} values must be in [{low}, {high}], got [{least:.4g}, {most:.4g}]{hint}")


def _checked_pixels(arr: np.ndarray, datatype: str) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr  # binary data: every byte is a valid pixel
    # JSON has one number type: 7.0 is the integer 7 (as JSON Schema, and so the API document, says).
    if arr.dtype.kind == "f" and not (arr == np.floor(arr)).all():
        raise InvalidInput(f"{datatype} data must be integers 0..255")
    least, most = arr.min(), arr.max()
    if least < 0 or most > 255:
        raise InvalidInput(f"{datatype} values must be in 0..255 to be pixels, got {least:g}..{most:g}")
    info = np.iinfo(INTEGERS[datatype])
    if least < info.min or most > info.max:  # JSON numbers the declared type cannot hold
        raise InvalidInput(f"{datatype} data holds values beyond {datatype}: {least:g}..{most:g}")
    return arr.astype(np.uint8)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise probabilities from logits, numerically stable."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Element-wise probabilities from logits, without overflow for large negative logits."""
    return np.exp(-np.logaddexp(0.0, -logits)).astype(np.float32, copy=False)


def probabilities(logits: np.ndarray, task: str = "multiclass") -> np.ndarray:
    """Softmax over the row for multiclass, one sigmoid per output for binary and multilabel."""
    return softmax(logits) if task == "multiclass" else sigmoid(logits)


def threshold_for(manifest: Manifest, requested: Any) -> float:
    """The decision threshold of a request: its own (binary and multilabel only) or the manifest's."""
    if requested is None:
        return manifest.threshold
    if manifest.task == "multiclass":
        raise InvalidInput(f"threshold applies to binary and multilabel models; {manifest.name} is "
                           "multiclass")
    if type(requested) not in (int, float) or not 0.0 <= requested <= 1.0:
        raise InvalidInput(f"threshold must be a number in [0, 1], got {requested!r}")
    return float(requested)


def predictions(logits: np.ndarray, labels: Sequence[str], top_k: int | None = None, task: str = "multiclass",
                threshold: float = 0.5, probs: np.ndarray | None = None) -> list[dict[str, Any]]:
    """The v1 answer per example: the predicted label (set) and the probabilities of the ``top_k`` best
    (``probs``: ``probabilities(logits, task)`` when the caller has them already)."""
    if task == "binary":
        positive = sigmoid(logits[:, 0]) if probs is None else probs[:, 0]
        probs = np.stack([1.0 - positive, positive], axis=1)
    elif probs is None:
        probs = probabilities(logits, task)
    k = len(labels) if top_k is None else min(top_k, len(labels))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k].tolist()
    rows = probs.tolist()
    # Plain Python over the (few) labels of each row: cheaper than more numpy calls for one image.
    if task == "multiclass":
        return [{"label": labels[best[0]], "probabilities": {labels[i]: row[i] for i in best}}
                for best, row in zip(order, rows, strict=True)]
    if task == "binary":
        chosen = [[labels[1] if row[1] >= threshold else labels[0]] for row in rows]
    else:
        chosen = [[label for label, p in zip(labels, row, strict=True) if p >= threshold] for row in rows]
    single = task == "binary"  # one label per example, as for multiclass; multilabel has only the set
    return [({"label": names[0]} if single else {}) | {"labels": names,
                                                      "probabilities": {labels[i]: row[i] for i in best}}
            for names, best, row in zip(chosen, order, rows, strict=True)]


def oip_outputs(logits: np.ndarray, requested: Sequence[dict[str, Any]] | None, labels: Sequence[str],
                task: str = "multiclass", threshold: float = 0.5, verdict: Verdict | None = None,
                plain: bool = False, probs: np.ndarray | None = None) -> list[dict[str, Any]]:
    """OIP output tensors: every output when none is requested; ``classification: k`` gives top-k strings.
    With a ``verdict`` ("not a digit", service/web/confidence.py) a flagged example's label is "" unless
    ``plain``, and the ``outlier`` and ``outlier_score`` outputs exist."""
    names = outputs_for(task, verdict is not None)
    wanted = requested or [{"name": name} for name in names]
    extra = outlier_tensors(verdict) if verdict is not None else {}
    out = []
    for item in wanted:
        name = item["name"]
        if name not in names:
            raise InvalidInput(f"unknown output {name!r}: the model gives {', '.join(names)}")
        k = int((item.get("parameters") or {}).get("classification") or 0)
        if name in extra:
            out.append(_tensor(name, *extra[name]))
            continue
        if name == "logits":
            scores = logits
        else:  # computed once, for every output that needs it
            scores = probs = probabilities(logits, task) if probs is None else probs
        if name == "label":
            strings = _label_strings(logits, scores, labels, task, threshold)
            out.append(_tensor(name, "BYTES", withheld_labels(strings, verdict, plain)))
        elif name == "decisions":
            out.append(_tensor(name, "BOOL", scores >= threshold))
        elif k > 0:
            out.append(_tensor(name, "BYTES", classification(scores, labels, k)))
        else:
            out.append(_tensor(name, "FP32", scores))
    return out


def _label_strings(logits: np.ndarray, probs: np.ndarray, labels: Sequence[str], task: str,
                   threshold: float) -> np.ndarray:
    """Per example the predicted label; for multilabel the predicted labels joined by commas ("" for none)."""
    names = np.asarray(labels, dtype=object)
    if task == "multiclass":
        return names[logits.argmax(axis=1)]
    if task == "binary":
        return names[(probs[:, 0] >= threshold).astype(np.int64)]
    return np.array([",".join(names[row]) for row in probs >= threshold], dtype=object)


def parse_features(instances: Sequence[Any], spec: InputSpec) -> np.ndarray:
    """v1 tabular instances: JSON objects of named numbers (or plain lists in ``spec.features`` order)."""
    objects = [isinstance(item, dict) for item in instances]
    if not any(objects):
        return parse_tensor(instances, "FP32", None, spec)
    if not all(objects):
        raise InvalidInput("instances must all be objects of named features, or all lists of numbers")
    names = spec.features
    known = set(names)
    rows = []
    for n, item in enumerate(instances):
        missing = [f for f in names if f not in item]
        unknown = sorted(k for k in item if k not in known)
        if missing or unknown:
            raise InvalidInput(f"instance {n}: " + "; ".join(
                part for part in (missing and f"missing features {missing}",
                                  unknown and f"unknown features {unknown}") if part)
                + f" (the model takes {list(names)})")
        row = [item[f] for f in names]
        for feature, value in zip(names, row, strict=True):
            if type(value) not in (int, float):
                raise InvalidInput(f"instance {n}: feature {feature!r} must be a number, got {value!r}")
        rows.append(row)
    try:
        values = np.asarray(rows, dtype=np.float64)
    except OverflowError:  # an integer past float64's range
        values = np.array([np.inf])
    if not np.isfinite(values).all() or np.abs(values).max() > FLOAT32_MAX:
        raise InvalidInput("feature values must be finite numbers within float32's range")
    return values.astype(np.float32)


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
