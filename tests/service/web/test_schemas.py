"""Loading inference requests through ``load_infer_request``: exactly what INFER_REQUEST's schema gives and
refuses, whether or not a like document was loaded before (it remembers recent ones)."""

from __future__ import annotations

import math

import pytest

from service.errors import InvalidInput
from service.web import schemas
from service.web.schemas import INFER_REQUEST, load, load_infer_request

HEADER = {"inputs": [{"name": "input", "datatype": "UINT8", "shape": [1, 1, 28, 28],
                      "parameters": {"binary_data_size": 784}}], "outputs": [{"name": "label"}]}


def _json(data, **extra):
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": data}], **extra}


@pytest.mark.parametrize("document", [
    HEADER,
    _json([0.5, 1, 2, 3]),
    _json([[0.5, 1], [2, 3]], id="a", parameters={"threshold": 0.25}, outputs=[
        {"name": "label", "parameters": {"classification": 3.0}}]),
])
def test_the_schemas_own_answer_first_time_and_remembered(document):
    expected = load(INFER_REQUEST, document)
    for _ in range(3):
        got = load_infer_request(document)
        assert got == expected
        for given, loaded in zip(document["inputs"], got["inputs"], strict=True):
            if "data" in given:
                assert loaded["data"] is given["data"]  # the very list, as the schema returns it
        got["inputs"][0]["shape"].append(9)  # an answer is the caller's to change
        got["inputs"][0]["data"] = "changed"


@pytest.mark.parametrize("good, bad", [
    (_json([1.0]), _json([])),  # data must be a non-empty list
    (_json([1.0]), _json(None)),
    (_json([1.0]), _json("1")),
    (HEADER, {**HEADER, "inputs": [{**HEADER["inputs"][0], "shape": [1, 1, 28, 28.5]}]}),
    (HEADER, {**HEADER, "inputs": [{**HEADER["inputs"][0], "shape": [True, 1, 28, 28]}]}),
    ({**HEADER, "outputs": [{"name": "label", "parameters": {"classification": None}}]},
     {**HEADER, "outputs": [{"name": "label", "parameters": {"classification": math.nan}}]}),
    ({**HEADER, "parameters": {"threshold": 1}}, {**HEADER, "parameters": {"threshold": True}}),
    (HEADER, {**HEADER, "surprise": 1}),
    (HEADER, []),
])
def test_a_bad_document_is_refused_with_the_schemas_words_after_a_good_one_like_it(good, bad):
    load_infer_request(good)
    with pytest.raises(InvalidInput) as expected:
        load(INFER_REQUEST, bad)
    for _ in range(2):
        with pytest.raises(InvalidInput) as got:
            load_infer_request(bad)
        assert str(got.value) == str(expected.value)


def test_what_is_remembered_stays_bounded():
    for n in range(3 * schemas._SEEN_MAX):
        load_infer_request({**HEADER, "id": str(n)})
    assert 0 < len(schemas._SEEN) <= schemas._SEEN_MAX
    long = {**HEADER, "id": "x" * (2 * schemas._SEEN_CHARS)}
    assert load_infer_request(long) == load(INFER_REQUEST, long)
    assert all(len(key) <= schemas._SEEN_CHARS for key in schemas._SEEN)
