"""export(): a scripted artifact that matches the eager model, a matching manifest, or nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from service.contract.manifest import read_manifest, sha256_file, verify_checksum
from training.export import ArtifactInfo, ExportError, PixelClassifier, export, load_scripted
from training.nets import build_net


def _trained_looking(net: nn.Module) -> nn.Module:
    """Give batch norm non-trivial statistics, as training would, so folding it really changes weights."""
    generator = torch.Generator().manual_seed(0)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.3)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)
    return net.eval()


def _info(**overrides: object) -> ArtifactInfo:
    values: dict = {"name": "tiny", "architecture": "cnn", "labels": tuple("0123456789"),
                    "input_shape": (1, 28, 28), "metrics": {"test_accuracy": 0.5},
                    "training": {"epochs": 1}, "dataset": {"name": "mnist"}}
    return ArtifactInfo(**{**values, **overrides})


def _probe() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8, generator=generator)


def test_export_writes_a_checked_artifact(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = PixelClassifier(_trained_looking(build_net("cnn", (1, 28, 28), 10)), (0.13,), (0.31,))
    report = tmp_path / "curves.png"
    report.write_bytes(b"\x89PNG fake")
    folder = export(model, _info(), tmp_path / "models", _probe(), reports=[report])

    assert folder == tmp_path / "models" / "tiny" / "1"
    assert sorted(p.name for p in folder.iterdir()) == ["curves.png", "manifest.json", "model.pt"]
    assert folder.stat().st_mode & 0o755 == 0o755  # readable by the service's user, not only the trainer's
    manifest = read_manifest(folder)
    assert manifest.sha256 == sha256_file(folder / "model.pt")
    verify_checksum(manifest, folder)
    assert manifest.parameters == sum(p.numel() for p in model.parameters())
    assert manifest.input.shape == (1, 28, 28) and manifest.output.shape == (10,)

    scripted = load_scripted(folder / "model.pt")
    probe = _probe()
    with torch.inference_mode():
        expected = model(probe)
        torch.testing.assert_close(scripted(probe), expected, atol=1e-4, rtol=0)
        torch.testing.assert_close(scripted(probe.float() / 255), expected, atol=1e-4, rtol=0)
    assert not any(m.original_name == "BatchNorm2d" for m in scripted.modules())  # folded away


def test_versions_count_up_and_are_never_overwritten(tmp_path: Path) -> None:
    model = PixelClassifier(build_net("mlp", (1, 28, 28), 10, hidden=(8,)), (0.5,), (0.5,))
    assert export(model, _info(), tmp_path, _probe()).name == "1"
    assert export(model, _info(), tmp_path, _probe()).name == "2"
    with pytest.raises(ExportError, match="already exists"):
        export(model, _info(version="2"), tmp_path, _probe())


class _ActsDifferentlyScripted(nn.Module):
    """A net whose scripted form really computes something else: the parity check must catch it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(28 * 28, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.fc(x.flatten(1))
        if torch.jit.is_scripting():
            logits = logits + 0.01
        return logits


def test_failed_parity_fails_the_export_and_leaves_nothing(tmp_path: Path) -> None:
    model = PixelClassifier(_ActsDifferentlyScripted(), (0.5,), (0.5,))
    with pytest.raises(ExportError, match="differs from the eager one"):
        export(model, _info(), tmp_path, _probe())
    assert list((tmp_path / "tiny").iterdir()) == []  # no version, no staging folder
