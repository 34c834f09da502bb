"""Other-style digits: rendered from the installed Debian fonts and prepared as the service prepares an
upload."""

from __future__ import annotations

import pytest
import torch

from training.datasets import DataError
from training.rendered import FONTS, font_files, render_digits


@pytest.fixture(scope="module")
def fonts() -> list:
    try:
        return font_files()
    except DataError as exc:
        pytest.skip(str(exc))


def test_each_font_draws_every_digit_as_an_mnist_style_input(fonts) -> None:
    drawn = render_digits(2, seed=1, fonts=fonts[:3])
    assert drawn.images.shape == (60, 1, 28, 28) and drawn.images.dtype == torch.uint8
    assert drawn.labels.tolist() == [d for _ in range(3) for d in range(10) for _ in range(2)]
    # Light strokes on black, fitted into the middle 20x20 with the centre of mass near the middle.
    pictures = drawn.images[:, 0].float()
    assert pictures[:, :3].max() == 0 and pictures[:, :, -3:].max() == 0
    rows = (pictures.sum(dim=2) * torch.arange(28.0)).sum(dim=1) / pictures.sum(dim=(1, 2))
    assert ((rows - 14).abs() < 2).all()


def test_the_same_seed_renders_the_same_digits(fonts) -> None:
    a = render_digits(1, seed=3, fonts=fonts[:2])
    b = render_digits(1, seed=3, fonts=fonts[:2])
    assert torch.equal(a.images, b.images)


def test_no_font_installed_names_the_packages(tmp_path) -> None:
    with pytest.raises(DataError, match="apt-get install fonts-dejavu-core"):
        font_files(tmp_path)
    assert "fonts-humor-sans" in FONTS
