# Gunicorn configuration for trainserve:
#   python -m gunicorn -c service/gunicorn.conf.py 'service.app:create_app()'
# Every value comes from the TRAINSERVE_* settings (service/config.py), so the container, `make serve` and
# the tests start the service the same way. No --preload: each worker builds its own app after the fork,
# so torch, CUDA and the batcher threads never cross a fork.

import gc
import math
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from service.config import ConfigError, ServiceConfig
from service.logs import logging_config

try:
    _settings = ServiceConfig.from_env()
except ConfigError as _exc:
    sys.exit(f"trainserve: {_exc}")

# --- Shared memory between workers ---------------------------------------------------------------------
# Import torch (and numpy) once here, in the master, before the fork: the workers then share its loaded and
# relocated libraries copy-on-write instead of each relocating its own copy (~290 MiB private per worker
# with a CUDA build of torch, see `make bench`). Importing starts no thread and touches no device; the app,
# the models, the batcher threads and CUDA are still created in each worker after the fork. The metrics
# library is not imported here: it picks its multiprocess mode from the environment that on_starting sets.
import numpy  # noqa: F401
import torch  # noqa: F401

# Python's cyclic garbage collector writes to every object it scans: left alone, a worker's first full
# collection dirties the master's shared pages (copying them into the worker), and each later one walks
# torch's hundreds of thousands of long-lived objects, pausing every request in the worker for ~0.1 s.
# Objects alive now (and, in post_worker_init, the worker's app and models) are moved out of its reach.
gc.freeze()

# --- Server socket ---------------------------------------------------------------------------------------
bind = [_settings.bind]
backlog = 2048

# --- Workers ---------------------------------------------------------------------------------------------
# gthread (service/workers.py: a request thread keeps answering a busy kept-alive connection itself while
# no other connection waits for a thread): each worker is one process (one model copy, one batcher per
# model) with `threads` request threads. Concurrent requests in a worker are what the batcher merges, so
# threads bound the batch that single-image requests can form; processes bound how much HTTP parsing runs
# in parallel (the GIL).
worker_class = "service.workers.ThreadWorker"
workers = _settings.worker_count
threads = _settings.threads
# Kept-alive connections wait in the worker's poller, not in a thread.
keepalive = 5
# The heartbeat timeout must cover loading and warming up the models at boot.
timeout = 120
# SIGTERM: stop accepting, finish queued and in-flight requests, then exit (gthread waits this long).
graceful_timeout = math.ceil(_settings.graceful_timeout_s)

# --- Logging ---------------------------------------------------------------------------------------------
# One configuration for gunicorn's loggers and the service's, text or JSON. No access log: per-request
# lines cost throughput; the requests metric counts every request by model, endpoint and status.
logconfig_dict = logging_config(_settings.log_format, _settings.log_level)
logger_class = "service.logs.GunicornLogger"
loglevel = _settings.log_level
accesslog = None


# --- Prometheus multiprocess mode ------------------------------------------------------------------------
# Workers write their samples to files in PROMETHEUS_MULTIPROC_DIR and a scrape sums them. The folder is
# wiped at start-up (stale files from a previous run would be counted again) and a private one is made
# when none is given. The variable must be set before any worker imports prometheus_client.
_private_dir = []


def on_starting(server):
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        folder = Path(path)
        if folder.exists():
            for entry in folder.iterdir():
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        folder.mkdir(parents=True, exist_ok=True)
    else:
        folder = Path(tempfile.mkdtemp(prefix="trainserve-prometheus-"))
        _private_dir.append(folder)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    server.log.info("prometheus multiprocess folder: %s", folder)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    for folder in _private_dir:
        shutil.rmtree(folder, ignore_errors=True)


# --- Graceful drain --------------------------------------------------------------------------------------
# On SIGTERM a worker first turns readiness off (/readyz and new inference requests answer 503, so the
# load balancer moves away), then gunicorn's own handler stops accepting and lets in-flight requests finish;
# when the worker leaves, the batchers run what is still queued and stop.
def post_worker_init(worker):
    gc.collect()
    gc.freeze()  # the app, its models and their metadata live as long as the worker (see gc.freeze above)
    plane = worker.wsgi.extensions["trainserve"]
    gunicorn_handler = signal.getsignal(signal.SIGTERM)

    def drain(signum, frame):
        plane.begin_drain()
        gunicorn_handler(signum, frame)

    signal.signal(signal.SIGTERM, drain)


def worker_exit(server, worker):
    plane = getattr(worker, "wsgi", None) and worker.wsgi.extensions.get("trainserve")
    if plane is not None:
        plane.close(timeout=_settings.graceful_timeout_s)
