"""The model runtime processes the launcher supervises: starting one (a new process, or the spare that has
imported torch already), waiting until it serves, and when to start it again after it dies."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

from service.handoff.client import RuntimeClient

log = logging.getLogger(__name__)

SPARE_COMMAND = [sys.executable, "-m", "service.runtime", "--spare"]


# Deaths that are the process's own fault (native code that crashed), as opposed to a kill from outside:
# the runtime started next refuses the artifact it was loading, if it was loading one.
CRASH_SIGNALS = frozenset({signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGABRT,
                           signal.SIGSYS})


def crash_signal(code: int | None) -> str | None:
    """The signal's name when ``code`` (a Popen return code) is a death by a crash signal."""
    return signal.Signals(-code).name if code is not None and -code in CRASH_SIGNALS else None


class Runtime:
    """One model runtime process and its restart schedule."""

    def __init__(self, index: int, device: str, socket_path: Path, env: dict[str, str]) -> None:
        self.index, self.device, self.socket_path, self.env = index, device, socket_path, env
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.failures = 0
        self.restart_at: float | None = None
        self.last_exit: int | None = None

    def start(self, spare: subprocess.Popen[bytes] | None = None) -> None:
        """Start the process, or make ``spare`` (a runtime that has imported torch and waits) this one; it
        listens once its models are loaded and warmed up."""
        # The socket appears only once the new runtime listens: a dead one's file must not look ready.
        self.socket_path.unlink(missing_ok=True)
        crashed = crash_signal(self.last_exit)
        self.proc = None
        if spare is not None and spare.stdin is not None:
            job = {"socket": str(self.socket_path), "device": self.device, "crashed": crashed}
            try:
                spare.stdin.write(json.dumps(job).encode() + b"\n")
                spare.stdin.close()
                self.proc = spare
            except OSError:  # the spare died meanwhile: start a process as usual
                stop_process(spare, 1)
        if self.proc is None:
            self.proc = subprocess.Popen([sys.executable, "-m", "service.runtime", "--socket",
                                          str(self.socket_path), "--device", self.device,
                                          *(["--crashed", crashed] if crashed else [])], env=self.env)
        self.started = time.monotonic()
        self.restart_at = None

    def wait_ready(self, timeout_s: float) -> int | None:
        """Block until the runtime answers a ping; its exit code if it exits first."""
        client = RuntimeClient([self.socket_path], connect_timeout_s=5.0)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                assert self.proc is not None
                if (code := self.proc.poll()) is not None:
                    self.last_exit = code
                    return code
                if self.socket_path.exists() and client.ready():
                    return None
                time.sleep(0.05)
        finally:
            client.close()
        raise TimeoutError(f"the model runtime on {self.device} was not ready after {timeout_s:.0f}s")

    def check(self, now: float) -> int | None:
        """Schedule a restart when the process has died (returns its exit code then).

        A runtime that had been serving (its socket was there) is started again at once; one that keeps
        dying before it serves waits 0.5 s, doubling to 30 s."""
        if self.proc is None or self.restart_at is not None or (code := self.proc.poll()) is None:
            return None
        self.last_exit = code
        self.failures = 0 if self.socket_path.exists() else self.failures + 1
        delay = min(30.0, 0.5 * 2 ** (self.failures - 1)) if self.failures else 0.0
        self.restart_at = now + delay
        log.error("model runtime %d on %s (pid %d) exited with %s; restarting in %.1fs", self.index,
                  self.device, self.proc.pid, code, delay)
        return code

    def stop(self, timeout_s: float) -> None:
        """SIGTERM (finish what is queued), then SIGKILL after ``timeout_s``."""
        stop_process(self.proc, timeout_s)


def stop_process(proc: subprocess.Popen[bytes] | None, timeout_s: float) -> int | None:
    if proc is None:
        return None
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("pid %d did not stop within %.0fs: killing it", proc.pid, timeout_s)
            proc.kill()
            proc.wait()
    return proc.returncode
