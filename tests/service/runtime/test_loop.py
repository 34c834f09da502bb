"""The model runtime process through its real socket protocol: batches form across every connection (the
HTTP workers' loops and threads), answers land in the right slot, and a client that misbehaves or leaves
costs only itself."""

from __future__ import annotations

import os
import re
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from service.errors import ModelNotFound
from service.handoff import protocol
from service.handoff.client import RuntimeClient


def _connect(path: Path) -> tuple[socket.socket, protocol.Arena, dict]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.settimeout(30)
    sock.connect(str(path))
    catalog, fd, state_fd = protocol.receive_catalog(sock)
    os.close(state_fd)
    return sock, protocol.Arena(fd, protocol.layout_of(catalog)), catalog


def _one(sock: socket.socket) -> tuple[int, int, int, str]:
    """The only result of the next ANSWERS message."""
    (result,) = protocol.read_answers(sock.recv(protocol.MAX_ANSWER_BYTES))
    return result


def _runtime_batches(metrics_dir: Path, pid: int, tmp: Path, model: str) -> tuple[float, float]:
    """(batches, images) that one runtime process recorded for ``model``."""
    single = tmp / f"pid{pid}-{time.monotonic_ns()}"
    single.mkdir()
    for db in metrics_dir.glob(f"*_{pid}.db"):
        shutil.copy(db, single / db.name)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(single))
    text = generate_latest(registry).decode()
    name = "trainserve_batch_size_images"
    found = [re.search(rf'^{name}_{part}\{{model="{model}",version="1"\}} (\S+)$', text, re.M)
             for part in ("count", "sum")]
    return (float(found[0].group(1)), float(found[1].group(1))) if all(found) else (0.0, 0.0)


def test_requests_on_different_connections_meet_in_one_batch(runtimes, special_root, metrics_dir, tmp_path):
    runtime = runtimes(model_dir=special_root, device="cpu", torch_threads=1, max_batch_size=8)
    slots = [_connect(runtime.socket) for _ in range(5)]
    slow = next(m["index"] for m in slots[0][2]["models"] if m["manifest"]["name"] == "slow")
    before = _runtime_batches(metrics_dir, runtime.proc.pid, tmp_path, "slow")
    deadline = time.monotonic() + 60
    for i, (sock, arena, _) in enumerate(slots):
        arena.input(3, np.dtype(np.uint8), (1, 1, 28, 28))[:] = i
        sock.send(protocol.group([(3, slow, 1, 0, 1, deadline)]))
    # The first request's pass takes far longer than sending the others: they wait in their sockets and
    # are read together when it ends.
    for sock, arena, _ in slots:
        assert _one(sock)[:3] == (3, protocol.OK, 1)
        assert arena.output(3, (1, 10)).shape == (1, 10)
    until = time.monotonic() + 30  # the runtime records a batch right after answering it
    while (batches_images := np.subtract(_runtime_batches(metrics_dir, runtime.proc.pid, tmp_path, "slow"),
                                         before))[1] < 5 and time.monotonic() < until:
        time.sleep(0.01)
    batches, images = batches_images
    assert images == 5 and batches <= 2  # one alone, then the four that arrived meanwhile together
    for sock, arena, _ in slots:
        sock.close()
        arena.close()


def test_a_group_of_segments_is_answered_segment_by_segment(runtimes, artifact_root, mnist):
    runtime = runtimes(model_dir=artifact_root, device="cpu", torch_threads=1)
    sock, arena, catalog = _connect(runtime.socket)
    tiny = next(m["index"] for m in catalog["models"] if m["manifest"]["name"] == "mnist-tiny")
    digits = mnist["test_x"][:6].reshape(6, 1, 28, 28)
    deadline = time.monotonic() + 30
    arena.input(0, np.dtype(np.uint8), (2, 1, 28, 28))[:] = digits[:2]
    arena.input(5, np.dtype(np.float32), (4, 1, 28, 28))[:] = digits[2:] / 255
    sock.send(protocol.group([(0, tiny, 2, 0, 2, deadline), (5, tiny, 1, 1, 4, deadline)]))
    results = {}
    while len(results) < 2:
        results.update({slot: (status, rows) for slot, status, rows, _ in
                        protocol.read_answers(sock.recv(protocol.MAX_ANSWER_BYTES))})
    assert results == {0: (protocol.OK, 2), 5: (protocol.OK, 4)}
    predicted = np.concatenate([arena.output(0, (2, 10)), arena.output(5, (4, 10))]).argmax(1)
    assert (predicted == mnist["test_y"][:6]).mean() >= 5 / 6
    sock.close()
    arena.close()


