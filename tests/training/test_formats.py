"""The formats export writes beside model.pt: what the manifest says of them, their parity with the eager
model, and what export does when a format cannot be made or does not match."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch._inductor.config as inductor_config

from service.contract import formats as runtime_formats
from service.contract.manifest import read_manifest, sha256_file
from training import formats as training_formats
from training.export import ArtifactInfo, PixelClassifier, export, load_scripted
from training.formats import ParityError, check_parity, max_batch, parity_probes
from training.nets import build_net


def _info(name: str) -> ArtifactInfo:
    return ArtifactInfo(name=name, architecture="cnn", labels=tuple(str(d) for d in range(10)),
                        input_shape=(1, 28, 28), metrics={}, training={}, dataset={})


def _model() -> PixelClassifier:
    torch.manual_seed(1)
    return PixelClassifier(build_net("cnn", (1, 28, 28), 10), (0.1307,), (0.3081,)).eval()


@pytest.mark.slow  # formats_root compiles C++ (once per session)
def test_the_manifest_lists_every_format_with_its_checksum_torch_and_target(formats_root: Path) -> None:
    folder = formats_root / "mnist-formats" / "1"
    manifest = read_manifest(folder)
    by_format = {f.format: f for f in manifest.formats}
    assert list(by_format) == ["torchscript", "exported", "aoti"]
    for entry in manifest.formats:
        assert entry.sha256 == sha256_file(folder / entry.file)
        assert entry.torch_version == torch.__version__
    assert by_format["torchscript"].file == manifest.file == "model.pt"
    aoti = by_format["aoti"]
    assert aoti.device == "cpu" and aoti.file == "model.aoti-cpu.pt2" and aoti.compile_seconds > 0
    package = runtime_formats.package_metadata(folder / aoti.file)
    assert aoti.cpu_isa == package["AOTI_CPU_ISA"].lower()
    assert set(aoti.cpu_isa.split()) <= set(runtime_formats.cpu_isa_flags())
    assert by_format["exported"].max_batch == aoti.max_batch == max_batch((1, 28, 28)) == 1024
    assert "formats_skipped" not in manifest.extra


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["exported", "aoti"])
def test_each_published_file_matches_the_torchscript_one_at_1_and_the_largest_batch(formats_root: Path,
                                                                                     fmt: str) -> None:
    folder = formats_root / "mnist-formats" / "1"
    manifest = read_manifest(folder)
    entry = next(f for f in manifest.formats if f.format == fmt)
    program = runtime_formats.load(entry, folder / entry.file, torch.device("cpu"))
    scripted = load_scripted(folder / "model.pt")
    digits = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (8, 1, 28, 28), dtype=np.uint8))
    with torch.inference_mode():
        for batch in parity_probes(digits, entry.max_batch):
            assert (program(batch) - scripted(batch)).abs().max().item() <= 1e-4


def test_without_a_cxx_compiler_export_publishes_the_formats_that_need_none(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # Inductor takes its compiler from this setting ($CXX, else g++, when torch is imported).
    monkeypatch.setattr(inductor_config.cpp, "cxx", ("/nonexistent/c++",))
    probe = torch.zeros(4, 1, 28, 28, dtype=torch.uint8)
    with caplog.at_level(logging.WARNING, logger="training.formats"):
        folder = export(_model(), _info("no-compiler"), tmp_path, probe, formats=("exported", "aoti"))
    manifest = read_manifest(folder)
    assert [f.format for f in manifest.formats] == ["torchscript", "exported"]
    assert "C++ compiler" in manifest.extra["formats_skipped"]["aoti-cpu"]
    assert "not publishing the aoti-cpu format" in caplog.text and "install g++ or set CXX" in caplog.text
    assert sorted(p.name for p in folder.glob("model*")) == ["model.pt", "model.pt2"]


def test_a_format_that_differs_from_the_eager_model_is_not_published(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    real_load = runtime_formats.load

    def off_by_a_little(entry, path, device):  # the real exported program, its logits nudged
        program = real_load(entry, path, device)
        return lambda x: program(x) + 1e-3

    monkeypatch.setattr(training_formats.runtime_formats, "load", off_by_a_little)
    with caplog.at_level(logging.WARNING, logger="training.formats"):
        folder = export(_model(), _info("off"), tmp_path, torch.zeros(4, 1, 28, 28, dtype=torch.uint8),
                        formats=("exported",))
    manifest = read_manifest(folder)
    assert [f.format for f in manifest.formats] == ["torchscript"]
    assert "differs from the eager one by 0.001" in manifest.extra["formats_skipped"]["exported"]
    assert not (folder / "model.pt2").exists() and "not publishing the exported format" in caplog.text


def test_parity_covers_one_row_the_largest_batch_and_both_dtypes() -> None:
    probe = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    probes = parity_probes(probe, 12)
    assert [(len(p), p.dtype) for p in probes] == [(1, torch.uint8), (5, torch.uint8), (12, torch.uint8),
                                                  (1, torch.float32), (5, torch.float32), (12, torch.float32)]
    model = _model()
    with pytest.raises(ParityError, match=r"on 1 torch.uint8 rows"):
        check_parity(model, lambda x: model(x) * 1.01, probes, "nudged")
    check_parity(model, model, probes, "same")
