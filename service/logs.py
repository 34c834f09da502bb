"""Log formatting for the service: plain text or one JSON object per line (for log shippers), each line
with the id of the HTTP request it belongs to ("-" outside a request)."""

from __future__ import annotations

import logging
from contextvars import ContextVar
from typing import Any

import orjson

_TEXT = "%(asctime)s %(levelname)s [%(process)d] %(name)s [%(request_id)s]: %(message)s"

# Set by the web app for the request a thread is handling (service/web/operability.py).
request_id: ContextVar[str] = ContextVar("request_id", default="-")


class RequestIdFilter(logging.Filter):
    """Gives every record the current request's id, so that any logger's lines can be joined up."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Annotate; never drop."""
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, process, request id, message (and traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {"time": self.formatTime(record), "level": record.levelname,
                                 "logger": record.name, "pid": record.process,
                                 "request_id": getattr(record, "request_id", "-"),
                                 "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


class DeliberateThreads(logging.Filter):
    """Drops granian's start-up notice that many threads per worker "seem quite high": they are the point
    (a thread per request held while the runtime computes; docs/operations.md), and a warning on every
    start would teach operators to ignore warnings."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Configuration allows spawning up to")


def logging_config(log_format: str, level: str) -> dict[str, Any]:
    """A logging.config.dictConfig for the service's and the front end's loggers, to stderr."""
    formatter = {"()": "service.logs.JsonFormatter"} if log_format == "json" else {"format": _TEXT}
    handler = {"class": "logging.StreamHandler", "formatter": "default", "stream": "ext://sys.stderr",
               "filters": ["request_id"]}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": "service.logs.RequestIdFilter"},
                    "deliberate_threads": {"()": "service.logs.DeliberateThreads"}},
        "formatters": {"default": formatter},
        "handlers": {"stderr": handler},
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        "loggers": {
            "gunicorn.error": {"level": level.upper(), "handlers": ["stderr"], "propagate": False},
            # The front ends' own access lines are shown only at debug level: TRAINSERVE_ACCESS_LOG turns
            # on the app's, which carry the request id and read the same on both front ends.
            "gunicorn.access": {"level": "INFO" if level == "debug" else "WARNING", "handlers": ["stderr"],
                                "propagate": False},
            "_granian": {"level": level.upper(), "handlers": ["stderr"], "propagate": False,
                         "filters": ["deliberate_threads"]},
            "granian.access": {"level": "INFO" if level == "debug" else "WARNING", "handlers": ["stderr"],
                               "propagate": False},
        },
    }
