"""What the hand-off between an HTTP worker and the model runtime costs, beside the model's own time.

    python scripts/bench_runtime.py                       # the shipped model, batch 1, 8 and 64
    python scripts/bench_runtime.py --model-dir bench-results/classic/models

It starts a real model runtime (``python -m service.runtime``, one torch thread unless
TRAINSERVE_TORCH_THREADS says otherwise) on a Unix socket and, one request at a time from this process:
a PING round trip (the protocol's floor: two messages, two wake-ups), then ``RuntimeClient.infer`` at each
batch size. The same artifact is loaded in this process too and its forward pass timed at the same batch
sizes with the same thread count, so the hand-off is the difference: copying the rows into the slot, the
two messages, the runtime's loop and the logits copied back. The runtime's own record of its passes (its
``trainserve_compute_seconds``) splits that difference into the pass run in the runtime (a process that
sleeps between requests starts each pass with cold caches) and the rest. Medians of ``--requests`` calls
each, the runs alternating between the two so that a noisy machine slows both alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from bench_app import runtime  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=REPO / "models", help="(default: %(default)s)")
    parser.add_argument("--batches", default="1,8,64", help="(default: %(default)s)")
    parser.add_argument("--requests", type=int, default=2000, help="per measurement (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default: %(default)s)")
    args = parser.parse_args()

    import torch

    from service.contract.allocator import keep_freed_memory
    from service.contract.loading import load_model
    from service.contract.manifest import artifact_dirs
    from service.handoff import protocol
    from service.handoff.client import RuntimeClient

    threads = int(os.environ.get("TRAINSERVE_TORCH_THREADS") or 1)
    keep_freed_memory()
    torch.set_num_threads(threads)
    folder = list(artifact_dirs(args.model_dir))[-1]
    local = load_model(folder, torch.device("cpu"), half=False, warmup_batch=64)
    with tempfile.TemporaryDirectory() as tmp:
        metrics = Path(tmp) / "metrics"
        metrics.mkdir()
        env = {"TRAINSERVE_TORCH_THREADS": str(threads), "TRAINSERVE_LOG_LEVEL": "warning",
               "PROMETHEUS_MULTIPROC_DIR": str(metrics)}
        with runtime(args.model_dir, Path(tmp) / "runtime.sock", **env) as sock:
            client = RuntimeClient([sock])
            model = client.catalog().get(local.manifest.name, local.manifest.version)
            conn = client._acquire(0)  # the protocol's floor, on one slot
            ping = median_us(lambda: conn.control(protocol.PING, "", time.monotonic() + 5), args.requests)
            client._release(0, conn)
            print(f"{model.key}, {threads} torch thread(s); PING round trip {ping:.1f} us")
            rng = np.random.default_rng(0)
            for batch in (int(b) for b in args.batches.split(",")):
                x = rng.integers(0, 256, (batch, *local.manifest.input.shape), dtype=np.uint8)
                served, alone = [], []
                before = compute_totals(metrics)
                for _ in range(args.rounds):
                    served.append(median_us(lambda x=x: client.infer(model, x, time.monotonic() + 10),
                                            args.requests))
                    alone.append(median_us(lambda x=x: local.forward([x]), args.requests))
                after = compute_totals(metrics)
                inside = 1e6 * (after[0] - before[0]) / max(after[1] - before[1], 1)  # mean, with warm-up
                s, a = statistics.median(served), statistics.median(alone)
                print(f"batch {batch:3}: through the runtime {s:7.1f} us, in-process forward {a:7.1f} us, "
                      f"hand-off {s - a:6.1f} us per request ({(s - a) / batch:5.2f} us per image); "
                      f"pass inside the runtime {inside:7.1f} us (mean), {s - inside:6.1f} us outside it")
            client.close()


def compute_totals(folder: Path) -> tuple[float, float]:
    """The runtime's forward-pass seconds and count so far (its multiprocess metric files)."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(folder))
    total = count = 0.0
    for family in registry.collect():
        if family.name == "trainserve_compute_seconds":
            for sample in family.samples:
                if sample.name.endswith("_sum"):
                    total += sample.value
                elif sample.name.endswith("_count"):
                    count += sample.value
    return total, count


def median_us(fn, n: int) -> float:
    """The median of ``n`` timed calls, after a quarter as many untimed ones."""
    for _ in range(n // 4):
        fn()
    times = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return 1e6 * statistics.median(times)


if __name__ == "__main__":
    main()
