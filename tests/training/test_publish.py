"""The publishing rule, through real runs on the digits set: a worse run is kept under its run folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.contract import routing_store
from service.contract.manifest import MANIFEST_FILE, read_manifest
from training.config import ConfigError, TrainConfig
from training.publish import served_default_accuracy
from training.run import run


def _cfg(tmp_path: Path, **changes: object) -> TrainConfig:
    return TrainConfig(dataset="digits", arch="mlp", hidden=(32,), epochs=1, optimizer="adamw", lr=3e-3,
                       schedule="cosine", augment=False, name="digits-mlp", out=tmp_path / "models",
                       run_dir=tmp_path / "runs", **changes)


def _claim(folder: Path, accuracy: float) -> None:
    """Make the served default claim a test accuracy (the manifest is what the rule reads)."""
    path = folder / MANIFEST_FILE
    data = json.loads(path.read_text())
    data["metrics"]["test_accuracy"] = accuracy
    path.write_text(json.dumps(data))


def test_a_run_worse_than_the_served_default_is_kept_under_its_run_folder(tmp_path, caplog):
    repository = tmp_path / "models"
    first = run(_cfg(tmp_path))
    assert first == repository / "digits-mlp" / "1"  # nothing served yet: published
    _claim(first, 0.9999)
    kept = run(_cfg(tmp_path))
    assert kept.is_relative_to(tmp_path / "runs") and kept.name == "2"
    assert [p.name for p in (repository / "digits-mlp").iterdir() if not p.name.startswith(".")] == ["1"]
    assert read_manifest(kept).metrics["test_accuracy"] < 0.9999
    assert "not published" in caplog.text and "--publish always" in caplog.text
    forced = run(_cfg(tmp_path, publish="always"))
    assert forced == repository / "digits-mlp" / "2"


def test_a_run_at_least_as_good_is_published(tmp_path):
    first = run(_cfg(tmp_path))
    _claim(first, 0.01)
    assert run(_cfg(tmp_path)) == tmp_path / "models" / "digits-mlp" / "2"
    assert served_default_accuracy(tmp_path / "models", "digits-mlp")[0] == "2"


def test_nothing_to_compare_with(tmp_path):
    assert served_default_accuracy(tmp_path / "nowhere", "digits-mlp") is None
    with pytest.raises(ConfigError, match="publish"):
        _cfg(tmp_path, publish="sometimes")


def test_a_canary_is_published_whatever_its_accuracy_and_the_default_stays(tmp_path):
    repository = tmp_path / "models"
    first = run(_cfg(tmp_path, publish="canary:20"))  # nothing served yet: it is the default
    assert first == repository / "digits-mlp" / "1"
    assert not routing_store.routing_path(repository, "digits-mlp").exists()
    _claim(first, 0.9999)
    second = run(_cfg(tmp_path, publish="canary:20"))
    assert second == repository / "digits-mlp" / "2"  # worse, published all the same: as a canary
    written, history = routing_store.read(repository, "digits-mlp")
    assert written.default == "1" and (written.canary.version, written.canary.percent) == ("2", 20.0)
    assert [(h["action"], h["by"]) for h in history] == [("pin-default", "training"), ("canary", "training")]
    # What "better" compares with is the pinned default, not the newest version.
    assert served_default_accuracy(repository, "digits-mlp") == ("1", 0.9999)


@pytest.mark.parametrize("rule", ["canary", "canary:0", "canary:101", "canary:x", "always:10"])
def test_a_bad_canary_rule_is_a_config_error(tmp_path, rule):
    with pytest.raises(ConfigError, match="canary:P"):
        _cfg(tmp_path, publish=rule)
