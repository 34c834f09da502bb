"""Checks the launcher makes before it starts anything, so a mistake costs one line, not a start-up.

Each raises ``ConfigError`` with what is wrong and how to fix it; the launcher prints it and exits 2.
Stdlib only: the launcher never imports torch.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Sequence

from service.config import ConfigError, ServiceConfig
from service.contract.manifest import artifact_dirs


def preflight(config: ServiceConfig, devices: Sequence[str]) -> None:
    """Every check below, in the order a user would fix them."""
    check_model_dir(config)
    check_half(config, devices)
    check_bind(config.bind)
    if config.grpc_bind != "off":
        if config.grpc_bind == config.bind:
            raise ConfigError(f"TRAINSERVE_GRPC_BIND={config.grpc_bind} is TRAINSERVE_BIND as well: give "
                              "gRPC a port of its own (Triton's is 8001), or TRAINSERVE_GRPC_BIND=off")
        check_bind(config.grpc_bind, "TRAINSERVE_GRPC_BIND")
        if config.grpc_bind.startswith("unix:") and config.grpc_workers > 1:
            raise ConfigError(f"TRAINSERVE_GRPC_WORKERS={config.grpc_workers} with TRAINSERVE_GRPC_BIND="
                              f"{config.grpc_bind}: only one process can serve a unix socket; bind a port "
                              "(the processes share it) or leave TRAINSERVE_GRPC_WORKERS unset")


def check_model_dir(config: ServiceConfig) -> None:
    """The model repository exists and holds at least one ``<name>/<version>/manifest.json``."""
    root = config.model_dir
    if not root.is_dir():
        raise ConfigError(f"TRAINSERVE_MODEL_DIR={root} is not a folder: set it to a model repository "
                          "(<name>/<version>/manifest.json), such as this checkout's models/")
    if next(artifact_dirs(root), None) is None:
        raise ConfigError(f"TRAINSERVE_MODEL_DIR={root} holds no model (<name>/<version>/manifest.json): "
                          "train one with `python -m training`, or point the setting at a model repository")


def check_half(config: ServiceConfig, devices: Sequence[str]) -> None:
    """float16 only where there is a GPU to run it."""
    if config.half and not any(d.startswith("cuda") for d in devices):
        raise ConfigError("TRAINSERVE_HALF=1 needs a CUDA device, and this machine has none torch can use: "
                          "unset TRAINSERVE_HALF (float16 is slow on a CPU)")


def check_bind(bind: str, variable: str = "TRAINSERVE_BIND") -> None:
    """A TCP address the front end can listen on (port 0, a free one, and Unix sockets pass)."""
    if bind.startswith("unix:"):
        return
    host, _, port = bind.rpartition(":")
    host = host.strip("[]")
    if int(port) == 0:
        return
    if int(port) > 65535:
        raise ConfigError(f"{variable}={bind}: a port is at most 65535")
    try:
        family = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as exc:
        raise ConfigError(f"{variable}={bind}: cannot resolve {host} ({exc.strerror}); "
                          "use an address such as 127.0.0.1:8000 or 0.0.0.0:8000") from None
    # SO_REUSEADDR as both front ends set it: a socket left in TIME_WAIT by the last run is no conflict.
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, int(port)))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"{variable}={bind}: the address is in use (is another trainserve "
                                  "running?); stop that process or choose another port") from None
            raise ConfigError(f"{variable}={bind}: cannot listen there ({exc.strerror})") from None
