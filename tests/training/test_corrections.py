"""``--extra-data``: corrections read exactly as the service stores them (its own FeedbackStore writes them
here), held out by content hash the same way however many come later, trained on with their weight, judged
by the publishing rule and recorded in the manifest."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from service.contract.manifest import read_manifest
from service.web.corrections import FeedbackStore
from training.config import ConfigError, TrainConfig
from training.corrections import load_corrections, with_corrections
from training.data import load_data
from training.datasets import DataError
from training.publish import HeldOut, publish_root
from training.run import run

CLASSES = tuple(str(d) for d in range(10))


def _store(root: Path, count: int, seed: int = 0, shape: tuple[int, ...] = (1, 8, 8)) -> list[str]:
    """``count`` random corrections of model digits-mlp, stored by the service's own code; their hashes."""
    rng = np.random.default_rng(seed)
    store = FeedbackStore(root, 10_000)
    return [store.add("digits-mlp", "1", str(i % 10), "0", rng.integers(0, 256, shape, dtype=np.uint8),
                      "").hash for i in range(count)]


def test_corrections_are_read_as_the_service_stores_them_and_held_out_by_hash(tmp_path):
    first = _store(tmp_path, 40)
    fixes = load_corrections(tmp_path, "digits-mlp", CLASSES, (1, 8, 8), holdout=0.25, share=0.0,
                             train_size=1)
    assert sorted(fixes.trained_hashes + fixes.held_out_hashes) == sorted(first)
    assert 0 < len(fixes.held_out) < 40 and len(fixes.trained) == len(fixes.trained_hashes)
    assert all(int(h[:8], 16) < 0.25 * 16 ** 8 for h in fixes.held_out_hashes)
    assert fixes.identity()["corrected_versions"] == {"1": 40}
    # Each comes back with the label it was stored under.
    stored_as = {h: i % 10 for i, h in enumerate(first)}
    assert fixes.trained.labels.tolist() == [stored_as[h] for h in fixes.trained_hashes]
    assert fixes.held_out.labels.tolist() == [stored_as[h] for h in fixes.held_out_hashes]
    # More corrections later: every one held out before is held out again, none trained on becomes held out.
    _store(tmp_path, 30, seed=1)
    later = load_corrections(tmp_path / "digits-mlp", "digits-mlp", CLASSES, (1, 8, 8), holdout=0.25,
                             share=0.1, train_size=1000)
    assert set(fixes.held_out_hashes) <= set(later.held_out_hashes)
    assert set(fixes.trained_hashes) <= set(later.trained_hashes)
    # Repeated to make up a tenth of a 1,000-example epoch: each correction as often as that takes.
    assert later.weight == -(-100 // len(later.trained)) and fixes.weight == 1
    data = load_data("digits", Path("data"), download=False, val_fraction=0.1)
    joined = with_corrections(data.train, later)
    assert len(joined) == len(data.train) + later.weight * len(later.trained)
    assert torch.equal(joined.images[-len(later.trained):], later.trained.images)


def test_a_single_correction_is_trained_on_and_two_hold_one_out(tmp_path):
    _store(tmp_path, 1)
    alone = load_corrections(tmp_path, "digits-mlp", CLASSES, (1, 8, 8), holdout=0.25, share=0.01,
                             train_size=57_000)
    assert (len(alone.trained), len(alone.held_out), alone.weight) == (1, 0, 570)
    _store(tmp_path, 2, seed=5)
    three = load_corrections(tmp_path, "digits-mlp", CLASSES, (1, 8, 8), holdout=0.0, share=0.01,
                             train_size=100)
    assert len(three.held_out) == 0  # --extra-holdout 0: every one trained on


@pytest.mark.parametrize("problem", ["missing", "label", "shape", "empty"])
def test_a_folder_training_cannot_use_is_refused_with_what_to_do(tmp_path, problem):
    if problem == "label":
        _store(tmp_path, 2)
        (tmp_path / "digits-mlp" / "cat").mkdir()
    elif problem == "shape":
        _store(tmp_path, 2, shape=(1, 28, 28))
    elif problem == "empty":
        (tmp_path / "digits-mlp" / "3").mkdir(parents=True)
    root = tmp_path / "nowhere" if problem == "missing" else tmp_path
    with pytest.raises(DataError) as error:
        load_corrections(root, "digits-mlp", CLASSES, (1, 8, 8), holdout=0.25, share=0.01, train_size=100)
    expected = {"missing": "TRAINSERVE_FEEDBACK_DIR", "label": "cat are not labels", "shape": "[1, 28, 28]",
                "empty": "no corrections"}[problem]
    assert expected in str(error.value)


def test_extra_data_is_for_multiclass_models():
    with pytest.raises(ConfigError, match="multi-class models"):
        TrainConfig(task="binary", positive=("7",), extra_data=Path("feedback"))
    with pytest.raises(ConfigError, match="extra_share"):
        TrainConfig(extra_share=0.5)


def _cfg(tmp_path: Path, **changes: object) -> TrainConfig:
    return TrainConfig(dataset="digits", arch="mlp", hidden=(32,), epochs=1, optimizer="adamw", lr=3e-3,
                       schedule="cosine", augment=False, name="digits-mlp", out=tmp_path / "models",
                       run_dir=tmp_path / "runs", formats=(), **changes)


def test_a_fine_tune_on_corrections_keeps_the_head_and_records_what_it_saw(tmp_path):
    first = run(_cfg(tmp_path))
    hashes = _store(tmp_path / "feedback", 12)
    tuned = run(_cfg(tmp_path, init_from=first, extra_data=tmp_path / "feedback", extra_share=0.05,
                     publish="always"))
    manifest = read_manifest(tuned)
    seen = json.loads((tuned / "manifest.json").read_text())["dataset"]["corrections"]
    assert sorted(seen["trained"] + seen["held_out"]) == sorted(hashes)
    assert seen["default_version"] == "1" and 0 <= seen["default_held_out_accuracy"] <= 1
    assert manifest.metrics["corrections_accuracy"] == seen["held_out_accuracy"]
    assert manifest.extra["init_from"]["head"] == "kept"
    plain = load_data("digits", Path("data"), download=False, val_fraction=0.05).train
    assert seen["weight"] == -(-len(plain) * 5 // (100 * len(seen["trained"])))
    assert manifest.dataset["train_examples"] == len(plain) + seen["weight"] * len(seen["trained"])


def test_the_publishing_rule_weighs_held_out_corrections_and_the_tolerance(tmp_path, caplog):
    served = run(_cfg(tmp_path))
    accuracy = read_manifest(served).metrics["test_accuracy"]
    repository, kept = tmp_path / "models", tmp_path / "kept"
    assert publish_root(repository, kept, "digits-mlp", accuracy, "better") == repository
    assert publish_root(repository, kept, "digits-mlp", accuracy - 0.004, "better") == kept
    lenient = publish_root(repository, kept, "digits-mlp", accuracy - 0.004, "better", tolerance=0.5)
    assert lenient == repository
    worse = HeldOut(examples=4, accuracy=0.5, default_accuracy=0.75, default_version="1")
    assert publish_root(repository, kept, "digits-mlp", accuracy, "better", held_out=worse) == kept
    assert "held-out corrections its accuracy 50.0 % is below the 75.0 % of version 1" in caplog.text
    same = HeldOut(examples=4, accuracy=0.75, default_accuracy=0.75, default_version="1")
    assert publish_root(repository, kept, "digits-mlp", accuracy, "better", held_out=same) == repository
    assert publish_root(repository, kept, "digits-mlp", accuracy, "always", held_out=worse) == repository


def test_a_table_models_corrections_are_read_from_the_services_csv_and_trained_on(tmp_path):
    spiral = TrainConfig(dataset="spiral", arch="mlp", hidden=(16,), epochs=1, optimizer="adam", lr=3e-3,
                         name="spiral-mlp", out=tmp_path / "models", run_dir=tmp_path / "runs", formats=())
    first = run(spiral)
    classes = read_manifest(first).labels
    store, rng = FeedbackStore(tmp_path / "feedback", 100), np.random.default_rng(0)
    stored = [store.add_row("spiral-mlp", "1", classes[i % 3], classes[0], rng.normal(size=2), ("x", "y"), "")
              for i in range(12)]
    again = store.add_row("spiral-mlp", "1", classes[0], classes[0], np.array([0.5, 0.5]), ("x", "y"), "")
    assert not again.duplicate
    assert store.add_row("spiral-mlp", "1", classes[1], classes[0], np.array([0.5, 0.5]), ("x", "y"),
                         "").duplicate
    fixes = load_corrections(tmp_path / "feedback", "spiral-mlp", tuple(classes), (2,), holdout=0.25,
                             share=0.01, train_size=1000, features=("x", "y"))
    hashes = sorted([item.hash for item in stored] + [again.hash])
    assert sorted(fixes.trained_hashes + fixes.held_out_hashes) == hashes
    assert fixes.trained.images.dtype == torch.float32 and fixes.trained.images.shape[1] == 2
    tuned = run(dataclasses.replace(spiral, init_from=first, extra_data=tmp_path / "feedback",
                                    publish="always"))
    seen = read_manifest(tuned).dataset["corrections"]
    assert len(seen["trained"]) + len(seen["held_out"]) == 13
