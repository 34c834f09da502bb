"""The gRPC front end's processes (``python -m service.grpc``, ``TRAINSERVE_GRPC_WORKERS`` of them on one
port), as the launcher supervises them: started once the runtimes serve, each started again when it dies
(at once when it had been serving a while; after 0.5 s, doubling to 30 s, when it keeps dying early), and
stopped with SIGTERM, which drains it."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time

from service.launcher.runtimes import stop_process

log = logging.getLogger(__name__)

COMMAND = [sys.executable, "-m", "service.grpc"]
# A process that ran this long had been serving: its death is not a crash loop.
_SETTLED_S = 10.0


def probe_address(bind: str) -> str:
    """Where a local client reaches a server bound to ``bind`` (a wildcard host is this machine)."""
    if bind.startswith("unix:"):
        return bind
    host, _, port = bind.rpartition(":")
    local = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]", "": "127.0.0.1"}.get(host, host)
    return f"{local}:{port}"


class GrpcFrontEnd:
    """The gRPC processes and their restart schedule (module docstring)."""

    def __init__(self, workers: int, env: dict[str, str]) -> None:
        self.env = env
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * workers
        self.started = [0.0] * workers
        self.failures = [0] * workers
        self.restart_at: list[float | None] = [None] * workers

    def start(self) -> None:
        """Start every process."""
        for index in range(len(self.procs)):
            self._start(index)

    def _start(self, index: int) -> None:
        self.procs[index] = subprocess.Popen(COMMAND, env=self.env)
        self.started[index] = time.monotonic()
        self.restart_at[index] = None

    def check(self, now: float) -> None:
        """Schedule a restart for a process that died; start the ones whose time has come."""
        for index, proc in enumerate(self.procs):
            if proc is None:
                continue
            due = self.restart_at[index]
            if due is not None:
                if now >= due:
                    self._start(index)
                continue
            code = proc.poll()
            if code is None:
                continue
            settled = now - self.started[index] >= _SETTLED_S
            self.failures[index] = 0 if settled else self.failures[index] + 1
            delay = min(30.0, 0.5 * 2 ** (self.failures[index] - 1)) if self.failures[index] else 0.0
            self.restart_at[index] = now + delay
            log.error("gRPC front end %d (pid %d) exited with %s; restarting in %.1fs", index, proc.pid, code,
                      delay)

    def terminate(self) -> None:
        """SIGTERM to every live process: each stops accepting and finishes its calls."""
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    def stop(self, timeout_s: float) -> None:
        """Wait for every process to end (SIGKILL after ``timeout_s``)."""
        for proc in self.procs:
            stop_process(proc, timeout_s)
