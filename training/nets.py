"""The nets ``--arch`` names. Each takes normalised images ``[N, C, H, W]`` and returns logits.

Every net works for any channel count and image size (8x8 digits, 28x28 MNIST, a folder of RGB photos):
the convolutional ones end in global pooling or an adaptive pool, the MLP flattens what it is given.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


# The channels of cnn's three and cnn4's four convolutions when --widths does not set them.
DEFAULT_WIDTHS: dict[str, tuple[int, ...]] = {"cnn": (12, 24, 48), "cnn4": (16, 32, 64, 128)}
# What an artifact whose manifest records no widths was built with: until version 3 of mnist-cnn, cnn4's
# last convolution had 96 channels and manifests recorded widths only when --widths set them.
UNRECORDED_WIDTHS: dict[str, tuple[int, ...]] = {"cnn": (12, 24, 48), "cnn4": (16, 32, 64, 96)}


def build_net(arch: str, input_shape: Sequence[int], num_classes: int, *,
              hidden: Sequence[int] = (256, 128), activation: str = "relu",
              widths: Sequence[int] = ()) -> nn.Module:
    """A fresh, randomly initialised net of kind ``arch`` (mlp | cnn | cnn4 | classic | resnet); ``widths``
    are the channels of cnn's three or cnn4's four convolutions (empty: ``DEFAULT_WIDTHS``)."""
    channels = input_shape[0]
    if arch == "mlp":
        return MLP(int(torch.tensor(input_shape).prod()), num_classes, hidden, activation)
    if arch == "cnn":
        return CompactCNN(channels, num_classes, tuple(widths) or DEFAULT_WIDTHS[arch])
    if arch == "cnn4":
        return DigitCNN(channels, num_classes, tuple(widths) or DEFAULT_WIDTHS[arch])
    if arch == "classic":
        return ClassicCNN(channels, num_classes)
    if arch == "resnet":
        return ResNet(channels, num_classes)
    raise ValueError(f"unknown architecture {arch!r}")


def recorded_widths(arch: str, training: Mapping[str, Any]) -> tuple[int, ...]:
    """The convolution widths an artifact's net was built with, from its manifest's ``training`` section."""
    return tuple(training.get("widths") or UNRECORDED_WIDTHS.get(arch, ()))


def recorded_net(arch: str, input_shape: Sequence[int], num_outputs: int,
                 training: Mapping[str, Any]) -> nn.Module:
    """A fresh net shaped as an artifact's was, from its architecture and its manifest's ``training``
    section (manifests from before a setting existed get the value of their time)."""
    return build_net(arch, input_shape, num_outputs, hidden=tuple(training.get("hidden", (256, 128))),
                     activation=training.get("activation", "relu"), widths=recorded_widths(arch, training))


class MLP(nn.Sequential):
    """Fully connected layers: the textbook baseline, with a choice of activation."""

    def __init__(self, in_features: int, num_classes: int, hidden: Sequence[int], activation: str) -> None:
        layers: list[nn.Module] = [nn.Flatten()]
        for width in hidden:
            layers += [nn.Linear(in_features, width), _ACTIVATIONS[activation]()]
            in_features = width
        layers.append(nn.Linear(in_features, num_classes))
        super().__init__(*layers)


class GridPool(nn.Module):
    """Average pooling to a ``size`` x ``size`` map that passes a map of that size through untouched.

    On 28x28 digits the map already is 3x3, and ``AdaptiveAvgPool2d``'s backward pass still cost a
    measurable share of a CPU training step (docs/benchmarks.md); other image sizes are pooled exactly as
    ``AdaptiveAvgPool2d(size)`` would.
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] == self.size and x.shape[-1] == self.size:
            return x
        return F.adaptive_avg_pool2d(x, self.size)


