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


class _Strict(Schema):
    class Meta:
        unknown = RAISE


class TensorInput(_Strict):
    """One OIP input tensor."""

    name = fields.String(required=True, metadata={"example": "input"})
    shape = fields.List(fields.Integer(validate=validate.Range(min=0)), required=True,
                        validate=validate.Length(min=1, max=8), metadata={"example": [1, 1, 28, 28]})
    datatype = fields.String(required=True, validate=validate.OneOf(["FP32", "UINT8"]),
                             metadata={"example": "UINT8"})
    parameters = fields.Dict(load_default=dict)
    # Exactly one of data and parameters.binary_data_size (the binary tensor data extension).
    data = fields.Raw(validate=_list_only,
                      metadata={"description": "flat (row-major) or nested numbers; absent when "
                                "parameters.binary_data_size says the tensor follows the JSON header as "
                                "raw bytes", "type": "array", "items": {}})


class RequestedOutput(_Strict):
    """One OIP output a client asks for; ``parameters.classification: k`` gives top-k strings."""

    name = fields.String(required=True, validate=validate.OneOf(["logits", "probabilities", "label"]))
    parameters = fields.Dict(load_default=dict)


class InferRequest(_Strict):
    """OIP v2 inference request."""

    id = fields.String(metadata={"description": "echoed in the response"})
    parameters = fields.Dict(load_default=dict)
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
    outputs = fields.List(fields.Nested(TensorOutput))


class PredictRequest(_Strict):
    """v1 predict request: pixels as nested lists, one entry per image."""

    instances = fields.Raw(required=True, validate=_list_only,
                           metadata={"type": "array", "items": {},
                                     "description": "images as [28][28], [1][28][28] or [784] pixel lists"})
    dtype = fields.String(load_default="float32", validate=validate.OneOf(["float32", "uint8"]),
                          metadata={"description": "float32: pixels in [0, 1]; uint8: pixels 0..255"})
    top_k = fields.Integer(load_default=None, validate=validate.Range(min=1))


class Prediction(Schema):
    """One image's answer."""

    label = fields.String()
    probabilities = fields.Dict(keys=fields.String(), values=fields.Float())


class PredictResponse(Schema):
    """v1 predict (and classify) response."""

    model = fields.String()
    version = fields.String()
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
