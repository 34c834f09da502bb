"""The Open Inference Protocol's binary tensor data extension, exactly as Triton defines it: pure functions.

Request: the ``Inference-Header-Content-Length`` HTTP header gives the length of a JSON inference header at
the start of the body; the raw bytes of the inputs whose ``parameters`` hold ``binary_data_size`` follow it,
back to back, in the order the inputs appear. Tensor bytes are little-endian and row-major.

Response: an output is binary when its request entry has ``"parameters": {"binary_data": true}``, or, when
it does not say, when the request's ``parameters`` hold ``"binary_data_output": true`` (tritonclient sets
that when it asks for no outputs by name). Binary outputs carry ``binary_data_size`` instead of ``data``,
and their bytes follow the JSON header in output order; ``Inference-Header-Content-Length`` says where the
header ends. BYTES elements are each a 4-byte little-endian length followed by the UTF-8 bytes.

Inputs become numpy arrays over the request's own buffer (``np.frombuffer``): no copy, no Python lists.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson

from service.errors import InvalidInput
from service.web.tensors import DATATYPES

HEADER = "Inference-Header-Content-Length"

# OIP datatype -> little-endian numpy dtype, for the tensors this service reads or writes as raw bytes.
_DTYPES = {name: np.dtype(dtype).newbyteorder("<") for name, dtype in DATATYPES.items()} | {
    "BOOL": np.dtype("?")}


def split(body: bytes | bytearray | memoryview, header_length: str) -> tuple[memoryview, memoryview]:
    """(JSON header, tensor bytes) of a binary request; InvalidInput when the declared length is unusable."""
    try:
        length = int(header_length)
    except ValueError:
        raise InvalidInput(f"{HEADER} must be a byte count, got {header_length!r}") from None
    if not 0 < length <= len(body):
        raise InvalidInput(f"{HEADER} is {length} but the body has {len(body)} bytes")
    view = memoryview(body)
    return view[:length], view[length:]


def attach_inputs(inputs: Sequence[dict[str, Any]], payload: memoryview) -> None:
    """Give every input with ``binary_data_size`` its array, read in order from ``payload`` (in place).

    Each size must match the input's shape and datatype, and the sizes must add up to the payload exactly,
    so that a truncated or padded body is refused rather than misread. An input must have exactly one of
    ``data`` and ``binary_data_size``.
    """
    offset = 0
    for tensor in inputs:
        name = tensor["name"]
        parameters = tensor.get("parameters") or {}
        if "binary_data_size" not in parameters:
            if "data" not in tensor:
                raise InvalidInput(f"input {name!r} has neither data nor binary_data_size")
            continue
        if "data" in tensor:
            raise InvalidInput(f"input {name!r} has both data and binary_data_size")
        size = parameters["binary_data_size"]
        if isinstance(size, float) and size.is_integer():
            size = int(size)  # JSON has one number type: 784.0 is 784
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidInput(f"input {name!r}: binary_data_size must be a byte count, got {size!r}")
        if offset + size > len(payload):
            raise InvalidInput(f"input {name!r} declares {size} bytes but only {len(payload) - offset} "
                               "follow the header")
        tensor["data"] = _read(tensor, payload[offset:offset + size])
        offset += size
    if offset != len(payload):
        raise InvalidInput(f"the binary inputs declare {offset} bytes but {len(payload)} follow the header")


def _read(tensor: Mapping[str, Any], raw: memoryview) -> np.ndarray:
    return read_tensor(tensor, raw, "binary_data_size is")


def read_tensor(tensor: Mapping[str, Any], raw: bytes | memoryview, what: str) -> np.ndarray:
    """One input's raw little-endian bytes as an array of its shape (no copy); ``what`` names the size in
    the message when it does not match."""
    name, datatype, shape = tensor["name"], tensor["datatype"], tensor["shape"]
    dtype = _DTYPES.get(datatype)
    if dtype is None:
        raise InvalidInput(f"input {name!r}: datatype {datatype!r} is not supported in binary form")
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise InvalidInput(f"input {name!r}: {what} {len(raw)} but shape {list(shape)} of "
                           f"{datatype} needs {expected} bytes")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def wants_binary(output: Mapping[str, Any], request_parameters: Mapping[str, Any]) -> bool:
    """Whether one requested output goes back as raw bytes (its own flag wins over the request's)."""
    own = (output.get("parameters") or {}).get("binary_data")
    return bool(request_parameters.get("binary_data_output", False) if own is None else own)


def encode(header: dict[str, Any], binary: Sequence[bool]) -> tuple[list[bytes], int | None]:
    """Move the outputs flagged in ``binary`` out of ``header``; return (body chunks, header length).

    The first chunk is the JSON header (orjson); the header length is None when nothing is binary, and the
    response is then plain JSON.
    """
    chunks: list[bytes] = []
    for output, flag in zip(header["outputs"], binary, strict=True):
        if flag:
            raw = tensor_bytes(output.pop("data"), output["datatype"])
            output["parameters"] = {**output.get("parameters", {}), "binary_data_size": len(raw)}
            chunks.append(raw)
    head = orjson.dumps(header, option=orjson.OPT_SERIALIZE_NUMPY)
    return [head, *chunks], (len(head) if chunks else None)


def tensor_bytes(data: Any, datatype: str) -> bytes:
    """A tensor's raw bytes as the binary extension (and gRPC's raw contents) carry them."""
    if datatype == "BYTES":
        encoded = [str(item).encode() for item in data]
        return b"".join(struct.pack("<I", len(e)) + e for e in encoded)
    return np.ascontiguousarray(data, dtype=_DTYPES[datatype]).tobytes()
