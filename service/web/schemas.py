"""Marshmallow schemas: every request body is loaded through one; responses are described by the rest.

Tensor ``data`` is checked here only for being a list: its shape, dtype and values are checked in one
vectorised pass by ``inference.parse_tensor``, not element by element in Python.
"""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate

from service.errors import InvalidInput


def _list_only(value: Any) -> None:
    if not isinstance(value, list) or not value:
        raise ValidationError("must be a non-empty list")


def _shape(value: Any) -> None:
    # One check for the whole list: a List(Integer) field costs a field call per dimension, per request.
    if (not isinstance(value, list) or not 1 <= len(value) <= 8
            or not all(type(d) is int and d >= 0 for d in value)):
        raise ValidationError("must be a list of 1 to 8 integers >= 0")


def _object(value: Any) -> None:
    if not isinstance(value, dict):
        raise ValidationError("must be an object")


def _output_parameters(value: Any) -> None:
    _object(value)
    k = value.get("classification")
    if k is not None and (type(k) is not int or not 0 <= k <= 1000):
        raise ValidationError("classification must be an integer 0..1000 (0: plain tensors)")
    if not isinstance(value.get("binary_data", False), bool):
        raise ValidationError("binary_data must be true or false")


class _Strict(Schema):
    class Meta:
        unknown = RAISE


class TensorInput(_Strict):
    """One OIP input tensor."""

    name = fields.String(required=True, metadata={"example": "input"})
    shape = fields.Raw(required=True, validate=_shape,
                       metadata={"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1,
                                 "maxItems": 8, "example": [1, 1, 28, 28]})
    datatype = fields.String(required=True, validate=validate.OneOf(["FP32", "UINT8"]),
                             metadata={"example": "UINT8"})
    parameters = fields.Raw(load_default=dict, validate=_object,
                            metadata={"type": "object", "description": "binary_data_size: the tensor's bytes "
                                      "follow the JSON header (binary tensor data extension)"})
    # Exactly one of data and parameters.binary_data_size (the binary tensor data extension).
    data = fields.Raw(validate=_list_only,
                      metadata={"description": "flat (row-major) or nested numbers; absent when "
                                "parameters.binary_data_size says the tensor follows the JSON header as "
                                "raw bytes", "type": "array", "items": {}})


class RequestedOutput(_Strict):
    """One OIP output a client asks for; ``parameters.classification: k`` gives top-k strings."""

    name = fields.String(required=True,
                         validate=validate.OneOf(["logits", "probabilities", "label", "decisions"]),
                         metadata={"description": "decisions (BOOL, probability >= threshold per output): "
                                   "binary and multilabel models only"})
    parameters = fields.Raw(load_default=dict, validate=_output_parameters,
                            metadata={"type": "object", "description": "classification: k (top-k strings); "
                                      "binary_data: true (raw bytes after the JSON header)"})


class InferRequest(_Strict):
    """OIP v2 inference request."""

    id = fields.String(metadata={"description": "echoed in the response"})
    parameters = fields.Raw(load_default=dict, validate=_object,
                            metadata={"type": "object",
                                      "description": "binary_data_output: true (every output as raw bytes); "
                                      "threshold: a probability in [0, 1] that overrides the manifest's "
                                      "decision threshold (binary and multilabel models)"})
    inputs = fields.List(fields.Nested(TensorInput), required=True, validate=validate.Length(equal=1))
    outputs = fields.List(fields.Nested(RequestedOutput), load_default=None)


class TensorOutput(Schema):
    """One OIP output tensor."""

    name = fields.String()
    datatype = fields.String(metadata={"example": "FP32"})
    shape = fields.List(fields.Integer())
    data = fields.List(fields.Raw())


class InferResponse(Schema):
    """OIP v2 inference response."""

    model_name = fields.String()
    model_version = fields.String()
    id = fields.String()
    parameters = fields.Dict(metadata={"description": "binary and multilabel: the task and the threshold "
                                       "applied"})
    outputs = fields.List(fields.Nested(TensorOutput))


class PredictRequest(_Strict):
    """v1 predict request: one entry per example (an image's pixels, or a tabular row's named features)."""

    instances = fields.Raw(required=True, validate=_list_only,
                           metadata={"type": "array", "items": {},
                                     "description": "images as [28][28], [1][28][28] or [784] pixel lists; "
                                     "for feature models objects of named numbers, {\"age\": 61, ...}, "
                                     "or lists in the order the model's metadata gives"})
    dtype = fields.String(load_default="float32", validate=validate.OneOf(["float32", "uint8"]),
                          metadata={"description": "float32: pixels in [0, 1]; uint8: pixels 0..255"})
    top_k = fields.Integer(load_default=None, validate=validate.Range(min=1))
    threshold = fields.Float(load_default=None, validate=validate.Range(min=0.0, max=1.0),
                             metadata={"description": "binary and multilabel models: the probability at "
                                       "which a label is predicted (default: the manifest's)"})


class Prediction(Schema):
    """One example's answer."""

    label = fields.String(metadata={"description": "multiclass and binary: the predicted label"})
    labels = fields.List(fields.String(), metadata={"description": "binary and multilabel: the predicted "
                                                    "label set (probability >= threshold)"})
    probabilities = fields.Dict(keys=fields.String(), values=fields.Float(),
                                metadata={"description": "softmax for multiclass; one sigmoid per label for "
                                          "multilabel; binary: the positive label's sigmoid and 1 minus it"})


class PredictResponse(Schema):
    """v1 predict (and classify) response."""

    model = fields.String()
    version = fields.String()
    task = fields.String(metadata={"example": "multiclass"})
    threshold = fields.Float(metadata={"description": "binary and multilabel: the threshold applied"})
    predictions = fields.List(fields.Nested(Prediction))


class ClassifyArgs(_Strict):
    """Query string of the image upload endpoint."""

    top_k = fields.Integer(load_default=None, validate=validate.Range(min=1))


class Error(Schema):
    """Every error response."""

    error = fields.String(metadata={"example": "model 'nope' is not served here"})


def load(schema: Schema, data: Any) -> dict[str, Any]:
    """Validate ``data`` with ``schema``; raise InvalidInput with every problem, one line each."""
    try:
        return schema.load(data)
    except ValidationError as exc:
        raise InvalidInput("invalid request: " + "; ".join(_flatten(exc.messages))) from None


def _flatten(messages: Any, prefix: str = "") -> list[str]:
    if isinstance(messages, dict):
        out: list[str] = []
        for key, value in messages.items():
            out += _flatten(value, f"{prefix}{key}." if key != "_schema" else prefix)
        return out
    if isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        return [f"{prefix.rstrip('.')}: {' '.join(messages)}" if prefix else " ".join(messages)]
    return [f"{prefix.rstrip('.')}: {messages}"]


INFER_REQUEST = InferRequest()
PREDICT_REQUEST = PredictRequest()
CLASSIFY_ARGS = ClassifyArgs()
