"""The hand-off between HTTP workers and a model runtime: shared memory for tensors, small messages for
the rest. Linux (and any system with AF_UNIX SOCK_SEQPACKET); numpy and the standard library only, so the
HTTP workers never import torch.

One connection per in-flight request slot. On accept the runtime sends the *catalog* (its models and
the slot layout, JSON) and, in the same message, a shared-memory file descriptor (memfd) of one slot:
``input_bytes`` for a request's rows, then ``output_bytes`` for its logits. A request is then one
16-byte message (the rows are already in the slot) and its answer one 8-byte message (the logits are
already in the slot); SEQPACKET keeps message boundaries, so neither side parses a stream. The greeting
also carries a second descriptor, the runtime's *state* page, the same for every connection: the catalog's
epoch, which the runtime bumps whenever the served models change (hot reload), so that a worker sees a
change by reading eight bytes rather than asking. Why this
rather than gunicorn's dirty arbiters or a multiprocessing queue: docs/architecture.md.
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

# Request: kind, dtype, model index, rows, deadline (time.monotonic(), the same clock in every process).
REQUEST = struct.Struct("<BBHId")
# Answer: kind, status, unused, rows; an error's message follows as UTF-8.
ANSWER = struct.Struct("<BBHI")
INFER, PING, LOAD, UNLOAD = 1, 2, 3, 4
# LOAD and UNLOAD (model control "explicit") carry the model's name after the request, as UTF-8.
MAX_NAME = 128
DTYPES = (np.dtype(np.uint8), np.dtype(np.float32))
# Answer statuses; the client maps each to a ServiceError (HTTP status in the comment).
OK, FAILED, DEADLINE, QUEUE_FULL, NOT_READY, BAD_REQUEST = range(6)  # 200, 500, 504, 429, 503, 400
# PING answers OK when the runtime takes requests, NOT_READY while it drains.
MAX_MESSAGE = 1 << 20  # a catalog with its manifests; requests and answers are far smaller
STATE = struct.Struct("<Q")  # the state page: the catalog's epoch


@dataclass(frozen=True)
class SlotLayout:
    """Sizes of one slot's input and output regions, in bytes."""

    input_bytes: int
    output_bytes: int

    @property
    def size(self) -> int:
        """The whole slot, rounded up to a page."""
        total = self.input_bytes + self.output_bytes
        return -(-max(total, 1) // mmap.PAGESIZE) * mmap.PAGESIZE


class Slot:
    """One slot's shared memory, mapped into this process, with numpy views over its two regions."""

    def __init__(self, fd: int, layout: SlotLayout) -> None:
        self.layout = layout
        self._map = mmap.mmap(fd, layout.size)
        os.close(fd)  # the mapping keeps the memory; the descriptor is no longer needed
        self._input = memoryview(self._map)[:layout.input_bytes]
        self._output = memoryview(self._map)[layout.input_bytes:layout.input_bytes + layout.output_bytes]

    def input(self, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        """A writable array over the input region."""
        return np.frombuffer(self._input, dtype=dtype, count=math.prod(shape)).reshape(shape)

    def output(self, shape: tuple[int, ...]) -> np.ndarray:
        """A writable float32 array over the output region."""
        return np.frombuffer(self._output, dtype=np.float32, count=math.prod(shape)).reshape(shape)

    def close(self) -> None:
        """Unmap (views taken from it must be gone first)."""
        try:
            self._input.release()
            self._output.release()
            self._map.close()
        except BufferError:  # an array over it is still alive: the mapping goes with the last of them
            pass


def new_shared_memory(size: int) -> int:
    """A file descriptor of ``size`` bytes of anonymous shared memory (memfd; a deleted temp file else)."""
    if hasattr(os, "memfd_create"):
        # memfd is not limited by a container's small /dev/shm (64 MiB by default in Docker).
        fd = os.memfd_create("trainserve-slot", os.MFD_CLOEXEC)
    else:
        handle, path = tempfile.mkstemp(prefix="trainserve-slot-")
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
    """The runtime's greeting on a new connection: the catalog, the slot's memory and the state page."""
    socket.send_fds(sock, [json.dumps(catalog).encode()], [fd, state_fd])


def receive_catalog(sock: socket.socket) -> tuple[dict[str, Any], int, int]:
    """Read the runtime's greeting: its catalog, the slot's and the state page's file descriptors."""
    data, fds, _, _ = socket.recv_fds(sock, MAX_MESSAGE, 2)
    if not data or len(fds) != 2:
        for fd in fds:
            os.close(fd)
        raise ConnectionError("the model runtime closed the connection before sending its catalog")
    return json.loads(data), fds[0], fds[1]


def answer(sock: socket.socket, kind: int, status: int, rows: int = 0, message: str = "") -> None:
    """Send one answer (the logits, if any, are already in the slot)."""
    sock.send(ANSWER.pack(kind, status, 0, rows) + message.encode()[:4000])
