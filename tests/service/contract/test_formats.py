"""Serving the exported and AOTInductor files: the format asked for or the next one that runs here, the
refusal of tampered and mismatched files, and every API answering alike whichever format is served."""

from __future__ import annotations

import io
import json
import logging
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import orjson
import pytest
import torch
from PIL import Image

from service.contract import formats
from service.contract.images import to_input
from service.contract.loading import load_model
from service.contract.manifest import ManifestError, ModelFormat, read_manifest, sha256_file
from service.web.imaging import decode
from training.export import ArtifactInfo, PixelClassifier, export, load_scripted
from training.nets import build_net

pytestmark = pytest.mark.slow  # formats_root compiles C++ once per session

CPU = torch.device("cpu")
AOTI_FILE = "model.aoti-cpu.pt2"


@pytest.fixture
def artifact(formats_root: Path, tmp_path: Path) -> Path:
    """A private copy of mnist-formats/1 that a test may break."""
    folder = tmp_path / "models" / "mnist-formats" / "1"
    shutil.copytree(formats_root / "mnist-formats" / "1", folder)
    return folder


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def infer_body(x: np.ndarray, datatype: str) -> dict:
    return {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": datatype,
                        "data": x.ravel().tolist()}]}


def binary_request(x: np.ndarray, datatype: str) -> tuple[bytes, dict[str, str]]:
    """The binary tensor data extension: a JSON header, then the tensor's raw bytes."""
    header = orjson.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": datatype,
                                       "parameters": {"binary_data_size": x.nbytes}}]})
    return header + x.tobytes(), {"Inference-Header-Content-Length": str(len(header))}


def _edit_manifest(folder: Path, fmt: str, **changes: object) -> None:
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    entry = next(f for f in data["formats"] if f["format"] == fmt)
    entry.update(changes)
    path.write_text(json.dumps(data))


def _rewrite_package_metadata(folder: Path, **changes: str) -> None:
    """Rewrite the build metadata inside the AOTInductor package, and list the new file's checksum."""
    path, staged = folder / AOTI_FILE, folder / "staged.zip"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(staged, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("wrapper_metadata.json"):
                data = json.dumps(json.loads(data) | changes).encode()
            dst.writestr(item, data)
    staged.replace(path)
    _edit_manifest(folder, "aoti", sha256=sha256_file(path))


@pytest.mark.parametrize("fmt", ["torchscript", "exported", "aoti"])
def test_the_format_asked_for_is_served(formats_root: Path, fmt: str) -> None:
    model = load_model(formats_root / "mnist-formats" / "1", CPU, False, warmup_batch=8, model_format=fmt)
    assert model.format == fmt


def test_auto_serves_the_fastest_format_on_the_cpu(formats_root: Path) -> None:
    assert formats.AUTO_ORDER["cpu"][0] == "aoti"
    assert load_model(formats_root / "mnist-formats" / "1", CPU, False, 8).format == "aoti"


@pytest.mark.parametrize("fmt, file", [("exported", "model.pt2"), ("aoti", AOTI_FILE)])
def test_a_format_file_that_fails_its_checksum_refuses_the_version_whole(artifact: Path, fmt: str,
                                                                          file: str) -> None:
    with (artifact / file).open("ab") as fh:
        fh.write(b"tampered")
    for asked in (fmt, "torchscript"):  # whichever format would be served: none is
        with pytest.raises(ManifestError, match=rf"{file} has sha256 [0-9a-f]{{64}}, the manifest says"):
            load_model(artifact, CPU, False, 8, model_format=asked)


@pytest.mark.parametrize("fmt, file", [("torchscript", "model.pt"), ("exported", "model.pt2"),
                                       ("aoti", AOTI_FILE)])
def test_a_file_that_passes_its_checksum_and_does_not_load_refuses_the_version(artifact: Path, fmt: str,
                                                                               file: str) -> None:
    path = artifact / file
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])  # cut short, its checksum rewritten
    _edit_manifest(artifact, fmt, sha256=sha256_file(path))
    if fmt == "torchscript":
        data = json.loads((artifact / "manifest.json").read_text())
        (artifact / "manifest.json").write_text(json.dumps(data | {"sha256": sha256_file(path)}))
    broken = rf"{file}.* cannot be served|{file} is not an AOTInductor package"
    with pytest.raises(ManifestError, match=broken):
        load_model(artifact, CPU, False, 8, model_format=fmt)


