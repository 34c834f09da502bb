"""The nets: logits of the right shape for any image size, the documented sizes, and scriptable."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from training.config import ARCHITECTURES
from training.export import ArtifactInfo, PixelClassifier, export
from training.nets import GridPool, build_net, count_macs, count_parameters, fold_batchnorm, recorded_widths

SHAPES = [(1, 28, 28), (1, 8, 8), (3, 32, 32)]


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("shape", SHAPES)
def test_logits_for_any_image_size(arch: str, shape: tuple[int, int, int]) -> None:
    net = build_net(arch, shape, num_classes=7).eval()
    with torch.inference_mode():
        assert net(torch.randn(5, *shape)).shape == (5, 7)


def test_parameter_counts_and_cost_on_mnist() -> None:
    mlp = build_net("mlp", (1, 28, 28), 10)
    assert count_parameters(mlp) == 784 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10
    cnn = build_net("cnn", (1, 28, 28), 10)
    assert count_parameters(cnn) == CNN_PARAMETERS
    assert count_macs(cnn, (1, 28, 28)) == CNN_MACS
    classic = build_net("classic", (1, 28, 28), 10)  # the figures pytorch/examples' MNIST net has
    assert count_parameters(classic) == 9 * 32 + 32 + 9 * 32 * 64 + 64 + 9216 * 128 + 128 + 128 * 10 + 10
    conv_macs = 26 * 26 * 32 * 9 + 24 * 24 * 64 * 32 * 9
    assert count_macs(classic, (1, 28, 28)) == conv_macs + 9216 * 128 + 128 * 10
    cnn4 = build_net("cnn4", (1, 28, 28), 10)  # the default since issue 26: within 2.5x cnn's cost
    assert count_parameters(cnn4) == 109_178
    assert count_macs(cnn4, (1, 28, 28)) == 14 * 14 * (16 * 25 + 32 * 16 * 9) + 7 * 7 * 64 * 32 * 9 \
        + 3 * 3 * 128 * 64 * 9 + 128 * 9 * 10 <= 2.5 * CNN_MACS
    resnet = build_net("resnet", (1, 28, 28), 10)
    assert count_parameters(resnet) == RESNET_PARAMETERS
    assert count_macs(resnet, (1, 28, 28)) > 10 * CNN_MACS  # the stronger, costlier one


@pytest.mark.parametrize(("activation", "kind"),
                         [("relu", nn.ReLU), ("tanh", nn.Tanh), ("sigmoid", nn.Sigmoid)])
def test_mlp_hidden_layers_and_activation(activation: str, kind: type[nn.Module]) -> None:
    net = build_net("mlp", (1, 8, 8), 10, hidden=(32, 16, 8), activation=activation)
    assert [m.out_features for m in net.modules() if isinstance(m, nn.Linear)] == [32, 16, 8, 10]
    assert sum(isinstance(m, kind) for m in net.modules()) == 3


@pytest.mark.parametrize(("arch", "widths"), [("cnn", (8, 16, 24)), ("cnn4", (16, 32, 64, 128))])
def test_widths_set_each_convolution(arch: str, widths: tuple[int, ...]) -> None:
    net = build_net(arch, (1, 28, 28), 10, widths=widths)
    assert tuple(m.out_channels for m in net.modules() if isinstance(m, nn.Conv2d)) == widths
    assert net[-1].in_features == widths[-1] * 9  # the last 3x3 map, flattened
    assert build_net(arch, (1, 28, 28), 10, widths=()).state_dict().keys() == \
        build_net(arch, (1, 28, 28), 10).state_dict().keys()


def test_an_artifact_that_records_no_widths_is_rebuilt_with_the_widths_of_its_time() -> None:
    # mnist-cnn/1 and /2 were trained before manifests recorded widths, /2 when cnn4's last layer had 96.
    assert recorded_widths("cnn4", {}) == recorded_widths("cnn4", {"widths": []}) == (16, 32, 64, 96)
    assert recorded_widths("cnn4", {"widths": [16, 32, 64, 128]}) == (16, 32, 64, 128)
    assert recorded_widths("cnn", {}) == (12, 24, 48) and recorded_widths("mlp", {}) == ()


def test_the_grid_pool_passes_a_3x3_map_through_and_pools_any_other_as_adaptive_pooling_does() -> None:
    pool = GridPool(3)
    same = torch.rand(2, 4, 3, 3)
    assert pool(same) is same
    for shape in ((2, 4, 7, 7), (1, 3, 5, 9)):
        images = torch.rand(shape)
        torch.testing.assert_close(pool(images), nn.AdaptiveAvgPool2d(3)(images))


def test_unknown_architecture() -> None:
    with pytest.raises(ValueError, match="unknown architecture"):
        build_net("vgg", (1, 28, 28), 10)


@pytest.mark.parametrize("arch", ["cnn", "cnn4", "resnet"])
def test_folding_batch_norm_keeps_the_outputs(arch: str) -> None:
    torch.manual_seed(0)
    net = build_net(arch, (1, 28, 28), 10)
    net.train()
    with torch.no_grad():
        for _ in range(3):  # move the running statistics away from their initial values
            net(torch.randn(32, 1, 28, 28) * 2 + 0.5)
    net.eval()
    folded = fold_batchnorm(net)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules())  # the original is untouched
    x = torch.randn(16, 1, 28, 28)
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), net(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_net_exports_as_torchscript(arch: str, tmp_path: Path) -> None:
    model = PixelClassifier(build_net(arch, (3, 16, 16), 4), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    info = ArtifactInfo(name="n", architecture=arch, labels=tuple("abcd"), input_shape=(3, 16, 16),
                        metrics={}, training={}, dataset={})
    probe = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    assert (export(model, info, tmp_path, probe) / "model.pt").is_file()


CNN_PARAMETERS = 17_758  # (12, 24, 48) channels: 300 + 2,592 + 10,368 conv, 168 batch norm, 4,330 linear
CNN_MACS = 1_079_184  # per 28x28 image; the pytorch/examples MNIST net needs about 12 M
RESNET_PARAMETERS = 308_074
