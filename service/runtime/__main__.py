"""One model runtime process: ``python -m service.runtime --socket PATH [--device cuda:1]``.

The launcher (``python -m service``) starts one per device and restarts it if it dies; every other
setting comes from the ``TRAINSERVE_*`` environment, as for the rest of the service.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import logging.config
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from service.config import ServiceConfig, start_process
from service.contract.allocator import keep_freed_memory
from service.contract.loading import LoadedModel, LoadingError, resolve_device
from service.metrics import Metrics
from service.runtime.control import ModelControl, loader
from service.runtime.loop import RuntimeServer, listen

log = logging.getLogger("service.runtime")  # run as __main__, where __name__ names no module

EXIT_CONFIG, EXIT_NO_MODEL = 2, 3  # the launcher does not restart a runtime that exits with these


def main(argv: list[str] | None = None) -> int:
    """Load the models onto the device, then serve the socket until SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m service.runtime", description=__doc__)
    parser.add_argument("--socket", type=Path, help="Unix socket to listen on")
    parser.add_argument("--device", help="device for this runtime (default: TRAINSERVE_DEVICE)")
    parser.add_argument("--crashed", metavar="SIGNAL",
                        help="the previous runtime on this socket died of SIGNAL: refuse the artifact it was "
                             "loading, if any (the launcher passes it)")
    parser.add_argument("--spare", action="store_true",
                        help="import torch, then wait for one JSON line on stdin giving socket, device and "
                             "crashed (the launcher's spare runtime); end at once on an empty stdin")
    args = parser.parse_args(argv)
    if args.spare and not _take_job(args):
        return 0
    if args.socket is None:
        parser.error("--socket is required")
    config = start_process()
    if config is None:
        return EXIT_CONFIG
    torch.set_num_threads(config.torch_thread_count)
    keep_freed_memory()  # batches reuse the memory the last one freed (service/contract/allocator.py)
    metrics = Metrics(config.prometheus_multiproc_dir)
    try:
        device = resolve_device(args.device or config.device, config.half)
        control = _model_control(config, device, metrics, args.socket)
        models, refused = control.start_up(crashed=args.crashed)
    except LoadingError as exc:
        log.error("%s", exc)
        return EXIT_NO_MODEL

    observe, forget = _hooks(metrics, device)
    # A retired version still answers what workers addressed to it for a request's whole deadline.
    server = RuntimeServer(models, refused, listen(args.socket), config.max_batch_size,
                           config.max_batch_delay_ms / 1000, config.max_queue, observe, forget,
                           grace_s=config.request_timeout_s + 1, max_wait_s=config.max_queue_wait_ms / 1000,
                           routing=control.routing.catalog(),
                           explain_max_queue=config.explain_max_queue, explain_share=config.explain_share)
    server.commands = control.command
    # Python's cyclic collector would walk torch's hundreds of thousands of long-lived objects on every
    # full collection, pausing the loop; what is alive now lives as long as the process.
    gc.collect()
    gc.freeze()
    wakeup_r, wakeup_w = os.pipe()
    os.set_blocking(wakeup_r, False)
    os.set_blocking(wakeup_w, False)
    signal.set_wakeup_fd(wakeup_w)  # the loop reads signal numbers from the pipe, between batches
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(signum, lambda *_: None)
    log.info("runtime %d serving %s on %s with %d torch threads (model control %s, version policy %s)",
             os.getpid(), ", ".join(m.key for m in models), device, torch.get_num_threads(),
             config.model_control, config.version_policy)
    control.start(server.submit)
    server.run(wakeup_fd=wakeup_r)
    control.stop()
    args.socket.unlink(missing_ok=True)
    log.info("runtime %d stopped", os.getpid())
    return 0


# A spare started with --spare names itself so once it has taken its job (/proc/PID/comm), for tools that
# tell the runtimes from the spare.
PROMOTED_NAME = "model-runtime"


def _take_job(args: argparse.Namespace) -> bool:
    """A spare's wait: everything imported, nothing loaded; the launcher's line says which runtime to be."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C: the launcher stops the spare
    line = sys.stdin.readline()
    _rename(PROMOTED_NAME)
    if not line.strip():
        return False  # the launcher is stopping (or gone)
    job = json.loads(line)
    args.socket, args.device, args.crashed = Path(job["socket"]), job["device"], job.get("crashed")
    return True


def _rename(name: str) -> None:
    """Set this process's name as ps shows it (Linux only; elsewhere nothing)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/comm").write_text(name)


def loading_marker(socket_path: Path) -> Path:
    """The file naming the artifact this runtime is loading, beside its socket (the launcher's folder)."""
    return socket_path.with_name(socket_path.name + ".loading")


def crash_record(socket_path: Path) -> Path:
    """The artifacts the service's runtimes crashed on, shared by every runtime beside this socket."""
    return socket_path.with_name("crashed-artifacts.jsonl")


def _model_control(config: ServiceConfig, device: torch.device, metrics: Metrics,
                   socket_path: Path) -> ModelControl:
    return ModelControl(config.model_dir, config.model_control, config.policy,
                        loader(device, config.half, config.max_batch_size, config.model_format),
                        config.poll_interval_s,
                        on_refused=lambda name, version: metrics.load_failures.labels(name, version).inc(),
                        loading_marker=loading_marker(socket_path), crash_record=crash_record(socket_path))


def _hooks(metrics: Metrics, device: torch.device) -> tuple[Callable[[LoadedModel], Any],
                                                            Callable[[LoadedModel], None]]:
    """What the model table calls when a model is added (its metrics observer) and dropped."""
    def observe(model: LoadedModel) -> object:
        m = model.manifest
        metrics.load_seconds.labels(m.name, m.version).set(model.load_seconds)
        metrics.model_info.labels(m.name, m.version, m.architecture, str(device), m.torch_version).set(1)
        return metrics.observer(m.name, m.version)

    def forget(model: LoadedModel) -> None:
        m = model.manifest
        metrics.model_info.labels(m.name, m.version, m.architecture, str(device), m.torch_version).set(0)
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the dropped model's memory goes back to the device

    return observe, forget


if __name__ == "__main__":
    sys.exit(main())
