"""The formats export writes beside the TorchScript file, and the parity check every format passes.

``exported``: the model as a ``torch.export`` ExportedProgram (``model.pt2``) with a dynamic batch
dimension. ``aoti``: that program compiled by AOTInductor into a package for one device kind
(``model.aoti-cpu.pt2``, and ``model.aoti-cuda.pt2`` where a GPU is present), which needs a C++ compiler.
Each file is loaded back through the service's own loader (``service/contract/formats.py``) and compared with
the eager model; one that cannot be made or does not match is left out, and the export says why.
"""

from __future__ import annotations

import copy
import logging
import math
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from service.contract import formats as runtime_formats
from service.contract.manifest import ModelFormat, sha256_file
from training.nets import fold_batchnorm

log = logging.getLogger(__name__)

EXTRA_FORMATS = ("exported", "aoti")
PARITY_ATOL = 1e-4
# The dynamic batch dimension's upper bound: the service's batches are far smaller by default; a bound keeps
# the parity check at the maximum affordable (rows are also capped so the largest probe stays in memory).
MAX_BATCH = 1024
_MAX_PROBE_BYTES = 64 << 20
# A portable -march for the vector ISA inductor picks: its default, -march=native, may emit instructions of
# this very CPU model that the package's recorded ISA does not name, and crash another machine.
_MARCH = {"avx512": "x86-64-v4", "avx2": "x86-64-v3"}


class ParityError(ValueError):
    """A format's outputs differ from the eager model's."""


class FormatUnavailable(RuntimeError):
    """A format that cannot be made on this machine (AOTInductor without a C++ compiler)."""


