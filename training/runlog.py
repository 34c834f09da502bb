"""Metrics of a run as JSON lines, mirrored to TensorBoard event files when tensorboard is installed."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


class RunLog:
    """Appends one JSON object per line to ``folder/metrics.jsonl``; numbers also go to TensorBoard."""

    def __init__(self, folder: Path, tensorboard: bool = True) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / METRICS_FILE
        self._file = self.path.open("a", encoding="utf-8")
        self._writer = _summary_writer(folder) if tensorboard else None
        self.history: list[dict[str, Any]] = []

    def write(self, record: dict[str, Any], step: int | None = None) -> None:
        """Record one event (an epoch's summary, the final test result); ``step`` is the TensorBoard x."""
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        self.history.append(record)
        if self._writer is not None and step is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "epoch":
                    self._writer.add_scalar(key.replace("_", "/", 1), value, step)
            self._writer.flush()

    def close(self) -> None:
        """Flush and close the files."""
        self._file.close()
        if self._writer is not None:
            self._writer.close()

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _summary_writer(folder: Path) -> Any:
    if importlib.util.find_spec("tensorboard") is None:
        log.info("tensorboard is not installed; metrics go to %s only", folder / METRICS_FILE)
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(folder))
