"""The CI image smoke test's helpers: the Debian mirror comes from apt's own sources, and the PNG the smoke
test uploads is a real image."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="module")
def debian_mirror(kit: Any) -> Any:
    """deploy/ci/debian_mirror.py as a module."""
    return kit.load(kit.deploy / "ci" / "debian_mirror.py")


def test_mirror_from_deb822_sources(debian_mirror: Any, tmp_path: Path) -> None:
    """The URI of the stanza that serves the suite itself; security and disabled stanzas are passed over."""
    sources = tmp_path / "debian.sources"
    sources.write_text(
        "Types: deb\nURIs: http://mirror.invalid/debian-security\nSuites: bookworm-security\n"
        "Components: main\n\n"
        "Types: deb\nURIs: http://disabled.invalid/debian\nSuites: bookworm\nEnabled: no\n\n"
        "# a comment\nTypes: deb deb-src\nURIs: http://mirror.invalid/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n")
    assert debian_mirror.mirror([sources], "bookworm") == "http://mirror.invalid/debian"
    assert debian_mirror.mirror([sources], "trixie") is None


def test_mirror_from_one_line_lists(debian_mirror: Any, tmp_path: Path) -> None:
    """One-line entries, with and without [options]; deb-src and comments ignored; first file wins."""
    missing = tmp_path / "sources.list"
    listed = tmp_path / "extra.list"
    listed.write_text("# deb http://commented.invalid/debian bookworm main\n"
                      "deb-src http://src.invalid/debian bookworm main\n"
                      "deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] https://one.invalid/debian "
                      "bookworm main\n"
                      "deb http://two.invalid/debian bookworm main\n")
    assert debian_mirror.mirror([missing, listed], "bookworm") == "https://one.invalid/debian"


def test_smoke_png_is_a_real_image(kit: Any) -> None:
    """The upload the smoke test sends decodes to the pixels it was made from."""
    image_module = pytest.importorskip("PIL.Image", reason="pillow (serve extra)")
    smoke = kit.load(kit.deploy / "ci" / "smoke_request.py")
    pixels = bytes(range(256)) * 3 + bytes(16)
    from io import BytesIO

    with image_module.open(BytesIO(smoke.png(pixels))) as image:
        assert image.size == (28, 28) and image.mode == "L"
        assert image.tobytes() == pixels


def test_image_smoke_script_parses(kit: Any) -> None:
    """bash -n on the CI step (it runs for real in CI, as root)."""
    kit.run("bash", "-n", str(kit.deploy / "ci" / "image-smoke.sh"))
