"""The binary tensor data extension's pure functions: splitting a body, reading inputs, writing outputs."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from service.errors import InvalidInput
from service.web import binary


def test_inputs_are_read_in_order_without_copying():
    first, second = np.arange(6, dtype=np.uint8), np.linspace(0, 1, 4, dtype="<f4")
    header = orjson.dumps({"inputs": []})
    body = bytearray(header + first.tobytes() + second.tobytes())
    head, payload = binary.split(body, str(len(header)))
    assert bytes(head) == header
    inputs = [{"name": "a", "datatype": "UINT8", "shape": [2, 3], "parameters": {"binary_data_size": 6}},
              {"name": "b", "datatype": "FP32", "shape": [4], "parameters": {"binary_data_size": 16}}]
    binary.attach_inputs(inputs, payload)
    np.testing.assert_array_equal(inputs[0]["data"], first.reshape(2, 3))
    np.testing.assert_array_equal(inputs[1]["data"], second)
    assert np.shares_memory(inputs[0]["data"], np.frombuffer(body, np.uint8))  # a view of the body
    assert inputs[0]["data"].flags.writeable  # so torch.from_numpy takes it as it is


def test_json_inputs_pass_through_and_an_unsupported_binary_datatype_is_refused():
    inputs = [{"name": "a", "datatype": "UINT8", "shape": [1], "data": [3]}]
    binary.attach_inputs(inputs, memoryview(b""))
    assert inputs[0]["data"] == [3]
    odd = [{"name": "a", "datatype": "BF16", "shape": [1], "parameters": {"binary_data_size": 2}}]
    with pytest.raises(InvalidInput, match="not supported in binary form"):
        binary.attach_inputs(odd, memoryview(bytes(2)))


def test_outputs_are_encoded_as_triton_does():
    header = {"outputs": [{"name": "logits", "datatype": "FP32", "shape": [1, 2],
                           "data": np.array([[1.5, -2.0]], np.float32)},
                          {"name": "label", "datatype": "BYTES", "shape": [2], "data": ["7", "αβ"]}]}
    chunks, length = binary.encode(header, [True, True])
    assert length == len(chunks[0])
    meta = orjson.loads(chunks[0])["outputs"]
    assert [o["parameters"]["binary_data_size"] for o in meta] == [8, 4 + 1 + 4 + 4]
    assert all("data" not in o for o in meta)
    assert chunks[1] == np.array([1.5, -2.0], "<f4").tobytes()
    assert chunks[2] == b"\x01\x00\x00\x007" + b"\x04\x00\x00\x00" + "αβ".encode()
    plain, none = binary.encode({"outputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}]},
                                [False])
    assert none is None and orjson.loads(plain[0])["outputs"][0]["data"] == [1.0]


def test_the_request_flag_applies_unless_an_output_says_otherwise():
    assert binary.wants_binary({"name": "x"}, {"binary_data_output": True})
    assert not binary.wants_binary({"name": "x", "parameters": {"binary_data": False}},
                                   {"binary_data_output": True})
    assert binary.wants_binary({"name": "x", "parameters": {"binary_data": True}}, {})
    assert not binary.wants_binary({"name": "x"}, {})
