"""In-process throughput of every format of an artifact, side by side: images/s by batch size and threads.

    python scripts/bench_model.py models/mnist-cnn/1                 # its formats, and the classic net's
    python scripts/bench_model.py models/mnist-cnn/1 models/mnist-cnn/2 --archs   # two versions side by side
    python scripts/bench_model.py models/mnist-cnn/1 --archs          # the artifact alone
    python scripts/bench_model.py models/mnist-cnn/1 --batch-sizes 1 8 64 256 --threads 1 2
    python scripts/bench_model.py models/mnist-cnn/1 --archs mlp cnn classic resnet   # untrained nets too
    python scripts/bench_model.py models/mnist-cnn/1 --forms         # TorchScript as exported, frozen, oneDNN
    python scripts/bench_model.py models/mnist-cnn/1 --malloc-defaults   # glibc's malloc defaults

Every format the artifact's manifest lists (TorchScript, exported, AOTInductor) is loaded by the service's own
loader, as the service would serve it, and called with uint8 pixels. ``--archs`` nets are exported in every
format first (AOTInductor compiles C++: the compile time is printed). This is the ceiling an HTTP service
can approach: no parsing, no queueing, and the C allocator set up as in the service's workers. Run it from
the repository root with the project installed (`make setup`), or with PYTHONPATH=. .
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

from service.contract.allocator import keep_freed_memory
from service.contract.formats import FormatRefused
from service.contract.loading import load_format
from service.contract.manifest import read_manifest, verify_checksum
from training.export import ArtifactInfo, PixelClassifier, export, load_scripted, optimized_for_inference
from training.nets import build_net, count_macs


def _time_calls(model: torch.nn.Module, batch: torch.Tensor, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        model(batch)
    return time.perf_counter() - started


def served_formats(folder: Path, label: str) -> dict[str, tuple[str, object]]:
    """Every format of the artifact in ``folder``, loaded as the service loads it: label -> (``label``,
    callable); the label names the net, the format and its compile time."""
    manifest = read_manifest(folder)
    loaded = {}
    for entry in manifest.model_formats:
        try:
            model = load_format(folder, manifest, entry, torch.device("cpu"), half=False, warmup_batch=1)
        except FormatRefused as exc:  # e.g. an AOTInductor package built for another CPU: as the service does
            print(f"{label} {entry.format}: skipped, {exc}", flush=True)
            continue
        compiled = f", compiled in {entry.compile_seconds:.1f} s" if entry.compile_seconds else ""
        loaded[f"{label} {entry.format}{compiled}"] = (label, model.module)
    return loaded


def untrained(arch: str, shape: tuple[int, ...], classes: int, root: Path) -> dict[str, tuple[str, object]]:
    """A fresh ``arch`` net exported in every format under ``root``, each loaded as the service would."""
    net = build_net(arch, shape, classes)
    params = sum(p.numel() for p in net.parameters())
    info = ArtifactInfo(name=f"bench-{arch}", architecture=arch, labels=tuple(str(i) for i in range(classes)),
                        input_shape=shape, metrics={}, training={}, dataset={}, version="1")
    started = time.perf_counter()
    model = PixelClassifier(net, [0.5] * shape[0], [0.5] * shape[0]).eval()
    folder = export(model, info, root, torch.randint(0, 256, (8, *shape), dtype=torch.uint8),
                    formats=("exported", "aoti"))
    print(f"untrained {arch}: {params:,} parameters, {count_macs(net, shape) / 1e6:.2f} M MACs/image, "
          f"exported in every format in {time.perf_counter() - started:.1f} s", flush=True)
    return served_formats(folder, f"untrained {arch}")


def main() -> None:
    """Parse flags, load every format, print a table of images/s."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("artifacts", type=Path, nargs="+", metavar="artifact",
                   help="artifact folders, e.g. models/mnist-cnn/1 (several: measured side by side)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64], help="(default: 1 64)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch threads (default: 1 2)")
    p.add_argument("--seconds", type=float, default=2.0, help="timed seconds per cell (default: 2)")
    p.add_argument("--forms", action="store_true",
                   help="also measure the TorchScript file as exported (not frozen) and through "
                        "torch.jit.optimize_for_inference")
    p.add_argument("--archs", nargs="*", default=["classic"], metavar="ARCH",
                   help="also measure fresh, untrained nets of these --arch kinds (mlp, cnn, classic, "
                        "resnet) on the artifact's input, in every format: throughput does not depend on "
                        "the weights (default: classic; the flag alone: none)")
    p.add_argument("--malloc-defaults", action="store_true",
                   help="leave glibc's malloc thresholds at their defaults instead of setting them as the "
                        "service and the training CLI do (service/contract/allocator.py), to measure the "
                        "difference")
    args = p.parse_args()
    if not args.malloc_defaults:
        keep_freed_memory()
    models: dict[str, tuple[str, object]] = {}
    for folder in args.artifacts:
        manifest = read_manifest(folder)
        label = f"{manifest.name}/{manifest.version}"
        print(f"{label}: {manifest.architecture}, {manifest.parameters:,} parameters, "
              f"{manifest.extra.get('macs_per_example', 0) / 1e6:.2f} M MACs/image, "
              f"test accuracy {100 * manifest.metrics['test_accuracy']:.2f} %; torch {torch.__version__}, "
              f"CPU capability {torch.backends.cpu.get_cpu_capability()}", flush=True)
        models |= served_formats(folder, label)
        if args.forms:
            scripted = load_scripted(verify_checksum(manifest, folder))
            models |= {f"{label} torchscript as exported": (label, scripted),
                       f"{label} torchscript optimize_for_inference": (label,
                                                                       optimized_for_inference(scripted))}
    shape = tuple(manifest.input.shape)
    with tempfile.TemporaryDirectory(prefix="bench-model-") as root:
        for arch in args.archs:
            models |= untrained(arch, shape, manifest.num_classes, Path(root))
        _table(models, shape, args.threads, args.batch_sizes, args.seconds)


