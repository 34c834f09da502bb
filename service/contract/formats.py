"""The model formats beside TorchScript: which to try on this device, whether a file may run here, and
how to load it.

An ExportedProgram (``torch.export.load``) and an AOTInductor package (``aoti_load_package``) are each
wrapped to be called like the TorchScript module: a batch of uint8 or float32 pixels in, logits out. The
TorchScript file itself is loaded by ``loading.py``, which with ``training/export.py`` keeps every
``torch.jit`` call.
"""

from __future__ import annotations

import json
import logging
import platform
import sys
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from service.contract.manifest import ManifestError, ModelFormat

# auto's choice, fastest first: the in-process measurements in docs/benchmarks.md#model-formats. On CUDA the
# same order until a measurement there says otherwise.
AUTO_ORDER: dict[str, tuple[str, ...]] = {
    "cpu": ("aoti", "torchscript", "exported"),
    "cuda": ("aoti", "torchscript", "exported"),
}

Forward = Callable[[torch.Tensor], torch.Tensor]


class FormatRefused(RuntimeError):
    """This model file cannot run here (another torch, device or CPU); the message says why."""


def candidates(formats: Sequence[ModelFormat], requested: str, device_type: str) -> list[ModelFormat]:
    """The formats to try in order: the requested one (auto: this device's ranking), then the manifest's.

    Within a format, files compiled for this device kind come first.
    """
    preferred = AUTO_ORDER.get(device_type, AUTO_ORDER["cpu"]) if requested == "auto" else (requested,)

    def rank(entry: ModelFormat) -> tuple[int, int]:
        position = preferred.index(entry.format) if entry.format in preferred else len(preferred)
        return position, int(entry.device not in ("any", device_type))

    return sorted(formats, key=rank)  # stable: the rest keep the manifest's order


def check_runnable(entry: ModelFormat, path: Path, device: torch.device, half: bool, max_batch: int) -> None:
    """Raise FormatRefused unless ``entry``, its file at ``path``, can serve batches of ``max_batch`` here."""
    if entry.format == "torchscript":
        return
    if half:
        raise FormatRefused(f"{entry.file} is compiled for float32 pixels; TRAINSERVE_HALF=1 is served from "
                            "TorchScript only")
    if entry.max_batch is not None and entry.max_batch < max_batch:
        raise FormatRefused(f"{entry.file} takes batches of up to {entry.max_batch} rows; "
                            f"TRAINSERVE_MAX_BATCH_SIZE is {max_batch}")
    if entry.format == "aoti":
        _check_aoti(entry, package_metadata(path), device)


def _check_aoti(entry: ModelFormat, meta: dict[str, str], device: torch.device) -> None:
    # Compiled C++ runs only against the libtorch that built it, on the device kind and CPU it targets:
    # anything else could crash the process rather than fail a call.
    # The same release of torch built for CPU only or for CUDA (2.14.1+cpu, 2.14.1+cu130) shares the C shim
    # the package calls; any other release is refused.
    if entry.torch_version.split("+")[0] != torch.__version__.split("+")[0]:
        raise FormatRefused(f"{entry.file} was compiled by torch {entry.torch_version}, this is torch "
                            f"{torch.__version__}; re-export the artifact to serve it as AOTInductor")
    built_for = meta.get("AOTI_DEVICE_KEY") or "an unknown device"
    if built_for != entry.device:
        raise FormatRefused(f"{entry.file}: the manifest says it was compiled for {entry.device}, "
                            f"the package says {built_for}")
    if built_for != device.type:
        raise FormatRefused(f"{entry.file} was compiled for {built_for}, "
                            f"this runtime serves on {device.type}")
    here = (sys.platform, platform.machine())
    built = (meta.get("AOTI_PLATFORM", here[0]), meta.get("AOTI_MACHINE", here[1]))
    if built != here:
        raise FormatRefused(f"{entry.file} was compiled for {'/'.join(built)}, this is {'/'.join(here)}")
    if device.type == "cpu":
        needed = (meta.get("AOTI_CPU_ISA") or "").lower().split()
        if (entry.cpu_isa or "").split() != needed:
            raise FormatRefused(f"{entry.file}: the manifest says CPU instruction set {entry.cpu_isa!r}, "
                                f"the package says {' '.join(needed)!r}")
        missing = [isa for isa in needed if isa not in cpu_isa_flags()]
        if missing:
            raise FormatRefused(f"{entry.file} was compiled for the CPU instruction set {entry.cpu_isa}; "
                                f"this CPU lacks {', '.join(missing)}")
    else:
        wanted = cuda_arch(device)
        if (meta.get("AOTI_COMPUTE_CAPABILITY") or "").removeprefix("sm_") != wanted.removeprefix("sm_") \
                or entry.cuda_arch != wanted:
            raise FormatRefused(f"{entry.file} was compiled for CUDA {entry.cuda_arch}, {device} is {wanted}")


