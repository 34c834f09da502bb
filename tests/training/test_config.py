"""TrainConfig: defaults that work, settings that cannot work rejected with the setting named."""

from __future__ import annotations

import json
from dataclasses import FrozenInstanceError, replace
from pathlib import Path

import pytest

from training.config import ConfigError, TrainConfig, default_name


def test_defaults_are_valid_and_frozen() -> None:
    cfg = TrainConfig()
    assert (cfg.dataset, cfg.arch, cfg.schedule, cfg.name) == ("mnist", "cnn4", "onecycle", "mnist-cnn")
    with pytest.raises(FrozenInstanceError):
        cfg.epochs = 3  # type: ignore[misc]


@pytest.mark.parametrize(("field", "value", "named"), [
    ("arch", "vgg", "arch"),
    ("dataset", "cifar10", "dataset"),
    ("dataset", "folder:", "folder:PATH"),
    ("optimizer", "rmsprop", "optimizer"),
    ("schedule", "linear", "schedule"),
    ("epochs", 0, "epochs"),
    ("lr", -0.1, "lr"),
    ("val_fraction", 1.0, "val_fraction"),
    ("hidden", (), "hidden"),
    ("device", "gpu", "device"),
    ("clean_epochs", -1, "clean_epochs"),
    ("name", "Has Spaces", "name"),
    ("version", "v2", "version"),
    ("ema", 1.0, "ema"),
    ("ema", -0.1, "ema"),
    ("widths", (16, 32, 64), "cnn4 takes 4"),
    ("widths", (16, 32, 0, 96), "positive"),
])
def test_bad_settings_name_the_setting(field: str, value: object, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        replace(TrainConfig(), **{field: value})


def test_widths_belong_to_the_compact_nets_only() -> None:
    assert TrainConfig(arch="cnn", widths=(8, 16, 32)).widths == (8, 16, 32)
    with pytest.raises(ConfigError, match="cnn, cnn4 only"):
        TrainConfig(arch="resnet", widths=(8, 16, 32))


def test_to_dict_is_plain_json() -> None:
    cfg = TrainConfig(data_dir=Path("/data"), hidden=(64, 32), dataset="folder:/tmp/x")
    data = json.loads(json.dumps(cfg.to_dict()))
    assert data["data_dir"] == "/data" and data["hidden"] == [64, 32] and data["dataset"] == "folder:/tmp/x"


def test_default_name_is_a_valid_artifact_name() -> None:
    assert default_name("fashion-mnist", "resnet") == "fashion-mnist-resnet"
    name = default_name("folder:/home/me/My Pets", "cnn")
    assert name == "my-pets-cnn"
    TrainConfig(name=name)
