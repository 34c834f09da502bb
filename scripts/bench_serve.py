"""Benchmark the service with wrk beside the model's in-process throughput and a naive baseline, in one run.

    python scripts/bench_serve.py --start --naive              # what `make bench` runs
    python scripts/bench_serve.py --url http://127.0.0.1:8000  # measure a service that is already up

It loads the served artifact in-process and measures the model's own images/s at batch 1 and 64 (all
cores, one process); then, for each payload and concurrency, runs wrk with a Lua script against the service
``--rounds`` times, each run right after a short in-process batch-64 measurement, and prints the median
images/s, p50/p99 latency, errors, and the throughput as a fraction of the in-process batch-64 figure: the
median of the round-by-round ratios, each round against the in-process figure of its own moment (the
machine's speed drifts within a run), and, in the final listing, also against the best in-process figure
of the whole run. Payloads: one PNG per request (``:classify``), one UINT8 image
per OIP JSON request, 64 UINT8 images per OIP request in the binary tensor extension. With ``--naive`` it
also starts the classic one-forward-per-request Flask app (scripts/naive_app.py, gunicorn sync workers)
on the same artifact and sends it the same PNG, its runs alternating with the service's PNG runs, so the
ratio between the two (the median of the round-by-round ratios) is measured side by side. ``--peer
NAME=URL`` does the same with any other server that answers that PNG POSTed to URL, and the summary gives
the service's PNG throughput as a multiple of each peer's (``--peer-json NAME=URL``: the same for the
OIP JSON request of one image); ``--torchserve`` starts TorchServe on the same artifact
(scripts/torchserve_peer.py) and measures it that way (`make bench-torchserve`), ``--mosec`` the same with
mosec (scripts/mosec_peer.py, PNG and JSON; both: `make bench-peers`). ``--formats
torchscript,exported,aoti`` (with ``--start``) also starts the service once per model format
(TRAINSERVE_MODEL_FORMAT) and runs every payload against each, its rounds alternating with the main
service's. With ``--start``
it also reports time-to-ready, each worker's memory and how each run's connections were spread over the
workers. Results go to bench-results/serve.json and a chart of throughput vs
concurrency to bench-results/serve.png.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from bench_report import chart, report, summary  # noqa: E402

LUA = """
%(request)s
done = function(summary, latency, requests)
  local e = summary.errors
  local errors = e.status + e.connect + e.read + e.write + e.timeout
  io.write(string.format('RESULT {"requests": %%d, "duration_us": %%d, "errors": %%d, "p50_us": %%d, ' ..
    '"p99_us": %%d}\\n', summary.requests, summary.duration, errors,
    latency:percentile(50), latency:percentile(99)))
