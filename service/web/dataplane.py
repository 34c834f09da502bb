"""The data plane as the HTTP layer sees it: the served models, readiness and inference, all through the
model runtime (``service/runtime``). The HTTP layer hands it validated arrays and gets logits back; it
never touches tensors, and it raises typed ServiceErrors that ``web/error_handlers.py`` maps to statuses.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Any

import numpy as np

from service.config import ServiceConfig
from service.contract.manifest import REPORT_FILES, InputSpec, Manifest
from service.errors import ArtifactFileNotFound
from service.handoff.catalog import Catalog, ServedModel
from service.handoff.client import RuntimeClient
from service.metrics import Metrics
from service.web.confidence import describe
from service.web.exchange import finite
from service.web.explaining import Plan
from service.web.followups import Recorder, ThreadFollowups

# OIP model metadata's ``platform``: the kind of file the runtime actually serves (ServedModel.format).
PLATFORMS = {"torchscript": "pytorch_torchscript", "exported": "pytorch_exported_program",
             "aoti": "pytorch_aotinductor"}


class DataPlane:
    """One HTTP worker's view of the model runtimes."""

    def __init__(self, client: RuntimeClient, config: ServiceConfig, metrics: Metrics) -> None:
        self.client = client
        self.config = config
        self.metrics = metrics
        self.followups = ThreadFollowups(client, Recorder(metrics))  # copies for comparisons, after answers

    @property
    def catalog(self) -> Catalog:
        """The served models (503 while no runtime has ever answered)."""
        return self.client.catalog()

    @property
    def ready(self) -> bool:
        """True when every runtime answers, has its models warmed up, and is not draining; and the gRPC
        front end listens, when the launcher started one."""
        return self.client.ready() and (not self.config.grpc_probe or listening(self.config.grpc_probe))

    def model(self, name: str, version: str | None = None) -> ServedModel:
        """The model a request addresses (ModelNotFound when there is none)."""
        return self.catalog.get(name, version)

    def model_ready(self, model: ServedModel) -> bool:
        """Whether this model version takes requests now."""
        return self.catalog.serves(model.key) and self.ready

    def infer(self, model: ServedModel, inputs: np.ndarray, arrived: float) -> np.ndarray:
        """Logits [N, classes] for ``inputs`` [N, *shape]; the deadline counts from ``arrived``."""
        return finite(self.client.infer(model, inputs, arrived + self.config.request_timeout_s))

    def explain(self, model: ServedModel, ask: Plan, arrived: float) -> tuple[np.ndarray, np.ndarray]:
        """Attributions and logits of an explanation's rows; its own deadline counts from ``arrived``."""
        attributions, logits = self.client.explain(model, ask.rows, ask.targets, ask.method, ask.steps,
                                                   arrived + self.config.explain_timeout_s)
        return attributions, finite(logits)

    def report_files(self, model: ServedModel) -> list[str]:
        """The plots (PNG files) training wrote into this model's artifact folder: REPORT_FILES first."""
        found = sorted(p.name for p in self._folder(model).glob("*.png") if _plot(p))
        return [n for n in REPORT_FILES if n in found] + [n for n in found if n not in REPORT_FILES]

    def report_file(self, model: ServedModel, name: str) -> Path:
        """The path of one of those plots (ArtifactFileNotFound for any other file, or a missing one)."""
        path = self._folder(model) / name
        if not _plot(path):
            known = ", ".join(self.report_files(model)) or "none"
            raise ArtifactFileNotFound(f"model {model.key} has no file {name!r} (it has {known})")
        return path

    def _folder(self, model: ServedModel) -> Path:
        # The runtimes read the same folder: <model_dir>/<name>/<version>/, as the manifest's check demands.
        return (self.config.model_dir / model.manifest.name / model.manifest.version).absolute()

    def close(self) -> None:
        """Close the connections to the runtimes (and end the comparisons' thread)."""
        self.followups.close()
        self.client.close()

    def metadata(self, model: ServedModel) -> dict[str, Any]:
        """OIP model metadata: the real input and output tensors (-1: any batch size), task and labels."""
        return model_metadata(model, self.catalog, self.config)


