"""The request rules every door applies before a handler reads a request: one Host, bounded headers, query
parameters given once, JSON without duplicate keys, a bounded number of multipart parts.

Pure functions over plain values (strings, bytes, lists of pairs), so that each door, the Flask app and
any other, calls the same rule and answers with the same status and text. docs/serving.md lists them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import orjson

from service.errors import HeadersTooLarge, InvalidInput, PayloadTooLarge

# The request's header fields together, names and values: what one client may make a worker hold before
# the body. nginx's default buffers allow the same (docs/operations.md#what-a-request-may-cost).
MAX_HEADER_BYTES = 32 * 1024
# Files in one multipart upload, each decoded on its own (werkzeug's own limit, now stated).
MAX_PARTS = 1000
# The largest top-k a request may ask for (OIP classification has the same bound, schemas.py).
MAX_TOP_K = 1000

# RFC 9112, section 3.2: uri-host [":" port]; a reg-name, an IPv4 address or a bracketed IPv6 one. A
# comma is a front end joining two Host lines (granian does), whitespace is no host.
_HOST = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~%!$&'()*+;=-]+)(?::[0-9]{0,5})?$")
# What a key-by-key reading of JSON needs: every string (a key when a colon follows) and every brace.
_JSON_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"(?:[ \t\r\n]*:)?|[{}]')


def check_host(protocol: str, host: str | None) -> None:
    """An HTTP/1.1 request names one host (400 otherwise); HTTP/1.0 may name none."""
    if protocol == "HTTP/1.0" and not host:
        return
    if not host:
        raise InvalidInput(f"an {protocol} request needs a Host header naming the server "
                           "(RFC 9112, section 3.2)")
    if not _HOST.match(host):
        raise InvalidInput(f"Host {host[:100]!r} is not one host[:port] (RFC 9112, section 3.2)")


def check_header_bytes(headers: Iterable[tuple[str, str]], limit: int = MAX_HEADER_BYTES) -> None:
    """Header fields over ``limit`` bytes in all (each counted as ``name: value`` and its line end): 431."""
    size = sum(len(name) + len(value) + 4 for name, value in headers)
    if size > limit:
        raise HeadersTooLarge(f"the request's header fields are {size} bytes; the limit is {limit} bytes")


def single_values(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Query parameters as a dict; one given more than once is refused (400), never silently resolved."""
    values: dict[str, str] = {}
    repeated: dict[str, int] = {}
    for key, value in pairs:
        if key in values:
            repeated[key] = repeated.get(key, 1) + 1
        values[key] = value
    if repeated:
        raise InvalidInput("query parameters must be given once: " + ", ".join(
            f"{key[:100]!r} is given {count} times" for key, count in repeated.items()))
    return values


def parse_json(raw: bytes | bytearray | memoryview, limit: int) -> Any:
    """A JSON document within ``limit`` bytes (413 beyond), well-formed and without an object that has
    the same key twice (400): a filter in front might have read the first where we would read the last."""
    if len(raw) > limit:
        raise PayloadTooLarge(f"the JSON is {len(raw)} bytes; the limit is {limit} bytes "
                              "(TRAINSERVE_MAX_JSON_BYTES): send large tensors with the binary tensor "
                              "extension, or images")
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"malformed JSON: {exc}") from None
    if (key := duplicate_key(raw)) is not None:
        raise InvalidInput(f"malformed JSON: an object has the key {key[:100]!r} more than once")
    return document


def duplicate_key(raw: bytes | bytearray | memoryview) -> str | None:
    """The first key some object of well-formed JSON ``raw`` repeats, if any.

    Keys belong to the innermost open object (an array holds none directly), so only strings and braces
    matter. Without backslashes the quotes split the text into strings and what lies between them, and
    the braces between are picked out in C: a body of numbers costs a few passes over its bytes.
    """
    data = raw if isinstance(raw, bytes) else bytes(raw)
    if data.count(b":") < 2:  # no object with two keys
        return None
    if b"\\" in data:  # an escaped quote would split a string: read token by token
        return _duplicate_key_escaped(data)
    parts = data.split(b'"')
    objects: list[set[bytes]] = []
    _braces(parts[0], objects)
    for i in range(1, len(parts) - 1, 2):
        after = parts[i + 1]
        if after[:1] == b":" or (after[:1] in b" \t\r\n" and after.lstrip(b" \t\r\n")[:1] == b":"):
            if parts[i] in objects[-1]:
                return parts[i].decode(errors="replace")
            objects[-1].add(parts[i])
        if b"{" in after or b"}" in after:
            _braces(after, objects)
    return None


_NOT_BRACES = bytes(c for c in range(256) if c not in b"{}")


def _braces(between: bytes, objects: list[set[bytes]]) -> None:
    for brace in between.translate(None, _NOT_BRACES):
        if brace == ord("{"):
            objects.append(set())
        else:
            objects.pop()


def _duplicate_key_escaped(data: bytes) -> str | None:
    objects: list[set[str]] = []
    for match in _JSON_TOKENS.finditer(data):
        token = match.group()
        if token == b"{":
            objects.append(set())
        elif token == b"}":
            objects.pop()
        elif token.endswith(b":"):
            key = orjson.loads(token.rstrip(b" \t\r\n:"))  # "a" and "\u0061" are one key
            if key in objects[-1]:
                return key
            objects[-1].add(key)
    return None


def multipart_parts(body: bytes | memoryview, boundary: str) -> int:
    """How many parts a multipart body holds: its delimiter lines, less the closing one."""
    delimiter = re.compile(rb"(?:^|\r\n)--" + re.escape(boundary.encode("latin-1")))
    return max(0, len(delimiter.findall(body)) - 1)


def check_parts(count: int, limit: int = MAX_PARTS) -> None:
    """A multipart body of more than ``limit`` parts: 413, naming the limit."""
    if count > limit:
        raise PayloadTooLarge(f"the multipart body has {count} parts; the limit is {limit} "
                              "(one file per part)")