end
"""

IMAGES_PER_REQUEST = {"png": 1, "json": 1, "bin64": 64, "json64": 64, "naive": 1, "live": 1, "peer": 1,
                      "peerjson": 1}
POST = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "%(content_type)s"
%(extra_headers)s
local f = assert(io.open("%(body)s", "rb"))
wrk.body = f:read("*all")
f:close()
"""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="service URL (default: %(default)s)")
    parser.add_argument("--start", action="store_true", help="start the service (python -m service) with the "
                        "current TRAINSERVE_* environment on --url's port, and stop it at the end")
    parser.add_argument("--gunicorn", action="store_true",
                        help="with --start, also start the service with TRAINSERVE_SERVER=gunicorn on a "
                             "free port and measure its PNG rounds as a peer, alternating")
    parser.add_argument("--naive", action="store_true",
                        help="also measure the naive Flask app (PNG) on --naive-url's port")
    parser.add_argument("--naive-url", default="http://127.0.0.1:8001", help="(default: %(default)s)")
    parser.add_argument("--versus", metavar="URL",
                        help="another trainserve already running there (say, an older commit from a git "
                             "worktree): every payload's rounds alternate between it and the service, and "
                             "the summary gives the service's throughput as a multiple of that one's, the "
                             "median of the round-by-round ratios")
    parser.add_argument("--peer", action="append", default=[], metavar="NAME=URL",
                        help="another server, already running, that answers the PNG POSTed to URL (a whole "
                             "endpoint, e.g. torchserve=http://127.0.0.1:8080/predictions/mnist-cnn): its "
                             "rounds alternate with the service's PNG rounds; repeat for more")
    parser.add_argument("--peer-json", action="append", default=[], metavar="NAME=URL",
                        help="the same for the json payload: a server that answers the OIP JSON request of "
                             "one UINT8 image POSTed to URL; its rounds alternate with the service's json "
                             "rounds")
    parser.add_argument("--torchserve", action="store_true",
                        help="also start TorchServe on the same artifact (scripts/torchserve_peer.py, on "
                             "--torchserve-url's port and the next two) and measure it as a --peer")
    parser.add_argument("--torchserve-url", default="http://127.0.0.1:8080", help="(default: %(default)s)")
    parser.add_argument("--mosec", action="store_true",
                        help="also start mosec on the same artifact (scripts/mosec_peer.py, on --mosec-url's "
                             "port) and measure it as a --peer and a --peer-json")
    parser.add_argument("--mosec-url", default=None, help="(default: a free port on 127.0.0.1)")
    parser.add_argument("--formats", default="", metavar="FORMAT,...",
                        help="with --start, also serve the model in each of these formats (torchscript, "
                             "exported, aoti), one more service each, and measure every payload against "
                             "each (default: none)")
    parser.add_argument("--model-dir", default=os.environ.get("TRAINSERVE_MODEL_DIR", "models"),
                        help="artifacts, for the in-process figure and the naive app (default: %(default)s)")
    parser.add_argument("--model", default=None, help="model name (default: the first one served)")
    parser.add_argument("--concurrency", default="1,8,32,64", help="wrk connections (default: %(default)s)")
    parser.add_argument("--duration", type=int, default=4, help="seconds per wrk run (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="wrk runs per payload and concurrency, one after another (with --naive, the "
                             "PNG runs alternate with the naive app's); the median is reported "
                             "(default: %(default)s)")
    parser.add_argument("--payloads", default="png,json,bin64,live",
                        help="png, json (one UINT8 image, JSON), bin64 (64 images, binary OIP), json64 "
                             "(64 images, JSON), live (GET /v2/health/live: what gunicorn and Flask answer "
                             "when there is no work, the ceiling for one-image requests) "
                             "(default: %(default)s)")
    parser.add_argument("--out", default="bench-results/serve.json",
                        help="JSON results; the chart goes beside it (default: %(default)s)")
    args = parser.parse_args()
    for option in ("peer", "peer_json"):
        peers = {}  # name -> URL
        for peer in getattr(args, option):
            name, _, url = peer.partition("=")
            if not name or not url.startswith("http") or name in ("service", "versus", "naive"):
                parser.error(f"--{option.replace('_', '-')} {peer!r}: give NAME=URL, e.g. "
                             "torchserve=http://127.0.0.1:8080/predictions/m")
            peers[name] = url
        setattr(args, option, peers)
    args.formats = [f for f in args.formats.split(",") if f]
    if args.formats and not args.start:
        parser.error("--formats starts a service per format: give --start too")
    args.format_urls = {}  # "format:NAME" -> the URL of the service serving that format
    return args


class InProcess:
    """The served artifact loaded in this process as the service loads it, run on all cores, one process,
    with the C allocator set up as in the service's workers."""

    def __init__(self, model_dir: Path, name: str) -> None:
        import torch

        from service.contract.allocator import keep_freed_memory
        from service.contract.loading import load_model
        from service.contract.manifest import artifact_dirs

        keep_freed_memory()
        torch.set_num_threads(len(os.sched_getaffinity(0)))
        self.torch_threads = torch.get_num_threads()
        folder = [d for d in artifact_dirs(model_dir) if d.parent.name == name][-1]
        self.model = load_model(folder, torch.device("cpu"), half=False, warmup_batch=64)
        shape = self.model.manifest.input.shape
        rng = np.random.default_rng(0)
        self.inputs = {batch: rng.integers(0, 256, (batch, *shape), dtype=np.uint8) for batch in (1, 64)}

    def measure(self, rounds: int = 5, seconds: float = 0.6) -> dict[str, float]:
        """Images/s and p50 at batch 1 and 64: the best of several short rounds (a round that another job
        slowed down would flatter every ratio against this figure)."""
        result: dict[str, float] = {"torch_threads": self.torch_threads}
        for batch in (1, 64):
            rates, p50s = zip(*(self._round(batch, seconds) for _ in range(rounds)), strict=True)
            result[f"batch{batch}_images_per_s"] = max(rates)
            result[f"batch{batch}_p50_ms"] = min(p50s)
        return result

    def pass_ms(self, batch: int, threads: int, rounds: int = 5, seconds: float = 0.3) -> float:
        """The median forward pass at ``batch`` images on ``threads`` torch threads (the runtime's), ms (the
        best of a few short rounds)."""
        import torch

        shape = self.model.manifest.input.shape
        rng = np.random.default_rng(batch)
        self.inputs.setdefault(batch, rng.integers(0, 256, (batch, *shape), np.uint8))
        torch.set_num_threads(threads)
        try:
            return min(self._round(batch, seconds)[1] for _ in range(rounds))
        finally:
            torch.set_num_threads(self.torch_threads)

    def batch64_now(self, rounds: int = 3, seconds: float = 0.3) -> float:
        """Images/s at batch 64 now (the best of a few short rounds), to pair with the next wrk round."""
        return max(self._round(64, seconds)[0] for _ in range(rounds))

    def _round(self, batch: int, seconds: float) -> tuple[float, float]:
        x, times = self.inputs[batch], []
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            t0 = time.perf_counter()
            self.model.forward([x])
            times.append(time.perf_counter() - t0)
        return batch * len(times) / sum(times), float(np.median(times)) * 1000


def best(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """The better of two in-process measurements, figure by figure (the higher rate, the lower latency)."""
    return {k: (min if k.endswith("_ms") else max)(a[k], b[k]) for k in a}


def digit() -> np.ndarray:
    """A plain "1" drawn the MNIST way: light on black, 20 pixels tall, in a 28x28 field."""
    pixels = np.zeros((28, 28), np.uint8)
    pixels[4:24, 12:16] = 255
    return pixels


def payload(kind: str, name: str, folder: Path) -> tuple[str, str, dict[str, str], Path]:
    """(path, content type, extra headers, body file) for one request of this kind."""
    import io

    from PIL import Image

    body = folder / f"{kind}.body"
    if kind == "live":
        return "/v2/health/live", "", {}, body
    if kind in ("png", "naive", "peer"):
        buffer = io.BytesIO()
        Image.fromarray(digit()).save(buffer, format="PNG")
        body.write_bytes(buffer.getvalue())
        path = {"naive": "/predict", "peer": "", "png": f"/v1/models/{name}:classify"}[kind]  # peer: its URL
        return path, "image/png", {}, body
    n = IMAGES_PER_REQUEST[kind]
    images = np.tile(digit(), (n, 1, 1)).reshape(n, 1, 28, 28)
    tensor = {"name": "input", "shape": list(images.shape), "datatype": "UINT8"}
    request = {"inputs": [tensor], "outputs": [{"name": "label"}]}
    if kind == "bin64":
        tensor["parameters"] = {"binary_data_size": images.nbytes}
        header = json.dumps(request).encode()
        body.write_bytes(header + images.tobytes())
        return (f"/v2/models/{name}/infer", "application/octet-stream",
                {"Inference-Header-Content-Length": str(len(header))}, body)
    tensor["data"] = images.ravel().tolist()
    body.write_text(json.dumps(request))
    return f"/v2/models/{name}/infer", "application/json", {}, body


def wrk(url: str, content_type: str, headers: dict[str, str], body: Path, connections: int, seconds: int,
        folder: Path, master: int | None = None) -> dict:
    """One wrk run (after a 1 s warm-up on the same connections count); the Lua script prints a RESULT.

    With the server's master process given, the result also says how the connections were spread over
    its workers, read from /proc one second into the run. From a trainserve, it also gives what its
    batchers did during the run (see ``batch_stats``).
    """
    script = folder / "bench.lua"
    extra = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
    post = POST % {"content_type": content_type, "body": body, "extra_headers": extra}
    script.write_text(LUA % {"request": post if content_type else ""})
    base = ["wrk", "-t1", f"-c{connections}", "--timeout", "10s", "-s", str(script), url]
    subprocess.run([*base, "-d1s"], capture_output=True, check=True)
    before = batch_totals(url)
    cpu_before = cpu_seconds(master) if master is not None else None
    wrk_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    run = subprocess.Popen([*base, f"-d{seconds}s"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    split = None
    if master is not None:
        time.sleep(min(1.0, seconds / 2))
        split = worker_connections(master, urlsplit(url).port)
    out, err = run.communicate()
    cpu_after = cpu_seconds(master) if master is not None else None
    wrk_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if run.returncode:
        raise SystemExit(f"wrk failed: {err}")
    result = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT"))[7:])
    if cpu_before is not None and cpu_after is not None and result["requests"]:
        result["cpu_us_per_request"] = cpu_per_request(cpu_before, cpu_after, result["requests"])
        result["cpu_us_per_request"]["wrk"] = 1e6 * (
            (wrk_after.ru_utime + wrk_after.ru_stime) - (wrk_before.ru_utime + wrk_before.ru_stime)
        ) / result["requests"]
    batches = batch_stats(before, batch_totals(url))
    if split:
        result["worker_connections"] = split
    if batches:
        result["batches"] = batches
    return result


# The batcher's histograms on a trainserve's /metrics: (name, unit multiplier for the report).
BATCH_METRICS = {"images": ("trainserve_batch_size_images", 1),
                 "pass_ms": ("trainserve_compute_seconds", 1000),
                 "queue_wait_ms": ("trainserve_queue_wait_seconds", 1000)}


def batch_totals(url: str) -> dict[str, float] | None:
    """The _sum and _count of the batcher's histograms, over every model and worker (None: no trainserve)."""
    from prometheus_client.parser import text_string_to_metric_families

    parts = urlsplit(url)
    try:
        text = requests.get(f"{parts.scheme}://{parts.netloc}/metrics", timeout=5)
        text.raise_for_status()
    except requests.RequestException:
        return None  # the naive app has no metrics
    wanted = {name for name, _ in BATCH_METRICS.values()}
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text.text):
        if family.name in wanted:
            for sample in family.samples:
                if sample.name.endswith(("_sum", "_count")):
                    totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


def batch_stats(before: dict[str, float] | None, after: dict[str, float] | None) -> dict[str, float] | None:
    """Means over one run, from two readings of ``batch_totals``: images per batch, the forward pass's time
    (``trainserve_compute_seconds``) and a request's wait in the queue, in ms."""
    if not before or not after:
        return None
    stats = {}
    for key, (name, scale) in BATCH_METRICS.items():
        count = after.get(f"{name}_count", 0.0) - before.get(f"{name}_count", 0.0)
        if count <= 0:
            return None
        stats[key] = scale * (after[f"{name}_sum"] - before.get(f"{name}_sum", 0.0)) / count
    return stats


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(root: int) -> dict[int, tuple[str, float]]:
    """Every process under ``root`` (itself included): pid -> (role, CPU seconds so far, user + system,
    every thread), from /proc. Roles: runtime (trainserve's model runtimes), workers (anything whose
    command line names a front end or a peer's worker), other (launchers, masters)."""
    found, todo = {}, [root]
    while todo:
        pid = todo.pop()
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            children = [int(c) for t in Path(f"/proc/{pid}/task").iterdir()
                        for c in (t / "children").read_text().split()]
        except OSError:
            continue  # gone meanwhile
        role = "runtime" if b"service.runtime" in cmdline else "other" if pid == root else "workers"
        found[pid] = (role, (int(fields[11]) + int(fields[12])) / _TICK)  # utime, stime
        todo.extend(children)
    return found


def cpu_per_request(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]],
                    requests_done: int) -> dict[str, float]:
    """Microseconds of CPU per request, by role and in all, between two ``cpu_seconds`` readings (a process
    that started or ended in between counts what /proc showed of it)."""
    spent: dict[str, float] = {"runtime": 0.0, "workers": 0.0, "other": 0.0}
    for pid, (role, seconds) in after.items():
        spent[role] += seconds - before.get(pid, (role, 0.0))[1]
    per_request = {role: 1e6 * s / requests_done for role, s in spent.items()}
    per_request["total"] = sum(per_request.values())
    return per_request


def worker_connections(master: int, port: int) -> list[int] | None:
    """Established connections to ``port`` held by each worker of ``master``, busiest first (Linux /proc)."""
    try:
        workers = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        sockets = set()
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].split(":")[1], 16) == port and fields[3] == "01":  # 01: ESTABLISHED
                sockets.add(f"socket:[{fields[9]}]")
        counts = []
        for pid in workers:
            fds = Path(f"/proc/{pid}/fd").iterdir()
            counts.append(sum(1 for fd in fds if os.readlink(fd) in sockets))
    except OSError:
        return None  # not Linux, or a worker went away meanwhile
    return sorted(counts, reverse=True) if any(counts) else None  # none: e.g. sync workers close each one


