"""gRPC beside HTTP, one run, side by side: the figures of docs/benchmarks.md#grpc.

    python scripts/bench_grpc.py --model-dir models                # starts the service itself
    python scripts/bench_grpc.py --model-dir models --rounds 5 --duration 6

It starts the service (``python -m service``, HTTP and gRPC on free ports) and, each round: measures the
model's own batch-64 rate in this process (bench_serve.py's ``InProcess``), runs wrk against the HTTP binary
OIP route with one 28x28 UINT8 image per request at 64 connections, then a gRPC load of the same request
(``ModelInfer``, raw contents) at 64 calls in flight, then 64-image gRPC requests at 8 in flight. The gRPC
load comes from ``h2load`` (Debian's ``nghttp2-client``: compiled, like wrk for HTTP, so the load costs the
shared cores little), which sends the gRPC frames over ``--clients`` HTTP/2 connections; it cannot read
gRPC status trailers, so errors are counted from the service's own metrics. ``--load python`` (the
default without h2load) uses ``--clients`` processes of this script instead, each a bounded asyncio loop on
grpc.aio. Either way the load's CPU is reported beside the service's. Printed per round and
as medians: images/s, p50/p99, errors, the targets' ratios (gRPC 1-image / HTTP binary 1-image; gRPC
64-image / in-process batch 64), CPU per request by role (runtime, HTTP workers, gRPC front end, client)
and every process's RSS. Results also go to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from bench_serve import (  # noqa: E402
    InProcess,
    batch_stats,
    batch_totals,
    cpu_seconds,
    digit,
    free_port,
    service_memory,
    start,
    stop,
    wrk,
)

GRPC_PATH = "/inference.GRPCInferenceService/ModelInfer"
CONNECTIONS_PER_CLIENT = 4  # of each Python load process


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default=os.environ.get("TRAINSERVE_MODEL_DIR", "models"),
                        help="the model repository (default: %(default)s)")
    parser.add_argument("--model", default="mnist-cnn", help="model name (default: %(default)s)")
    parser.add_argument("--duration", type=int, default=4, help="seconds per load run (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every run (default: %(default)s)")
    parser.add_argument("--clients", type=int, default=None,
                        help="gRPC connections (h2load; default 8) or load processes (python, each with 4 "
                        "connections; default 2); the calls in flight are split between them, and the kernel "
                        "spreads the connections over the service's gRPC processes")
    parser.add_argument("--load", choices=("h2load", "python"),
                        default="h2load" if shutil.which("h2load") else "python",
                        help="the gRPC load generator (default: h2load where it is installed, else python; "
                        "now %(default)s)")
    parser.add_argument("--out", default="bench-results/grpc.json", help="(default: %(default)s)")
    parser.add_argument("--client", nargs=5, metavar=("TARGET", "MODEL", "IMAGES", "CALLS", "SECONDS"),
                        help=argparse.SUPPRESS)  # one load process (the parent starts them)
    args = parser.parse_args()
    if args.clients is None:
        args.clients = 8 if args.load == "h2load" else 2
    return args


def infer_request(model: str, images: int):
    """A ModelInferRequest of ``images`` UINT8 digits as raw contents, asking for the label only."""
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name="input", datatype="UINT8", shape=[images, 1, 28, 28])
    request.outputs.add(name="label")
    request.raw_input_contents.append(np.tile(digit(), (images, 1, 1)).tobytes())
    return request


async def client_load(target: str, model: str, images: int, calls: int, seconds: float) -> dict:
    """``calls`` loops, each sending the next request when its answer comes, for 1 s of warm-up then
    ``seconds``; the requests, errors and latencies of the measured part, and this process's CPU."""
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    request = infer_request(model, images)
    latencies: list[float] = []
    errors = 0
    # Connections of their own (not one shared subchannel), so the service's gRPC processes share them.
    channels = [grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(CONNECTIONS_PER_CLIENT)]
    try:
        measuring_from = time.perf_counter() + 1.0
        until = measuring_from + seconds

        async def loop(stub) -> None:
            nonlocal errors
            while (sent := time.perf_counter()) < until:
                try:
                    await stub.ModelInfer(request, timeout=10)
                except grpc.RpcError:
                    errors += sent >= measuring_from
                    continue
                if sent >= measuring_from:
                    latencies.append(time.perf_counter() - sent)

        stubs = [service_pb2_grpc.GRPCInferenceServiceStub(c) for c in channels]
        cpu = time.process_time()
        await asyncio.sleep(0)
        await asyncio.gather(*(loop(stubs[n % len(stubs)]) for n in range(calls)))
    finally:
        for channel in channels:
            await channel.close()
    return {"requests": len(latencies), "errors": errors, "latencies": latencies,
            "cpu_s": time.process_time() - cpu}