def max_batch(input_shape: Sequence[int]) -> int:
    """The largest batch the exported forms take and are checked at, for examples of ``input_shape``."""
    return max(1, min(MAX_BATCH, _MAX_PROBE_BYTES // (4 * math.prod(input_shape))))


def parity_probes(probe: torch.Tensor, largest: int) -> list[torch.Tensor]:
    """Batches of 1 row, of the probe's rows, and of ``largest`` rows; uint8 ones also as float pixels."""
    rows = probe.repeat(math.ceil(largest / len(probe)), *([1] * (probe.dim() - 1)))[:largest]
    batches = [probe[:1], probe, rows]
    if probe.dtype == torch.uint8:
        batches += [b.float() / 255.0 for b in batches]
    return batches


def check_parity(eager: nn.Module, candidate: runtime_formats.Forward, probes: Sequence[torch.Tensor],
                 label: str, device: torch.device | str = "cpu") -> None:
    """Raise ParityError unless ``candidate`` matches ``eager`` within PARITY_ATOL on every probe."""
    with torch.inference_mode():
        for batch in probes:
            batch = batch.to(device)
            expected = eager(batch)
            actual = candidate(batch)
            if expected.shape != actual.shape:
                raise ParityError(f"the {label} model returns {tuple(actual.shape)}, "
                                  f"the eager one {tuple(expected.shape)}")
            diff = (expected - actual).abs().max().item()
            if not diff <= PARITY_ATOL:
                raise ParityError(f"the {label} model differs from the eager one by {diff:.3g} "
                                  f"(> {PARITY_ATOL}) on {len(batch)} {batch.dtype} rows")


def write_formats(model: nn.Module, folder: Path, probes: Sequence[torch.Tensor], formats: Sequence[str],
                  input_shape: Sequence[int]) -> tuple[list[ModelFormat], dict[str, str]]:
    """Write each of ``formats`` into ``folder``, load it back and check it; the entries that passed, and
    why each other one was left out (its file removed)."""
    largest = max(len(p) for p in probes)
    published: list[ModelFormat] = []
    skipped: dict[str, str] = {}
    programs: dict[str, torch.export.ExportedProgram] = {}
    targets = [("exported", torch.device("cpu"))] if "exported" in formats else []
    if "aoti" in formats:
        targets += [("aoti", torch.device(kind)) for kind in _aoti_devices()]
    for fmt, device in targets:
        label = fmt if fmt == "exported" else f"aoti-{device.type}"
        started = time.perf_counter()
        path = folder / ("model.pt2" if fmt == "exported" else f"model.aoti-{device.type}.pt2")
        eager = model if device.type == "cpu" else copy.deepcopy(model).to(device)
        try:
            if device.type not in programs:
                programs[device.type] = serving_program(eager, input_shape, device, largest)
            if fmt == "exported":
                with warnings.catch_warnings():
                    # torch's archive writer warns when weights share storage without one covering the
                    # rest (the folded ones can); the parity check below proves what was saved.
                    warnings.filterwarnings("ignore", "No complete tensor found", UserWarning)
                    torch.export.save(programs[device.type], str(path))
            else:
                _compile_aoti(programs[device.type], path, device)
            entry = _entry(fmt, path, device, largest, time.perf_counter() - started)
            runtime_formats.check_runnable(entry, path, device, half=False, max_batch=largest)
            check_parity(eager, runtime_formats.load(entry, path, device), probes, label, device)
        # Any failure to make an optional format (inductor raises many kinds) leaves it out, said aloud.
        except Exception as exc:
            skipped[label] = f"{type(exc).__name__}: {exc}".strip()
            log.warning("not publishing the %s format: %s", label, skipped[label])
            path.unlink(missing_ok=True)
            continue
        log.info("%s format written in %.1f s (%s)", label, entry.compile_seconds or 0.0, path.name)
        published.append(entry)
    return published, skipped


def serving_program(model: nn.Module, input_shape: Sequence[int], device: torch.device,
                    largest: int) -> torch.export.ExportedProgram:
    """``model`` with batch norm folded, exported with a batch dimension of 1 to ``largest`` rows.

    Float32 pixels only: torch.export fixes the input dtype (the loader scales uint8 as the module would).
    The weights stay contiguous (channels-last ones are saved with a warning, and inductor picks layouts).
    """
    net = fold_batchnorm(model).to(device)
    example = torch.zeros(2, *input_shape, device=device)
    batch = torch.export.Dim("batch", min=1, max=largest)
    return torch.export.export(net, (example,), dynamic_shapes=({0: batch},))


def cxx_compiler() -> str:
    """The C++ compiler inductor would use ($CXX, else g++); raise FormatUnavailable when there is none."""
    from torch._inductor import cpp_builder
    from torch._inductor.exc import InvalidCxxCompiler

    try:
        return cpp_builder.get_cpp_compiler()
    except InvalidCxxCompiler:
        raise FormatUnavailable("AOTInductor needs a C++ compiler and none was found (inductor runs $CXX, "
                                "else g++); install g++ or set CXX to export this format") from None


def _compile_aoti(program: torch.export.ExportedProgram, path: Path, device: torch.device) -> None:
    cxx_compiler()
    if device.type == "cpu":
        # A CUDA build of torch on a machine without CUDA warns that it found no CUDA runtime when inductor
        # loads its C++ tooling; nothing here needs one.
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    configs: dict[str, object] = {}
    if device.type == "cpu":
        # The AOTInductor docs recommend freezing for CPU inference (weights become constants to fold).
        configs["freezing"] = True
        from torch._inductor.cpu_vec_isa import pick_vec_isa

        march = _MARCH.get(str(pick_vec_isa()).split(" ")[0])
        if march:
            configs["cpp.march"] = march
    torch._inductor.aoti_compile_and_package(program, package_path=str(path), inductor_configs=configs)


def _entry(fmt: str, path: Path, device: torch.device, largest: int, seconds: float) -> ModelFormat:
    cpu_isa = cuda_arch = None
    if fmt == "aoti":
        meta = runtime_formats.package_metadata(path)
        cpu_isa = (meta.get("AOTI_CPU_ISA") or "").lower() if device.type == "cpu" else None
        cuda_arch = runtime_formats.cuda_arch(device) if device.type == "cuda" else None
    return ModelFormat(fmt, path.name, sha256_file(path), torch.__version__,
                       device.type if fmt == "aoti" else "any", cpu_isa=cpu_isa, cuda_arch=cuda_arch,
                       max_batch=largest, compile_seconds=round(seconds, 1))


def _aoti_devices() -> list[str]:
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
