"""Slow clients against a running service: many connections trickle their headers (or their body) while
a probe measures ``GET /healthz`` and single-image predictions. Prints what the probe saw.

    python scripts/slow_clients.py --url http://127.0.0.1:8000 --clients 200 --mode headers --seconds 20

Modes: ``headers`` (slowloris: a header line every second, never finished), ``body`` (headers complete,
a declared body sent a few bytes per second), ``idle`` (connect and send nothing). Bounded: every client
stops after ``--seconds``; connections go to the given URL only (use 127.0.0.1).
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import socket
import statistics
import threading
import time
from urllib.parse import urlsplit

from PIL import Image


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (28, 28), 0).save(buf, format="PNG")
    return buf.getvalue()


def slow_client(host: str, port: int, mode: str, stop: threading.Event, opened: list[int],
                closed_by_server: list[int]) -> None:
    """One connection that sends as slowly as ``mode`` says until ``stop`` (or the server closes it)."""
    try:
        sock = socket.create_connection((host, port), timeout=5)
    except OSError:
        return
    opened.append(1)
    sock.settimeout(1.0)
    try:
        if mode == "body":
            sock.sendall(b"POST /v1/models/mnist-cnn:classify HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: image/png\r\nContent-Length: 100000\r\n\r\n")
        elif mode == "headers":
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        n = 0
        while not stop.wait(1.0):
            if mode == "headers":
                sock.sendall(f"X-Slow-{n}: {n}\r\n".encode())
            elif mode == "body":
                sock.sendall(b'{"x":1}   ')
            n += 1
            try:
                if sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                    closed_by_server.append(1)
                    return
            except (BlockingIOError, TimeoutError):
                pass
    except OSError:
        closed_by_server.append(1)
    finally:
        sock.close()


def probe(host: str, port: int, path: str, body: bytes | None, seconds: float) -> tuple[list[float], int]:
    """Latencies (ms) of one fresh-connection request per 0.1 s, and the count that failed or timed out."""
    latencies, failed = [], 0
    end = time.monotonic() + seconds
    headers = {"Content-Type": "image/png"} if body else {}
    while time.monotonic() < end:
        started = time.perf_counter()
        try:
            conn = http.client.HTTPConnection(host, port, timeout=5)
            conn.request("POST" if body else "GET", path, body=body, headers=headers)
            ok = conn.getresponse().status == 200
            conn.close()
        except OSError:
            ok = False
        if ok:
            latencies.append((time.perf_counter() - started) * 1000)
        else:
            failed += 1
        time.sleep(0.1)
    return latencies, failed


def summary(latencies: list[float], failed: int) -> dict[str, float]:
    """p50/p99/max of what answered, and how many did not."""
    if not latencies:
        return {"answered": 0, "failed": failed}
    ordered = sorted(latencies)
    return {"answered": len(ordered), "failed": failed, "p50_ms": round(statistics.median(ordered), 2),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2),
            "max_ms": round(ordered[-1], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--mode", choices=["headers", "body", "idle"], default="headers")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--model", default="mnist-cnn")
    args = parser.parse_args()
    parts = urlsplit(args.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    stop, opened, closed = threading.Event(), [], []
    clients = [threading.Thread(target=slow_client, args=(host, port, args.mode, stop, opened, closed),
                                daemon=True) for _ in range(args.clients)]
    for thread in clients:
        thread.start()
    time.sleep(2.0)  # let every slow client get its connection in first
    results: dict[str, dict[str, float]] = {}
    png = _png()
    threads = [threading.Thread(target=lambda key, path, body: results.__setitem__(
        key, summary(*probe(host, port, path, body, args.seconds - 2))), args=args_)
        for args_ in (("healthz", "/healthz", None),
                      ("predict", f"/v1/models/{args.model}:classify", png))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stop.set()
    for thread in clients:
        thread.join(timeout=5)
    print(json.dumps({"mode": args.mode, "clients": args.clients, "connected": len(opened),
                      "closed_by_server": len(closed), **results}, indent=1))


if __name__ == "__main__":
    main()
