"""Add the other formats to an artifact that has only its TorchScript file (made before there were others).

The eager net is rebuilt from the manifest's architecture and the scripted module's weights (batch norm is
already folded into them), checked against the scripted module, then exported as ``export()`` would. Each
format's accuracy on a test set is measured through the service's loader, not copied from the manifest.
The new files are written first; the manifest that lists them replaces the old one in one rename.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from service.contract.loading import load_format
from service.contract.manifest import MANIFEST_FILE, Manifest, ModelFormat, read_manifest, verify_checksum
from training.datasets import ImageSet
from training.export import ExportError, PixelClassifier, load_scripted
from training.formats import ParityError, check_parity, max_batch, parity_probes, write_formats
from training.nets import fold_batchnorm, recorded_net

log = logging.getLogger(__name__)


def eager_from_artifact(folder: Path, manifest: Manifest) -> nn.Module:
    """The eager module the scripted file was made from (batch norm folded), checked against that file."""
    scripted = load_scripted(verify_checksum(manifest, folder))
    try:
        net = recorded_net(manifest.architecture, manifest.input.shape, manifest.num_classes,
                           manifest.training)
    except ValueError as exc:
        raise ExportError(f"{folder}: cannot rebuild the eager net ({exc})") from None
    channels = manifest.input.shape[0]
    model = PixelClassifier(fold_batchnorm(net), [0.0] * channels, [1.0] * channels).eval()
    try:
        model.load_state_dict(scripted.state_dict())
    except RuntimeError as exc:
        raise ExportError(f"{folder}: the scripted weights do not fit a {manifest.architecture} net: {exc}") \
            from None
    probe = torch.randint(0, 256, (8, *manifest.input.shape), dtype=torch.uint8)
    try:
        check_parity(model, scripted, parity_probes(probe, 64), "scripted")
    except ParityError as exc:
        raise ExportError(f"{folder}: the rebuilt net does not match the scripted file: {exc}") from None
    return model


def add_formats(folder: Path, formats: Sequence[str], probe: torch.Tensor,
                test: ImageSet | None = None) -> dict[str, float]:
    """Write ``formats`` into ``folder`` and list them in its manifest; the test accuracy of every format."""
    manifest = read_manifest(folder)
    model = eager_from_artifact(folder, manifest)
    kept = [f for f in manifest.model_formats if f.format not in formats]
    probes = parity_probes(probe, max_batch(manifest.input.shape))
    added, skipped = write_formats(model, folder, probes, formats, manifest.input.shape)
    extra = {k: v for k, v in manifest.extra.items() if k not in ("formats_skipped", "format_test_accuracy")}
    updated = dataclasses.replace(manifest, formats=(*kept, *added),
                                  extra=extra | ({"formats_skipped": skipped} if skipped else {}))
    accuracy = {f.format: format_accuracy(folder, updated, f, test) for f in updated.formats} if test else {}
    if accuracy:
        updated = dataclasses.replace(updated, extra=updated.extra | {"format_test_accuracy": accuracy})
    staged = folder / f".{MANIFEST_FILE}.new"
    staged.write_text(json.dumps(updated.to_dict(), indent=2) + "\n", encoding="utf-8")
    os.replace(staged, folder / MANIFEST_FILE)
    log.info("%s/%s now lists %s", manifest.name, manifest.version,
             ", ".join(f.format for f in updated.formats))
    return accuracy


def format_accuracy(folder: Path, manifest: Manifest, entry: ModelFormat, test: ImageSet) -> float:
    """The share of ``test`` one format classifies right, loaded and warmed up as the service does."""
    served = load_format(folder, manifest, entry, torch.device("cpu"), half=False, warmup_batch=64)
    correct = 0
    for start in range(0, len(test), 500):
        logits = served.forward([test.images[start:start + 500].numpy()])
        correct += int((logits.argmax(1) == test.labels[start:start + 500].numpy()).sum())
    return round(correct / len(test), 6)
