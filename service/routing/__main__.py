"""``python -m service.routing``: show or change a model's routing state in the model repository.

Writes ``<model dir>/<name>/routing.json`` as the management API does (atomically, under its lock, with a
history entry); a running service takes the change within half a second (its runtimes poll the file).
Use it where the repository is writable and the API is not at hand: a Kubernetes Job that mounts the
models volume, a shell beside the service. Exit status 0, 1 when the change is refused (no earlier
default, no canary to stop, a file that cannot be written), 2 for a bad argument.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from service.contract import routing_state, routing_store
from service.contract.routing_state import Budget, RoutingConflict, RoutingError, RoutingState


def _fraction(text: str) -> float | None:
    if text == "off":
        return None
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError(text)
    return value


def parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(prog="python -m service.routing", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=Path(os.environ.get("TRAINSERVE_MODEL_DIR") or "models"),
                   help="the model repository (default: $TRAINSERVE_MODEL_DIR, else models)")
    commands = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("show", help="the state and its history, as JSON").add_argument("name")
    c = commands.add_parser("set-default", help="make VERSION the default (promotes a canary of it)")
    c.add_argument("name")
    c.add_argument("version")
    commands.add_parser("rollback", help="go back to the default before this one").add_argument("name")
    c = commands.add_parser("canary", help="start a canary of VERSION at PERCENT, or change its percent")
    c.add_argument("name")
    c.add_argument("version")
    c.add_argument("percent", type=float)
    d = Budget()
    c.add_argument("--max-error-rate", type=_fraction, default=d.max_error_rate, metavar="F",
                   help=f"roll back above this share of 5xx answers, or off (default: {d.max_error_rate})")
    c.add_argument("--max-disagreement", type=_fraction, default=d.max_disagreement, metavar="F",
                   help="roll back above this share of examples labelled unlike the default, or off "
                        f"(default: {d.max_disagreement})")
    c.add_argument("--min-requests", type=int, default=d.min_requests, metavar="N",
                   help=f"judge the budget once this many requests are measured (default: {d.min_requests})")
    commands.add_parser("stop-canary", help="stop the canary").add_argument("name")
    c = commands.add_parser("shadow", help="copy PERCENT of the default's requests to VERSION")
    c.add_argument("name")
    c.add_argument("version")
    c.add_argument("percent", type=float)
    commands.add_parser("stop-shadow", help="stop the shadow").add_argument("name")
    return p


def _step(args: argparse.Namespace, current: Callable[[str], str]) -> tuple[str, Callable[..., RoutingState]]:
    """The change a command makes, as the store applies it."""
    if args.command == "set-default":
        return "set-default", lambda s: routing_state.set_default(s, args.version)
    if args.command == "rollback":
        return "rollback", routing_state.rollback
    if args.command == "canary":
        budget = Budget(args.max_error_rate, args.max_disagreement, args.min_requests)
        pinned = current(args.version)
        return "canary", lambda s: routing_state.start_canary(s, args.version, args.percent, budget, pinned)
    if args.command == "stop-canary":
        return "stop-canary", routing_state.stop_canary
    if args.command == "shadow":
        pinned = current(args.version)
        return "shadow", lambda s: routing_state.start_shadow(s, args.version, args.percent, pinned)
    return "stop-shadow", routing_state.stop_shadow


def main(argv: list[str] | None = None) -> int:
    """Run one command; print the state (and its history, for show) as JSON."""
    args = parser().parse_args(argv)
    model_dir: Path = args.model_dir
    try:
        if args.command == "show":
            written, history = routing_store.read(model_dir, args.name)
            print(json.dumps(written.to_dict() | {"history": history}, indent=1))
            return 0
        on_disk = routing_store.versions_on_disk(model_dir, args.name)
        if not on_disk:
            raise RoutingError(f"{model_dir / args.name} holds no version of a model")
        if getattr(args, "version", None) is not None and args.version not in on_disk:
            raise RoutingError(f"model {args.name!r} has no version {args.version!r} (it has "
                               f"{', '.join(on_disk)})")
        action, step = _step(args,
                             lambda candidate: routing_store.newest_other(on_disk, args.name, candidate))
        written = routing_store.change(model_dir, args.name, step, action, by="cli")
    except RoutingError as exc:
        print(f"python -m service.routing: {exc}", file=sys.stderr)
        return 2
    except (RoutingConflict, OSError) as exc:
        print(f"python -m service.routing: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(written.to_dict(), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
