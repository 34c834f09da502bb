"""Print the project's requirements for some extras, one a line, read from pyproject.toml (stdlib only).

The image installs these before it copies the code, so a code change does not reinstall them.
Usage: python requirements.py pyproject.toml serve [train ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

import tomllib


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    """The base dependencies plus those of each extra; references to the project itself are dropped."""
    project = tomllib.loads(pyproject.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    unknown = sorted(set(extras) - set(optional))
    if unknown:
        raise SystemExit(f"unknown extras {unknown}; pyproject.toml has {sorted(optional)}")
    found = list(project["dependencies"])
    for extra in extras:
        found += optional[extra]
    self_ref = project["name"] + "["
    return [req for req in found if not req.replace(" ", "").startswith(self_ref)]


if __name__ == "__main__":
    print("\n".join(requirements(Path(sys.argv[1]), sys.argv[2:])))