def test_the_cpu_instruction_sets_are_read_as_inductor_reads_them_without_importing_it() -> None:
    from torch._inductor.cpu_vec_isa import x86_isa_checker

    assert formats.cpu_isa_flags() == x86_isa_checker()
    probe = ("import sys, torch; from service.contract import formats; formats.cpu_isa_flags(); "
             "print('torch._inductor' in sys.modules)")
    imported = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parents[3], timeout=120)
    assert imported.stdout.strip() == "False"


@pytest.mark.parametrize("manifest_changes, package_changes, reason", [
    ({"torch_version": "2.13.0"}, {}, "was compiled by torch 2.13.0, this is torch"),
    ({"device": "cuda"}, {"AOTI_DEVICE_KEY": "cuda"}, "was compiled for cuda, this runtime serves on cpu"),
    ({"cpu_isa": "neon"}, {"AOTI_CPU_ISA": "NEON"}, "this CPU lacks neon"),
    ({"cpu_isa": "amx_tile"}, {}, "the manifest says CPU instruction set 'amx_tile', the package says"),
    ({}, {"AOTI_MACHINE": "aarch64"}, "was compiled for linux/aarch64"),
])
def test_an_aoti_package_built_for_another_torch_device_or_cpu_is_refused(
        artifact: Path, manifest_changes: dict, package_changes: dict, reason: str,
        caplog: pytest.LogCaptureFixture) -> None:
    if package_changes:
        _rewrite_package_metadata(artifact, **package_changes)
    _edit_manifest(artifact, "aoti", **manifest_changes)
    with caplog.at_level(logging.WARNING, logger="service.contract.loading"):
        model = load_model(artifact, CPU, False, 8, model_format="aoti")
    assert model.format == "torchscript" and reason in caplog.text


def test_batches_beyond_the_exported_bound_fall_back_to_torchscript(
        artifact: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="service.contract.loading"):
        model = load_model(artifact, CPU, False, warmup_batch=1025, model_format="exported")
    assert model.format == "torchscript" and "takes batches of up to 1024 rows" in caplog.text


def test_half_precision_is_refused_by_the_compiled_formats(artifact: Path) -> None:
    entry = next(f for f in read_manifest(artifact).formats if f.format == "aoti")
    with pytest.raises(formats.FormatRefused, match="TorchScript only"):
        formats.check_runnable(entry, artifact / entry.file, CPU, half=True, max_batch=8)


def test_a_manifest_from_before_formats_serves_its_torchscript_file(
        artifact_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "mnist-tiny" / "1"
    shutil.copytree(artifact_root / "mnist-tiny" / "1", folder)
    data = json.loads((folder / "manifest.json").read_text())
    del data["formats"]  # as every artifact exported before there were other formats
    (folder / "manifest.json").write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING, logger="service.contract.loading"):
        model = load_model(folder, CPU, False, 8, model_format="aoti")
    assert model.format == "torchscript" and "has no aoti file" in caplog.text
    manifest = read_manifest(folder)
    assert manifest.model_formats == (
        ModelFormat("torchscript", "model.pt", manifest.sha256, manifest.torch_version, "any"),)


def _probabilities(logits: np.ndarray) -> np.ndarray:
    return torch.softmax(torch.from_numpy(logits), 1).numpy()


