"""One model runtime process: ``python -m service.runtime --socket PATH [--device cuda:1]``.

The launcher (``python -m service``) starts one per device and restarts it if it dies; every other
setting comes from the ``TRAINSERVE_*`` environment, as for the rest of the service.
"""

from __future__ import annotations

import argparse
import gc
import logging
import logging.config
import os
import signal
import sys
from pathlib import Path

import torch

from service.config import ConfigError, ServiceConfig
from service.logs import logging_config
from service.metrics import Metrics
from service.runtime.registry import RegistryError, load_registry, resolve_device
from service.runtime.server import RuntimeServer, listen
from service.server.allocator import keep_freed_memory

log = logging.getLogger("service.runtime")

EXIT_CONFIG, EXIT_NO_MODEL = 2, 3  # the launcher does not restart a runtime that exits with these


def main(argv: list[str] | None = None) -> int:
    """Load the models onto the device, then serve the socket until SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m service.runtime", description=__doc__)
    parser.add_argument("--socket", type=Path, required=True, help="Unix socket to listen on")
    parser.add_argument("--device", help="device for this runtime (default: TRAINSERVE_DEVICE)")
    args = parser.parse_args(argv)
    try:
        config = ServiceConfig.from_env()
    except ConfigError as exc:
        print(f"trainserve: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    logging.config.dictConfig(logging_config(config.log_format, config.log_level))
    torch.set_num_threads(config.torch_thread_count)
    keep_freed_memory()  # batches reuse the memory the last one freed (service/server/allocator.py)
    try:
        device = resolve_device(args.device or config.device, config.half)
        registry = load_registry(config.model_dir, device, config.half, warmup_batch=config.max_batch_size,
                                 model_format=config.model_format)
    except RegistryError as exc:
        log.error("%s", exc)
        return EXIT_NO_MODEL
    metrics = Metrics(config.prometheus_multiproc_dir)
    observers = []
    for model in registry:
        m = model.manifest
        observers.append(metrics.observer(m.name, m.version))
        metrics.load_seconds.labels(m.name, m.version).set(model.load_seconds)
        metrics.model_info.labels(m.name, m.version, m.architecture, str(device), m.torch_version).set(1)
    server = RuntimeServer(registry, listen(args.socket), config.max_batch_size,
                           config.max_batch_delay_ms / 1000, config.max_queue, observers)
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
    log.info("runtime %d serving %s on %s with %d torch threads", os.getpid(),
             ", ".join(m.key for m in registry), device, torch.get_num_threads())
    server.run(wakeup_fd=wakeup_r)
    args.socket.unlink(missing_ok=True)
    log.info("runtime %d stopped", os.getpid())
    return 0


if __name__ == "__main__":
    sys.exit(main())
