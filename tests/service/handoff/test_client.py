"""A request thread's side of the hand-off (service/handoff/client.py), without a runtime process: a thread
answers each new connection with a real model table's greeting, as the runtime's loop does, so the client
meets the real catalog messages and state page."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.errors import RuntimeUnavailable
from service.handoff import protocol
from service.handoff.client import RuntimeClient
from service.runtime.table import Change, ModelTable


class Greeter:
    """Accepts connections on ``path`` and sends each the table's greeting; keeps the accepted sockets."""

    def __init__(self, path: Path, table: ModelTable) -> None:
        self.table, self.accepted = table, []
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.listener.bind(str(path))
        self.listener.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return  # closed
            layout = self.table.layout
            fd = protocol.new_shared_memory(layout.size)
            protocol.send_catalog(sock, self.table.catalog_message, fd, self.table.state_fd)
            os.close(fd)
            self.accepted.append(sock)

    def wait_for(self, connections: int) -> None:
        """Until ``connections`` have been greeted and kept (the client may read a greeting first)."""
        deadline = time.monotonic() + 30
        while len(self.accepted) < connections and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(self.accepted) >= connections

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.thread.join(timeout=10)
        for sock in self.accepted:
            sock.close()


@pytest.fixture
def runtime(tmp_path, model_copy) -> Iterator[tuple[Path, ModelTable, Greeter]]:
    table = ModelTable(max_batch_size=4, max_batch_delay_s=0.0, max_queue=4, max_wait_s=1.0, grace_s=60.0)
    table.apply(Change(added=[model_copy("m/1")]))
    path = tmp_path / "runtime.sock"
    greeter = Greeter(path, table)
    yield path, table, greeter
    greeter.close()
    table.close()


def test_a_worker_follows_the_epoch_and_replaces_its_stale_pooled_connection(runtime, model_copy) -> None:
    path, table, greeter = runtime
    client = RuntimeClient([path])
    first = client.catalog()
    assert [m.key for m in first] == ["m/1"] and first.epoch == table.epoch
    assert client.catalog() is first  # the state page shows no change: no new connection
    table.apply(Change(added=[model_copy("m/2")], retired=["m/1"]))  # a hot reload in the runtime
    swapped = client.catalog()
    # The pooled connection from before the change was closed when the new catalog was fetched (the
    # greeter kept it before it accepted the new one), while the new one stays pooled.
    greeter.wait_for(2)
    old, new = greeter.accepted[0], greeter.accepted[1]
    old.settimeout(10)
    new.setblocking(False)
    closed_at_once, still_open = old.recv(1) == b"", _is_open(new)
    client.close()
    assert closed_at_once and still_open
    assert [m.key for m in swapped] == ["m/2"] and swapped.epoch == first.epoch + 1
    assert swapped.position == {"m/1": 0, "m/2": 1}  # the retiring version stays addressable


def _is_open(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) != b""  # the client sent nothing: a closed peer reads b""
    except BlockingIOError:
        return True


def test_a_runtime_that_is_not_listening_is_unavailable_at_once(tmp_path) -> None:
    client = RuntimeClient([tmp_path / "nobody.sock"], connect_timeout_s=30.0)
    with pytest.raises(RuntimeUnavailable, match="not available"):
        client.catalog()
