"""Benchmark the running service with wrk beside the model's own in-process throughput, in one run.

    python scripts/bench_serve.py --start                      # starts gunicorn itself, then measures
    python scripts/bench_serve.py --url http://127.0.0.1:8000  # measures a service that is already up

For each payload (one PNG per request on the image endpoint; one UINT8 image, or 64, per OIP request) and
each concurrency it runs wrk with a Lua script and prints images/s, p50 and p99 latency, errors, and the
throughput as a fraction of the model's in-process images/s at batch 64 (loaded from the same artifact,
same torch thread budget as the whole service). Results also go to bench-results/serve.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "%(content_type)s"
local f = assert(io.open("%(body)s", "rb"))
wrk.body = f:read("*all")
f:close()
done = function(summary, latency, requests)
  local e = summary.errors
  local errors = e.status + e.connect + e.read + e.write + e.timeout
  io.write(string.format('RESULT {"requests": %%d, "duration_us": %%d, "errors": %%d, "p50_us": %%d, ' ..
    '"p99_us": %%d}\\n', summary.requests, summary.duration, errors,
    latency:percentile(50), latency:percentile(99)))
end
"""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="service URL (default: %(default)s)")
    parser.add_argument("--start", action="store_true", help="start gunicorn with the current TRAINSERVE_* "
                        "environment on --url's port, and stop it at the end")
    parser.add_argument("--model-dir", default=os.environ.get("TRAINSERVE_MODEL_DIR", "models"),
                        help="artifacts, for the in-process figure (default: %(default)s)")
    parser.add_argument("--model", default=None, help="model name (default: the first one served)")
    parser.add_argument("--concurrency", default="1,8,32,64", help="wrk connections (default: %(default)s)")
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run (default: %(default)s)")
    parser.add_argument("--payloads", default="png,json,json64",
                        help="png (one image), json (one UINT8 tensor), json64 (64 images per request) "
                             "(default: %(default)s)")
    parser.add_argument("--out", default="bench-results/serve.json",
                        help="JSON results (default: %(default)s)")
    return parser.parse_args()


def in_process(model_dir: Path, name: str, seconds: float = 3.0) -> dict[str, float]:
    """The model's own images/s at batch 1 and 64, loaded as the service loads it, on all cores."""
    import torch

    from service.manifest import artifact_dirs
    from service.registry import load_model

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    folder = [d for d in artifact_dirs(model_dir) if d.parent.name == name][-1]
    model = load_model(folder, torch.device("cpu"), half=False, warmup_batch=64)
    result = {}
    for batch in (1, 64):
        x = np.random.default_rng(0).integers(0, 256, (batch, *model.manifest.input.shape), dtype=np.uint8)
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            model.forward([x])
            done += batch
        result[f"batch{batch}_images_per_s"] = done / (time.perf_counter() - started)
    return result


IMAGES_PER_REQUEST = {"png": 1, "json": 1, "json64": 64}


def payload(kind: str, name: str, folder: Path) -> tuple[str, str, Path]:
    """(path, content type, body file) for one request of this kind, made of a real-looking digit."""
    from PIL import Image

    digit = np.zeros((28, 28), np.uint8)
    digit[5:23, 12:16] = 255  # a plain "1"
    body = folder / f"{kind}.body"
    if kind == "png":
        buffer = io.BytesIO()
        Image.fromarray(digit).save(buffer, format="PNG")
        body.write_bytes(buffer.getvalue())
        return f"/v1/models/{name}:classify", "image/png", body
    n = IMAGES_PER_REQUEST[kind]
    request = {"inputs": [{"name": "input", "shape": [n, 1, 28, 28], "datatype": "UINT8",
                           "data": np.tile(digit.ravel(), n).tolist()}], "outputs": [{"name": "label"}]}
    body.write_text(json.dumps(request))
    return f"/v2/models/{name}/infer", "application/json", body


def wrk(url: str, content_type: str, body: Path, connections: int, seconds: int, folder: Path,
        images: int) -> dict:
    """One wrk run; its Lua script prints a RESULT line with totals and latency percentiles."""
    script = folder / "bench.lua"
    script.write_text(LUA % {"content_type": content_type, "body": body})
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(script), url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    result = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT"))[7:])
    return {"connections": connections, "images_per_request": images,
            "images_per_s": images * result["requests"] / (result["duration_us"] / 1e6),
            "p50_ms": result["p50_us"] / 1000, "p99_ms": result["p99_us"] / 1000, "errors": result["errors"]}


def report(row: dict) -> str:
    """One result line."""
    return (f"{row['payload']:6} c={row['connections']:<3} {row['images_per_s']:8.0f} images/s  "
            f"p50 {row['p50_ms']:7.2f} ms  p99 {row['p99_ms']:7.2f} ms  errors {row['errors']:<4} "
            f"{row['ratio']:.2f} x in-process")


def start_service(url: str) -> subprocess.Popen:
    env = dict(os.environ, TRAINSERVE_BIND=url.split("//", 1)[1])
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "service/gunicorn.conf.py",
                             "service.app:create_app()"], cwd=REPO, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc
        except requests.RequestException:
            time.sleep(0.2)
    proc.terminate()
    raise SystemExit("the service did not become ready in 120 s")


def main() -> None:
    args = parse_args()
    proc = start_service(args.url) if args.start else None
    try:
        name = args.model or requests.get(f"{args.url}/v1/models", timeout=5).json()["models"][0]["name"]
        reference = in_process(Path(args.model_dir), name)
        print(f"in-process {name}: batch 1 {reference['batch1_images_per_s']:.0f} images/s, "
              f"batch 64 {reference['batch64_images_per_s']:.0f} images/s")
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            for kind in args.payloads.split(","):
                path, content_type, body = payload(kind, name, Path(tmp))
                for c in (int(v) for v in args.concurrency.split(",")):
                    row = wrk(args.url + path, content_type, body, c, args.duration, Path(tmp),
                              IMAGES_PER_REQUEST[kind])
                    row |= {"payload": kind, "ratio": row["images_per_s"] / reference["batch64_images_per_s"]}
                    rows.append(row)
                    print(report(row))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=60)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": name, "in_process": reference, "runs": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