def grpc_load(target: str, model: str, images: int, calls: int, seconds: int, clients: int) -> dict:
    """The gRPC load, ``calls`` in flight over ``clients`` processes: images/s, p50/p99 ms, errors, the
    clients' CPU seconds."""
    share = [calls // clients + (i < calls % clients) for i in range(clients)]
    procs = [subprocess.Popen([sys.executable, __file__, "--client", target, model, str(images), str(n),
                               str(seconds)], stdout=subprocess.PIPE, text=True) for n in share if n]
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=seconds + 120)
        if proc.returncode:
            raise SystemExit(f"a gRPC load process exited {proc.returncode}")
        results.append(json.loads(out))
    latencies = sorted(x for r in results for x in r["latencies"])
    done = sum(r["requests"] for r in results)
    return {"requests": done, "images_per_s": done * images / seconds,
            "errors": sum(r["errors"] for r in results),
            "p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else None,
            "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)] if latencies else None,
            "client_cpu_s": sum(r["cpu_s"] for r in results)}


def h2load_run(target: str, url: str, model: str, images: int, calls: int, seconds: int, clients: int,
               folder: Path) -> dict:
    """The same load from h2load: gRPC frames of the same request POSTed as HTTP/2 streams, ``calls`` in
    flight over ``clients`` connections, after a 1 s warm-up. Errors are the gRPC calls the service
    answered with any other status meanwhile (its metrics), since h2load sees only HTTP statuses."""
    message = infer_request(model, images).SerializeToString()
    body, log = folder / f"grpc{images}.body", folder / f"grpc{images}.log"
    body.write_bytes(b"\0" + struct.pack(">I", len(message)) + message)  # uncompressed, length-prefixed
    log.unlink(missing_ok=True)  # h2load appends to its log
    connections = max(1, min(clients, calls))
    failed_before = grpc_failures(url)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(
        ["h2load", "-t", "1", "-c", str(connections), "-m", str(-(-calls // connections)), "-D", str(seconds),
         "--warm-up-time=1", f"--log-file={log}", "-d", str(body), "-H", "content-type: application/grpc",
         "-H", "te: trailers", f"http://{target}{GRPC_PATH}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=seconds + 120)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise SystemExit(f"h2load failed ({proc.returncode}): {out}")
    latencies = sorted(int(line.split("\t")[2]) / 1e6 for line in log.read_text().splitlines()
                       if line.split("\t")[1] == "200")
    cpu = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
    return {"requests": len(latencies), "images_per_s": len(latencies) * images / seconds,
            "errors": grpc_failures(url) - failed_before,
            "p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else None,
            "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)] if latencies else None,
            "client_cpu_s": cpu}


def grpc_failures(url: str) -> float:
    """gRPC calls the service has answered with anything but OK, from its /metrics."""
    import requests
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(f"{url}/metrics", timeout=5).text
    return sum(sample.value for family in text_string_to_metric_families(text)
               if family.name == "trainserve_requests" for sample in family.samples
               if sample.name.endswith("_total") and sample.labels.get("protocol") == "grpc"
               and sample.labels.get("status") != "200")


def roles(root: int) -> dict[int, str]:
    """pid -> runtime, grpc (the gRPC front end), http (the HTTP front end and its workers) or launcher."""
    out = {}
    for pid in cpu_seconds(root):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        out[pid] = ("launcher" if pid == root else "runtime" if b"service.runtime" in cmdline
                    else "grpc" if b"service.grpc" in cmdline else "http")
    return out


def cpu_us(root: int, run, requests_of) -> tuple[dict, dict[str, float]]:
    """Run ``run()``; its result and the service's CPU per request by role, microseconds. The result gains
    ``grpc_cpu_shares``: each gRPC front-end process's share of their CPU (the kernel spreads connections
    over the processes that share the port, so the load can land unevenly)."""
    kinds = roles(root)
    before = cpu_seconds(root)
    result = run()
    after = cpu_seconds(root)
    spent: dict[str, float] = {}
    fronts: list[float] = []
    for pid, (_, seconds) in after.items():
        role = kinds.get(pid, "http")
        used = seconds - before.get(pid, ("", 0.0))[1]
        spent[role] = spent.get(role, 0.0) + used
        if role == "grpc":
            fronts.append(used)
    result["grpc_cpu_shares"] = sorted((round(f / max(sum(fronts), 1e-9), 2) for f in fronts), reverse=True)
    done = max(requests_of(result), 1)
    return result, {role: round(1e6 * s / done) for role, s in sorted(spent.items())}


def http_body(model: str, folder: Path) -> tuple[str, dict[str, str], Path]:
    """The HTTP binary OIP request of one image, as wrk sends it: (path, headers, body file)."""
    image = digit().reshape(1, 1, 28, 28)
    header = json.dumps({"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "UINT8",
                                     "parameters": {"binary_data_size": image.nbytes}}],
                         "outputs": [{"name": "label"}]}).encode()
    body = folder / "bin1.body"
    body.write_bytes(header + image.tobytes())
    return f"/v2/models/{model}/infer", {"Inference-Header-Content-Length": str(len(header))}, body


def one_round(args: argparse.Namespace, root: int, url: str, target: str, model: InProcess,
              folder: Path) -> dict:
    """The three runs of one round, beside the in-process batch-64 rate of the same moment."""
    path, headers, body = http_body(args.model, folder)
    batch64 = model.batch64_now()
    http, http_cpu = cpu_us(root, lambda: wrk(url + path, "application/octet-stream", headers, body, 64,
                                              args.duration, folder, master=root), lambda r: r["requests"])
    http_cpu["client"] = round(http.pop("cpu_us_per_request", {}).get("wrk", 0))  # wrk's own, measured run
    http["images_per_s"] = http["requests"] * 1e6 / http["duration_us"]
    row = {"inprocess_batch64_images_per_s": batch64,
           "http_bin1_c64": {**http, "cpu_us_per_request": http_cpu}}
    for key, images, calls in (("grpc_1_c64", 1, 64), ("grpc_64_c8", 64, 8)):
        def load(i: int = images, c: int = calls) -> dict:
            if args.load == "h2load":
                return h2load_run(target, url, args.model, i, c, args.duration, args.clients, folder)
            return grpc_load(target, args.model, i, c, args.duration, args.clients)

        before = batch_totals(url)
        result, cpu = cpu_us(root, load, lambda r: r["requests"])
        cpu["client"] = round(1e6 * result["client_cpu_s"] / max(result["requests"], 1))
        row[key] = {**result, "cpu_us_per_request": cpu, "batches": batch_stats(before, batch_totals(url))}
    row["grpc_1_vs_http_bin1"] = row["grpc_1_c64"]["images_per_s"] / row["http_bin1_c64"]["images_per_s"]
    row["grpc_64_vs_inprocess_batch64"] = row["grpc_64_c8"]["images_per_s"] / batch64
    return row


def print_round(n: int, r: dict) -> None:
    """One round's figures on one line."""
    print(f"round {n + 1}: in-process b64 {r['inprocess_batch64_images_per_s']:.0f} img/s | "
          f"HTTP bin 1 img c64 {r['http_bin1_c64']['images_per_s']:.0f} img/s | "
          f"gRPC 1 img c64 {r['grpc_1_c64']['images_per_s']:.0f} img/s (x{r['grpc_1_vs_http_bin1']:.2f} of "
          f"HTTP) | gRPC 64 img c8 {r['grpc_64_c8']['images_per_s']:.0f} img/s "
          f"(x{r['grpc_64_vs_inprocess_batch64']:.2f} of in-process) | CPU us/request: HTTP "
          f"{r['http_bin1_c64']['cpu_us_per_request']}, gRPC {r['grpc_1_c64']['cpu_us_per_request']}, "
          f"gRPC 64 {r['grpc_64_c8']['cpu_us_per_request']} | runtime batches (images, pass ms): "
          f"{_batches(r['http_bin1_c64'])} HTTP, {_batches(r['grpc_1_c64'])} gRPC, "
          f"{_batches(r['grpc_64_c8'])} gRPC 64 | gRPC processes' CPU shares: "
          f"{r['grpc_1_c64']['grpc_cpu_shares']} 1-image, {r['grpc_64_c8']['grpc_cpu_shares']} 64-image",
          flush=True)


def _batches(run: dict) -> str:
    stats = run.get("batches")
    return f"{stats['images']:.1f}, {stats['pass_ms']:.2f}" if stats else "-"


def main() -> int:
    """Start the service, run the rounds, print and write the figures."""
    args = parse_args()
    if args.client:
        target, model, images, calls, seconds = args.client
        print(json.dumps(asyncio.run(client_load(target, model, int(images), int(calls), float(seconds)))))
        return 0
    url, target = f"http://127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    env = dict(os.environ, TRAINSERVE_BIND=url.split("//")[1], TRAINSERVE_GRPC_BIND=target,
               TRAINSERVE_MODEL_DIR=args.model_dir,
               TRAINSERVE_LOG_LEVEL=os.environ.get("TRAINSERVE_LOG_LEVEL", "warning"))
    proc, ready_s = start([sys.executable, "-m", "service"], env, f"{url}/readyz")
    try:
        memory = service_memory(proc.pid)
        kinds = roles(proc.pid)
        rss = {}
        for p in memory["processes"]:
            rss.setdefault(kinds.get(p["pid"], "http"), []).append(round(p["rss_mib"]))
        print(f"service ready in {ready_s:.1f} s; RSS MiB by role: {rss}; gRPC load from {args.load}",
              flush=True)
        model = InProcess(Path(args.model_dir), args.model)
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            for n in range(args.rounds):
                rows.append(one_round(args, proc.pid, url, target, model, Path(tmp)))
                print_round(n, rows[-1])
        medians = {key: statistics.median(r[key] for r in rows)
                   for key in ("grpc_1_vs_http_bin1", "grpc_64_vs_inprocess_batch64")}
        print(f"median ratios: gRPC 1-image / HTTP binary 1-image {medians['grpc_1_vs_http_bin1']:.2f} "
              f"(target >= 0.8); gRPC 64-image / in-process batch 64 "
              f"{medians['grpc_64_vs_inprocess_batch64']:.2f} (target >= 0.85)")
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"load": args.load, "ready_s": ready_s, "rss_mib_by_role": rss,
                                   "memory": memory,
                                   "rounds": rows, "medians": medians, "cpus": len(os.sched_getaffinity(0))},
                                  indent=1))
    finally:
        stop(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