def start(cmd: list[str], env: dict[str, str], ready_url: str) -> tuple[subprocess.Popen, float]:
    """Start a server; return it and the seconds until ``ready_url`` answered 200."""
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while time.monotonic() - started < 120:
        if proc.poll() is not None:
            raise SystemExit(f"{cmd[3:]} exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if requests.get(ready_url, timeout=2).status_code < 500:
                return proc, time.monotonic() - started
        except requests.RequestException:
            pass
        time.sleep(0.05)
    proc.terminate()
    raise SystemExit(f"{ready_url} did not answer in 120 s")


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now, chosen by the OS."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop(proc: subprocess.Popen | None) -> None:
    """SIGTERM, then SIGKILL after 30 s (a peer may wait for work it still holds)."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


def service_memory(root: int) -> dict:
    """RSS and PSS (shared pages split between the processes that map them), MiB, of every process of the
    service: the launcher, the model runtimes, the front end and its workers; and their total."""
    processes, todo = [], [root]
    while todo:
        pid = todo.pop()
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]
            children = [c for t in Path(f"/proc/{pid}/task").iterdir()
                        for c in (t / "children").read_text().split()]
        except OSError:
            continue  # gone meanwhile
        fields = dict(line.split(":", 1) for line in lines)
        sizes = {name.lower() + "_mib": int(fields[name].split()[0]) / 1024 for name in ("Rss", "Pss")}
        processes.append({"pid": pid, "command": cmdline[:120], **sizes})
        todo.extend(int(c) for c in children)
    return {"processes": processes, "rss_mib": sum(p["rss_mib"] for p in processes),
            "pss_mib": sum(p["pss_mib"] for p in processes)}


def serve_env(url: str, model_dir: str) -> dict[str, str]:
    return dict(os.environ, TRAINSERVE_BIND=url.split("//", 1)[1], TRAINSERVE_GRPC_BIND="off",
                TRAINSERVE_MODEL_DIR=model_dir,
                TRAINSERVE_LOG_LEVEL=os.environ.get("TRAINSERVE_LOG_LEVEL", "warning"))


def measure(kinds: list[str], name: str, args: argparse.Namespace, model: InProcess, tmp: Path,
            masters: dict[str, int | None]) -> list[dict]:
    """Every payload at every concurrency, ``args.rounds`` runs each; prints each row as it comes.

    Right before each wrk run, the model's own batch-64 rate is measured in this process (the servers idle
    meanwhile), so every round's throughput has an in-process figure from the same moment of a noisy
    machine. With the naive app up, its PNG runs alternate with the service's, round by round, for the
    same reason.
    """
    peers = args.peer
    extra_kinds = [*(["naive"] if args.naive else []), *(["peer"] if peers else [])]
    bodies = {kind: payload(kind, name, tmp) for kind in {*kinds, *extra_kinds}}
    json_peers = {f"json:{peer}": url for peer, url in args.peer_json.items()} if "json" in kinds else {}
    if json_peers:  # the service's json request, POSTed to the peer's whole URL
        bodies["peerjson"] = ("", *bodies["json"][1:])
    urls = {"service": args.url, "versus": args.versus, "naive": args.naive_url, **peers, **json_peers,
            **args.format_urls}
    # (server, payload) pairs whose rounds alternate: the service's, --versus's, each --formats service's, the
    # naive app's, the peers'.
    groups = [[("service", kind), *([("versus", kind)] if args.versus else []),
               *[(server, kind) for server in args.format_urls],
               *([("naive", "naive")] if kind == "png" and args.naive else []),
               *([(peer, "peer") for peer in peers] if kind == "png" else []),
               *([(peer, "peerjson") for peer in json_peers] if kind == "json" else [])] for kind in kinds]
    if args.naive and "png" not in kinds:
        groups.append([("naive", "naive")])
    rows = []
    for group in groups:
        for c in (int(v) for v in args.concurrency.split(",")):
            runs: dict[tuple[str, str], list[dict]] = {member: [] for member in group}
            for _ in range(args.rounds):
                for server, kind in group:
                    path, content_type, headers, body = bodies[kind]
                    now = model.batch64_now()
                    runs[server, kind].append(wrk(urls[server] + path, content_type, headers, body, c,
                                                  args.duration, tmp, masters.get(server))
                                              | {"in_process": now})
            for server, kind in group:
                row = combine(kind, c, runs[server, kind])
                if server == "versus" or server in args.format_urls:
                    row["server"] = server
                elif kind == "peer":
                    row["payload"], row["server"] = "png", server  # the same PNG, another server
                elif kind == "peerjson":
                    row["payload"], row["server"] = "json", server.removeprefix("json:")
                rows.append(row)
                print(report(row), flush=True)
    return rows


def start_formats(args: argparse.Namespace, name: str) -> list[subprocess.Popen]:
    """One more service per --formats entry, each serving ``name`` in that format; fills args.format_urls."""
    started = []
    for fmt in args.formats:
        url = f"http://127.0.0.1:{free_port()}"
        env = serve_env(url, args.model_dir) | {"TRAINSERVE_MODEL_FORMAT": fmt}
        proc, ready_s = start([sys.executable, "-m", "service"], env, f"{url}/readyz")
        started.append(proc)
        served = next(m for m in requests.get(f"{url}/v1/models", timeout=5).json()["models"]
                      if m["name"] == name)
        print(f"service serving {name} as {served['format']} (asked: {fmt}): ready in {ready_s:.1f} s",
              flush=True)
        args.format_urls[f"format:{served['format']}"] = url
    return started


def combine(kind: str, connections: int, runs: list[dict]) -> dict:
    """One row from the rounds of one payload at one concurrency: medians, every round's rate kept."""
    images = IMAGES_PER_REQUEST[kind]
    rates = [images * r["requests"] / (r["duration_us"] / 1e6) for r in runs]
    references = [r["in_process"] for r in runs]
    row = {"payload": kind, "connections": connections, "images_per_request": images,
           "images_per_s": statistics.median(rates),
           # Each round against the in-process batch-64 rate measured just before it; the median of those.
           "ratio": statistics.median(rate / ref for rate, ref in zip(rates, references, strict=True)),
           "p50_ms": statistics.median(r["p50_us"] for r in runs) / 1000,
           "p99_ms": statistics.median(r["p99_us"] for r in runs) / 1000,
           "errors": sum(r["errors"] for r in runs), "rounds": rates, "in_process_rounds": references}
    splits = [r["worker_connections"] for r in runs if "worker_connections" in r]
    if splits:
        row["worker_connections"] = splits
    cpu = [r["cpu_us_per_request"] for r in runs if "cpu_us_per_request" in r]
    if cpu:  # medians over the rounds
        row["cpu_us_per_request"] = {key: statistics.median(c[key] for c in cpu) for key in cpu[0]}
    batches = [r["batches"] for r in runs if "batches" in r]
    if batches:  # medians over the rounds, every round's figures kept
        row["batches"] = {key: statistics.median(b[key] for b in batches) for key in BATCH_METRICS}
        row["batches_rounds"] = batches
    return row


