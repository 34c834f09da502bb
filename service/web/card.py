"""A manifest in human form: the sections of a model's page (pure: a manifest in, titled rows out)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from service.contract.manifest import Manifest

_INK = {"light": "light strokes on a dark ground (uploads are inverted to match)",
        "dark": "dark strokes on a light ground (uploads are inverted to match)"}
_PREPROCESSING = {"mnist": "crop to the ink, fit into 20x20, centre by mass in the frame (as MNIST was made)",
                  "resize": "plain resize to the input size"}
# Manifest keys the sections below show; any other (a newer schema's) goes under "Other" as it is.
_SHOWN = {"name", "version", "created", "architecture", "parameters", "input", "output", "labels", "metrics",
          "training", "dataset", "torch_version", "sha256", "file", "schema_version", "extra", "task",
          "threshold", "calibration", "outliers"}
_TASK = {"multiclass": "multi-class (softmax: one label per example)",
         "binary": "binary (sigmoid: the second label when its probability reaches the threshold)",
         "multilabel": "multi-label (one sigmoid per label: every label that reaches the threshold)"}
_EXTRA_SHOWN = {"train_seconds", "epochs_run", "device"}


@dataclass(frozen=True)
class Section:
    """One titled table of the page: (field, value) rows."""

    title: str
    rows: list[tuple[str, str]] = field(default_factory=list)


def sections(manifest: Manifest) -> list[Section]:
    """The manifest as the model page shows it: model, input, results, training, settings, other."""
    data = manifest.to_dict()
    extra = data["extra"]
    return [s for s in (_model(data), _input(data), _results(data), _confidence(data), _training(data, extra),
                        Section("Training settings", [(k, _value(v)) for k, v in data["training"].items()]),
                        _other(data, extra)) if s.rows]


def _model(data: dict[str, Any]) -> Section:
    task = [("Task", _TASK.get(data["task"], data["task"]))]
    if data["task"] != "multiclass":
        task.append(("Decision threshold", _value(data["threshold"])))
    return Section("Model", [
        ("Architecture", data["architecture"]), ("Parameters", f"{data['parameters']:,}"), *task,
        ("Labels", ", ".join(data["labels"])), ("Created", data["created"]),
        ("Torch version", data["torch_version"]), ("File", data["file"]), ("SHA-256", data["sha256"])])


def _input(data: dict[str, Any]) -> Section:
    spec = data["input"]
    output = ("Output", f"{data['output']['name']}: {data['output']['shape'][0]} scores")
    if spec["kind"] == "features":
        scaling = spec["scaling"].get("method", "none") if isinstance(spec["scaling"], dict) else "none"
        return Section("Input", [
            ("Features", f"{len(spec['features'])}: " + ", ".join(spec["features"])),
            ("Values", f"{spec['dtype']}, raw (the model applies its own scaling: {scaling})"), output])
    low, high = spec["range"]
    pixels = f"{spec['dtype']} in [{low:g}, {high:g}]"
    if spec["accepts_uint8"]:
        pixels += ", or uint8 0..255"
    return Section("Input", [
        ("Shape", " x ".join(str(d) for d in spec["shape"]) + " (channels, height, width)"),
        ("Pixels", pixels), ("Ink", _INK.get(spec["ink"], spec["ink"])),
        ("Image preprocessing", _PREPROCESSING.get(spec["image_preprocessing"], spec["image_preprocessing"])),
        output])


def _results(data: dict[str, Any]) -> Section:
    metrics = dict(data["metrics"])
    per_class = metrics.pop("per_class_accuracy", None) or {}
    rows = [(_title(k), _percent(v) if k.endswith("accuracy") else _value(v)) for k, v in metrics.items()]
    rows += [(f"Accuracy, class {label}", _percent(v)) for label, v in per_class.items()]
    return Section("Test results", rows)


def _confidence(data: dict[str, Any]) -> Section:
    """How the probabilities are calibrated and when an input is flagged (absent from older manifests)."""
    calibration, outliers = data.get("calibration") or {}, data.get("outliers")
    rows = []
    if calibration.get("fitted_on"):
        fitted = f"{calibration['fitted_on']} ({calibration.get('examples', 0):,} examples)"
        rows.append(("Calibration", f"temperature {calibration['temperature']:g}, fitted on the {fitted}"))
    if outliers:
        rows += [("Flagged as", outliers["meaning"]),
                 ("When", f"{outliers['score']} >= {outliers['threshold']:g}"),
                 ("Threshold chosen on", outliers["chosen_on"])]
    return Section("Confidence", rows)


def _training(data: dict[str, Any], extra: dict[str, Any]) -> Section:
    rows = []
    if isinstance(extra.get("train_seconds"), int | float):
        rows.append(("Training time", duration(extra["train_seconds"])))
    if "epochs_run" in extra:
        rows.append(("Epochs run", _value(extra["epochs_run"])))
    if "device" in extra:
        rows.append(("Trained on", _value(extra["device"])))
    rows += [(f"Dataset {_title(k).lower()}", _value(v)) for k, v in data["dataset"].items()]
    return Section("Training", rows)


def _other(data: dict[str, Any], extra: dict[str, Any]) -> Section:
    rows = [(_title(k), _value(v)) for k, v in data.items() if k not in _SHOWN]
    rows += [(_title(k), _value(v)) for k, v in extra.items() if k not in _EXTRA_SHOWN]
    return Section("Other", rows)


def duration(seconds: float) -> str:
    """Seconds for people: "42.0 s", "2 min 2 s", "1 h 05 min"."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def _percent(value: Any) -> str:
    return f"{value * 100:.2f} %" if isinstance(value, int | float) else _value(value)


def _title(key: str) -> str:
    return key.replace("_", " ").capitalize()


def _value(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(_value(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_value(v)}" for k, v in value.items())
    return str(value)
