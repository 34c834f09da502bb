"""The artifact contract between training and serving (stdlib only).

An artifact is a folder ``<root>/<name>/<version>/`` holding ``model.pt`` (a scripted TorchScript module),
optionally the same model in other formats (:class:`ModelFormat`), and ``manifest.json`` (this module's
:class:`Manifest`). Training writes it, the service reads it; neither
guesses anything the manifest does not say. The schema is documented for humans in ``models/README.md``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.pt"
# The plots training draws into the artifact folder beside the model (training/reports.py), in the order a
# model's page shows them; any other PNG training adds there is shown after them.
REPORT_FILES = ("curves.png", "confusion.png", "mistakes.png")
# How a model file was made: torch.jit.script (model.pt), torch.export.save of an ExportedProgram, or an
# AOTInductor package (compiled C++ for one torch version, device kind and CPU instruction set).
FORMATS = ("torchscript", "exported", "aoti")

# Names travel in URLs (/v2/models/{name}) and in Prometheus labels: keep them boring.
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_VERSION_RE = re.compile(r"^[1-9][0-9]{0,8}$")
_FILE_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")  # no separators: the model file stays in its folder

# multiclass: one logit per label, softmax, exactly one label per example. binary: one logit, sigmoid, the
# second label when its probability reaches the threshold, else the first. multilabel: one logit per label,
# a sigmoid each, every label whose probability reaches the threshold (possibly none).
TASKS = ("multiclass", "binary", "multilabel")
INPUT_KINDS = ("image", "features")
# The "not a digit" score: one minus the highest calibrated probability (OutlierSpec).
OUTLIER_SCORE = "1 - max probability"


class ManifestError(ValueError):
    """A manifest or artifact folder that breaks the contract."""


@dataclass(frozen=True)
class InputSpec:
    """What one example looks like to the scripted module (the batch dimension is not included)."""

    shape: tuple[int, ...]  # channels first: (C, H, W); (F,) for a feature vector
    name: str = "input"
    dtype: str = "float32"
    # Float pixels are expected in this range; the module applies its own mean/std normalisation. None for
    # feature vectors: any finite value.
    range: tuple[float, float] | None = (0.0, 1.0)
    # The module also takes uint8 pixels 0..255 and scales them itself, so clients can send raw bytes.
    accepts_uint8: bool = True
    # "light": light strokes on a dark ground, as MNIST. Uploaded images are converted to match.
    ink: str = "light"
    # How uploaded images become inputs: "mnist" (crop to the ink, fit into 20x20, centre by mass in
    # 28x28, as the MNIST set was made) or "resize" (plain resize to H x W).
    image_preprocessing: str = "mnist"
    # "image": pixels [C, H, W]; "features": a vector of named numbers [F] (tabular data, the spiral).
    kind: str = "image"
    features: tuple[str, ...] = ()  # kind "features": the names, in the module's input order
    # kind "features": the standardisation learned on the training split, which the module applies itself
    # (so clients send raw values): {"method": "standardize", "mean": {name: m}, "std": {name: s}}.
    scaling: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        """Raise ManifestError when the fields contradict each other."""
        _check(len(self.shape) >= 1 and all(d > 0 for d in self.shape),
               f"input.shape {self.shape} must be positive dimensions")
        _check(self.dtype == "float32", f"input.dtype {self.dtype!r} must be 'float32'")
        _check(self.kind in INPUT_KINDS, f"input.kind {self.kind!r} must be one of {', '.join(INPUT_KINDS)}")
        _check(self.ink in ("light", "dark"), f"input.ink {self.ink!r} must be light or dark")
        _check(self.image_preprocessing in ("mnist", "resize"),
               f"input.image_preprocessing {self.image_preprocessing!r} must be mnist or resize")
        if self.kind == "image":
            _check(self.range is not None and len(self.range) == 2, "input.range must be [low, high]")
            _check(not self.features, "input.features is for kind 'features' only")
            return
        _check(len(self.shape) == 1 and len(self.features) == self.shape[0],
               f"input.shape {self.shape} must be ({len(self.features)},), one entry per feature")
        _check(len(set(self.features)) == len(self.features) and all(self.features),
               "input.features must be unique, non-empty names")
        _check(not self.accepts_uint8 and self.range is None,
               "a feature input takes float32 values only: accepts_uint8 false and range null")


@dataclass(frozen=True)
class OutputSpec:
    """What the module returns per example: unnormalised class scores."""

    shape: tuple[int, ...]  # (number of classes,)
    name: str = "logits"
    dtype: str = "float32"


@dataclass(frozen=True)
class ModelFormat:
    """One file of the artifact in one format, and what it was made with and for."""

    format: str  # one of FORMATS
    file: str
    sha256: str
    torch_version: str
    device: str  # the device kind it was compiled for: "cpu" or "cuda" (TorchScript and exported: any)
    cpu_isa: str | None = None  # aoti on cpu: the vector instruction set inductor compiled for
    cuda_arch: str | None = None  # aoti on cuda: the compute capability it was compiled for, e.g. "sm_90"
    max_batch: int | None = None  # exported and aoti: the largest batch the dynamic batch dimension takes
    compile_seconds: float | None = None

    def __post_init__(self) -> None:
        _check(self.format in FORMATS, f"format {self.format!r} must be one of {', '.join(FORMATS)}")
        _check(bool(_FILE_RE.match(self.file)) and self.file not in (".", ".."),
               f"{self.format} file {self.file!r} must be a plain file name inside the artifact folder")
        _check(bool(re.fullmatch(r"[0-9a-f]{64}", self.sha256)),
               f"{self.format} sha256 must be 64 hex digits")
        _check(self.device in ("any", "cpu", "cuda"),
               f"{self.format} device {self.device!r} must be any, cpu or cuda")
        _check(self.max_batch is None or self.max_batch >= 1, f"{self.format} max_batch must be >= 1")


@dataclass(frozen=True)
class Calibration:
    """How the service turns logits into probabilities: each logit is divided by ``temperature`` first.

    Temperature scaling never changes which label wins, only how sure the answer says it is. The default,
    1, is the model's own probabilities: artifacts made before calibration existed are served unchanged.
    """

    temperature: float = 1.0
    method: str = "temperature"
    fitted_on: str = ""  # e.g. "validation split"
    examples: int = 0  # how many examples it was fitted on
    val_loss_before: float | None = None
    val_loss_after: float | None = None

    def __post_init__(self) -> None:
        _check(self.method == "temperature", f"calibration.method {self.method!r} must be 'temperature'")
        _check(isinstance(self.temperature, (int, float)) and 0.0 < self.temperature < float("inf"),
               f"calibration.temperature {self.temperature!r} must be a positive number")


@dataclass(frozen=True)
class OutlierSpec:
    """A score for inputs unlike anything the model learned ("not a digit"), and where it flags them.

    ``score`` "1 - max probability": one minus the highest calibrated probability, in [0, 1]; an input is
    flagged when its score is at least ``threshold``. Multiclass image models only.
    """

    threshold: float
    score: str = OUTLIER_SCORE
    meaning: str = "not a digit"  # what a flagged input is, in words ("this does not look like a digit")
    flag_rate: float | None = None  # the share of validation examples the threshold was chosen to flag
    chosen_on: str = ""  # how the threshold was chosen, in words
    inputs: str = "image"

    def __post_init__(self) -> None:
        _check(self.score == OUTLIER_SCORE, f"outliers.score {self.score!r} must be {OUTLIER_SCORE!r}")
        _check(isinstance(self.threshold, (int, float)) and 0.0 < self.threshold <= 1.0,
               f"outliers.threshold {self.threshold!r} must be in (0, 1]")
        _check(self.inputs == "image", f"outliers.inputs {self.inputs!r} must be 'image'")


@dataclass(frozen=True)
class Manifest:
    """Everything the service needs to know about one artifact, and how it was made."""

    name: str
    version: str
    created: str  # ISO 8601, UTC
    architecture: str
    parameters: int
    input: InputSpec
    output: OutputSpec
    labels: tuple[str, ...]
    metrics: dict[str, Any]  # test_accuracy, test_loss, per_class_accuracy {label: accuracy}
    training: dict[str, Any]  # the full training configuration, as given
    dataset: dict[str, Any]  # name, source, train_examples, test_examples
    torch_version: str
    sha256: str  # of model.pt
    task: str = "multiclass"  # see TASKS; manifests written before tasks existed are multiclass
    threshold: float = 0.5  # binary and multilabel: the probability at which a label is predicted
    file: str = MODEL_FILE
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)  # free-form, never required by the service
    # Every format the folder holds, TorchScript included, in the exporter's order; empty in artifacts made
    # before there were other formats: then ``file`` alone (see ``model_formats``).
    formats: tuple[ModelFormat, ...] = ()
    # Both optional, for artifacts made before them: temperature 1 (the model's own probabilities) and no
    # "not a digit" score.
    calibration: Calibration = field(default_factory=Calibration)
    outliers: OutlierSpec | None = None

    def __post_init__(self) -> None:
        _check(self.schema_version == SCHEMA_VERSION,
               f"schema_version {self.schema_version} is not supported (expected {SCHEMA_VERSION})")
        _check(bool(_NAME_RE.match(self.name)),
               f"name {self.name!r} must match {_NAME_RE.pattern}")
        _check(bool(_VERSION_RE.match(self.version)),
               f"version {self.version!r} must be a positive integer")
        self.input.check()
        self._check_task()
        _check(len(set(self.labels)) == len(self.labels), "labels must be unique")
        _check(bool(re.fullmatch(r"[0-9a-f]{64}", self.sha256)), "sha256 must be 64 hex digits")
        _check(bool(_FILE_RE.match(self.file)) and self.file not in (".", ".."),
               f"file {self.file!r} must be a plain file name inside the artifact folder")
        scripted = [f for f in self.formats if f.format == "torchscript"]
        _check(not self.formats or [(f.file, f.sha256) for f in scripted] == [(self.file, self.sha256)],
               "formats must list the TorchScript file once, with the manifest's file and sha256")
        files = [f.file for f in self.formats]
        _check(len(set(files)) == len(files), "formats must not share a file")
        _check(self.outliers is None or (self.task == "multiclass" and self.input.kind == "image"),
               "outliers is for multiclass image models only")

    @property
    def model_formats(self) -> tuple[ModelFormat, ...]:
        """The formats present; an artifact from before formats were listed has its TorchScript file only."""
        return self.formats or (
            ModelFormat("torchscript", self.file, self.sha256, self.torch_version, "any"),)

    def _check_task(self) -> None:
        _check(self.task in TASKS, f"task {self.task!r} must be one of {', '.join(TASKS)}")
        width = 1 if self.task == "binary" else len(self.labels)
        _check(self.task != "binary" or len(self.labels) == 2,
               f"a binary model has two labels (negative, positive), not {len(self.labels)}")
        _check(len(self.output.shape) == 1 and self.output.shape[0] == width,
               f"output.shape {self.output.shape} must be ({width},) for a {self.task} model with "
               f"{len(self.labels)} labels")
        _check(isinstance(self.threshold, (int, float)) and 0.0 < self.threshold < 1.0,
               f"threshold {self.threshold!r} must be a probability strictly between 0 and 1")
        # The OIP "label" output joins a multi-label prediction's names with commas.
        _check(self.task != "multilabel" or not any("," in label for label in self.labels),
               "multilabel labels must not contain ','")

    @property
    def num_classes(self) -> int:
        """How many labels the model scores."""
        return len(self.labels)

    @property
    def num_outputs(self) -> int:
        """How many numbers the module returns per example (1 for binary, else one per label)."""
        return self.output.shape[0]

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form, keys in a stable order."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        """Build and validate a manifest from parsed JSON; raise ManifestError on any mismatch."""
        if not isinstance(data, dict):
            raise ManifestError("manifest must be a JSON object")
        try:
            known = {f.name for f in fields(cls)}
            unknown = set(data) - known
            _check(not unknown, f"unknown manifest keys: {sorted(unknown)}")
            values = dict(data)
            values["input"] = _spec(InputSpec, data["input"])
            values["output"] = _spec(OutputSpec, data["output"])
            values["labels"] = tuple(str(label) for label in data["labels"])
            values["version"] = str(data["version"])
            formats = data.get("formats", [])
            _check(isinstance(formats, list), "formats must be a list")
            values["formats"] = tuple(_spec(ModelFormat, f) for f in formats)
            if "calibration" in data:
                values["calibration"] = _spec(Calibration, data["calibration"])
            if data.get("outliers") is not None:
                values["outliers"] = _spec(OutlierSpec, data["outliers"])
            return cls(**values)
        except KeyError as exc:
            raise ManifestError(f"manifest is missing {exc.args[0]!r}") from None
        except TypeError as exc:
            raise ManifestError(f"manifest is malformed: {exc}") from None


def _spec(kind: type, data: Any) -> Any:
    if not isinstance(data, dict):
        raise ManifestError(f"{kind.__name__} must be an object")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return kind(**values)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ManifestError(message)


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    """The hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(manifest: Manifest, folder: Path) -> Path:
    """Write ``manifest.json`` into an artifact folder and return its path."""
    path = folder / MANIFEST_FILE
    path.write_text(json.dumps(manifest.to_dict(), indent=2) + "\n", encoding="utf-8")
    return path