def main() -> None:
    args = parse_args()
    gunicorn = [sys.executable, "-m", "gunicorn"]
    proc = naive = peer = mosec = second = None
    formats: list[subprocess.Popen] = []
    extra: dict = {}
    try:
        if args.start:
            cmd = [sys.executable, "-m", "service"]
            proc, extra["ready_s"] = start(cmd, serve_env(args.url, args.model_dir), f"{args.url}/readyz")
            extra["memory"] = memory = service_memory(proc.pid)
            server = os.environ.get("TRAINSERVE_SERVER", "granian")
            print(f"service ({server}): ready in {extra['ready_s']:.1f} s, {len(memory['processes'])} "
                  f"processes, RSS {memory['rss_mib']:.0f} MiB, "
                  f"PSS {memory['pss_mib']:.0f} MiB", flush=True)
        if args.start and args.gunicorn:
            url = f"http://127.0.0.1:{free_port()}"
            env = serve_env(url, args.model_dir) | {"TRAINSERVE_SERVER": "gunicorn"}
            second, _ = start([sys.executable, "-m", "service"], env, f"{url}/readyz")
            extra["memory_gunicorn"] = memory = service_memory(second.pid)
            print(f"service (gunicorn): {len(memory['processes'])} processes, "
                  f"RSS {memory['rss_mib']:.0f} MiB, PSS {memory['pss_mib']:.0f} MiB", flush=True)
        listed = requests.get(f"{args.url}/v1/models", timeout=5).json()["models"]
        name = args.model or listed[0]["name"]
        extra["format"] = next(m.get("format") for m in listed if m["name"] == name)
        formats = start_formats(args, name)
        if second is not None:
            args.peer["trainserve-gunicorn"] = f"{url}/v1/models/{name}:classify"
        model = InProcess(Path(args.model_dir), name)
        reference = model.measure()
        print(f"in-process {name} ({reference['torch_threads']} torch threads): batch 1 "
              f"{reference['batch1_images_per_s']:.0f} images/s (p50 {reference['batch1_p50_ms']:.2f} ms), "
              f"batch 64 {reference['batch64_images_per_s']:.0f} images/s", flush=True)
        if args.naive:
            env = serve_env(args.naive_url, args.model_dir) | {"NAIVE_MODEL": name}
            cores = str(len(os.sched_getaffinity(0)))
            naive, _ = start([*gunicorn, "-w", cores, "-b", args.naive_url.split("//", 1)[1],
                              "scripts.naive_app:create_app()"], env, f"{args.naive_url}/predict")
        if args.torchserve:
            port = str(urlsplit(args.torchserve_url).port)
            cmd = [sys.executable, "scripts/torchserve_peer.py", "--model-dir", args.model_dir,
                   "--model", name, "--port", port]
            peer, _ = start(cmd, dict(os.environ), f"{args.torchserve_url}/ping")
            args.peer["torchserve"] = f"{args.torchserve_url}/predictions/{name}"
        if args.mosec:
            url = args.mosec_url or f"http://127.0.0.1:{free_port()}"
            cmd = [sys.executable, "scripts/mosec_peer.py", "--model-dir", args.model_dir, "--model", name,
                   "--port", str(urlsplit(url).port)]
            mosec, _ = start(cmd, dict(os.environ), f"{url}/")  # it listens once its workers are up
            args.peer["mosec"] = f"{url}/inference"
            args.peer_json["mosec"] = f"{url}/v2/infer"
        with tempfile.TemporaryDirectory() as tmp:
            masters = {"service": proc.pid if proc else None, "naive": naive.pid if naive else None,
                       "torchserve": peer.pid if peer else None, "mosec": mosec.pid if mosec else None,
                       "json:mosec": mosec.pid if mosec else None,
                       "trainserve-gunicorn": second.pid if second else None}
            rows = measure(args.payloads.split(","), name, args, model, Path(tmp), masters)
        for server in (proc, naive, peer, mosec, second, *formats):
            stop(server)
        proc = naive = peer = mosec = second = None
        formats = []
        # Once more now the servers are stopped: the reference is the better of the two.
        reference.update(best(reference, model.measure()))
        from service.config import ServiceConfig

        runtime_threads = ServiceConfig.from_env().torch_thread_count  # what the started service uses
        for row in rows:
            row["ratio_to_best"] = row["images_per_s"] / reference["batch64_images_per_s"]
            if "batches" in row:  # the service's forward pass against the model's own at that batch size
                batches = row["batches"]
                size = max(1, round(batches["images"]))
                batches["in_process_pass_ms"] = model.pass_ms(size, runtime_threads)
                batches["pass_ratio"] = batches["pass_ms"] / batches["in_process_pass_ms"]
        print(f"\nin-process reference (the better of before and after): batch 1 p50 "
              f"{reference['batch1_p50_ms']:.2f} ms, "
              f"batch 64 {reference['batch64_images_per_s']:.0f} images/s")
        print("\n".join(report(row) for row in rows))
    finally:
        for server in (proc, naive, peer, mosec, second, *formats):
            stop(server)
    results = {"model": name, "in_process": reference, "runs": rows, **extra}
    results["summary"] = summary(results)
    print("\n".join(results["summary"]["lines"]))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    chart(results, out.with_suffix(".png"))
    print(f"results: {out}, chart: {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
