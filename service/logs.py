"""Log formatting for the service: plain text or one JSON object per line (for log shippers)."""

from __future__ import annotations

import logging
from typing import Any

import orjson

_TEXT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, process, message (and the traceback, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {"time": self.formatTime(record), "level": record.levelname,
                                 "logger": record.name, "pid": record.process, "message": record.getMessage()}
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
    handler = {"class": "logging.StreamHandler", "formatter": "default", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "filters": {"deliberate_threads": {"()": "service.logs.DeliberateThreads"}},
        "handlers": {"stderr": handler},
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        "loggers": {
            "gunicorn.error": {"level": level.upper(), "handlers": ["stderr"], "propagate": False},
            # Access lines cost throughput, so they are shown only at debug level (the requests metric
            # counts every request).
            "gunicorn.access": {"level": "INFO" if level == "debug" else "WARNING", "handlers": ["stderr"],
                                "propagate": False},
            "_granian": {"level": level.upper(), "handlers": ["stderr"], "propagate": False,
                         "filters": ["deliberate_threads"]},
            "granian.access": {"level": "INFO" if level == "debug" else "WARNING", "handlers": ["stderr"],
                               "propagate": False},
        },
    }
