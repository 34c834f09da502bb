"""The hand-off between HTTP workers and a model runtime: shared memory for tensors, small messages for
the rest. Linux (and any system with AF_UNIX SOCK_SEQPACKET); numpy and the standard library only, so the
HTTP workers never import torch.

On accept the runtime sends the *catalog* (its models and the arena's layout, JSON) and, in the same
message, two file descriptors: the connection's *arena*, a shared-memory file (memfd) of ``slots`` equal
slots, each with room for ``max_batch_size`` examples of the largest model and then their logits; and the
runtime's *state* page, the same for every connection, holding the catalog's epoch, which the runtime
bumps whenever the served models change (hot reload), so that a worker sees a change by reading eight
bytes rather than asking.

Inference goes in *groups*: one message carries every segment a worker has ready (a segment is the rows of
one or more requests for one model, already written into a free slot of the arena), and the runtime's
answer to them is again one message per batch it ran, whatever the number of segments. SEQPACKET keeps
message boundaries, so neither side parses a stream; tensors are never serialised. Why this rather than
gunicorn's dirty arbiters or a multiprocessing queue: docs/architecture.md.

Messages (little-endian):
- ``HEADER`` (kind, status, unused, count) starts every message.
- GROUP (worker): ``count`` ``SEGMENT`` records (slot, model index, requests, dtype, rows, deadline).
- ANSWERS (runtime): ``count`` ``RESULT`` records (slot, status, text length, rows), then the texts.
- PING, LOAD, UNLOAD, ROUTE (worker): the header; LOAD and UNLOAD (model control "explicit") and ROUTE
  (take the model's routing file now) add the model's name. Their answer is the header with a status,
  then a text.
- EXPLAIN (worker): the header (``count``: rows), one ``EXPLANATION`` record (slot, model index, dtype,
  method, steps, deadline), then ``count`` uint16 targets, one per row (``PREDICTED``: the class the model
  predicts for that row). The rows are written into the slot's input region as for a GROUP: one row per
  (example, class to explain) pair. Its answer is an ANSWERS message of one result; on success the slot's
  output region holds the rows' logits, and its input region the rows' attributions (float32, the input's
  shape), written over the inputs. Explanations have their own queue in the runtime, which runs them only
  between batches and within a share of its time (``server.py``), so that they never starve predictions.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import socket
import struct
import tempfile
from dataclasses import dataclass
from typing import Any

import numpy as np

HEADER = struct.Struct("<BBHI")
# slot, model index, requests in the segment, dtype, rows, deadline (time.monotonic(), the same clock in
# every process)
SEGMENT = struct.Struct("<IHHB3xId")
RESULT = struct.Struct("<IBxHI")  # slot, status, length of its text, rows
# slot, model index, dtype, method (an index of METHODS), steps, deadline
EXPLANATION = struct.Struct("<IHBBId")
TARGET = struct.Struct("<H")
GROUP, PING, LOAD, UNLOAD, ANSWERS, ROUTE, EXPLAIN = 1, 2, 3, 4, 5, 6, 7
# Attribution methods by code; "default" lets the runtime choose the one the served format supports.
METHODS = ("default", "integrated_gradients", "occlusion")
PREDICTED = 0xFFFF  # a row's target: the class the model predicts
# Shared by the runtime (explain.py) and the answers that name a method's parameters (web/explaining.py):
# the formats with gradients, and occlusion's patch of black and its stride, in pixels.
GRADIENT_FORMATS = ("torchscript", "exported")
OCCLUSION_WINDOW, OCCLUSION_STRIDE = 4, 2
MAX_EXPLAIN_ROWS = 1024
MAX_NAME = 128
MAX_TEXT = 1000  # an error's text, per result
DTYPES = (np.dtype(np.uint8), np.dtype(np.float32))
# Statuses; the clients map each to a ServiceError (HTTP status in the comment).
OK, FAILED, DEADLINE, QUEUE_FULL, NOT_READY, BAD_REQUEST = range(6)  # 200, 500, 504, 429, 503, 400
# PING answers OK when the runtime takes requests, NOT_READY while it drains.
MAX_MESSAGE = 1 << 20  # a catalog with its manifests; groups and answers are far smaller
# Segments in one GROUP message, and results in one ANSWERS message, at most: both stay far below the
# socket's buffer (a longer answer goes in several messages).
MAX_SEGMENTS = 1024
MAX_ANSWER_BYTES = 1 << 16
STATE = struct.Struct("<Q")  # the state page: the catalog's epoch


@dataclass(frozen=True)
class ArenaLayout:
    """One connection's shared memory: ``slots`` slots of ``input_bytes`` then ``output_bytes``."""

    input_bytes: int
    output_bytes: int
    slots: int

    @property
    def slot_size(self) -> int:
        """One slot, rounded up to a page."""
        total = self.input_bytes + self.output_bytes
        return -(-max(total, 1) // mmap.PAGESIZE) * mmap.PAGESIZE

    @property
    def size(self) -> int:
        """The whole arena (address space: a page costs memory only once it is written)."""
        return self.slot_size * self.slots

    def fits(self, example_bytes: int, classes: int, rows: int) -> bool:
        """Whether ``rows`` examples of this size, and their logits, fit one slot."""
        return rows * example_bytes <= self.input_bytes and rows * classes * 4 <= self.output_bytes


class Arena:
    """A connection's shared memory, mapped into this process, with numpy views over each slot."""

    def __init__(self, fd: int, layout: ArenaLayout) -> None:
        self.layout = layout
        self._map = mmap.mmap(fd, layout.size)
        os.close(fd)  # the mapping keeps the memory; the descriptor is no longer needed
        self._view = memoryview(self._map)

    def input(self, slot: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        """A writable array over a slot's input region."""
        start = slot * self.layout.slot_size
        return np.frombuffer(self._view, dtype, math.prod(shape), start).reshape(shape)

    def output(self, slot: int, shape: tuple[int, ...]) -> np.ndarray:
        """A writable float32 array over a slot's output region."""
        start = slot * self.layout.slot_size + self.layout.input_bytes
        return np.frombuffer(self._view, np.float32, math.prod(shape), start).reshape(shape)

    def close(self) -> None:
        """Unmap (views taken from it must be gone first)."""
        try:
            self._view.release()
            self._map.close()
        except BufferError:  # an array over it is still alive: the mapping goes with the last of them
            pass


def new_shared_memory(size: int) -> int:
    """A file descriptor of ``size`` bytes of anonymous shared memory (memfd; a deleted temp file else)."""
    if hasattr(os, "memfd_create"):
        # memfd is not limited by a container's small /dev/shm (64 MiB by default in Docker).
        fd = os.memfd_create("trainserve-arena", os.MFD_CLOEXEC)
    else:
        handle, path = tempfile.mkstemp(prefix="trainserve-arena-")
        os.unlink(path)
        fd = handle
    os.ftruncate(fd, size)
    return fd


class State:
    """The runtime's state page, mapped: the runtime writes the epoch, every worker reads it."""

    def __init__(self, fd: int, writable: bool = False) -> None:
        self._map = mmap.mmap(fd, mmap.PAGESIZE, prot=mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0))
        os.close(fd)

    @property
    def epoch(self) -> int:
        """The catalog's epoch now."""
        return STATE.unpack_from(self._map)[0]

    @epoch.setter
    def epoch(self, value: int) -> None:
        STATE.pack_into(self._map, 0, value)

    def close(self) -> None:
        """Unmap."""
        self._map.close()


def send_catalog(sock: socket.socket, catalog: dict[str, Any], fd: int, state_fd: int) -> None:
    """The runtime's greeting on a new connection: the catalog, the arena and the state page."""
    socket.send_fds(sock, [json.dumps(catalog).encode()], [fd, state_fd])


def receive_catalog(sock: socket.socket) -> tuple[dict[str, Any], int, int]:
    """Read the runtime's greeting: its catalog, the arena's and the state page's file descriptors."""
    data, fds, _, _ = socket.recv_fds(sock, MAX_MESSAGE, 2)
    if not data or len(fds) != 2:
        for fd in fds:
            os.close(fd)
        raise ConnectionError("the model runtime closed the connection before sending its catalog")
    return json.loads(data), fds[0], fds[1]


def layout_of(catalog: dict[str, Any]) -> ArenaLayout:
    """The arena layout a catalog message describes."""
    return ArenaLayout(catalog["input_bytes"], catalog["output_bytes"], catalog["slots"])


def group(segments: list[tuple[int, int, int, int, int, float]]) -> bytes:
    """A GROUP message: (slot, model index, requests, dtype, rows, deadline) per segment."""
    return HEADER.pack(GROUP, 0, 0, len(segments)) + b"".join(SEGMENT.pack(*s) for s in segments)


def read_group(message: bytes) -> list[tuple[int, int, int, int, int, float]] | None:
    """The segments of a GROUP message; None when it is malformed."""
    count = HEADER.unpack_from(message)[3]
    if not 0 < count <= MAX_SEGMENTS or len(message) != HEADER.size + count * SEGMENT.size:
        return None
    return list(SEGMENT.iter_unpack(memoryview(message)[HEADER.size:]))


def answers(results: list[tuple[int, int, int, str]]) -> list[bytes]:
    """ANSWERS messages for (slot, status, rows, text) results: as few as fit MAX_ANSWER_BYTES each."""
    messages: list[bytes] = []
    records: list[bytes] = []
    texts: list[bytes] = []
    size = HEADER.size
    for slot, status, rows, text in results:
        raw = text.encode()[:MAX_TEXT]
        if records and size + RESULT.size + len(raw) > MAX_ANSWER_BYTES:
            messages.append(HEADER.pack(ANSWERS, 0, 0, len(records)) + b"".join(records) + b"".join(texts))
            records, texts, size = [], [], HEADER.size
        records.append(RESULT.pack(slot, status, len(raw), rows))
        texts.append(raw)
        size += RESULT.size + len(raw)
    if records:
        messages.append(HEADER.pack(ANSWERS, 0, 0, len(records)) + b"".join(records) + b"".join(texts))
    return messages


def read_answers(message: bytes) -> list[tuple[int, int, int, str]]:
    """The (slot, status, rows, text) results of an ANSWERS message (ValueError when malformed)."""
    kind, _, _, count = HEADER.unpack_from(message)
    end = HEADER.size + count * RESULT.size
    if kind != ANSWERS or len(message) < end:
        raise ValueError("malformed answer from the model runtime")
    results = []
    for slot, status, length, rows in RESULT.iter_unpack(memoryview(message)[HEADER.size:end]):
        text = message[end:end + length].decode(errors="replace") if length else ""
        results.append((slot, status, rows, text))
        end += length
    return results


def control(kind: int, name: str = "") -> bytes:
    """A PING, LOAD or UNLOAD message."""
    return HEADER.pack(kind, 0, 0, 0) + name.encode()[:MAX_NAME]


def reply(kind: int, status: int, text: str = "") -> bytes:
    """The answer to a PING, LOAD or UNLOAD (or to a message that could not be read)."""
    return HEADER.pack(kind, status, 0, 0) + text.encode()[:MAX_TEXT]


def explain(slot: int, index: int, dtype: int, method: int, steps: int, deadline: float,
            targets: list[int]) -> bytes:
    """An EXPLAIN message for the ``len(targets)`` rows in ``slot``."""
    record = EXPLANATION.pack(slot, index, dtype, method, steps, deadline)
    return HEADER.pack(EXPLAIN, 0, 0, len(targets)) + record + b"".join(TARGET.pack(t) for t in targets)


def read_explain(message: bytes) -> tuple[tuple[int, int, int, int, int, float], list[int]] | None:
    """The record and the targets of an EXPLAIN message; None when it is malformed."""
    count = HEADER.unpack_from(message)[3]
    start = HEADER.size + EXPLANATION.size
    if not 0 < count <= MAX_EXPLAIN_ROWS or len(message) != start + count * TARGET.size:
        return None
    record = EXPLANATION.unpack_from(message, HEADER.size)
    return record, [t for (t,) in TARGET.iter_unpack(memoryview(message)[start:])]
