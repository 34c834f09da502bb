"""``python -m service``: start the model runtimes, then the HTTP front end, and supervise both.

Processes: this launcher; one model runtime per device (``service.runtime``), replaced when it dies
(``runtimes.py``), and a spare runtime that has imported torch to replace it with; the front end chosen by
``TRAINSERVE_SERVER`` (granian, or gunicorn), whose workers run the Flask app; the gRPC front end
(``grpc_front.py``) unless ``TRAINSERVE_GRPC_BIND=off``. SIGTERM drains: the runtimes turn readiness off,
both front ends stop accepting and finish what they hold, then the runtimes finish their queues and stop.
"""

from __future__ import annotations

import json
import logging
import logging.config
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.config import ConfigError, ServiceConfig, start_process
from service.handoff import protocol
from service.handoff.client import RuntimeClient
from service.launcher.grpc_front import GrpcFrontEnd, probe_address
from service.launcher.preflight import preflight
from service.launcher.runtimes import SPARE_COMMAND, Runtime, crash_signal, stop_process
from service.logs import logging_config
from service.routing.watch import RollbackWatcher

if TYPE_CHECKING:
    from service.metrics import Metrics

log = logging.getLogger(__name__)

GUNICORN_CONF = Path(__file__).with_name("gunicorn.conf.py")
APP = "service.web.app:create_app"  # the Flask app alone: gunicorn's threads
ASGI_APP = "service.web.asgi:create_asgi_app"  # the hot path on each worker's loop, the Flask app beside it
# Runtime exit codes that a restart cannot fix (service/runtime/__main__.py): stop instead of looping.
_FATAL = {2: "a bad setting", 3: "nothing it can serve on that device"}
# How many times start-up starts a runtime again after it crashed while loading an artifact.
_CRASHES_AT_START = 8


def runtime_devices(config: ServiceConfig) -> list[str]:
    """One runtime per CUDA device (or the one named), or ``runtimes`` on the CPU."""
    device = config.device
    if device == "cpu":
        return [device] * config.runtimes
    count = cuda_device_count()
    if device.startswith("cuda") and not count:
        raise ConfigError(f"TRAINSERVE_DEVICE={device} but torch sees no CUDA device here: "
                          "set TRAINSERVE_DEVICE=cpu (or auto)")
    if device.startswith("cuda:"):
        if int(device[5:]) >= count:
            raise ConfigError(f"TRAINSERVE_DEVICE={device} but torch sees {count} CUDA device(s): "
                              f"choose cuda:0 to cuda:{count - 1}, or cuda for all of them")
        return [device]
    return [f"cuda:{i}" for i in range(count)] if count else ["cpu"] * config.runtimes


def cuda_device_count() -> int:
    """CUDA devices torch sees, asked of a short-lived process: the launcher itself never imports torch
    (hundreds of MiB it would hold for nothing). Without NVIDIA device nodes there is nothing to ask."""
    if not any(Path("/dev").glob("nvidia[0-9]*")):
        return 0
    probe = "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    return int(result.stdout.strip() or 0) if result.returncode == 0 else 0


def front_end_command(config: ServiceConfig, run_dir: Path) -> list[str]:
    """The command line of the chosen HTTP server, serving the app factory on ``config.bind``."""
    if config.server == "gunicorn":
        return [sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF), f"{APP}()"]
    log_config = run_dir / "granian-logging.json"
    log_config.write_text(json.dumps(logging_config(config.log_format, config.log_level)))
    if config.bind.startswith("unix:"):
        where = ["--uds", config.bind[len("unix:"):]]
    else:
        host, _, port = config.bind.rpartition(":")
        where = ["--host", host.strip("[]"), "--port", port]
    return [sys.executable, "-m", "granian", "--interface", "asgi", "--factory", ASGI_APP, *where,
            "--http", "1", "--no-ws", "--workers", str(config.worker_count), "--backlog", "2048",
            # A client gets this long to send its headers; idle kept-alive connections close after it too.
            "--http1-header-read-timeout", "5000",
            # Requests a worker's loop holds at once (each costs a task, not a thread); the rest wait in
            # granian until one finishes.
            "--backpressure", str(config.loop_requests),
            "--respawn-failed-workers", "--respawn-interval", "1",
            "--workers-kill-timeout", str(max(1, round(config.graceful_timeout_s))),
            "--log-config", str(log_config), "--log-level", config.log_level]