def model_metadata(model: ServedModel, catalog: Catalog, config: ServiceConfig) -> dict[str, Any]:
    """OIP model metadata of ``model`` (every door's: the HTTP data plane's and gRPC's)."""
    m = model.manifest
    versions = sorted(catalog.models[m.name], key=int)
    # A request without a version gets the routing's default (the newest served one when there is none);
    # the policy and the routing say which are served.
    parameters = {"version": m.version, "default_version": catalog.default_version(m.name),
                  "version_policy": str(config.policy.rule(m.name)),
                  "architecture": m.architecture, "task": m.task,
                  "labels": list(m.labels), "device": model.device,
                  "test_accuracy": m.metrics.get("test_accuracy")}
    if m.task != "multiclass":
        parameters["threshold"] = m.threshold
    parameters |= describe(m)
    return {"name": m.name, "versions": versions, "platform": PLATFORMS[model.format],
            "inputs": [input_metadata(m.input)], "outputs": output_metadata(m), "parameters": parameters}


def listening(address: str, timeout_s: float = 0.5) -> bool:
    """Whether a server accepts connections at ``address`` (HOST:PORT or unix:PATH)."""
    target: str | tuple[str, int]
    if address.startswith("unix:"):
        family, target = socket.AF_UNIX, address[len("unix:"):]
    else:
        host, _, port = address.rpartition(":")
        family, target = (socket.AF_INET6 if ":" in host else socket.AF_INET), (host.strip("[]"), int(port))
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.settimeout(timeout_s)
        return probe.connect_ex(target) == 0


def input_metadata(spec: InputSpec) -> dict[str, Any]:
    """The one input tensor: pixels (FP32 in range, or UINT8) or a row of named features (FP32)."""
    if spec.kind == "features":
        return {"name": spec.name, "datatype": "FP32", "shape": [-1, *spec.shape],
                "parameters": {"datatypes": ["FP32"], "kind": "features", "features": list(spec.features),
                               "scaling": spec.scaling}}
    datatypes = ["FP32", "UINT8"] if spec.accepts_uint8 else ["FP32"]
    return {"name": spec.name, "datatype": "FP32", "shape": [-1, *spec.shape],
            "parameters": {"datatypes": datatypes, "range": list(spec.range or ())}}


def output_metadata(m: Manifest) -> list[dict[str, Any]]:
    """The output tensors of a model of ``m.task``, each saying what its numbers mean."""
    width = m.num_outputs
    activation = "softmax" if m.task == "multiclass" else "sigmoid"
    outputs = [
        {"name": "logits", "datatype": "FP32", "shape": [-1, width],
         "parameters": {"meaning": "the model's logits divided by the calibration temperature",
                        "temperature": m.calibration.temperature}},
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, width],
         "parameters": {"activation": activation, "labels": _scored_labels(m),
                        "temperature": m.calibration.temperature}},
        {"name": "label", "datatype": "BYTES", "shape": [-1],
         "parameters": {"meaning": _LABEL_MEANING[m.task]}},
    ]
    if m.task != "multiclass":
        outputs.append({"name": "decisions", "datatype": "BOOL", "shape": [-1, width],
                        "parameters": {"meaning": "probability >= threshold", "labels": _scored_labels(m)}})
    if m.outliers is not None:
        spec = m.outliers
        outputs += [{"name": "outlier", "datatype": "BOOL", "shape": [-1],
                     "parameters": {"meaning": f"{spec.meaning}: outlier_score >= {spec.threshold}"}},
                    {"name": "outlier_score", "datatype": "FP32", "shape": [-1],
                     "parameters": {"meaning": spec.score, "threshold": spec.threshold}}]
    return outputs


_LABEL_MEANING = {
    "multiclass": "the label with the highest probability",
    "binary": "the second label when its probability reaches the threshold, else the first",
    "multilabel": "every label whose probability reaches the threshold, joined by commas ('' for none)",
}


def _scored_labels(m: Manifest) -> list[str]:
    """The label each output column scores: for binary, only the positive (second) label."""
    return [m.labels[1]] if m.task == "binary" else list(m.labels)


_PLOT_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}\.png$")


def _plot(path: Path) -> bool:
    # Only PNGs, by a plain name, in the folder itself; not a link, which could point anywhere on the
    # machine (the model file's own rule, service/contract/manifest.py).
    return bool(_PLOT_NAME.match(path.name)) and path.is_file() and not path.is_symlink()
