"""The manifest's list of formats: what it accepts, what it refuses, and manifests from before it existed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.contract.manifest import Manifest, ManifestError, ModelFormat

SHA = "a" * 64


def _manifest(formats: list[dict] | None) -> dict:
    data = {"name": "m", "version": "1", "created": "2026-12-01T00:00:00+00:00", "architecture": "cnn",
            "parameters": 1, "input": {"shape": [1, 28, 28]}, "output": {"shape": [2]}, "labels": ["a", "b"],
            "metrics": {}, "training": {}, "dataset": {}, "torch_version": "2.14.1", "sha256": SHA}
    return data if formats is None else data | {"formats": formats}


def _entry(**changes: object) -> dict:
    return {"format": "torchscript", "file": "model.pt", "sha256": SHA, "torch_version": "2.14.1",
            "device": "any"} | changes


def test_a_manifest_without_formats_has_its_torchscript_file_alone() -> None:
    manifest = Manifest.from_dict(_manifest(None))
    assert manifest.formats == ()
    assert manifest.model_formats == (ModelFormat("torchscript", "model.pt", SHA, "2.14.1", "any"),)


def test_formats_round_trip_through_json() -> None:
    aoti = _entry(format="aoti", file="model.aoti-cpu.pt2", sha256="b" * 64, device="cpu",
                  cpu_isa="avx512 avx512_vnni", max_batch=1024, compile_seconds=14.6)
    manifest = Manifest.from_dict(_manifest([_entry(), aoti]))
    again = Manifest.from_dict(json.loads(json.dumps(manifest.to_dict())))
    assert again == manifest and again.model_formats[1].cpu_isa == "avx512 avx512_vnni"


@pytest.mark.parametrize("formats, message", [
    ([_entry(format="onnx")], "format 'onnx' must be one of torchscript, exported, aoti"),
    ([_entry(), _entry(format="exported", file="../model.pt2", sha256="b" * 64)], "plain file name"),
    ([_entry(), _entry(format="aoti", file="model.pt", sha256="b" * 64, device="cpu")], "share a file"),
    ([_entry(sha256="c" * 64)], "TorchScript file once, with the manifest's file and sha256"),
    ([_entry(format="exported", file="model.pt2")], "TorchScript file once"),
    ([_entry(), _entry(format="aoti", file="m.pt2", sha256="b" * 64, device="tpu")], "device 'tpu'"),
    ([_entry(), _entry(format="exported", file="m.pt2", sha256="b" * 64, max_batch=0)], "max_batch"),
    ([_entry(), _entry(format="exported", file="m.pt2", sha256="xyz")], "sha256 must be 64 hex digits"),
    ([_entry(colour="blue")], "malformed"),
    ({"format": "torchscript"}, "formats must be a list"),
])
def test_a_bad_format_entry_is_refused_with_its_reason(formats: object, message: str) -> None:
    with pytest.raises(ManifestError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Manifest.from_dict(_manifest(formats))  # type: ignore[arg-type]


def test_the_shipped_manifest_lists_every_format(repo_root: Path) -> None:
    data = json.loads((repo_root / "models" / "mnist-cnn" / "1" / "manifest.json").read_text())
    manifest = Manifest.from_dict(data)
    assert [f.format for f in manifest.formats] == ["torchscript", "exported", "aoti"]
    assert set(manifest.extra["format_test_accuracy"].values()) == {manifest.metrics["test_accuracy"]}
