"""Batched data augmentation on tensors.

Per-sample PIL transforms would cost more than the net itself on a 2-core CPU; one ``affine_grid`` /
``grid_sample`` per batch costs a few milliseconds and runs on whatever device the batch is on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AffineJitter:
    """A small random affine per image: enough that digits not centred like MNIST's still work."""

    degrees: float = 10.0  # rotation, uniform in [-degrees, degrees]
    translate: float = 0.1  # shift, uniform in [-translate, translate] of the image size, per axis
    scale: float = 0.1  # zoom, uniform in [1 - scale, 1 + scale]

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Warp float images ``[N, C, H, W]``; the parameters are drawn on the CPU from ``generator``."""
        theta = self.matrices(len(images), generator).to(images.device, images.dtype)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def matrices(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` random ``2x3`` sampling matrices (output pixel -> input pixel, normalised coordinates)."""
        uniform = torch.rand(n, 4, generator=generator) * 2 - 1  # in [-1, 1)
        angle = uniform[:, 0] * math.radians(self.degrees)
        zoom = 1 + uniform[:, 1] * self.scale
        # affine_grid maps output to input coordinates, so the inverse zoom; the grid spans [-1, 1], so a
        # shift of a fraction f of the image is 2f.
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        shift = uniform[:, 2:] * (2 * self.translate)
        row0 = torch.stack([cos, -sin, shift[:, 0]], dim=1)
        row1 = torch.stack([sin, cos, shift[:, 1]], dim=1)
        return torch.stack([row0, row1], dim=1)
