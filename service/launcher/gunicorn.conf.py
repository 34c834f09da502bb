# Gunicorn configuration for trainserve's HTTP workers, when TRAINSERVE_SERVER=gunicorn:
#   TRAINSERVE_SERVER=gunicorn python -m service
# The launcher (service/launcher/launch.py) starts the model runtimes first and passes their sockets in
# TRAINSERVE_RUNTIME_SOCKETS; every value here comes from the TRAINSERVE_* settings (service/config.py).
# Workers hold no model and import no torch, so there is nothing to share before the fork.

import sys
from typing import Any

from service.config import ConfigError, ServiceConfig
from service.logs import logging_config
from service.web.limits import MAX_HEADER_BYTES

try:
    _settings = ServiceConfig.from_env()
except ConfigError as _exc:
    sys.exit(f"trainserve: {_exc}")

# --- Server socket ---------------------------------------------------------------------------------------
bind = [_settings.bind]
backlog = 2048

# --- Security ----------------------------------------------------------------------------------------
# One header field may be as large as the app's limit on all of them, so the app answers it with its JSON
# 431 (service/web/limits.py); gunicorn's own default (8190 bytes) would answer first, in HTML.
limit_request_field_size = MAX_HEADER_BYTES

# --- Workers ---------------------------------------------------------------------------------------------
# gthread: each request thread blocks (GIL released) while the runtime computes, so threads bound how
# many requests a worker holds, and so how many can meet in one batch.
worker_class = "gthread"
workers = _settings.worker_count
threads = _settings.threads
keepalive = 5
timeout = 60
# SIGTERM: stop accepting, finish in-flight requests, then exit (gthread waits this long).
graceful_timeout = max(1, round(_settings.graceful_timeout_s))

# --- Logging ---------------------------------------------------------------------------------------------
logconfig_dict = logging_config(_settings.log_format, _settings.log_level)
loglevel = _settings.log_level
accesslog = None


# --- Prometheus multiprocess mode ------------------------------------------------------------------------
# The launcher prepares PROMETHEUS_MULTIPROC_DIR; a worker's live gauges go when it exits.
def child_exit(server: Any, worker: Any) -> None:  # gunicorn's Arbiter and Worker (it ships no types)
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
