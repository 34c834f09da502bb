"""Loading an artifact: verify, load and warm up a version in the format the operator asks for
(TRAINSERVE_MODEL_FORMAT) or the next one its manifest lists that runs here. The runtime serves what this
returns; training measures its exports through it.

``torch.jit`` is deprecated in current torch and warns; TorchScript is the format users asked for, so every
call to it (here and in ``training/export.py``) runs inside ``quiet_jit``, which silences that warning and
nothing else.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from service.contract import formats
from service.contract.manifest import Manifest, ManifestError, ModelFormat, read_manifest, verify_file

log = logging.getLogger(__name__)


class LoadingError(RuntimeError):
    """The service cannot serve anything: no usable device or no loadable artifact."""


@contextmanager
def quiet_jit() -> Iterator[None]:
    """Silence torch.jit's deprecation warning for the calls inside, and nothing else."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.jit.*")
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit.*")
        yield


def resolve_device(device: str, half: bool) -> torch.device:
    """Turn the device setting into a torch.device that exists here; raise LoadingError otherwise."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    resolved = torch.device(device)
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise LoadingError(f"TRAINSERVE_DEVICE={device} but torch sees no CUDA device")
        if (resolved.index or 0) >= torch.cuda.device_count():
            raise LoadingError(f"TRAINSERVE_DEVICE={device} but torch sees "
                                f"{torch.cuda.device_count()} CUDA devices")
    elif half:
        raise LoadingError(f"TRAINSERVE_HALF=1 needs a CUDA device, not {device}: unset TRAINSERVE_HALF")
    return resolved


def merge_inputs(parts: Sequence[np.ndarray], example_shape: Sequence[int]) -> np.ndarray:
    """One contiguous batch from requests' arrays: uint8 stays uint8 (the module scales it) unless mixed."""
    if all(p.dtype == np.uint8 for p in parts) or all(p.dtype == np.float32 for p in parts):
        batch = parts[0] if len(parts) == 1 else np.concatenate(parts)
    else:
        batch = np.concatenate([p.astype(np.float32) * np.float32(1 / 255) if p.dtype == np.uint8 else p
                                for p in parts])
    if batch.shape[1:] != tuple(example_shape):
        raise ValueError(f"batch has examples of shape {batch.shape[1:]}, "
                         f"the model takes {tuple(example_shape)}")
    # torch.from_numpy needs a writable, contiguous array (a read-only one warns).
    return batch if batch.flags.writeable and batch.flags.c_contiguous else np.array(batch, order="C")


@dataclass
class LoadedModel:
    """One verified, warmed-up artifact on its device; ``forward`` is what the runtime calls."""

    manifest: Manifest
    module: formats.Forward  # a frozen ScriptModule, or an exported / compiled program (formats.py)
    device: torch.device
    half: bool
    load_seconds: float = 0.0
    format: str = "torchscript"  # the one of manifest.model_formats being served
    _pinned: torch.Tensor | None = field(default=None, repr=False)

    @property
    def key(self) -> str:
        """``name/version``."""
        return f"{self.manifest.name}/{self.manifest.version}"

    def forward(self, parts: Sequence[np.ndarray]) -> np.ndarray:
        """Logits for the concatenated parts, as a float32 array [N, num_outputs]."""
        batch = merge_inputs(parts, self.manifest.input.shape)
        with torch.inference_mode():
            x = self._to_device(torch.from_numpy(batch))
            logits = self.module(x)
            return logits.float().cpu().numpy()

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        if self.device.type != "cuda":
            return x
        # Stage in page-locked memory so the host-to-device copy can run asynchronously; one buffer per
        # model, grown on demand (only the runtime's loop calls forward).
        if self._pinned is None or self._pinned.dtype != x.dtype or self._pinned.numel() < x.numel():
            self._pinned = torch.empty(max(x.numel(), 1 << 16), dtype=x.dtype).pin_memory()
        staged = self._pinned[: x.numel()].view(x.shape)
        staged.copy_(x)
        x = staged.to(self.device, non_blocking=True)
        return x.half() if self.half and x.is_floating_point() else x


