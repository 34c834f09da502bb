"""TorchServe handler for a trainserve artifact: what the naive app does per image, batched by TorchServe.

Used by scripts/torchserve_peer.py, which packs it with the artifact's model.pt into a model archive. Per
image it does what scripts/naive_app.py does (Pillow decode, grey-scale, resize to the model's input); the
batch goes through the same frozen TorchScript module on one torch thread per worker, and each image gets
the naive app's answer (label and probabilities).
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from ts.torch_handler.base_handler import BaseHandler


class Handler(BaseHandler):
    """PNG/JPEG bodies in, {"label", "probabilities"} per request out."""

    def initialize(self, context) -> None:
        torch.set_num_threads(1)  # one per worker, as in trainserve and the naive app
        super().initialize(context)  # torch.jit.load of the archive's serialized file
        with warnings.catch_warnings():  # the artifact is TorchScript; torch.jit warns it is deprecated
            warnings.simplefilter("ignore")
            self.model = torch.jit.freeze(self.model.eval())  # as trainserve and the naive app load it
        manifest = json.loads((Path(context.system_properties["model_dir"]) / "manifest.json").read_text())
        self.labels = manifest["labels"]
        _, self.height, self.width = manifest["input"]["shape"]

    def preprocess(self, data: list[dict]) -> torch.Tensor:
        images = []
        for row in data:
            body = row.get("data") or row.get("body")
            image = Image.open(io.BytesIO(body)).convert("L").resize((self.width, self.height))
            images.append(np.asarray(image))
        return torch.from_numpy(np.stack(images)).unsqueeze(1)  # uint8 [N, 1, H, W]: the module scales it

    def inference(self, data: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        with torch.inference_mode():
            return torch.softmax(self.model(data), dim=1)

    def postprocess(self, data: torch.Tensor) -> list[dict]:
        return [{"label": self.labels[int(row.argmax())], "probabilities": row.tolist()} for row in data]