def test_each_slot_gets_its_own_rows_back(runtimes, artifact_root, mnist):
    client = RuntimeClient([runtimes(model_dir=artifact_root, device="cpu", torch_threads=1).socket])
    model = client.catalog().get("mnist-tiny")
    digits = mnist["test_x"][:300].reshape(-1, 1, 28, 28)
    together = client.infer(model, digits, time.monotonic() + 30)  # split into max-batch-size chunks
    alone = np.concatenate([client.infer(model, d[None], time.monotonic() + 30) for d in digits[:20]])
    np.testing.assert_allclose(together[:20], alone, rtol=1e-4, atol=1e-4)
    assert (together.argmax(1) == mnist["test_y"][:300]).mean() > 0.85
    client.close()


def test_a_malformed_or_out_of_range_request_is_refused_and_the_slot_stays_usable(runtimes, artifact_root):
    runtime = runtimes(model_dir=artifact_root, device="cpu", torch_threads=1)
    sock, arena, catalog = _connect(runtime.socket)
    sock.send(b"short")
    assert protocol.HEADER.unpack_from(sock.recv(4096))[1] == protocol.BAD_REQUEST
    sock.send(protocol.group([(0, 0, 1, 0, 1, time.monotonic() + 10)])[:-3])  # a cut segment
    assert protocol.HEADER.unpack_from(sock.recv(4096))[1] == protocol.BAD_REQUEST
    too_many = catalog["max_batch_size"] + 1
    sock.send(protocol.group([(0, 0, 1, 0, too_many, time.monotonic() + 10)]))
    slot, status, _, text = _one(sock)
    assert (slot, status) == (0, protocol.BAD_REQUEST) and "rows" in text
    sock.send(protocol.group([(0, 99, 1, 0, 1, time.monotonic() + 10)]))
    assert _one(sock)[1] == protocol.BAD_REQUEST
    sock.send(protocol.group([(catalog["slots"], 0, 1, 0, 1, time.monotonic() + 10)]))
    assert _one(sock)[1:3] == (protocol.BAD_REQUEST, 0)
    sock.send(protocol.group([(0, 0, 1, 0, 1, time.monotonic() + 10)]))
    assert _one(sock)[:3] == (0, protocol.OK, 1)
    sock.close()
    arena.close()


def test_a_client_that_leaves_mid_request_costs_nobody_else(runtimes, special_root):
    runtime = runtimes(model_dir=special_root, device="cpu", torch_threads=1, max_batch_size=8)
    gone, gone_arena, catalog = _connect(runtime.socket)
    slow = next(m["index"] for m in catalog["models"] if m["manifest"]["name"] == "slow")
    gone.send(protocol.group([(0, slow, 1, 0, 1, time.monotonic() + 60)]))
    gone.close()  # its worker died: the runtime drops its request and its arena
    gone_arena.close()
    client = RuntimeClient([runtime.socket])
    model = client.catalog().get("slow")
    assert client.infer(model, np.zeros((2, 1, 28, 28), np.uint8), time.monotonic() + 60).shape == (2, 10)
    client.close()


def test_unknown_models_and_bad_dtypes_are_client_errors(runtimes, artifact_root):
    client = RuntimeClient([runtimes(model_dir=artifact_root, device="cpu", torch_threads=1).socket])
    with pytest.raises(ModelNotFound):
        client.catalog().get("nope")
    model = client.catalog().get("mnist-tiny", "1")
    with pytest.raises(ValueError):
        client.infer(model, np.zeros((1, 1, 28, 28), np.int64), time.monotonic() + 10)
    assert client.infer(model, np.zeros((1, 1, 28, 28), np.float32), time.monotonic() + 10).shape == (1, 10)
    client.close()
