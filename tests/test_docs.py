"""The README stays short and readable, and no page of the documentation points at something missing."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from service.config import ServiceConfig

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = [README, REPO / "CONTRIBUTING.md", REPO / "deploy" / "README.md", REPO / "models" / "README.md",
         REPO / "samples" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
# Files the README's commands name: @samples/x.png for curl, models/..., docs/...
PATH_IN_CODE = re.compile(r"(?<![\w/.-])((?:samples|docs|models|deploy|scripts)/[\w./-]*\w)")


def _prose_lines(text: str) -> list[str]:
    """Lines outside fenced code blocks and tables."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and not line.startswith("|"):
            lines.append(line)
    return lines


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors for a page's headings."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_the_readme_is_under_200_lines_and_no_prose_line_is_over_120_characters():
    text = README.read_text()
    assert len(text.splitlines()) < 200
    long = [line for line in _prose_lines(text) if len(line) > 120]
    assert not long, long


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_and_anchor_exists(page):
    missing = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            missing.append(target)
            continue
        if anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            missing.append(target)
    assert not missing, missing


def test_every_file_the_readmes_commands_name_is_in_the_repository():
    for page in (README, REPO / "docs" / "serving.md"):
        named = set(PATH_IN_CODE.findall(page.read_text()))
        missing = [p for p in named if not (REPO / p).exists()]
        assert not missing, (page.name, missing)


def test_docs_settings_describes_every_setting_of_the_service():
    text = (REPO / "docs" / "settings.md").read_text()
    for field in dataclasses.fields(ServiceConfig):
        name = field.name.upper()
        var = name if name.startswith("PROMETHEUS") else f"TRAINSERVE_{name}"
        assert f"`{var}`" in text, var


MAP_ROW = re.compile(r"^\| `((?:service|training)/[\w/]*)` \|[^|]*\|(.*)\|$", re.M)


def test_the_architecture_map_names_every_module_and_only_modules_that_exist():
    rows = {folder: set(re.findall(r"`([\w.]+\.py)`", modules))
            for folder, modules in MAP_ROW.findall((REPO / "docs" / "architecture.md").read_text())}
    tree: dict[str, set[str]] = {}
    for package in ("service", "training"):
        for path in (REPO / package).rglob("*.py"):
            if path.name == "__init__.py" or path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
                continue  # a package's docstring, and protoc's output (named in the map as "the stubs")
            tree.setdefault(f"{path.parent.relative_to(REPO).as_posix()}/", set()).add(path.name)
    assert set(rows) == set(tree), "folders in the map and in the tree differ"
    for folder, names in tree.items():
        assert rows[folder] == names, f"{folder}: missing {names - rows[folder]}, gone {rows[folder] - names}"
