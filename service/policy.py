"""Which versions of each model the runtime serves, as Triton's ``version_policy``: ``latest:N`` (the N
newest), ``all``, or ``specific:1,3``; one default for every model and overrides per model name, e.g.
``latest:1;mnist-cnn=latest:2;fashion-mnist-cnn=specific:3``. Pure: no torch, no files."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from service.contract.manifest import version_key

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")  # a model name (service/contract/manifest.py)
_RULE = re.compile(r"^(?:latest:(?P<latest>[1-9][0-9]{0,3})|(?P<all>all)"
                   r"|specific:(?P<specific>[0-9]+(?:,[0-9]+)*))$")


@dataclass(frozen=True)
class Rule:
    """One model's policy."""

    kind: str  # latest, all or specific
    count: int = 1  # latest: how many
    versions: frozenset[str] = frozenset()  # specific: which

    @classmethod
    def parse(cls, text: str) -> Rule:
        """``latest:N``, ``all`` or ``specific:V[,V...]``; ValueError otherwise."""
        match = _RULE.match(text.strip())
        if match is None:
            raise ValueError(f"{text!r} is not latest:N, all or specific:V[,V...]")
        if match["latest"]:
            return cls("latest", int(match["latest"]))
        if match["all"]:
            return cls("all")
        return cls("specific", versions=frozenset(str(int(v)) for v in match["specific"].split(",")))

    def select(self, versions: Iterable[str]) -> set[str]:
        """The versions this rule serves, out of those available."""
        available = sorted(versions, key=version_key)
        if self.kind == "all":
            return set(available)
        if self.kind == "latest":
            return set(available[-self.count:])
        return set(self.versions & set(available))

    def __str__(self) -> str:
        if self.kind == "latest":
            return f"latest:{self.count}"
        if self.kind == "specific":
            return "specific:" + ",".join(sorted(self.versions, key=version_key))
        return "all"


@dataclass(frozen=True)
class VersionPolicy:
    """The default rule and the per-model overrides."""

    default: Rule = field(default_factory=lambda: Rule("latest", 1))
    overrides: dict[str, Rule] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> VersionPolicy:
        """``RULE`` and/or ``NAME=RULE`` entries separated by ``;``; ValueError naming the bad part."""
        default, overrides = Rule("latest", 1), {}
        for part in (p.strip() for p in text.split(";")):
            if not part:
                continue
            name, sep, rule = part.rpartition("=")
            if not sep:
                default = Rule.parse(part)
            elif _NAME.match(name.strip()):
                overrides[name.strip()] = Rule.parse(rule)
            else:
                raise ValueError(f"{name!r} is not a model name")
        return cls(default, overrides)

    def rule(self, name: str) -> Rule:
        """The rule for one model."""
        return self.overrides.get(name, self.default)

    def select(self, name: str, versions: Iterable[str]) -> set[str]:
        """The versions of ``name`` to serve, out of those available."""
        return self.rule(name).select(versions)
