"""What one request costs inside the Flask app, with no HTTP server: the floor under HTTP.

    python scripts/bench_app.py                        # live, png, json, bin64: p50 per request
    python scripts/bench_app.py --payloads png --steps # also the handler's steps, each timed on its own

Each request is handed straight to the WSGI app (``app.wsgi_app``), one after another, in this process, with
the bench_serve.py payloads and the shipped model, served by a real model runtime process (one torch
thread) that this script starts and stops; ``logits`` is the round trip to it. With ``--steps`` the
handler's steps are wrapped with timers where the handlers call them; the wrappers add a little to the
total. Run it from the repository root with the project installed.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from bench_serve import payload  # noqa: E402

# (module, function) pairs timed with --steps: where the v1 and v2 handlers look them up.
STEPS = {"service.web.api.v1": ("model", "load", "image_batch", "logits", "predictions", "respond"),
         "service.web.api.v2": ("infer_body", "parse_tensor", "logits", "oip_outputs", "respond_infer")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--payloads", default="live,png,json,bin64", help="(default: %(default)s)")
    parser.add_argument("--model-dir", type=Path, default=REPO / "models", help="(default: %(default)s)")
    parser.add_argument("--requests", type=int, default=4000, help="per payload (default: %(default)s)")
    parser.add_argument("--steps", action="store_true", help="also time the handler's steps")
    args = parser.parse_args()

    from werkzeug.test import EnvironBuilder

    from service.web.app import create_app

    timings: dict[str, list[float]] = {}
    if args.steps:
        _wrap_steps(timings)
    with tempfile.TemporaryDirectory() as tmp, runtime(args.model_dir, Path(tmp) / "runtime.sock") as sock:
        app = create_app({"model_dir": args.model_dir, "runtime_sockets": str(sock)})
        name = next(iter(app.extensions["trainserve"].catalog)).manifest.name
        for kind in args.payloads.split(","):
            path, content_type, headers, body = payload(kind, name, Path(tmp))
            data = body.read_bytes() if kind != "live" else b""
            environ = EnvironBuilder(path=path, method="POST" if data else "GET", data=data,
                                     headers={"Content-Type": content_type, **headers} if data else {}
                                     ).get_environ()
            timings.clear()
            total = []
            for _ in range(args.requests):
                env = dict(environ, **{"wsgi.input": io.BytesIO(data)})
                started = time.perf_counter()
                response = app.wsgi_app(env, lambda status, headers, exc_info=None: None)
                b"".join(response)
                response.close()
                total.append(time.perf_counter() - started)
            skip = args.requests // 4  # warm-up
            print(f"{kind:6} {1e6 * statistics.median(total[skip:]):8.1f} us per request (p50)")
            for step, times in timings.items():
                print(f"       {step:16} {1e6 * statistics.median(times[skip:]):8.1f} us")


@contextlib.contextmanager
def runtime(model_dir: Path, sock: Path, **env_extra: str) -> Iterator[Path]:
    """A model runtime process on ``sock`` for the duration (one torch thread unless ``env_extra`` says)."""
    from service.handoff.client import RuntimeClient

    env = {**os.environ, "TRAINSERVE_MODEL_DIR": str(model_dir), "TRAINSERVE_TORCH_THREADS": "1",
           "TRAINSERVE_DEVICE": "cpu", **env_extra}
    proc = subprocess.Popen([sys.executable, "-m", "service.runtime", "--socket", str(sock)], env=env)
    client = RuntimeClient([sock])
    try:
        while not (sock.exists() and client.ready()):
            if proc.poll() is not None:
                raise SystemExit("the model runtime did not start")
            time.sleep(0.05)
        client.close()
        yield sock
    finally:
        proc.terminate()
        proc.wait(30)


def _wrap_steps(timings: dict[str, list[float]]) -> None:
    import importlib

    for module_name, names in STEPS.items():
        module = importlib.import_module(module_name)
        for name in names:
            setattr(module, name, _timed(getattr(module, name), name, timings))


def _timed(fn, label: str, timings: dict[str, list[float]]):
    @functools.wraps(fn)
    def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            timings.setdefault(label, []).append(time.perf_counter() - started)
    return timed


if __name__ == "__main__":
    main()