def read_manifest(folder: Path) -> Manifest:
    """Read and validate an artifact folder's manifest; the folder must match its name and version."""
    path = folder / MANIFEST_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"{path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path} is not valid JSON: {exc}") from None
    manifest = Manifest.from_dict(data)
    if (folder.parent.name, folder.name) != (manifest.name, manifest.version):
        raise ManifestError(f"{folder} holds {manifest.name}/{manifest.version}; the folder must match")
    return manifest


def verify_checksum(manifest: Manifest, folder: Path) -> Path:
    """Return the model file's path once its sha256 matches the manifest's; raise ManifestError otherwise."""
    return verify_file(folder, manifest.file, manifest.sha256)


def verify_file(folder: Path, file: str, sha256: str) -> Path:
    """Return ``folder/file`` once it is a regular file whose sha256 is ``sha256``; raise ManifestError."""
    path = folder / file
    if path.is_symlink():  # a link could point anywhere on the machine
        raise ManifestError(f"{path} is a symbolic link; the model file must be a regular file in its folder")
    if not path.is_file():
        raise ManifestError(f"{path} does not exist")
    actual = sha256_file(path)
    if actual != sha256:
        raise ManifestError(f"{path} has sha256 {actual}, the manifest says {sha256}")
    return path


def artifact_dirs(root: Path) -> Iterator[Path]:
    """Every ``<root>/<name>/<version>/`` folder that holds a manifest, in name then version order.

    Hidden folders are skipped: export writes an artifact into ``<name>/.<version>-…/`` (manifest last)
    and renames it into place, and the service polls the folder while that happens."""
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        versions = [p for p in model_dir.iterdir()
                    if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST_FILE).exists()]
        yield from sorted(versions, key=lambda p: version_key(p.name))


def next_version(root: Path, name: str) -> str:
    """The version after the newest one of ``name`` under ``root`` ("1" when there is none)."""
    model_dir = root / name
    existing = [p.name for p in model_dir.iterdir()] if model_dir.is_dir() else []
    numbers = [int(v) for v in existing if _VERSION_RE.match(v)]
    return str(max(numbers, default=0) + 1)


def version_key(version: str) -> tuple[int, str]:
    """Sort key that orders numeric versions by value (2 before 10)."""
    return (int(version), "") if version.isdigit() else (-1, version)
