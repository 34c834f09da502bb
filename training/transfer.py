"""``--init-from models/NAME/VERSION``: start from one of our artifacts, with a new head for the new labels.

An artifact holds the serving form of its net (batch norm folded into the convolutions), so the eager net
is rebuilt from the manifest in that same folded form and loaded with the artifact's weights, input
normalisation included: the features keep seeing inputs scaled as they were trained on. The last linear
layer (the head) is replaced by a fresh one with the new task's outputs, unless the new run has the same
task and labels (a fine-tune, e.g. on corrections: training/corrections.py), which keeps it; ``--freeze
features`` trains only the head.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from service.contract.manifest import ManifestError, read_manifest, verify_checksum
from training.config import ConfigError
from training.export import PixelClassifier, load_scripted
from training.nets import fold_batchnorm, recorded_net, recorded_widths
from training.tabular import FeatureClassifier

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Start:
    """The model a transfer run begins with, and what the new manifest records about where it came from."""

    model: nn.Module  # PixelClassifier or FeatureClassifier, with a new head
    architecture: str
    origin: dict[str, Any]
    widths: tuple[int, ...] = ()  # the convolution widths the artifact's net was built with


def start_from(folder: Path, input_shape: tuple[int, ...], outputs: int, freeze: bool,
               labels: tuple[str, ...] = (), task: str = "multiclass") -> Start:
    """The artifact in ``folder`` as a trainable model with a fresh ``outputs``-wide head, or its own head
    when it was trained for the same ``task`` and ``labels``."""
    try:
        manifest = read_manifest(folder)
        path = verify_checksum(manifest, folder)
    except ManifestError as exc:
        raise ConfigError(f"--init-from {folder}: {exc}") from None
    if tuple(manifest.input.shape) != tuple(input_shape):
        raise ConfigError(f"--init-from {folder} takes inputs of shape {list(manifest.input.shape)}, this "
                          f"dataset's are {list(input_shape)}")
    net = fold_batchnorm(recorded_net(manifest.architecture, input_shape, manifest.num_outputs,
                                      manifest.training))
    width = input_shape[0]  # channels of an image, or features: one normalisation entry each
    wrapper_type = PixelClassifier if manifest.input.kind == "image" else FeatureClassifier
    model = wrapper_type(net, [0.0] * width, [1.0] * width)
    model.load_state_dict(load_scripted(path).state_dict())  # the buffers bring the source's normalisation
    same = (manifest.task, tuple(manifest.labels), manifest.num_outputs) == (task, tuple(labels), outputs)
    if not same:
        replace_head(net, outputs)
    if freeze:
        for layer in list(net.children())[:-1]:
            layer.requires_grad_(False)
    origin = {"artifact": str(folder), "name": manifest.name, "version": manifest.version,
              "sha256": manifest.sha256, "labels": list(manifest.labels), "frozen": "features" if freeze
              else "none", "head": "kept" if same else "new"}
    log.info("starting from %s/%s (%s), %s %d-output head%s", manifest.name, manifest.version,
             manifest.architecture, "its own" if same else "a new", outputs,
             ", features frozen" if freeze else "")
    return Start(model=model, architecture=manifest.architecture, origin=origin,
                 widths=recorded_widths(manifest.architecture, manifest.training))


def replace_head(net: nn.Module, outputs: int) -> None:
    """Swap the last layer of a Sequential net (a Linear: every --arch ends in one) for a fresh one."""
    if not isinstance(net, nn.Sequential) or not isinstance(net[-1], nn.Linear):
        raise ConfigError("--init-from needs a net that ends in a linear layer")
    net[-1] = nn.Linear(net[-1].in_features, outputs)
