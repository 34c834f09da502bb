"""A model's routing state: which version a request that names no version gets (the *default*), and the
candidates beside it: a *canary* that answers a share of those requests instead, and a *shadow* that gets
a copy of a share of them, whose answers are only compared with the default's and never sent.

Pure: the records, their JSON form, the changes an operator makes (each a function from one state to the
next, refusing what makes no sense) and the automatic rollback's rule. The file is ``store.py``'s; which
version a request gets is ``split.py``'s. With no state written, a bare name gets the newest served
version, as before routing existed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Any

VERSION = re.compile(r"^[1-9][0-9]{0,8}$")  # an artifact version (service/contract/manifest.py's rule)
# Roles a version plays for a request: the default, the canary, or the one the URL names; a shadow copy.
DEFAULT, CANARY, NAMED, SHADOW = "default", "canary", "named", "shadow"
# How many earlier defaults a rollback can go back through.
MAX_PREVIOUS = 10


class RoutingError(ValueError):
    """A value that cannot be a routing setting (the API answers 400)."""


class RoutingConflict(ValueError):
    """A change that contradicts the state it is made to (the API answers 409)."""


@dataclass(frozen=True)
class Budget:
    """What a canary may cost before it is rolled back by itself: its error rate (5xx answers of the
    requests it answered) and its disagreement with the default (examples whose label differs, of those
    compared), each judged only once it is measured over ``min_requests``. None turns a check off."""

    max_error_rate: float | None = 0.05
    max_disagreement: float | None = 0.10
    min_requests: int = 100

    def __post_init__(self) -> None:
        for name in ("max_error_rate", "max_disagreement"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                raise RoutingError(f"{name} must be a fraction from 0 to 1, or null to turn it off")
        if not isinstance(self.min_requests, int) or isinstance(self.min_requests, bool) \
                or not 1 <= self.min_requests <= 10**9:
            raise RoutingError("min_requests must be a whole number from 1")

    def breached(self, requests: int, errors: int, compared: int, disagreed: int) -> tuple[str, str] | None:
        """Which budget the canary broke (errors or disagreement) and how, or None while within both."""
        if self.max_error_rate is not None and requests >= self.min_requests \
                and errors / requests > self.max_error_rate:
            return "errors", (f"error rate {errors / requests:.1%} over {requests} requests is above its "
                              f"budget of {self.max_error_rate:.1%}")
        if self.max_disagreement is not None and compared >= self.min_requests \
                and disagreed / compared > self.max_disagreement:
            return "disagreement", (f"disagreement with the default {disagreed / compared:.1%} over "
                                    f"{compared} compared examples is above its budget of "
                                    f"{self.max_disagreement:.1%}")
        return None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {"max_error_rate": self.max_error_rate, "max_disagreement": self.max_disagreement,
                "min_requests": self.min_requests}


@dataclass(frozen=True)
class Canary:
    """A version that answers ``percent`` of the requests addressed to the default."""

    version: str
    percent: float
    budget: Budget = Budget()
    since: int = 0  # the revision that started it (the store sets it): the rollback watcher counts from there

    def __post_init__(self) -> None:
        check_version(self.version)
        check_percent(self.percent)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {"version": self.version, "percent": self.percent, "budget": self.budget.to_dict(),
                "since": self.since}


@dataclass(frozen=True)
class Shadow:
    """A version that gets a copy of ``percent`` of the requests the default answers, after the answer."""

    version: str
    percent: float

    def __post_init__(self) -> None:
        check_version(self.version)
        check_percent(self.percent)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {"version": self.version, "percent": self.percent}


@dataclass(frozen=True)
class RoutingState:
    """One model's routing (see the module docstring). ``default`` None: the newest served version."""

    default: str | None = None
    canary: Canary | None = None
    shadow: Shadow | None = None
    previous: tuple[str | None, ...] = ()  # the defaults before this one, the latest last (None: newest)
    revision: int = 0  # grows with every change written

    def pins(self) -> set[str]:
        """The versions the runtimes keep loaded whatever the version policy says: the default, the
        canary, the shadow, and the default a rollback goes back to (so that it is instant)."""
        named = {self.default, self.previous[-1] if self.previous else None,
                 self.canary.version if self.canary else None, self.shadow.version if self.shadow else None}
        return {v for v in named if v is not None}

    def same_routes(self, other: RoutingState) -> bool:
        """Whether the two route requests alike (the revision and the rollback stack aside)."""
        return (self.default, self.canary, self.shadow) == (other.default, other.canary, other.shadow)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (the file's, without its history; the catalog's)."""
        return {"revision": self.revision, "default": self.default,
                "canary": self.canary.to_dict() if self.canary else None,
                "shadow": self.shadow.to_dict() if self.shadow else None, "previous": list(self.previous)}

    @classmethod
    def from_dict(cls, data: Any) -> RoutingState:
        """Parse the JSON form; RoutingError naming what is wrong."""
        if not isinstance(data, dict):
            raise RoutingError("the routing state must be a JSON object")
        try:
            canary, shadow = data.get("canary"), data.get("shadow")
            default = data.get("default")
            if default is not None:
                check_version(default)
            previous = tuple(data.get("previous") or ())
            for version in previous:
                if version is not None:
                    check_version(version)
            revision = data.get("revision", 0)
            if not isinstance(revision, int) or revision < 0:
                raise RoutingError("revision must be a whole number")
            return cls(
                default=default, previous=previous, revision=revision,
                canary=Canary(canary["version"], canary["percent"], Budget(**canary.get("budget", {})),
                              int(canary.get("since", 0))) if canary else None,
                shadow=Shadow(shadow["version"], shadow["percent"]) if shadow else None)
        except (KeyError, TypeError) as exc:
            raise RoutingError(f"the routing state is malformed ({type(exc).__name__}: {exc})") from None


def check_version(version: Any) -> None:
    """RoutingError unless ``version`` is a version number, as a string."""
    if not isinstance(version, str) or not VERSION.match(version):
        raise RoutingError(f"version {str(version)[:20]!r} is not a version number (1, 2, ...)")


def check_percent(percent: Any) -> None:
    """RoutingError unless ``percent`` is a number over 0 and at most 100."""
    if isinstance(percent, bool) or not isinstance(percent, (int, float)) or not math.isfinite(percent) \
            or not 0 < percent <= 100:
        raise RoutingError(f"percent must be a number over 0 and at most 100, not {str(percent)[:20]}")


# --- changes -----------------------------------------------------------------------------------------------
# Each takes the state and returns the next (the store bumps the revision and writes the history). Those
# that start a candidate take ``current``: the version a bare name gets now, pinned as the default when
# none is, so that a new version (the newest) does not become the default by being published.
def set_default(state: RoutingState, version: str) -> RoutingState:
    """Make ``version`` the default; a canary or shadow of that version ends (it is promoted)."""
    check_version(version)
    if state.default == version:
        return state
    previous = (*state.previous, state.default)[-MAX_PREVIOUS:]
    return _without_default_candidates(replace(state, default=version, previous=previous))


def rollback(state: RoutingState) -> RoutingState:
    """Go back to the default before this one (None: the newest version, as before any was set)."""
    if not state.previous:
        raise RoutingConflict("there is no earlier default to roll back to")
    return _without_default_candidates(replace(state, default=state.previous[-1],
                                               previous=state.previous[:-1]))


def pin_default(state: RoutingState, current: str) -> RoutingState:
    """Make the version a bare name gets now the default, when none is set (what requests get is
    unchanged; a version published next does not take over)."""
    return state if state.default is not None else replace(state, default=current)


def start_canary(state: RoutingState, version: str, percent: float, budget: Budget | None,
                 current: str) -> RoutingState:
    """Start a canary of ``version`` at ``percent``, or change the percent (and the budget, when given) of
    the running one."""
    default = state.default or current
    if version == default:
        raise RoutingConflict(f"version {version} is the default: a canary must be another version")
    pinned = replace(state, default=default)
    if state.canary is not None and state.canary.version == version:
        return replace(pinned, canary=replace(state.canary, percent=percent,
                                              budget=budget or state.canary.budget))
    return replace(pinned, canary=Canary(version, percent, budget or Budget()))


def stop_canary(state: RoutingState) -> RoutingState:
    """End the canary: every request addressed to the default gets the default."""
    if state.canary is None:
        raise RoutingConflict("there is no canary to stop")
    return replace(state, canary=None)


def start_shadow(state: RoutingState, version: str, percent: float, current: str) -> RoutingState:
    """Copy ``percent`` of the default's requests to ``version`` (or change the percent of the shadow)."""
    default = state.default or current
    if version == default:
        raise RoutingConflict(f"version {version} is the default: a shadow must be another version")
    return replace(state, default=default, shadow=Shadow(version, percent))


def stop_shadow(state: RoutingState) -> RoutingState:
    """End the shadow."""
    if state.shadow is None:
        raise RoutingConflict("there is no shadow to stop")
    return replace(state, shadow=None)


def _without_default_candidates(state: RoutingState) -> RoutingState:
    canary = state.canary if state.canary is None or state.canary.version != state.default else None
    shadow = state.shadow if state.shadow is None or state.shadow.version != state.default else None
    return replace(state, canary=canary, shadow=shadow)
