"""Batched data augmentation on tensors.

Per-sample PIL transforms would cost more than the net itself on a 2-core CPU; one ``grid_sample`` per
batch costs a fraction of a millisecond and runs on whatever device the batch is on. The grid, the elastic
field and the stroke filters are written as the cheapest exact equivalents of torch's own operators (a
matrix product, shifted maxima): on a CPU ``affine_grid``, bicubic ``interpolate`` and a 3x3
``max_pool2d`` over a batch of 28x28 digits were a large share of a training step (docs/benchmarks.md).
"""

from __future__ import annotations

import functools
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
        grid = affine_grid(theta, *images.shape[2:])
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


@dataclass(frozen=True)
class DigitJitter:
    """How digits really vary, batched: an affine warp with shear and aspect, an elastic distortion, a
    thicker or thinner stroke, and (``recentre``) MNIST's own normalisation applied again afterwards.

    MNIST digits were cropped to their ink, fitted into a 20x20 box and centred by mass in 28x28, and the
    service prepares every upload the same way (``service/contract/images.py``); ``recentre`` does that to
    each warped digit, so that what the net trains on is what the service will hand it (docs/training.md).
    """

    affine: AffineJitter = AffineJitter(degrees=12.0, translate=0.08, scale=0.12)
    aspect: float = 0.12  # the height scaled by up to 1 +- aspect against the width
    shear: float = 0.15  # horizontal shear, in units of the height
    elastic: float = 1.5  # the largest displacement of the smooth random field, in pixels (0: none)
    elastic_grid: int = 4  # the field is drawn on this coarse grid and smoothly upsampled: its wavelength
    stroke: float = 0.5  # the share of digits whose stroke is thickened (up to a pixel) or thinned
    recentre: bool = False

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Warp float images ``[N, 1, H, W]`` of light ink on black; the draws come from ``generator``."""
        n, _, height, width = images.shape
        theta = self.matrices(n, generator).to(images.device, images.dtype)
        grid = affine_grid(theta, height, width)
        if self.elastic > 0:
            grid = grid + self.field(n, (height, width), generator).to(images.device, images.dtype)
        out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if self.stroke > 0:
            out = self.restroke(out, generator)
        return recentre(out) if self.recentre else out

    def matrices(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """The affine jitter's matrices with shear and aspect composed in (output -> input coordinates)."""
        theta = self.affine.matrices(n, generator)
        uniform = torch.rand(n, 2, generator=generator) * 2 - 1
        extra = torch.zeros(n, 2, 2)
        extra[:, 0, 0] = 1.0
        extra[:, 0, 1] = uniform[:, 0] * self.shear
        extra[:, 1, 1] = 1 + uniform[:, 1] * self.aspect
        return torch.cat([theta[:, :, :2] @ extra, theta[:, :, 2:]], dim=2)

    def field(self, n: int, size: tuple[int, int], generator: torch.Generator | None = None) -> torch.Tensor:
        """A smooth random displacement ``[N, H, W, 2]`` in grid units, at most ``elastic`` pixels."""
        cells = self.elastic_grid * self.elastic_grid
        coarse = torch.rand(n * 2, cells, generator=generator) * 2 - 1
        # Bicubic upsampling is linear: one product with the upsampled basis images (exact, and cheaper).
        smooth = (coarse @ _bicubic_basis(self.elastic_grid, size)).view(n, 2, *size)
        scale = torch.tensor([2.0 / size[1], 2.0 / size[0]]).view(1, 2, 1, 1)  # pixels -> grid units
        return (smooth.clamp(-1, 1) * self.elastic * scale).permute(0, 2, 3, 1)

    def restroke(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Blend each chosen digit towards its dilation (thicker) or erosion (thinner)."""
        n = len(images)
        amount = (torch.rand(n, generator=generator) * 2 - 1).to(images.device, images.dtype)
        chosen = (torch.rand(n, generator=generator) < self.stroke).to(images.device, images.dtype)
        amount = (amount * chosen).view(n, 1, 1, 1)
        thicker = _dilate(images)
        thinner = -_dilate(-images)
        # A full erosion wipes out MNIST's thinnest strokes (about two pixels): thin by at most half of it.
        target = torch.where(amount > 0, thicker, thinner)
        return images + torch.where(amount > 0, amount, -0.5 * amount) * (target - images)


def recentre(images: torch.Tensor, box: int = 20, ink: float = 0.25) -> torch.Tensor:
    """MNIST's normalisation, batched: scale each image's ink box to fit ``box`` pixels and put its centre
    of mass in the middle (``service/contract/images.py``'s ``mnist_style``, with bilinear resampling)."""
    n, _, height, width = images.shape
    peak = images.amax(dim=(1, 2, 3), keepdim=True)
    mask = images > ink * peak
    rows, cols = mask.any(dim=3).flatten(1), mask.any(dim=2).flatten(1)
    extent = torch.maximum(_span(rows), _span(cols)).clamp_min(1).to(images.dtype)
    scale = box / extent
    mass = images.sum(dim=(1, 2, 3)).clamp_min(1e-6)
    ys = torch.arange(height, dtype=images.dtype, device=images.device)
    xs = torch.arange(width, dtype=images.dtype, device=images.device)
    cy = (images.sum(dim=(1, 3)).flatten(1) * ys).sum(dim=1) / mass
    cx = (images.sum(dim=(1, 2)).flatten(1) * xs).sum(dim=1) / mass
    theta = torch.zeros(n, 2, 3, dtype=images.dtype, device=images.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / scale
    # Output pixel index i samples input index c + (i - size/2) / scale (index coordinates, as mnist_style
    # places the mass), written in affine_grid's normalised coordinates.
    theta[:, 0, 2] = (2 * cx + 1 - 1 / scale) / width - 1
    theta[:, 1, 2] = (2 * cy + 1 - 1 / scale) / height - 1
    grid = affine_grid(theta, height, width)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    blank = (peak.flatten() <= 0).view(n, 1, 1, 1)
    return torch.where(blank, images, out)


def affine_grid(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``F.affine_grid(theta, [N, C, height, width], align_corners=False)`` as one plain matrix product with
    a cached base grid (equal up to float rounding; on a CPU both ``affine_grid`` and a broadcast batched
    product are slow)."""
    n = len(theta)
    base = _base_grid(height, width).to(theta.device, theta.dtype)  # [H*W, 3]
    grid = base @ theta.reshape(n * 2, 3).T  # [H*W, N*2]
    return grid.view(height * width, n, 2).transpose(0, 1).reshape(n, height, width, 2)


@functools.lru_cache(maxsize=8)
def _base_grid(height: int, width: int) -> torch.Tensor:
    """The identity's sampling grid in homogeneous coordinates, ``[H*W, 3]``."""
    identity = torch.eye(2, 3).unsqueeze(0)
    grid = F.affine_grid(identity, [1, 1, height, width], align_corners=False).view(height * width, 2)
    return torch.cat([grid, torch.ones(height * width, 1)], dim=1)


@functools.lru_cache(maxsize=8)
def _bicubic_basis(cells: int, size: tuple[int, int]) -> torch.Tensor:
    """``[cells*cells, H*W]``: row k is the bicubic upsampling (align_corners) of the k-th unit image."""
    units = torch.eye(cells * cells).view(cells * cells, 1, cells, cells)
    return F.interpolate(units, size=size, mode="bicubic", align_corners=True).view(cells * cells, -1)


def _dilate(images: torch.Tensor) -> torch.Tensor:
    """A 3x3 max filter (``max_pool2d(images, 3, 1, 1)``) as two passes of shifted maxima, separably."""
    padded = F.pad(images, (1, 1, 1, 1), value=float("-inf"))
    rows = torch.maximum(torch.maximum(padded[..., :-2], padded[..., 1:-1]), padded[..., 2:])
    return torch.maximum(torch.maximum(rows[..., :-2, :], rows[..., 1:-1, :]), rows[..., 2:, :])


def _span(present: torch.Tensor) -> torch.Tensor:
    """Per row of a boolean ``[N, L]``, the distance from its first to its last True, plus one."""
    length = present.shape[1]
    first = present.float().argmax(dim=1)
    last = length - 1 - present.flip(1).float().argmax(dim=1)
    return (last - first + 1).clamp_min(0)
