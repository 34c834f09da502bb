"""Corrections: a person's "that is wrong, it is a …" stored where training can read it.

Under ``TRAINSERVE_FEEDBACK_DIR`` each correction is the input exactly as the model received it (after
preprocessing: what ``:classify?include_input=true`` returns), written once as
``<dir>/<model>/<true label>/<content hash>.png``: an image-folder dataset (``--dataset folder:PATH``,
training/folders.py); a table model's as a line of ``<dir>/<model>/corrections.csv`` (its feature columns,
``label``, ``hash``). ``<dir>/<model>/corrections.jsonl`` records each one, append-only: its hash, the
true and the predicted label, the model version and the request id. The same input corrected again is
not stored twice (the hash names the file, created exclusively, so concurrent workers agree). At most
``TRAINSERVE_FEEDBACK_MAX_ITEMS`` corrections per model are kept, and at most
``TRAINSERVE_FEEDBACK_PER_MINUTE`` new ones are stored per model in any minute, counted from the log's last
lines (so every worker counts the same); beyond either the service answers 429.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from service.contract.feedback import LOG_FILE, ROWS_FOLDER, TABLE_FILE
from service.errors import QueueFull

_MAX_RECORD = 1024  # bytes: a log line is about 250 (the request id is bounded by the schema)


@dataclass(frozen=True)
class Stored:
    """One correction as the answer reports it."""

    hash: str
    label: str
    predicted: str
    duplicate: bool


def content_hash(pixels: np.ndarray) -> str:
    """The hash of an input as the model received it (its shape and uint8 bytes)."""
    digest = hashlib.sha256(repr(pixels.shape).encode() + np.ascontiguousarray(pixels, np.uint8).tobytes())
    return digest.hexdigest()[:32]


class FeedbackStore:
    """Corrections of every model under ``root`` (see the module docstring)."""

    def __init__(self, root: Path, max_items: int, per_minute: int = 0) -> None:
        self.root = root
        self.max_items = max_items
        self.per_minute = per_minute

    def add(self, model: str, version: str, label: str, predicted: str, pixels: np.ndarray,
            request_id: str) -> Stored:
        """Store one correction of ``pixels`` (uint8 [C, H, W]); a duplicate is recorded nowhere again."""
        digest = content_hash(pixels)
        fd = self._claim(model, self.root / model / label / f"{digest}.png")
        if fd is None:
            return Stored(digest, label, predicted, True)
        with os.fdopen(fd, "wb") as fh:
            fh.write(_png(pixels))
        self._record(model, version, label, predicted, digest, request_id, f"{label}/{digest}.png")
        return Stored(digest, label, predicted, False)

    def _record(self, model: str, version: str, label: str, predicted: str, digest: str, request_id: str,
                where: str) -> None:
        record = {"hash": digest, "label": label, "predicted": predicted, "model": model, "version": version,
                  "request_id": request_id, "time": round(time.time(), 3), "file": where}
        _append(self.root / model / LOG_FILE, json.dumps(record, separators=(",", ":")) + "\n")

    def _claim(self, model: str, path: Path) -> int | None:
        """``path``, created exclusively for one new correction of ``model`` and open for writing; None when
        that input is stored already (the hash names the file, so concurrent workers agree). 429 beyond the
        total or the rate."""
        if path.exists():
            return None
        if self.count(model) >= self.max_items:
            raise QueueFull(f"model {model} has {self.max_items} corrections stored, the limit "
                            "(TRAINSERVE_FEEDBACK_MAX_ITEMS): train on them, then move them away", 60)
        self._check_rate(model)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:  # another worker stored the same input a moment ago
            return None

    def _check_rate(self, model: str) -> None:
        """429 when ``per_minute`` corrections of ``model`` were stored in the last minute."""
        if not self.per_minute:
            return
        times = _last_times(self.root / model / LOG_FILE, self.per_minute)
        if len(times) < self.per_minute:
            return
        wait = 60.0 - (time.time() - min(times))
        if wait > 0:
            raise QueueFull(f"model {model} took {self.per_minute} corrections in the last minute, the limit "
                            "(TRAINSERVE_FEEDBACK_PER_MINUTE)", max(1, math.ceil(wait)))

    def add_row(self, model: str, version: str, label: str, predicted: str, values: np.ndarray,
                features: Sequence[str], request_id: str) -> Stored:
        """Store one correction of a table model's feature row as a line of ``<model>/corrections.csv``
        (the feature columns, ``label`` and ``hash``: a CSV training reads); a duplicate is not stored."""
        row = np.asarray(values, np.float32).reshape(-1)
        digest = content_hash(row.view(np.uint8))
        fd = self._claim(model, self.root / model / ROWS_FOLDER / digest)  # an empty marker: its name is all
        if fd is None:
            return Stored(digest, label, predicted, True)
        os.close(fd)
        table = self.root / model / TABLE_FILE
        if not table.exists():  # the header, written whole before any row: linked into place, or not at all
            staging = table.with_name(f".{TABLE_FILE}.{os.getpid()}.{digest}")
            staging.write_text(_csv_line([*features, "label", "hash"]))
            try:
                os.link(staging, table)
            except FileExistsError:  # another worker's header got there first
                pass
            finally:
                staging.unlink()
        # str of a float32: the shortest text that reads back as the same float32 (0.8, not 0.800000011920929)
        _append(table, _csv_line([*(str(v) for v in row), label, digest]))
        self._record(model, version, label, predicted, digest, request_id, f"{TABLE_FILE}#{digest}")
        return Stored(digest, label, predicted, False)

    def count(self, model: str) -> int:
        """Corrections stored for ``model``."""
        folder = self.root / model
        if not folder.is_dir():
            return 0
        return sum(1 for label in folder.iterdir() if label.is_dir() for _ in label.glob("*.png")) + sum(
            1 for _ in (folder / ROWS_FOLDER).glob("*"))


def _append(path: Path, text: str) -> None:
    """One write with O_APPEND: lines from several workers never interleave."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _csv_line(cells: Sequence[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(cells)
    return buffer.getvalue()


def _last_times(path: Path, count: int) -> list[float]:
    """The times of the last ``count`` records of a corrections log (fewer when it holds fewer)."""
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - count * _MAX_RECORD))
            lines = fh.read().splitlines()[-count:]
    except FileNotFoundError:
        return []
    times = []
    for line in lines:
        try:
            times.append(float(json.loads(line)["time"]))
        except (ValueError, KeyError, TypeError):  # a partial first line of the window
            continue
    return times


def _png(pixels: np.ndarray) -> bytes:
    image = pixels[0] if pixels.shape[0] == 1 else np.moveaxis(pixels, 0, -1)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()
