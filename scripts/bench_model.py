"""In-process throughput of an exported TorchScript artifact: images/s by batch size and torch threads.

    python scripts/bench_model.py models/mnist-cnn/1
    python scripts/bench_model.py models/mnist-cnn/1 --batch-sizes 1 8 64 256 --threads 1 2
    python scripts/bench_model.py models/mnist-cnn/1 --forms             # as exported, frozen, oneDNN
    python scripts/bench_model.py models/mnist-cnn/1 --archs mlp cnn classic resnet   # untrained nets
    python scripts/bench_model.py models/mnist-cnn/1 --malloc-defaults   # without service/server/allocator.py

This is the ceiling an HTTP service can approach: no parsing, no queueing, uint8 pixels straight in, and
the C allocator set up as in the service's workers. Run it
from the repository root with the project installed (`make setup`), or with PYTHONPATH=. .
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from pathlib import Path

import torch

from service.manifest import read_manifest, verify_checksum
from service.runtime.registry import load_model
from service.server.allocator import keep_freed_memory
from training.export import PixelClassifier, load_scripted, optimized_for_inference, script_for_serving
from training.nets import build_net, count_macs


def images_per_second(model: torch.nn.Module, batch: torch.Tensor, seconds: float = 2.0,
                      rounds: int = 5) -> tuple[float, float]:
    """Median images/s over ``rounds`` timed rounds of about ``seconds / rounds`` each, after a warm-up, and
    the page faults a call took on average over those rounds (what service/server/allocator.py is about)."""
    with torch.inference_mode():
        for _ in range(20):  # warm-up: TorchScript profiles and optimises its graph on the first calls
            model(batch)
        per_call = _time_calls(model, batch, 10) / 10
        calls = max(1, int(seconds / rounds / max(per_call, 1e-6)))
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        rates = [calls * len(batch) / _time_calls(model, batch, calls) for _ in range(rounds)]
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return statistics.median(rates), faults / (calls * rounds)


def _time_calls(model: torch.nn.Module, batch: torch.Tensor, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        model(batch)
    return time.perf_counter() - started


def main() -> None:
    """Parse flags, load and verify the artifact, print a table of images/s."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("artifact", type=Path, help="an artifact folder, e.g. models/mnist-cnn/1")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64], help="(default: 1 64)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch threads (default: 1 2)")
    p.add_argument("--seconds", type=float, default=2.0, help="timed seconds per cell (default: 2)")
    p.add_argument("--forms", action="store_true",
                   help="also compare the artifact as exported, frozen (what the service runs) and through "
                        "torch.jit.optimize_for_inference")
    p.add_argument("--archs", nargs="+", default=[], metavar="ARCH",
                   help="also measure fresh, untrained nets of these --arch kinds (mlp, cnn, classic, "
                        "resnet) on the artifact's input: throughput does not depend on the weights")
    p.add_argument("--malloc-defaults", action="store_true",
                   help="leave glibc's malloc thresholds at their defaults instead of setting them as the "
                        "service and the training CLI do (service/server/allocator.py), to measure the "
                        "difference")
    args = p.parse_args()
    if not args.malloc_defaults:
        keep_freed_memory()
    manifest = read_manifest(args.artifact)
    model = load_scripted(verify_checksum(manifest, args.artifact))
    print(f"{manifest.name}/{manifest.version}: {manifest.architecture}, {manifest.parameters:,} parameters, "
          f"{manifest.extra.get('macs_per_example', 0) / 1e6:.2f} M MACs/image, "
          f"test accuracy {100 * manifest.metrics['test_accuracy']:.2f} %")
    models = {"as exported": model}
    if args.forms:
        # What the service runs, prepared by the service's own loader (frozen), then the oneDNN variant.
        served = load_model(args.artifact, torch.device("cpu"), half=False, warmup_batch=1)
        models |= {"frozen (served)": served.module, "optimize_for_inference": optimized_for_inference(model)}
    shape = tuple(manifest.input.shape)
    for arch in args.archs:
        net = build_net(arch, shape, manifest.num_classes)
        label = (f"untrained {arch} ({sum(p.numel() for p in net.parameters()):,} parameters, "
                 f"{count_macs(net, shape) / 1e6:.2f} M MACs/image)")
        channels = shape[0]
        models[label] = script_for_serving(PixelClassifier(net, [0.5] * channels, [0.5] * channels))
    for label, module in models.items():
        if len(models) > 1:
            print(label)
        for threads in args.threads:
            torch.set_num_threads(threads)
            for size in args.batch_sizes:
                batch = torch.randint(0, 256, (size, *shape), dtype=torch.uint8)
                rate, faults = images_per_second(module, batch, args.seconds)
                print(f"threads {threads}  batch {size:>4}  {rate:>9,.0f} images/s  "
                      f"({1000 * size / rate:.3f} ms per batch, {faults:.0f} page faults)", flush=True)

if __name__ == "__main__":
    main()
