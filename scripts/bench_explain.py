"""What an explanation costs and how good it is, per served format and method, in process: the runtime's
own attribution function (service/runtime/explain.py) on real MNIST test digits.

    python scripts/bench_explain.py models/mnist-cnn/2 --data-dir ../shared/datasets
    python scripts/bench_explain.py models/mnist-cnn/2 --steps 16 32 64 --rows 1 8 --threads 1

For each format the artifact lists (as the service loads it) and each method it supports: milliseconds per
explanation of ``rows`` maps, and two quality figures over 64 digits: the share of the 20 most positively
attributed pixels that lie on the digit's strokes (or touch one), and the median correlation of the maps
with those of the same net with its weights randomised (Adebayo et al., 2018: low is good). The
figures in docs/serving.md#explanations came from this script.
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from service.contract.formats import FormatRefused
from service.contract.loading import LoadedModel, load_format
from service.contract.manifest import read_manifest
from service.runtime.explain import attribute


def _digits(data_dir: Path, count: int) -> np.ndarray:
    raw = gzip.decompress((data_dir / "mnist" / "t10k-images-idx3-ubyte.gz").read_bytes())
    return np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 1, 28, 28)[:count].copy()


def _on_strokes(digits: np.ndarray, maps: np.ndarray) -> float:
    shares = []
    for digit, attribution in zip(digits[:, 0], maps[:, 0], strict=True):
        near = np.maximum.reduce([np.roll(digit, (dy, dx), (0, 1)) for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
        top = np.argsort(attribution.ravel())[-20:]
        shares.append(float(np.mean(near.ravel()[top] > 64)))
    return float(np.mean(shares))


def _correlations(ours: np.ndarray, theirs: np.ndarray) -> list[float]:
    return [float(np.corrcoef(a.ravel(), b.ravel())[0, 1]) for a, b in zip(ours, theirs, strict=True)]


def _randomised(model: LoadedModel, folder: Path) -> LoadedModel:
    """The same TorchScript net with every parameter redrawn (the model-randomisation test)."""
    from training.export import load_scripted

    file = next(e.file for e in model.manifest.model_formats if e.format == "torchscript")
    net = load_scripted(folder / file)
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.copy_(torch.randn_like(parameter) * parameter.std().clamp_min(1e-3))
    return LoadedModel(model.manifest, net.eval(), model.device, False, format="torchscript")


def main() -> None:
    """Print a table: format, method, steps, rows, ms per explanation, on strokes, randomisation r."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--steps", type=int, nargs="+", default=[32])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--calls", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    digits = _digits(args.data_dir, 64)
    manifest = read_manifest(args.artifact)
    print(f"{'format':<12}{'method':<22}{'steps':>6}{'rows':>6}{'ms':>9}{'on strokes':>12}{'random r':>10}")
    for entry in manifest.model_formats:
        try:
            model = load_format(args.artifact, manifest, entry, torch.device("cpu"), False, 64)
        except FormatRefused as exc:
            print(f"{entry.format:<12}not here: {exc}")
            continue
        methods = ["integrated_gradients", "occlusion"] if entry.format != "aoti" else ["occlusion"]
        for method in methods:
            for steps in args.steps if method == "integrated_gradients" else [1]:
                maps = attribute(model, digits, [-1] * len(digits), method, steps, 64).attributions
                r = ""
                if entry.format == "torchscript":
                    random_maps = attribute(_randomised(model, args.artifact), digits, [-1] * len(digits),
                                            method, steps, 64).attributions
                    r = f"{statistics.median(_correlations(maps, random_maps)):.2f}"
                for rows in args.rows:
                    batch = digits[:rows]
                    attribute(model, batch, [-1] * rows, method, steps, 64)
                    started = time.perf_counter()
                    for _ in range(args.calls):
                        attribute(model, batch, [-1] * rows, method, steps, 64)
                    ms = (time.perf_counter() - started) / args.calls * 1000
                    print(f"{entry.format:<12}{method:<22}{steps:>6}{rows:>6}{ms:>9.1f}"
                          f"{_on_strokes(digits, maps):>12.2f}{r:>10}")


if __name__ == "__main__":
    main()
