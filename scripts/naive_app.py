"""The baseline `make bench` compares against: the classic "Flask + PyTorch" tutorial app, honestly done.

One forward pass per request, Pillow decoding, gunicorn sync workers (one per core, one torch thread each),
the same TorchScript artifact the service loads. No batching, no preprocessing beyond what the tutorial
does (grey-scale, resize to the model's input size), no tricks:

    TRAINSERVE_MODEL_DIR=models NAIVE_MODEL=mnist-cnn \\
        python -m gunicorn -w 2 -b 127.0.0.1:8001 'scripts.naive_app:create_app()'
    curl -X POST --data-binary @digit.png -H 'Content-Type: image/png' 127.0.0.1:8001/predict
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import torch
from flask import Flask, Response, jsonify, request
from PIL import Image

from service.contract.loading import load_model
from service.contract.manifest import artifact_dirs


def create_app() -> Flask:
    """Load the newest version of NAIVE_MODEL from TRAINSERVE_MODEL_DIR and serve /predict."""
    torch.set_num_threads(int(os.environ.get("NAIVE_TORCH_THREADS", "1")))
    root = Path(os.environ.get("TRAINSERVE_MODEL_DIR", "models"))
    name = os.environ.get("NAIVE_MODEL", "mnist-cnn")
    folder = [d for d in artifact_dirs(root) if d.parent.name == name][-1]
    # The registry's loader: the same torch.jit.load of the same file, plus checks and a warm-up.
    model = load_model(folder, torch.device("cpu"), half=False, warmup_batch=1).module
    _, height, width = json.loads((folder / "manifest.json").read_text())["input"]["shape"]
    app = Flask(__name__)

    @app.post("/predict")
    def predict() -> Response:
        image = Image.open(io.BytesIO(request.get_data())).convert("L").resize((width, height))
        x = torch.from_numpy(np.asarray(image).copy()).view(1, 1, height, width)
        with torch.inference_mode():
            probs = torch.softmax(model(x), dim=1)[0]
        return jsonify({"label": str(int(probs.argmax())), "probabilities": probs.tolist()})

    return app
