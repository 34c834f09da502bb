"""Generated non-digits: every kind, in both forms the model meets, the same images for the same seed."""

from __future__ import annotations

import torch

from training.nondigits import DRAWN, KINDS, generate


def test_every_kind_comes_in_turn_as_uint8_images() -> None:
    images, kinds = generate(200, seed=1)
    assert images.shape == (200, 1, 28, 28) and images.dtype == torch.uint8
    names = [KINDS[k] for k in kinds.tolist()]
    # A noise draw is labelled by what it made: pixel noise, or a blotchy field (a kind of its own).
    assert [("noise" if name == "blotches" else name) for name in names] == \
        [DRAWN[k % len(DRAWN)] for k in range(200)]
    assert {"noise", "blotches"} <= set(names)


def test_the_same_seed_gives_the_same_images_and_another_seed_others() -> None:
    a, _ = generate(30, seed=3)
    b, _ = generate(30, seed=3)
    c, _ = generate(30, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_blanks_and_solids_are_uniform_and_scribbles_fill_the_mnist_box() -> None:
    images, kinds = generate(100, seed=5)
    flat = images.flatten(1)
    for kind in ("blank", "solid"):
        chosen = flat[kinds == KINDS.index(kind)]
        assert (chosen == chosen[:, :1]).all(), kind
    scribbles = images[kinds == KINDS.index("scribble")][:, 0]
    # Prepared like an upload: the ink fits the central 20x20 box, the 4-pixel margin is dark.
    assert scribbles[:, :3].max() == 0 and scribbles[:, -3:].max() == 0
    assert (scribbles.flatten(1) > 0).float().mean(1).min() > 0.05
