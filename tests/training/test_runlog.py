"""RunLog: one JSON object per line, and TensorBoard events beside them when tensorboard is installed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.runlog import RunLog


def test_json_lines_and_history(tmp_path: Path) -> None:
    with RunLog(tmp_path / "run", tensorboard=False) as runlog:
        runlog.write({"epoch": 1, "train_loss": 0.5}, step=1)
        runlog.write({"split": "test", "test_accuracy": 0.99})
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == runlog.history
    assert runlog.history[1]["test_accuracy"] == 0.99
    assert not list((tmp_path / "run").glob("events.out.tfevents.*"))


def test_tensorboard_events(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    with RunLog(tmp_path, tensorboard=True) as runlog:
        runlog.write({"epoch": 1, "val_accuracy": 0.9}, step=1)
    events = list(tmp_path.glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0