@pytest.mark.parametrize("fmt", ["torchscript", "exported", "aoti"])
def test_every_api_serves_each_format_with_the_same_answers(make_app, formats_root: Path, mnist, fmt: str):
    client = make_app(model_dir=formats_root, model_format=fmt).test_client()
    folder = formats_root / "mnist-formats" / "1"
    scripted = load_scripted(folder / "model.pt")
    x = mnist["test_x"][:6].reshape(6, 1, 28, 28)
    with torch.inference_mode():
        expected = scripted(torch.from_numpy(x)).numpy()

    listed = client.get("/v1/models").json["models"]
    assert [(m["name"], m["format"]) for m in listed] == [("mnist-formats", fmt)]
    platform = client.get("/v2/models/mnist-formats").json["platform"]
    assert platform == {"torchscript": "pytorch_torchscript", "exported": "pytorch_exported_program",
                        "aoti": "pytorch_aotinductor"}[fmt]

    for datatype, data in (("UINT8", x), ("FP32", (x / 255).astype(np.float32))):
        as_json = client.post("/v2/models/mnist-formats/infer", json=infer_body(data, datatype=datatype))
        assert as_json.status_code == 200, as_json.json
        logits = np.asarray(next(o for o in as_json.json["outputs"] if o["name"] == "logits")["data"])
        np.testing.assert_allclose(logits.reshape(6, 10), expected, atol=1e-4)
        body, headers = binary_request(data, datatype)
        binary = client.post("/v2/models/mnist-formats/infer", data=body, headers=headers)
        assert binary.status_code == 200 and binary.json["outputs"] == as_json.json["outputs"]

    predicted = client.post("/v1/models/mnist-formats:predict", json={
        "instances": x.reshape(6, 784).tolist(), "dtype": "uint8", "top_k": 10}).json
    for prediction, row in zip(predicted["predictions"], _probabilities(expected), strict=True):
        assert prediction["label"] == str(row.argmax())
        assert max(abs(prediction["probabilities"][str(k)] - row[k]) for k in range(10)) <= 1e-4

    image = png(mnist["test_x"][0])
    classified = client.post("/v1/models/mnist-formats:classify?top_k=10", data=image,
                             content_type="image/png")
    assert classified.status_code == 200, classified.json
    with torch.inference_mode():
        reference = scripted(torch.from_numpy(to_input(decode(image), read_manifest(folder).input)[None]))
    row = _probabilities(reference.numpy())[0]
    answer = classified.json["predictions"][0]
    assert answer["label"] == str(row.argmax())
    assert max(abs(answer["probabilities"][str(k)] - row[k]) for k in range(10)) <= 1e-4


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_with_a_gpu_export_compiles_a_cuda_package_and_the_gpu_runtime_serves_it(tmp_path: Path, mnist):
    torch.manual_seed(0)
    model = PixelClassifier(build_net("cnn", (1, 28, 28), 10), (0.1307,), (0.3081,)).eval()
    info = ArtifactInfo(name="on-gpu", architecture="cnn", labels=tuple(str(d) for d in range(10)),
                        input_shape=(1, 28, 28), metrics={}, training={}, dataset={}, version="1")
    probe = torch.from_numpy(mnist["test_x"][:16]).unsqueeze(1)
    folder = export(model, info, tmp_path, probe, formats=("exported", "aoti"))
    manifest = read_manifest(folder)
    gpu = torch.device("cuda")
    entry = next(f for f in manifest.formats if f.file == "model.aoti-cuda.pt2")
    assert entry.device == "cuda" and entry.cuda_arch == formats.cuda_arch(gpu) and entry.cpu_isa is None
    x = mnist["test_x"][:64, None]
    expected = load_model(folder, CPU, False, 8, model_format="torchscript").forward([x])
    for fmt in ("aoti", "exported", "torchscript"):
        served = load_model(folder, gpu, False, 8, model_format=fmt)
        assert served.format == fmt
        # cuDNN may run the convolutions in TF32: close to the CPU's answer, not equal to it.
        np.testing.assert_allclose(served.forward([x]), expected, atol=1e-2)
    assert load_model(folder, gpu, False, 8).format == formats.AUTO_ORDER["cuda"][0]


def test_only_torchs_instruction_set_notice_is_dropped_once_the_package_was_checked():
    # An AVX2 package on an AVX-512 CPU makes torch warn that the sets differ; _check_aoti has refused any
    # package needing what this CPU lacks, so that record goes, and every other mismatch still shows.
    def record(key: str) -> logging.LogRecord:
        return logging.LogRecord(formats._PACKAGE_LOG.name, logging.WARNING, __file__, 1,
                                 "Device information mismatch for %s: %s vs %s. This could cause some issues "
                                 "when loading the AOTInductor compiled artifacts.", (key, "AVX512", "AVX2"),
                                 None)

    assert not formats._subset_isa_notice(record("AOTI_CPU_ISA"))
    assert formats._subset_isa_notice(record("AOTI_DEVICE_KEY"))
    other = logging.LogRecord(formats._PACKAGE_LOG.name, logging.WARNING, __file__, 1, "something else", None,
                              None)
    assert formats._subset_isa_notice(other)
