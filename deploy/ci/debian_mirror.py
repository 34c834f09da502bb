"""Print the Debian mirror this machine's apt uses for a suite: CI names no mirror host (stdlib only).

Reads one-line ``.list`` files and deb822 ``.sources`` files and prints the first ``deb`` URI that serves
the suite itself (``bookworm``, not ``bookworm-security``). Exit status 1 when none does.

Usage: python debian_mirror.py [--suite bookworm] [FILE ...]   (default: the system's apt sources)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

APT = Path("/etc/apt")


def system_sources() -> list[Path]:
    """apt's source files, in the order apt reads them."""
    folder = APT / "sources.list.d"
    return [APT / "sources.list", *sorted(folder.glob("*.list")), *sorted(folder.glob("*.sources"))]


def _one_line(text: str) -> Iterator[tuple[list[str], list[str]]]:
    for line in text.splitlines():
        words = line.split("#", 1)[0].split(None, 1)
        if len(words) < 2 or words[0] != "deb":
            continue
        rest = words[1]
        if rest.startswith("["):  # options: deb [arch=amd64 signed-by=...] URI SUITE COMPONENT...
            rest = rest.split("]", 1)[-1]
        uri_suite = rest.split()
        if len(uri_suite) >= 2:
            yield [uri_suite[0]], [uri_suite[1]]


def _deb822(text: str) -> Iterator[tuple[list[str], list[str]]]:
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, value = line.split(":", 1)
            fields[key.strip().lower()] = value.strip()
        if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes").lower() != "no":
            yield fields.get("uris", "").split(), fields.get("suites", "").split()


def mirror(files: Iterable[Path], suite: str) -> str | None:
    """The first URI that serves ``suite`` itself, or None."""
    for path in files:
        if not path.is_file():
            continue
        parse = _deb822 if path.suffix == ".sources" else _one_line
        for uris, suites in parse(path.read_text()):
            if suite in suites:
                return next((u for u in uris if u.startswith(("http://", "https://"))), None)
    return None


def main() -> int:
    """Parse arguments and print the mirror."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="bookworm", help="Debian suite (default: bookworm)")
    parser.add_argument("files", nargs="*", type=Path, help="apt source files (default: the system's)")
    args = parser.parse_args()
    found = mirror(args.files or system_sources(), args.suite)
    if found is None:
        print(f"no apt source serves {args.suite}", file=sys.stderr)
        return 1
    print(found)
    return 0


if __name__ == "__main__":
    sys.exit(main())