def load_model(folder: Path, device: torch.device, half: bool, warmup_batch: int,
               model_format: str = "auto") -> LoadedModel:
    """Check the manifest and every file's checksum, then load and warm up the first of its formats that
    can run here.

    ``model_format`` (auto, torchscript, exported or aoti) is tried first (auto: the fastest on this device,
    formats.AUTO_ORDER), then the other formats in the manifest's order. Only a format that cannot run here
    (formats.FormatRefused: another torch, device or CPU) passes to the next one, with a log line; a file that
    fails its checksum, or one that passes and then fails to load or to warm up, is a broken artifact:
    ArtifactError refuses the version whole (an artifact is untrusted input).
    """
    started = time.perf_counter()
    manifest = read_manifest(folder)
    entries = manifest.model_formats
    paths = verify_files(folder, entries)
    if model_format != "auto" and model_format not in {e.format for e in entries}:
        log.warning("%s/%s has no %s file; trying %s", manifest.name, manifest.version, model_format,
                    ", ".join(e.format for e in entries))
    refusals = []
    candidates = formats.candidates(entries, model_format, device.type)
    for position, entry in enumerate(candidates, 1):
        try:
            formats.check_runnable(entry, paths[entry.file], device, half, warmup_batch)
        except formats.FormatRefused as exc:
            refusals.append(f"{entry.format}: {exc}")
            then = f"trying {candidates[position].format} next" if position < len(candidates) else "none left"
            log.warning("%s/%s: not serving its %s file %s: %s; %s", manifest.name, manifest.version,
                        entry.format, entry.file, exc, then)
            continue
        model = _served(paths[entry.file], manifest, entry, device, half, warmup_batch)
        model.load_seconds = time.perf_counter() - started
        log.info("loaded %s on %s in %.2fs as %s from %s (%s, %d parameters)", model.key, device,
                 model.load_seconds, entry.format, entry.file, manifest.architecture, manifest.parameters)
        return model
    raise ManifestError(f"{folder}: no format of the model can be served here ({'; '.join(refusals)})")


def verify_files(folder: Path, entries: Sequence[ModelFormat]) -> dict[str, Path]:
    """Every format file's path once each has its manifest's sha256, before any is loaded: one that does
    not (or is missing, or a link) refuses the version whole (ManifestError), as docs/operations.md says."""
    return {entry.file: verify_file(folder, entry.file, entry.sha256) for entry in entries}


class ArtifactError(ManifestError):
    """A model file that passed its checksum and then failed to load or to warm up: the artifact is broken."""


def load_format(folder: Path, manifest: Manifest, entry: ModelFormat, device: torch.device, half: bool,
                warmup_batch: int) -> LoadedModel:
    """One format on its own: checksum, compatibility (FormatRefused), then load and warm up."""
    path = verify_file(folder, entry.file, entry.sha256)
    formats.check_runnable(entry, path, device, half, warmup_batch)
    return _served(path, manifest, entry, device, half, warmup_batch)


def _served(path: Path, manifest: Manifest, entry: ModelFormat, device: torch.device, half: bool,
            warmup_batch: int) -> LoadedModel:
    """Load a verified, runnable file and warm it up; any failure is an ArtifactError naming the file."""
    try:
        return _load_and_warm_up(path, manifest, entry, device, half, warmup_batch)
    except Exception as exc:  # untrusted bytes: whatever the loader or the model raises refuses the version
        log.debug("loading %s failed", path, exc_info=True)
        raise ArtifactError(f"{entry.file} ({entry.format}) passed its checksum but cannot be served: "
                            f"{type(exc).__name__}: {exc}") from exc


def _load_and_warm_up(path: Path, manifest: Manifest, entry: ModelFormat, device: torch.device, half: bool,
                      warmup_batch: int) -> LoadedModel:
    module = _load_torchscript(path, device, half) if entry.format == "torchscript" else \
        formats.load(entry, path, device)
    model = LoadedModel(manifest=manifest, module=module, device=device, half=half, format=entry.format)
    # The first calls compile and allocate; run them now so the first client does not pay, and so a model
    # that cannot take its declared input is refused here rather than on traffic.
    dtypes = (np.float32, np.uint8) if manifest.input.accepts_uint8 else (np.float32,)
    for dtype in dtypes:
        for rows in (warmup_batch, 1, warmup_batch):
            logits = model.forward([np.zeros((rows, *manifest.input.shape), dtype=dtype)])
            if logits.shape != (rows, manifest.num_outputs):
                raise ValueError(f"warm-up returned shape {logits.shape}, "
                                 f"expected {(rows, manifest.num_outputs)}")
    return model


def _load_torchscript(path: Path, device: torch.device, half: bool) -> torch.jit.ScriptModule:
    with quiet_jit():
        module = torch.jit.load(str(path), map_location=device)
        module.eval()
        if half:
            module.half()
        # Freezing inlines the weights as constants and folds what depends only on them: more images/s,
        # same outputs. optimize_for_inference (oneDNN layouts) is not used: it is slower at batch 1 on
        # CPU (docs/benchmarks.md, "Model").
        return torch.jit.freeze(module)
