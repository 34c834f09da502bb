"""A model's rollout in human form: the model page's routing section (pure: the routing document of
``GET /v1/models/{name}/routing`` in, sentences and table rows out). ``ui/static/model.js`` redraws the
rows from the same document every few seconds, in the same form."""

from __future__ import annotations

from typing import Any

# How many changes the page lists, newest first (the document carries more).
CHANGES = 10


def summary(document: dict[str, Any]) -> list[str]:
    """What requests for the model get now, one sentence per part: the default, the canary, the shadow."""
    effective, written = document["effective"] or {}, document["state"]
    default = effective.get("default")
    lines = [f"A request that names no version gets version {default}"
             + (" (the default set by an operator)." if written["default"] else " (the newest served: no "
                                                                                 "default is set).")]
    canary = written["canary"]
    if canary:
        budget = canary["budget"]
        limits = [f"error rate {_percent(budget['max_error_rate'])}" if budget["max_error_rate"] is not None
                  else "", f"disagreement {_percent(budget['max_disagreement'])}"
                  if budget["max_disagreement"] is not None else ""]
        limits = [limit for limit in limits if limit]
        taking = "" if effective.get("canary") else " It is not served yet: its share goes to the default."
        lines.append(f"Canary: version {canary['version']} answers {canary['percent']:g} % of them (by "
                     f"X-Client-ID); rolled back by itself above {' or '.join(limits) or 'nothing'} over "
                     f"{budget['min_requests']} requests.{taking}")
    shadow = written["shadow"]
    if shadow:
        lines.append(f"Shadow: version {shadow['version']} gets a copy of {shadow['percent']:g} % of the "
                     "default's requests after they are answered; its answers are compared, never sent.")
    return lines


def rows(document: dict[str, Any]) -> list[dict[str, str]]:
    """One row per served version: its role, requests, errors, latency, agreement and commonest labels."""
    effective = document["effective"] or {}
    roles = {effective.get("default"): "default"}
    for role in ("canary", "shadow"):
        if effective.get(role):
            roles[effective[role]["version"]] = role
    out = []
    for version in reversed(document["served"]):
        figures = document["versions"][version]
        requests = figures["requests"]
        agreement = [f"{role} {_percent(a['rate'])} of {a['agree'] + a['disagree']}"
                     for role, a in figures["agreement"].items() if a["rate"] is not None]
        labels = sorted(figures["labels"].items(), key=lambda item: -item[1])[:3]
        latency = figures["latency_seconds"]
        out.append({"version": version, "role": roles.get(version, ""), "requests": str(requests["total"]),
                    "errors": str(requests["errors"]), "error_rate": _percent(requests["error_rate"]),
                    "p50": _ms(latency["p50"]), "p99": _ms(latency["p99"]),
                    "agreement": "; ".join(agreement) or "—",
                    "labels": ", ".join(f"{label} {count}" for label, count in labels) or "—"})
    return out


def changes(document: dict[str, Any]) -> list[str]:
    """The latest changes, newest first, one sentence each."""
    out = []
    for entry in reversed(document["history"][-CHANGES:]):
        parts = [f"default {entry['default'] or 'newest'}"]
        if entry.get("canary"):
            parts.append(f"canary {entry['canary']['version']} at {entry['canary']['percent']:g} %")
        if entry.get("shadow"):
            parts.append(f"shadow {entry['shadow']['version']} at {entry['shadow']['percent']:g} %")
        reason = f": {entry['reason']}" if entry.get("reason") else ""
        out.append(f"{entry['at']} {entry['action']} by {entry['by']}{reason} → {', '.join(parts)}")
    return out


def _percent(fraction: float | None) -> str:
    return "—" if fraction is None else f"{fraction * 100:.1f} %"


def _ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1000:.1f} ms"
