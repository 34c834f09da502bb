"""Which version answers a request, and which one gets a copy of it: one pure function every door calls
(the Flask handlers, the event loop's hot path, the gRPC servicer), over the catalog the runtimes sent.

- A version in the URL always wins (role ``named``): no canary, no copy.
- Otherwise the request is addressed to the default. A canary answers it when the request's *point* falls
  in the canary's share; the point is fixed by the client's key (``X-Client-ID``), so a client sees one
  version consistently, and drawn at random for a request without one. A request the canary answers is
  then compared with the default (the copy goes to the default), which is what the canary's disagreement
  budget is judged on.
- A request the default answers gets a shadow copy with the shadow's probability.
- A canary or shadow the runtimes do not serve (not loaded yet, refused) is ignored: its share goes to
  the default; a default that is not served gives way to the newest version, as with no routing at all.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from service.contract.routing_state import CANARY, DEFAULT, NAMED, SHADOW
from service.handoff.catalog import Catalog, ServedModel

CLIENT_HEADER = "X-Client-ID"
_SPAN = float(1 << 64)


@dataclass(frozen=True, slots=True)
class Routed:
    """The version that answers (``model``, in its ``role``) and the one a copy goes to after the answer
    (``other``: the default, for a canary's answer; the shadow, for a default's), if any."""

    model: ServedModel
    role: str  # default, canary or named
    other: ServedModel | None = None

    @property
    def compared_role(self) -> str:
        """The candidate the comparison is about: the canary, or the shadow."""
        return CANARY if self.role == CANARY else SHADOW

    @property
    def candidate(self) -> ServedModel:
        """The candidate version of the comparison (the canary that answered, or the shadow)."""
        assert self.other is not None
        return self.model if self.role == CANARY else self.other


def point(name: str, client_key: str | None, draw: Callable[[], float] = random.random) -> float:
    """Where a request falls in [0, 1): fixed by its client key (per model), else drawn at random."""
    if not client_key:
        return draw()
    digest = hashlib.blake2b(f"{name}\0{client_key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SPAN


def resolve(catalog: Catalog, name: str, version: str | None, client_key: str | None,
            draw: Callable[[], float] = random.random) -> Routed:
    """The routing of one request for ``name`` (``version`` from its URL, or None); ModelNotFound for a
    model or version that is not served."""
    if version is not None:
        return Routed(catalog.get(name, version), NAMED)
    default = catalog.get(name)
    state = catalog.routing.get(name)
    if state is None:
        return Routed(default, DEFAULT)
    served = catalog.models[name]
    canary, shadow = state.canary, state.shadow
    if canary is not None and canary.version in served and canary.version != default.manifest.version \
            and point(name, client_key, draw) * 100 < canary.percent:
        return Routed(served[canary.version], CANARY, default)
    if shadow is not None and shadow.version in served and shadow.version != default.manifest.version \
            and draw() * 100 < shadow.percent:
        return Routed(default, DEFAULT, served[shadow.version])
    return Routed(default, DEFAULT)


def effective(catalog: Catalog, name: str) -> dict[str, Any]:
    """What requests for ``name`` get now: the default served, and the canary and shadow that take part
    (those the runtimes serve and that are not the default)."""
    default = catalog.default_version(name)
    state = catalog.routing.get(name)
    served = catalog.models[name]
    out: dict[str, Any] = {"default": default, "canary": None, "shadow": None,
                           "revision": state.revision if state else 0}
    if state is not None and state.canary and state.canary.version in served \
            and state.canary.version != default:
        out["canary"] = {"version": state.canary.version, "percent": state.canary.percent}
    if state is not None and state.shadow and state.shadow.version in served \
            and state.shadow.version != default:
        out["shadow"] = state.shadow.to_dict()
    return out
