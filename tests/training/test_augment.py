"""Batched affine jitter: same shape, small and repeatable changes, on whatever device the batch is."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from training import augment
from training.augment import AffineJitter


def _digit_like() -> torch.Tensor:
    images = torch.zeros(8, 1, 28, 28)
    images[:, :, 10:18, 12:16] = 1.0  # a bar in the middle
    return images


def test_no_jitter_is_the_identity() -> None:
    images = _digit_like()
    out = AffineJitter(degrees=0, translate=0, scale=0)(images)
    torch.testing.assert_close(out, images, atol=1e-5, rtol=0)


def test_jitter_moves_pixels_but_keeps_the_content_on_the_canvas() -> None:
    images = _digit_like()
    out = AffineJitter()(images, generator=torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    assert not torch.allclose(out, images)
    mass = out.sum(dim=(1, 2, 3)) / images.sum(dim=(1, 2, 3))
    assert ((mass > 0.75) & (mass < 1.3)).all(), mass  # zoom of at most 10 %: ink is neither lost nor made


def test_same_generator_seed_same_jitter() -> None:
    images = _digit_like()
    a = AffineJitter()(images, generator=torch.Generator().manual_seed(3))
    b = AffineJitter()(images, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)


def test_matrices_stay_within_the_limits() -> None:
    m = AffineJitter(degrees=0, translate=0.1, scale=0).matrices(1000, torch.Generator().manual_seed(0))
    torch.testing.assert_close(m[:, :, :2], torch.eye(2).expand(1000, 2, 2))
    assert m[:, :, 2].abs().max() <= 0.2  # 10 % of the image is 0.2 in grid coordinates


def _mnist_digits(datasets_dir, count: int = 64) -> torch.Tensor:
    from training.datasets import read_idx

    return read_idx(datasets_dir / "mnist" / "t10k-images-idx3-ubyte.gz")[:count].unsqueeze(1).float() / 255


def test_digit_jitter_is_repeatable_and_keeps_the_ink(datasets_dir) -> None:
    from training.augment import DigitJitter

    digits = _mnist_digits(datasets_dir)
    a = DigitJitter()(digits, generator=torch.Generator().manual_seed(1))
    b = DigitJitter()(digits, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, digits)
    mass = a.sum(dim=(1, 2, 3)) / digits.sum(dim=(1, 2, 3))
    assert ((mass > 0.4) & (mass < 2.5)).all(), mass  # thicker or thinner, never gone or doubled


def test_recentre_matches_the_services_preparation_of_an_upload(datasets_dir) -> None:
    import numpy as np

    from service.contract.images import mnist_style
    from training.augment import AffineJitter, recentre

    digits = _mnist_digits(datasets_dir)
    moved = AffineJitter(degrees=0, translate=0.15, scale=0.25)(digits, torch.Generator().manual_seed(2))
    ours = recentre(moved)
    service = torch.stack([torch.from_numpy(mnist_style(np.asarray(m[0] * 255).round().astype(np.uint8)))
                           for m in moved]).unsqueeze(1).float() / 255
    # Both put the ink back where MNIST has it (the off-centre, resized digits were far from it).
    assert (ours - service).abs().mean() < 0.5 * (moved - service).abs().mean()
    assert (ours - digits).abs().mean() < 0.5 * (moved - digits).abs().mean()
    blank = torch.zeros(1, 1, 28, 28)
    assert torch.equal(recentre(blank), blank)


def test_the_fast_grid_field_and_stroke_filters_equal_torchs_own_operators() -> None:
    generator = torch.Generator().manual_seed(5)
    theta = torch.randn(7, 2, 3, generator=generator)
    expected = F.affine_grid(theta, [7, 1, 28, 20], align_corners=False)
    torch.testing.assert_close(augment.affine_grid(theta, 28, 20), expected)

    coarse = torch.rand(6, 16, generator=generator)
    upsampled = F.interpolate(coarse.view(6, 1, 4, 4), size=(28, 28), mode="bicubic", align_corners=True)
    torch.testing.assert_close((coarse @ augment._bicubic_basis(4, (28, 28))).view(6, 1, 28, 28), upsampled)

    images = torch.rand(5, 1, 28, 28, generator=generator)
    torch.testing.assert_close(augment._dilate(images), F.max_pool2d(images, 3, stride=1, padding=1))
