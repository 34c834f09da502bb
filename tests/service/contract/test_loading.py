"""Loading artifacts: checks, refusal of bad ones, version routing, devices."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import torch

from service.contract.loading import LoadingError, resolve_device
from service.errors import ModelNotFound
from service.handoff.versions import ModelVersions
from service.policy import VersionPolicy
from service.runtime.control import ModelControl, loader

CPU = torch.device("cpu")


def load_registry(root, device, half, warmup_batch):
    """Every artifact under ``root``, loaded as the runtime loads them at start (policy: all)."""
    control = ModelControl(root, "none", VersionPolicy.parse("all"),
                           loader(device, half, warmup_batch, "auto"))
    models, refused = control.start_up()
    registry = ModelVersions(refused=refused)
    for model in models:
        registry.add(model)
    return registry


def test_loads_every_good_artifact_and_refuses_a_tampered_one(artifact_root, caplog):
    with caplog.at_level(logging.ERROR, logger="service.runtime"):
        registry = load_registry(artifact_root, CPU, half=False, warmup_batch=4)
    assert [m.key for m in registry] == ["mnist-tiny/1", "mnist-tiny/2"]
    assert list(registry.refused) == [str(artifact_root / "tampered" / "1")]
    assert "sha256" in caplog.text and "tampered" in caplog.text
    assert all(m.load_seconds > 0 for m in registry)


def test_newest_version_is_the_default_and_every_version_is_addressable(artifact_root):
    registry = load_registry(artifact_root, CPU, half=False, warmup_batch=1)
    assert registry.get("mnist-tiny").manifest.version == "2"
    assert registry.get("mnist-tiny", "1").manifest.version == "1"
    with pytest.raises(ModelNotFound):
        registry.get("mnist-tiny", "3")
    with pytest.raises(ModelNotFound):
        registry.get("tampered")


def test_forward_takes_uint8_and_float_and_mixed_batches_alike(artifact_root, mnist):
    model = load_registry(artifact_root, CPU, half=False, warmup_batch=1).get("mnist-tiny")
    x = mnist["test_x"][:4, None]
    as_uint8 = model.forward([x])
    as_float = model.forward([x.astype(np.float32) / 255])
    mixed = model.forward([x[:2], x[2:].astype(np.float32) / 255])
    np.testing.assert_allclose(as_uint8, as_float, atol=1e-4)
    np.testing.assert_allclose(mixed, as_float, atol=1e-4)


def test_served_module_is_frozen_and_matches_the_exported_file(artifact_root, mnist):
    from training.export import load_scripted

    model = load_registry(artifact_root, CPU, half=False, warmup_batch=1).get("mnist-tiny")
    # Frozen: the weights are graph constants, no parameters are left as attributes.
    assert not list(model.module.parameters())
    exported = load_scripted(artifact_root / "mnist-tiny" / "2" / "model.pt")
    x = mnist["test_x"][:8, None]
    with torch.inference_mode():
        expected = exported(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model.forward([x]), expected, atol=1e-5)


def test_no_loadable_model_is_a_start_up_error(tmp_path, artifact_root):
    shutil.copytree(artifact_root / "tampered", tmp_path / "tampered")
    with pytest.raises(LoadingError, match="no loadable model"):
        load_registry(tmp_path, CPU, half=False, warmup_batch=1)
    with pytest.raises(LoadingError, match="not a folder"):
        load_registry(tmp_path / "missing", CPU, half=False, warmup_batch=1)


@pytest.mark.parametrize("file", ["../../escape.pt", "/etc/passwd", "..", "sub/model.pt"])
def test_a_manifest_whose_file_leaves_its_folder_is_refused(tmp_path, artifact_root, file):
    folder = tmp_path / "mnist-tiny" / "1"
    shutil.copytree(artifact_root / "mnist-tiny" / "1", folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps(manifest | {"file": file}))
    with pytest.raises(LoadingError, match="plain file name inside the artifact folder"):
        load_registry(tmp_path, CPU, half=False, warmup_batch=1)


def test_a_model_file_that_is_a_symbolic_link_is_refused(tmp_path, artifact_root):
    folder = tmp_path / "mnist-tiny" / "1"
    shutil.copytree(artifact_root / "mnist-tiny" / "1", folder)
    (folder / "model.pt").rename(tmp_path / "elsewhere.pt")
    (folder / "model.pt").symlink_to(tmp_path / "elsewhere.pt")  # same bytes, same checksum
    with pytest.raises(LoadingError, match="symbolic link"):
        load_registry(tmp_path, CPU, half=False, warmup_batch=1)


def test_device_resolution():
    assert resolve_device("cpu", half=False) == CPU
    with pytest.raises(LoadingError, match="needs a CUDA device"):
        resolve_device("cpu", half=True)
    if not torch.cuda.is_available():
        assert resolve_device("auto", half=False) == CPU
        with pytest.raises(LoadingError, match="no CUDA device"):
            resolve_device("cuda", half=False)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("half", [False, True])
def test_cuda_pinned_non_blocking_path_matches_cpu(artifact_root, mnist, half):
    cpu_model = load_registry(artifact_root, CPU, half=False, warmup_batch=1).get("mnist-tiny")
    gpu_model = load_registry(artifact_root, resolve_device("cuda", half), half=half,
                              warmup_batch=8).get("mnist-tiny")
    x = mnist["test_x"][:64, None]
    expected = cpu_model.forward([x])
    got = gpu_model.forward([x])
    assert gpu_model._pinned is not None and gpu_model._pinned.is_pinned()
    np.testing.assert_allclose(got, expected, atol=5e-2 if half else 1e-3)
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.98
