"""Send real predictions to a running trainserve and check its metrics (stdlib only, so it runs anywhere).

Used by image-smoke.sh against the container. Real MNIST test digits go through all three protocols
(v1 predict, Open Inference Protocol v2, a PNG upload); the answers must be right, and /metrics must then
count the requests. For a model that does not take 28x28 digits, or without the MNIST files, a blank image
of the model's input shape still exercises every path.

Usage: python smoke_request.py http://127.0.0.1:PORT [--mnist DIR] [--model NAME]
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import struct
import sys
import urllib.request
import zlib
from pathlib import Path
from typing import Any

DIGITS = 16
MIN_CORRECT = 14  # a trained MNIST net misses about 1 digit in 100; 14 of 16 leaves room for a weak one


def load_digits(mnist: Path | None, shape: list[int]) -> tuple[list[bytes], list[str] | None]:
    """The first MNIST test digits as raw pixels, with their labels; a blank image of ``shape`` (and no
    labels) when the model does not take 28x28 digits or the data set is missing."""
    if shape != [1, 28, 28] or mnist is None or not (mnist / "t10k-images-idx3-ubyte.gz").exists():
        return [bytes(shape[-1] * shape[-2])], None
    with gzip.open(mnist / "t10k-images-idx3-ubyte.gz") as fh:
        images = fh.read(16 + 784 * DIGITS)[16:]
    with gzip.open(mnist / "t10k-labels-idx1-ubyte.gz") as fh:
        labels = [str(b) for b in fh.read(8 + DIGITS)[8:]]
    return [images[i * 784:(i + 1) * 784] for i in range(DIGITS)], labels


def png(pixels: bytes, width: int = 28) -> bytes:
    """An 8-bit greyscale PNG of the pixels (what a client would upload)."""
    rows = b"".join(b"\0" + pixels[i:i + width] for i in range(0, len(pixels), width))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, len(pixels) // width, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


def call(url: str, body: bytes | None = None, content_type: str = "application/json") -> bytes:
    """One request; any status other than 200 raises with the response body."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type} if body else {})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read()


def check_predictions(base: str, model: dict[str, Any], digits: list[bytes],
                      labels: list[str] | None) -> None:
    """v1 predict for every image, v2 infer and a PNG upload for the first; exit if the answers are wrong."""
    name, (_, height, width) = model["name"], model["input_shape"]
    instances = [[list(d[r * width:(r + 1) * width]) for r in range(height)] for d in digits]
    body = json.dumps({"instances": instances, "dtype": "uint8"}).encode()
    v1 = [p["label"] for p in json.loads(call(f"{base}/v1/models/{name}:predict", body))["predictions"]]
    v2_body = json.dumps({"inputs": [{"name": "input", "shape": [1, 1, height, width], "datatype": "UINT8",
                                      "data": list(digits[0])}]}).encode()
    v2 = json.loads(call(f"{base}/v2/models/{name}/infer", v2_body))
    upload = json.loads(call(f"{base}/v1/models/{name}:classify", png(digits[0], width), "image/png"))
    upload_label = upload["predictions"][0]["label"]
    print(f"v1 predict: {v1}\nv2 infer outputs: {[o['name'] for o in v2['outputs']]}\n"
          f"PNG upload: {upload_label}")
    if not set(v1) | {upload_label} <= set(model["labels"]):
        sys.exit(f"labels {[*v1, upload_label]} are not the model's {model['labels']}")
    if labels is None:
        return
    correct = sum(p == t for p, t in zip(v1, labels, strict=True))
    print(f"expected:   {labels}\n{correct}/{len(labels)} correct")
    if correct < MIN_CORRECT or upload_label != labels[0]:
        sys.exit(f"wrong answers: {correct}/{len(labels)} correct (need {MIN_CORRECT}), "
                 f"upload said {upload_label}, expected {labels[0]}")


def check_metrics(base: str, model: str) -> None:
    """The requests counter must have counted the successful predictions."""
    text = call(f"{base}/metrics").decode()
    pattern = rf'^trainserve_requests_total{{[^}}]*endpoint="v1\.predict"[^}}]*model="{re.escape(model)}"' \
              rf'[^}}]*status="200"[^}}]*}} (\S+)$'
    found = re.search(pattern, text, re.MULTILINE)
    if not found or float(found.group(1)) < 1:
        sys.exit("metrics: no trainserve_requests_total sample for v1.predict with status 200:\n"
                 + text[:3000])
    print(f"metrics: {found.group(0)}")


def main() -> None:
    """Parse arguments, then predict and scrape."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", help="base URL of the running service")
    parser.add_argument("--mnist", type=Path, help="folder with the MNIST test files (default: none)")
    parser.add_argument("--model", help="model name (default: the first one /v1/models lists)")
    args = parser.parse_args()
    base = args.url.rstrip("/")
    served = json.loads(call(f"{base}/v1/models"))["models"]
    model = next((m for m in served if m["name"] == args.model), None) if args.model else served[0]
    if model is None:
        sys.exit(f"{args.model} is not served; the service has {[m['name'] for m in served]}")
    digits, labels = load_digits(args.mnist, model["input_shape"])
    check_predictions(base, model, digits, labels)
    check_metrics(base, model["name"])


if __name__ == "__main__":
    main()