def prepare_metrics_dir(env: dict[str, str], run_dir: Path) -> Path:
    """PROMETHEUS_MULTIPROC_DIR, wiped (stale files would be counted again), or a private one."""
    given = env.get("PROMETHEUS_MULTIPROC_DIR")
    folder = Path(given) if given else run_dir / "metrics"
    if folder.exists():
        for entry in folder.iterdir():
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    return folder


def sweep_dead_processes(folder: Path) -> None:
    """Drop the live gauges of processes that are gone (any front end's workers, old runtimes)."""
    from prometheus_client import multiprocess

    for path in folder.glob("gauge_live*_*.db"):
        pid = int(path.stem.rsplit("_", 1)[1])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, str(folder))
        except PermissionError:
            pass


def front_end_env(env: dict[str, str]) -> dict[str, str]:
    """The HTTP workers' environment: glibc returns any block of 256 KiB or more (a large image's pixels)
    to the system when it is freed, instead of keeping it in its heap after the request (glibc's
    threshold otherwise grows to 32 MiB as large blocks come and go)."""
    return {"MALLOC_MMAP_THRESHOLD_": str(256 * 1024)} | env


class Launcher:
    """Starts and supervises the runtimes and the front end (module docstring)."""

    def __init__(self, config: ServiceConfig, run_dir: Path) -> None:
        self.config = config
        self.run_dir = run_dir
        devices = runtime_devices(config)
        preflight(config, devices)
        self.env = dict(os.environ)
        self.metrics_dir = prepare_metrics_dir(self.env, run_dir)
        # The launcher's own counter (the automatic rollback's) goes beside every other process's; the
        # variable must be set before prometheus_client is imported here (self.metrics).
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(self.metrics_dir)
        self._metrics: Metrics | None = None
        self.watcher = RollbackWatcher(config.model_dir, self._families, self._apply_routing,
                                       self._count_rollback)
        self.runtimes = [Runtime(i, device, run_dir / f"runtime-{i}.sock", self.env)
                         for i, device in enumerate(devices)]
        self.env["TRAINSERVE_RUNTIME_SOCKETS"] = ",".join(str(r.socket_path) for r in self.runtimes)
        self.grpc: GrpcFrontEnd | None = None
        if config.grpc_bind != "off":
            # The HTTP workers' readiness then covers the gRPC front end too (web/dataplane.py).
            self.env["TRAINSERVE_GRPC_PROBE"] = probe_address(config.grpc_bind)
            self.grpc = GrpcFrontEnd(config.grpc_worker_count, front_end_env(self.env))
        self.front: subprocess.Popen[bytes] | None = None
        self.spare: subprocess.Popen[bytes] | None = None
        self.spare_retry_at = 0.0
        self.stopping = False

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; the exit status."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        for runtime in self.runtimes:
            runtime.start()
        for runtime in self.runtimes:
            code = runtime.wait_ready(timeout_s=600)
            for _ in range(_CRASHES_AT_START):  # each new runtime refuses what the last one crashed on
                if crash_signal(code) is None or self.stopping:
                    break
                log.error("model runtime %d on %s died of %s while loading; starting it again", runtime.index,
                          runtime.device, crash_signal(code))
                runtime.start()
                code = runtime.wait_ready(timeout_s=600)
            if code is not None:
                if code not in _FATAL:  # a fatal exit has already said why, in one line
                    print(f"trainserve: the model runtime on {runtime.device} exited with {code} while "
                          "loading its models (its output is above)", file=sys.stderr)
                self._stop_all()
                return 1
            if self.stopping:
                break
        if self.stopping:
            self._stop_all()
            return 0
        self.front = subprocess.Popen(front_end_command(self.config, self.run_dir),
                                      env=front_end_env(self.env))
        if self.grpc is not None:
            self.grpc.start()
        log.info("serving on %s: %s front end, %d runtime(s) on %s; gRPC on %s", self.config.bind,
                 self.config.server, len(self.runtimes), ", ".join(r.device for r in self.runtimes),
                 self.config.grpc_bind)
        return self._supervise()

    def _on_signal(self, signum: int, frame: object) -> None:
        del frame
        if not self.stopping:
            log.info("%s: draining", signal.Signals(signum).name)
        self.stopping = True

    def _supervise(self) -> int:
        swept = time.monotonic()
        while not self.stopping:
            now = time.monotonic()
            for runtime in self.runtimes:
                code = runtime.check(now)
                if code in _FATAL:
                    log.error("model runtime on %s cannot start again (%s): stopping", runtime.device,
                              _FATAL[code])
                    self._stop_all()
                    return 1
                if runtime.restart_at is not None and now >= runtime.restart_at:
                    runtime.start(self._take_spare())
            self._keep_spare(now)
            if self.grpc is not None:
                self.grpc.check(now)
            assert self.front is not None
            if (code := self.front.poll()) is not None:
                log.error("the %s front end exited with %s: stopping", self.config.server, code)
                self._stop_all()
                return code or 1
            if now - swept > 5:
                sweep_dead_processes(self.metrics_dir)
                swept = now
            try:
                self.watcher.check(now)
            except Exception:  # the rollback watcher must never stop the service
                log.exception("the canary rollback watcher failed")
            time.sleep(0.1)
        return self._drain()

    @property
    def metrics(self) -> Metrics:
        """The service's metrics as the launcher reads and writes them (imported on first use)."""
        if self._metrics is None:
            from service.metrics import Metrics  # only now: PROMETHEUS_MULTIPROC_DIR is set

            self._metrics = Metrics(self.metrics_dir)
        return self._metrics

    def _families(self) -> Iterable[Any]:
        return self.metrics.families()

    def _count_rollback(self, model: str, version: str, reason: str) -> None:
        self.metrics.rollbacks.labels(model, version, reason).inc()

    def _apply_routing(self, name: str) -> None:
        """Have every runtime take ``name``'s routing file now (answered once each applied it)."""
        client = RuntimeClient([r.socket_path for r in self.runtimes])
        try:
            client.control(protocol.ROUTE, name, time.monotonic() + 30)
        finally:
            client.close()

    def _take_spare(self) -> subprocess.Popen[bytes] | None:
        spare, self.spare = self.spare, None
        return spare if spare is not None and spare.poll() is None else None

    def _keep_spare(self, now: float) -> None:
        """Start a spare runtime when there is none (TRAINSERVE_SPARE_RUNTIME=1) and every runtime serves (it
        then imports torch while nothing waits for the CPU); one that died by itself is started again
        after 10 s, not in a loop."""
        if not self.config.spare_runtime:
            return
        if self.spare is not None:
            if self.spare.poll() is None:
                return
            self.spare, self.spare_retry_at = None, now + 10
        serving = all(r.proc is not None and r.proc.poll() is None and r.socket_path.exists()
                      for r in self.runtimes)
        if serving and now >= self.spare_retry_at:
            self.spare = subprocess.Popen(SPARE_COMMAND, env=self.env, stdin=subprocess.PIPE)

    def _drain(self) -> int:
        for runtime in self.runtimes:  # readiness off first; the runtimes still serve
            if runtime.proc is not None and runtime.proc.poll() is None:
                runtime.proc.send_signal(signal.SIGUSR1)
        if self.grpc is not None:  # both front ends drain at once
            self.grpc.terminate()
        code = stop_process(self.front, self.config.graceful_timeout_s + 5)
        if self.grpc is not None:
            self.grpc.stop(self.config.graceful_timeout_s + 5)
        for runtime in self.runtimes:
            runtime.stop(self.config.graceful_timeout_s + 5)
        stop_process(self.spare, 5)
        log.info("stopped")
        return 0 if code in (0, -signal.SIGTERM, None) else code

    def _stop_all(self) -> None:
        if self.grpc is not None:
            self.grpc.terminate()
        stop_process(self.front, self.config.graceful_timeout_s + 5)
        if self.grpc is not None:
            self.grpc.stop(self.config.graceful_timeout_s + 5)
        for runtime in self.runtimes:
            runtime.stop(self.config.graceful_timeout_s + 5)
        stop_process(self.spare, 5)


def main() -> int:
    """Entry point of ``python -m service`` and the ``trainserve-serve`` command."""
    config = start_process()
    if config is None:
        return 2
    # Sockets and the default metrics folder: in XDG_RUNTIME_DIR where set (the image's /run/trainserve).
    with tempfile.TemporaryDirectory(prefix="trainserve-", dir=os.environ.get("XDG_RUNTIME_DIR")) as run_dir:
        try:
            launcher = Launcher(config, Path(run_dir))
        except ConfigError as exc:
            print(f"trainserve: {exc}", file=sys.stderr)
            return 2
        return launcher.run()
