"""ModelInferRequest and ModelInferResponse as the documents every door shares: pure functions, no gRPC.

A request becomes the same OIP document an HTTP body does (validated by the same schema, ``INFER_REQUEST``,
through ``load_infer_request``), its input an array over ``raw_input_contents`` (``np.frombuffer``: no copy)
or from the typed ``contents``;
the answer document (``exchange.infer_document``) becomes ``outputs`` and ``raw_output_contents``, in the
byte layout of the binary tensor extension (little-endian, row-major; BYTES as 4-byte lengths and UTF-8).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from service.errors import InvalidInput
from service.grpc.proto import grpc_service_pb2 as pb
from service.web import binary
from service.web.schemas import load_infer_request

# Each datatype's typed contents field (Triton's rule); FP16 has none: it travels as raw contents only.
CONTENTS = {"BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
            "UINT32": "uint_contents", "UINT64": "uint64_contents", "INT8": "int_contents",
            "INT16": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
            "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents"}


def parameters(entries: Mapping[str, Any]) -> dict[str, Any]:
    """A protobuf parameters map as plain values (bool, int, float, str), as JSON would give them."""
    out = {}
    for key, value in entries.items():
        choice = value.WhichOneof("parameter_choice")
        out[key] = getattr(value, choice) if choice else None
    return out


def infer_request(message: pb.ModelInferRequest) -> dict[str, Any]:
    """The request as an OIP document, validated by the HTTP side's schema, its input tensors as arrays."""
    document: dict[str, Any] = {
        "inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape),
                    "parameters": parameters(t.parameters)} for t in message.inputs],
        "parameters": parameters(message.parameters)}
    if message.outputs:
        document["outputs"] = [{"name": o.name, "parameters": parameters(o.parameters)}
                               for o in message.outputs]
    if message.id:
        document["id"] = message.id
    request = load_infer_request(document)
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise InvalidInput(f"raw_input_contents has {len(raw)} entries for {len(message.inputs)} input(s): "
                           "give one per input, in order, or typed contents for every input")
    for n, (tensor, given) in enumerate(zip(request["inputs"], message.inputs, strict=True)):
        if raw:
            if given.HasField("contents"):
                raise InvalidInput(f"input {tensor['name']!r} has both contents and raw_input_contents")
            tensor["data"] = binary.read_tensor(tensor, raw[n], "raw_input_contents holds")
        else:
            tensor["data"] = _typed(tensor, given.contents)
    return request


def _typed(tensor: dict[str, Any], contents: pb.InferTensorContents) -> np.ndarray:
    name, datatype = tensor["name"], tensor["datatype"]
    field = CONTENTS.get(datatype)
    if field is None:
        raise InvalidInput(f"input {name!r}: {datatype} has no typed contents: send it as raw_input_contents")
    values = getattr(contents, field)
    if not len(values):
        raise InvalidInput(f"input {name!r} has no data: send its values in contents.{field} or as "
                           "raw_input_contents")
    return np.asarray(values)


def infer_response(answer: dict[str, Any]) -> pb.ModelInferResponse:
    """An OIP answer document as a ModelInferResponse, every output as raw contents."""
    response = pb.ModelInferResponse(model_name=answer["model_name"], model_version=answer["model_version"],
                                     id=answer.get("id", ""))
    for output in answer["outputs"]:
        response.outputs.add(name=output["name"], datatype=output["datatype"], shape=output["shape"])
        response.raw_output_contents.append(binary.tensor_bytes(output["data"], output["datatype"]))
    for key, value in answer.get("parameters", {}).items():
        set_parameter(response.parameters[key], value)
    return response


def set_parameter(parameter: pb.InferParameter, value: Any) -> None:
    """One plain value into an InferParameter."""
    if isinstance(value, bool):
        parameter.bool_param = value
    elif isinstance(value, int):
        parameter.int64_param = value
    elif isinstance(value, float):
        parameter.double_param = value
    else:
        parameter.string_param = str(value)