def conv_bn(c_in: int, c_out: int, kernel: int = 3, stride: int = 1, relu: bool = True) -> nn.Sequential:
    """Convolution, batch norm and (optionally) ReLU: the unit every conv net here is made of."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False),
                               nn.BatchNorm2d(c_out)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class CompactCNN(nn.Sequential):
    """The default: a small batch-norm CNN chosen for accuracy per multiply-add on a CPU.

    A strided 5x5 stem halves the image at once, so every later layer runs on a quarter of the pixels;
    about 1.1 M multiply-adds per 28x28 image (the pytorch/examples MNIST net needs 12 M).
    """

    def __init__(self, channels: int, num_classes: int,
                 widths: Sequence[int] = DEFAULT_WIDTHS["cnn"]) -> None:
        w1, w2, w3 = widths
        super().__init__(
            conv_bn(channels, w1, kernel=5, stride=2),  # 28 -> 14
            conv_bn(w1, w2),
            nn.MaxPool2d(2),  # 14 -> 7
            conv_bn(w2, w3),
            nn.MaxPool2d(2),  # 7 -> 3
            GridPool(3),  # any other image size -> 3x3 as well
            nn.Flatten(),
            nn.Linear(w3 * 9, num_classes),
        )


class DigitCNN(nn.Sequential):
    """The default since issue 26: the compact net's strided stem, wider, and a fourth convolution.

    Four conv-BN-ReLU layers at 14x14, 7x7 and 3x3, then one linear layer over the 3x3 map: 2.56 M
    multiply-adds per 28x28 image with the default widths, within 2.5x the compact net's, and wide enough
    layers that a CPU trains it at almost the same images per second (docs/training.md).
    """

    def __init__(self, channels: int, num_classes: int,
                 widths: Sequence[int] = DEFAULT_WIDTHS["cnn4"]) -> None:
        w1, w2, w3, w4 = widths
        super().__init__(
            conv_bn(channels, w1, kernel=5, stride=2),  # 28 -> 14
            conv_bn(w1, w2),
            nn.MaxPool2d(2),  # 14 -> 7
            conv_bn(w2, w3),
            nn.MaxPool2d(2),  # 7 -> 3
            conv_bn(w3, w4),
            GridPool(3),  # any other image size -> 3x3 as well
            nn.Flatten(),  # where a stroke is matters (a 6 is a rotated 9): no global pooling
            nn.Linear(w4 * 9, num_classes),
        )


class ClassicCNN(nn.Sequential):
    """The pytorch/examples MNIST net, the one "Flask + PyTorch" tutorials serve: a baseline to compare with.

    Two unpadded 3x3 convolutions (32 and 64 channels), a 2x2 max pool, dropout, a 128-unit hidden layer:
    about 1.2 M parameters and 12 M multiply-adds per 28x28 image, ten times the default ``cnn``. The pool
    is adaptive so that any image size works; on 28x28 images (24x24 after the convolutions) it is exactly
    the original's 2x2 max pool.
    """

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__(
            nn.Conv2d(channels, 32, 3),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3),
            nn.ReLU(inplace=True),
            nn.AdaptiveMaxPool2d(12),
            nn.Dropout(0.25),
            nn.Flatten(),
            nn.Linear(64 * 12 * 12, 128),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(128, num_classes),
        )


class ResidualBlock(nn.Module):
    """Two 3x3 conv-bn units with a shortcut; a strided block halves the image and widens the channels."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(c_in, c_out, stride=stride), conv_bn(c_out, c_out, relu=False))
        self.shortcut = (nn.Identity() if stride == 1 and c_in == c_out
                         else conv_bn(c_in, c_out, kernel=1, stride=stride, relu=False))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class ResNet(nn.Sequential):
    """The stronger net: a small residual network (for Fashion-MNIST, colour folders, or a GPU)."""

    def __init__(self, channels: int, num_classes: int, widths: Sequence[int] = (32, 64, 128)) -> None:
        w1, w2, w3 = widths
        super().__init__(
            conv_bn(channels, w1),
            ResidualBlock(w1, w1),
            ResidualBlock(w1, w2, stride=2),
            ResidualBlock(w2, w3, stride=2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(0.1),
            nn.Linear(w3, num_classes),
        )


def count_parameters(net: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def count_macs(net: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-adds of the convolutions and linear layers for one example (the cost that dominates)."""
    total = 0

    def count(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += output[0].numel() * module.in_channels * kh * kw // module.groups
        elif isinstance(module, nn.Linear):
            total += module.in_features * module.out_features

    probe = copy.deepcopy(net).eval()
    device = next(probe.parameters(), torch.empty(0)).device
    hooks = [m.register_forward_hook(count) for m in probe.modules()]
    with torch.inference_mode():
        probe(torch.zeros(1, *input_shape, device=device))
    for hook in hooks:
        hook.remove()
    return total


def fold_batchnorm(net: nn.Module) -> nn.Module:
    """A copy of ``net`` in eval mode with every Conv2d -> BatchNorm2d pair folded into one Conv2d.

    Same outputs (up to float rounding), fewer passes over memory at inference time.
    """
    folded = copy.deepcopy(net).eval()
    for module in folded.modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module._modules.items())
        for (conv_key, conv), (bn_key, bn) in itertools.pairwise(children):
            if isinstance(conv, nn.Conv2d) and type(bn) is nn.BatchNorm2d and bn.track_running_stats:
                module._modules[conv_key] = fuse_conv_bn_eval(conv, bn)
                module._modules[bn_key] = nn.Identity()
    return folded
