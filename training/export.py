"""Export a trained net as a TorchScript artifact, with the other formats asked for (training/formats.py)
and its manifest, atomically.

This module and ``service/contract/loading.py`` are the only places that call ``torch.jit``: it is
deprecated in current torch and warns, and users asked for TorchScript, so every call runs inside the
contract's ``quiet_jit``.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from service.contract.loading import quiet_jit
from service.contract.manifest import (
    MODEL_FILE,
    Calibration,
    InputSpec,
    Manifest,
    ModelFormat,
    OutlierSpec,
    OutputSpec,
    next_version,
    sha256_file,
    write_manifest,
)
from training.formats import ParityError, check_parity, max_batch, parity_probes, write_formats
from training.nets import fold_batchnorm

log = logging.getLogger(__name__)


class ExportError(RuntimeError):
    """The scripted module does not behave like the eager one, or the artifact cannot be written."""


class PixelClassifier(nn.Module):
    """Wraps a net so that it takes raw pixels: uint8 0..255 or float 0..1, normalised inside."""

    if TYPE_CHECKING:  # the buffers, for mypy only: TorchScript cannot parse this module's string annotations
        mean: torch.Tensor
        inv_std: torch.Tensor

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.net = net
        channels = len(mean)
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, channels, 1, 1))
        inv_std = 1.0 / torch.tensor(list(std), dtype=torch.float32)
        self.register_buffer("inv_std", inv_std.view(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raw_bytes = x.dtype == torch.uint8
        x = x.to(self.mean.dtype)
        if raw_bytes:
            x = x * (1.0 / 255.0)
        return self.net((x - self.mean) * self.inv_std)


@dataclass(frozen=True)
class ArtifactInfo:
    """What the manifest says beyond what export measures itself."""

    name: str
    architecture: str
    labels: tuple[str, ...]
    input_shape: tuple[int, ...]  # (C, H, W)
    metrics: dict[str, Any]
    training: dict[str, Any]
    dataset: dict[str, Any]
    version: str | None = None  # None: the next free version under the output folder
    ink: str = "light"
    image_preprocessing: str = "mnist"
    extra: dict[str, Any] = field(default_factory=dict)
    task: str = "multiclass"  # multiclass | binary | multilabel (service/contract/manifest.py TASKS)
    threshold: float = 0.5
    # Feature-vector models: the names in input order, and the standardisation the module applies inside.
    features: tuple[str, ...] = ()
    scaling: dict[str, Any] = field(default_factory=dict)
    # The manifest's calibration and outlier entries (training/trust.py); empty: temperature 1, no score.
    calibration: dict[str, Any] = field(default_factory=dict)
    outliers: dict[str, Any] | None = None


def export(
    model: nn.Module,
    info: ArtifactInfo,
    out_root: Path,
    probe: torch.Tensor,
    reports: Sequence[Path] = (),
    formats: Sequence[str] = (),
) -> Path:
    """Script ``model``, write the other ``formats`` (exported, aoti) beside it, check each against the eager
    model on batches made from ``probe``, and publish the artifact folder.

    The artifact is written to a temporary folder beside its destination and renamed into
    ``out_root/<name>/<version>/`` only once the reloaded scripted module matches the eager one, so a reader
    never sees half an artifact. Another format that cannot be made or does not match is left out (logged,
    and named in the manifest's ``extra.formats_skipped``). Returns the published folder.
    """
    model = model.to("cpu").eval()
    probe = probe.to("cpu")
    model_dir = out_root / info.name
    model_dir.mkdir(parents=True, exist_ok=True)
    version = info.version or next_version(out_root, info.name)
    final = model_dir / version
    if final.exists():
        raise ExportError(f"{final} already exists; choose another --version")

    staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=model_dir))
    try:
        staging.chmod(0o755)  # mkdtemp makes it owner-only; the service may run as another user
        model_path = staging / MODEL_FILE
        with quiet_jit():
            scripted = torch.jit.script(inference_form(model))
            torch.jit.save(scripted, str(model_path))
            reloaded = torch.jit.load(str(model_path), map_location="cpu")
        probes = parity_probes(probe, max_batch(info.input_shape))
        try:
            check_parity(model, reloaded, probes, "scripted")
        except ParityError as exc:
            raise ExportError(str(exc)) from None
        entries = [ModelFormat("torchscript", MODEL_FILE, sha256_file(model_path), torch.__version__, "any")]
        others, skipped = write_formats(model, staging, probes, formats, info.input_shape)
        for report in reports:
            shutil.copy2(report, staging / report.name)
        manifest = _manifest(model, info, version, [*entries, *others], skipped)
        write_manifest(manifest, staging)
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("exported %s/%s to %s", info.name, version, final)
    return final


def inference_form(model: nn.Module) -> nn.Module:
    """A copy of ``model`` made for serving: batch norm folded into the convolutions, channels-last weights.

    Same outputs (the parity check compares the scripted form with the unchanged eager model), fewer
    passes over memory per image on a CPU (docs/benchmarks.md, "Model").
    """
    return fold_batchnorm(model).to(memory_format=torch.channels_last)


def load_scripted(path: Path) -> torch.jit.ScriptModule:
    """Load a scripted model file onto the CPU, in eval mode (benchmarks and checks use this)."""
    with quiet_jit():
        module = torch.jit.load(str(path), map_location="cpu")
    return module.eval()


def optimized_for_inference(module: torch.jit.ScriptModule) -> torch.jit.ScriptModule:
    """``module`` frozen and converted by ``torch.jit.optimize_for_inference`` (oneDNN layouts), a new module.

    For benchmarks that compare it with what the service runs; the service does not use it (slower at
    batch 1 on CPU).
    """
    with quiet_jit():
        return torch.jit.optimize_for_inference(module)


def _manifest(model: nn.Module, info: ArtifactInfo, version: str, entries: Sequence[ModelFormat],
              skipped: dict[str, str]) -> Manifest:
    return Manifest(
        name=info.name,
        version=version,
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        architecture=info.architecture,
        parameters=sum(p.numel() for p in model.parameters() if p.requires_grad),
        input=_input_spec(info),
        output=OutputSpec(shape=(1 if info.task == "binary" else len(info.labels),)),
        labels=tuple(info.labels),
        metrics=info.metrics,
        training=info.training,
        dataset=info.dataset,
        torch_version=torch.__version__,
        sha256=entries[0].sha256,
        extra=info.extra | ({"formats_skipped": skipped} if skipped else {}),
        formats=tuple(entries),
        task=info.task,
        threshold=info.threshold,
        calibration=Calibration(**info.calibration),
        outliers=OutlierSpec(**info.outliers) if info.outliers else None,
    )


def _input_spec(info: ArtifactInfo) -> InputSpec:
    if info.features:  # raw feature values, any finite float32; the module standardises them
        return InputSpec(shape=tuple(info.input_shape), range=None, accepts_uint8=False, kind="features",
                         features=tuple(info.features), scaling=info.scaling, image_preprocessing="resize")
    return InputSpec(shape=tuple(info.input_shape), ink=info.ink,
                     image_preprocessing=info.image_preprocessing)