def package_metadata(path: Path) -> dict[str, str]:
    """The build metadata AOTInductor keeps in its package: device, platform, CPU ISA, compute capability.

    A file that passed its checksum and holds none is a broken artifact (ManifestError), not one built for
    another machine (FormatRefused)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("wrapper_metadata.json")]
            if len(names) != 1:
                raise ManifestError(f"{path.name} is not an AOTInductor package (no wrapper metadata)")
            meta = json.loads(archive.read(names[0]))
    except (zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path.name} is not an AOTInductor package: {exc}") from None
    if not isinstance(meta, dict):
        raise ManifestError(f"{path.name}'s AOTInductor metadata is not an object")
    return {str(k): str(v) for k, v in meta.items()}


def cpu_isa_flags() -> list[str]:
    """The vector instruction sets this CPU has, as inductor names them (``avx2``, ``avx512``, …).

    Asked of torch's own CPU probes, as inductor's ``x86_isa_checker`` does, without importing inductor
    (a C++ toolchain's worth of modules: seconds of a runtime's start, docs/operations.md#failures) and
    without test-compiling (a serving image has no compiler).
    """
    if platform.machine() not in ("x86_64", "AMD64"):
        return []
    cpu = torch.cpu
    avx512 = cpu._is_avx512_supported()
    found = {"avx2": cpu._is_avx2_supported(), "avx512": avx512,
             "avx512_vnni": avx512 and cpu._is_vnni_supported(), "amx_tile": cpu._is_amx_tile_supported()}
    return [name for name, present in found.items() if present]


def cuda_arch(device: torch.device) -> str:
    """The compute capability of a CUDA device, as ``sm_XY``."""
    major, minor = torch.cuda.get_device_capability(device)
    return f"sm_{major}{minor}"


def load(entry: ModelFormat, path: Path, device: torch.device) -> Forward:
    """Load an exported or AOTInductor file onto ``device`` as a callable taking uint8 or float32 pixels."""
    if entry.format == "exported":
        program = torch.export.load(str(path))
        if device.type != "cpu":
            from torch.export.passes import move_to_device_pass

            program = move_to_device_pass(program, device)
        return FloatPixels(program.module())
    if entry.format == "aoti":
        index = device.index if device.type == "cuda" and device.index is not None else -1
        if device.type == "cpu":
            # A CUDA build of torch on a machine without CUDA says it found no CUDA runtime when inductor
            # loads its C++ tooling; a CPU package needs none.
            logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
            # torch warns whenever the package's instruction set is not this CPU's exact set, a subset
            # included (an AVX2 package on an AVX-512 CPU); _check_aoti has refused any package that
            # needs an instruction set this CPU lacks, so only that one mismatch is dropped.
            _PACKAGE_LOG.addFilter(_subset_isa_notice)
        return FloatPixels(torch._inductor.aoti_load_package(str(path), device_index=index))
    raise ValueError(f"{entry.format} files are not loaded here")


_PACKAGE_LOG = logging.getLogger("torch.export.pt2_archive._package")


def _subset_isa_notice(record: logging.LogRecord) -> bool:
    """False for torch's "Device information mismatch for AOTI_CPU_ISA" record (see ``load``)."""
    args = record.args if isinstance(record.args, tuple) else ()
    return not (str(record.msg).startswith("Device information mismatch") and args[:1] == ("AOTI_CPU_ISA",))


class FloatPixels:
    """Gives a float-input program uint8 pixels as the exporter's wrapper scales them (x / 255).

    torch.export fixes input dtypes, so the exported and compiled forms take float32 only; an AOTInductor
    runner does not check the dtype at all, so uint8 must never reach it.
    """

    def __init__(self, program: Forward) -> None:
        self.program = program

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.to(torch.float32) * (1.0 / 255.0)
        elif x.dtype != torch.float32:
            raise ValueError(f"{x.dtype} input; the model takes uint8 or float32 pixels")
        return self.program(x)