def _table(entries: dict[str, tuple[str, object]], shape: tuple[int, ...], threads: list[int],
           sizes: list[int], seconds: float, rounds: int = 7) -> None:
    """Per cell (threads, batch), the models' timed rounds alternate, so a drift of the machine's speed hits
    them alike; images/s is each model's median round, and ``x torchscript`` the median of its
    round-by-round ratios to the first entry of its net (that net's TorchScript file)."""
    models = {label: module for label, (_, module) in entries.items()}
    reference = {}
    for label, (net, _) in entries.items():
        reference[label] = next(other for other, (n, _) in entries.items() if n == net)
    cells = [(count, size) for count in threads for size in sizes]
    table: dict[str, list[str]] = {label: [] for label in models}
    for count, size in cells:
        torch.set_num_threads(count)
        batch = torch.randint(0, 256, (size, *shape), dtype=torch.uint8)
        calls = {label: _calibrate(module, batch, seconds / rounds) for label, module in models.items()}
        rates: dict[str, list[float]] = {label: [] for label in models}
        faults = dict.fromkeys(models, 0)  # minor page faults: what service/contract/allocator.py is about
        with torch.inference_mode():
            for _ in range(rounds):
                for label, module in models.items():
                    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                    rates[label].append(calls[label] * size / _time_calls(module, batch, calls[label]))
                    faults[label] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        for label in models:
            rate = statistics.median(rates[label])
            ratio = statistics.median(a / b for a, b in zip(rates[label], rates[reference[label]],
                                                            strict=True))
            table[label].append(f"{rate:,.0f} ({ratio:.2f}x)")
            print(f"  threads {count}  batch {size:>4}  {rate:>9,.0f} images/s  ({1000 * size / rate:.3f} ms "
                  f"per batch, {faults[label] / (calls[label] * rounds):.0f} page faults per call, "
                  f"{ratio:.2f} x torchscript)  {label}", flush=True)
    print("\nimages/s (x the same net's torchscript, paired rounds) | "
          + " | ".join(f"{t} thread{'s' * (t > 1)}, batch {b}" for t, b in cells))
    print("|".join(["---"] * (len(cells) + 1)))
    for label, row in table.items():
        print(f"{label} | " + " | ".join(row))


def _calibrate(module: object, batch: torch.Tensor, seconds: float) -> int:
    """Warm ``module`` up and return how many calls take about ``seconds``."""
    with torch.inference_mode():
        for _ in range(20):  # TorchScript profiles and optimises its graph on the first calls
            module(batch)
        per_call = _time_calls(module, batch, 10) / 10
    return max(1, int(seconds / max(per_call, 1e-6)))


if __name__ == "__main__":
    main()
