"""Serve a trainserve artifact with mosec, to measure trainserve against it side by side.

    pip install mosec   # its HTTP front end is a Rust binary shipped in the wheel
    python scripts/mosec_peer.py --model-dir models --port 8090 &
    python scripts/bench_serve.py --start --naive --payloads png --peer mosec=http://127.0.0.1:8090/inference
    kill %1

It serves the newest version of the model (its model.pt and manifest) with the setup TorchServe gets from
scripts/torchserve_peer.py: dynamic batching (``--batch-size`` 32, ``--max-batch-delay-ms`` 5),
``--workers`` 2 (one Python process per core) with one torch thread each, logging at WARN. mosec's Rust
front end listens on 127.0.0.1:PORT and hands each batch of raw bodies to a worker, which decodes every
image as the TorchServe handler does (Pillow, grey-scale, resize to the model's input) and answers each
with the naive app's JSON (label and probabilities). POST a PNG to /inference; GET / answers as soon as the
front end is up, before the workers are. A second route, /v2/infer, takes the Open Inference Protocol's JSON
request of UINT8 images (what trainserve's OIP JSON route takes: one tensor, ``data`` a flat list) and
answers its ``label`` output, on ``--workers`` processes of its own. Stop it with Ctrl-C or SIGTERM: mosec
stops its workers with it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from mosec import Runtime, Server, Worker
from mosec.errors import DecodingError
from PIL import Image, UnidentifiedImageError

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from service.contract.manifest import artifact_dirs  # noqa: E402

# mosec builds each worker in a spawned process from the class alone; the artifact's folder reaches it
# through the environment mosec sets for that process (append_worker's env).
ARTIFACT_ENV = "MOSEC_PEER_ARTIFACT"


class Classifier(Worker):
    """PNG/JPEG bodies in, {"label", "probabilities"} per request out: the TorchServe handler's work."""

    req_mime_type = "image/png"

    def __init__(self) -> None:
        super().__init__()
        torch.set_num_threads(1)  # one per worker, as in trainserve, the naive app and TorchServe
        folder = Path(os.environ[ARTIFACT_ENV])
        with warnings.catch_warnings():  # the artifact is TorchScript; torch.jit warns it is deprecated
            warnings.simplefilter("ignore")
            self.model = torch.jit.freeze(torch.jit.load(folder / "model.pt", map_location="cpu").eval())
        manifest = json.loads((folder / "manifest.json").read_text())
        self.labels = manifest["labels"]
        _, self.height, self.width = manifest["input"]["shape"]

    def deserialize(self, data: bytes) -> np.ndarray:
        """One request's body, decoded here in the worker (mosec answers a DecodingError with 400)."""
        try:
            image = Image.open(io.BytesIO(data)).convert("L").resize((self.width, self.height))
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise DecodingError(f"not an image: {err}") from err
        return np.asarray(image)

    def forward(self, data: list[np.ndarray]) -> list[dict]:
        """One batch (up to --batch-size requests) through the model, one answer per request, in order."""
        x = torch.from_numpy(np.stack(data)).unsqueeze(1)  # uint8 [N, 1, H, W]: the module scales it
        with torch.inference_mode():
            probs = torch.softmax(self.model(x), dim=1)
        return [{"label": self.labels[int(row.argmax())], "probabilities": row.tolist()} for row in probs]

    def serialize(self, data: dict) -> bytes:
        """Compact JSON, as the naive app and TorchServe send (mosec's default indents it)."""
        return json.dumps(data).encode()


class TensorClassifier(Classifier):
    """OIP JSON bodies of UINT8 images in, the OIP answer with a ``label`` output per request out."""

    req_mime_type = "application/json"

    def deserialize(self, data: bytes) -> np.ndarray:
        """One request's tensor [N, 1, H, W] from its JSON (mosec answers a DecodingError with 400)."""
        try:
            tensor = json.loads(data)["inputs"][0]
            images = np.asarray(tensor["data"], dtype=np.uint8).reshape(tensor["shape"])
        except (ValueError, KeyError, IndexError, TypeError) as err:
            raise DecodingError(f"not an OIP request of UINT8 images: {err}") from err
        if images.shape[1:] != (1, self.height, self.width):
            raise DecodingError(f"shape {list(images.shape)} is not [N, 1, {self.height}, {self.width}]")
        return images

    def forward(self, data: list[np.ndarray]) -> list[dict]:
        """One batch of requests (each one or more images) through the model, one answer per request."""
        sizes = [len(x) for x in data]
        with torch.inference_mode():
            labels = self.model(torch.from_numpy(np.concatenate(data))).argmax(dim=1).tolist()
        answers, start = [], 0
        for size in sizes:
            chosen = [self.labels[i] for i in labels[start:start + size]]
            answers.append({"outputs": [{"name": "label", "datatype": "BYTES", "shape": [size],
                                         "data": chosen}]})
            start += size
        return answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=Path("models"), help="(default: %(default)s)")
    parser.add_argument("--model", default=None, help="model name (default: the first one)")
    parser.add_argument("--port", type=int, default=8090, help="HTTP port (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)),
                        help="(default: one per core)")
    parser.add_argument("--batch-size", type=int, default=32, help="(default: %(default)s)")
    parser.add_argument("--max-batch-delay-ms", type=int, default=5, help="(default: %(default)s)")
    args = parser.parse_args()

    folders = [d for d in artifact_dirs(args.model_dir) if args.model in (None, d.parent.name)]
    if not folders:
        sys.exit(f"no artifact{f' of {args.model}' if args.model else ''} under {args.model_dir}")
    folder = folders[-1].resolve()
    # mosec's Server reads its own settings from sys.argv; give it exactly these. A request may wait as
    # long as wrk does (10 s) before mosec gives up on it.
    sys.argv = [sys.argv[0], "--address", "127.0.0.1", "--port", str(args.port), "--timeout", "10000",
                "--log-level", "warning"]
    server = Server()
    env = {ARTIFACT_ENV: str(folder), "OMP_NUM_THREADS": "1"}
    server.register_runtime({
        f"/{route}": [Runtime(worker, num=args.workers, max_batch_size=args.batch_size,
                              max_wait_time=args.max_batch_delay_ms, env=[env] * args.workers)]
        for route, worker in (("inference", Classifier), ("v2/infer", TensorClassifier))})
    print(f"mosec: POST images to http://127.0.0.1:{args.port}/inference, OIP JSON to /v2/infer", flush=True)
    server.run()


if __name__ == "__main__":
    main()
