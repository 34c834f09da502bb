"""Open Inference Protocol v2 (as Triton and KServe speak it): health, metadata and inference."""

from __future__ import annotations

from flask import Blueprint, Response

from service.errors import NotReady
from service.web.api.common import check_named, infer_body, logits, model, plane, respond, respond_infer
from service.web.binary import wants_binary
from service.web.confidence import calibrated, judge
from service.web.inference import oip_outputs, outputs_for, parse_tensor, threshold_for
from service.web.schemas import INFER_REQUEST

bp = Blueprint("v2", __name__, url_prefix="/v2")

SERVER = {"name": "trainserve", "version": "0.1.0", "extensions": ["classification", "binary_tensor_data"]}


@bp.get("")
def server_metadata() -> Response:
    """Server name, version and protocol extensions."""
    return respond(SERVER)


@bp.get("/health/live")
def live() -> Response:
    """The process answers."""
    return respond({"live": True})


@bp.get("/health/ready")
def ready() -> Response:
    """Every model can take requests."""
    if not plane().ready:
        raise NotReady("the server is not ready")
    return respond({"ready": True})


@bp.get("/models/<name>")
@bp.get("/models/<name>/versions/<version>")
def model_metadata(name: str, version: str | None = None) -> Response:
    """Inputs, outputs and versions of a model."""
    return respond(plane().metadata(model(name, version)))


@bp.get("/models/<name>/ready")
@bp.get("/models/<name>/versions/<version>/ready")
def model_ready(name: str, version: str | None = None) -> Response:
    """Whether a model version takes requests now (503 when it does not)."""
    found = model(name, version)
    if not plane().model_ready(found):
        raise NotReady(f"model {found.key} is not ready")
    return respond({"name": found.manifest.name, "version": found.manifest.version, "ready": True})


@bp.post("/models/<name>/infer")
@bp.post("/models/<name>/versions/<version>/infer")
def infer(name: str, version: str | None = None) -> Response:
    """One input tensor (images as FP32, UINT8 or another numeric type whose values fit; FP32 feature rows;
    JSON or binary), chosen outputs back."""
    found = model(name, version)
    m = found.manifest
    body = infer_body(INFER_REQUEST)
    check_named(body, found, version)
    tensor = body["inputs"][0]
    threshold = threshold_for(m, body["parameters"].get("threshold"))
    inputs = parse_tensor(tensor["data"], tensor["datatype"], tensor["shape"], m.input)
    scaled = calibrated(logits(found, inputs), m)
    verdict = judge(scaled, m)
    requested = body["outputs"] or [{"name": output} for output in outputs_for(m.task, verdict is not None)]
    outputs = oip_outputs(scaled, requested, m.labels, m.task, threshold, verdict,
                          body["parameters"].get("plain", False))
    answer = {"model_name": m.name, "model_version": m.version, "outputs": outputs}
    if m.task != "multiclass":
        answer["parameters"] = {"task": m.task, "threshold": threshold}
    if "id" in body:
        answer["id"] = body["id"]
    return respond_infer(answer, [wants_binary(o, body["parameters"]) for o in requested])
