"""The feedback folder's layout, shared by the service that writes corrections (service/web/corrections.py)
and the training that reads them (training/corrections.py): under ``<TRAINSERVE_FEEDBACK_DIR>/<model>/``,
an image correction is ``<true label>/<content hash>.png``; a table model's is a row of ``TABLE_FILE`` (its
feature columns, then ``label`` and ``hash``), with an empty file named by its hash in ``ROWS_FOLDER`` (the
duplicate check); every correction is a line of ``LOG_FILE`` (hash, labels, version, request id, time)."""

from __future__ import annotations

TABLE_FILE = "corrections.csv"
ROWS_FOLDER = "rows"
LOG_FILE = "corrections.jsonl"
