"""The optional KServe and Kubeflow components: over every overlay they render, built-in kinds validate
strictly, the custom resources validate against their CRDs' published schemas (vendored in schemas/), and
the InferenceService and PyTorchJob carry the pods the overlay's Deployment and Job describe."""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import flask
import pytest

kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (in the e2e extra)")
jsonschema = pytest.importorskip("jsonschema", reason="pip install jsonschema (in the test extra)")

OVERLAYS = ("cpu", "gpu")
K8S_VERSIONS = ("1.29", kv.utils.latest_version())
SCHEMAS = Path(__file__).parent / "schemas"
CRDS = {
    ("serving.kserve.io/v1beta1", "InferenceService"): "kserve-inferenceservice-v1beta1.json",
    ("kubeflow.org/v1", "PyTorchJob"): "kubeflow-pytorchjob-v1.json",
}
# What each component adds and takes away from the overlay's documents.
CHANGES = {
    "kserve": ({"InferenceService"}, {"Deployment", "Service", "HorizontalPodAutoscaler"}),
    "pytorchjob": ({"PyTorchJob"}, {"Job"}),
    "rollouts": (set(), set()),
}
OVERLAY_KINDS = {"ConfigMap", "Deployment", "HorizontalPodAutoscaler", "Job", "PersistentVolumeClaim",
                 "PodDisruptionBudget", "Service", "ServiceAccount"}
# The variables the Training Operator (1.9, pkg/controller.v1/pytorch) sets on every PyTorchJob container.
OPERATOR_ENV = {"PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT",
                "MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "PYTHONUNBUFFERED"}


def strict(node: Any) -> Any:
    """A CRD schema as the API server applies it with strict field validation: an object that lists its
    properties takes no others, unless it says x-kubernetes-preserve-unknown-fields or additionalProperties.
    """
    if isinstance(node, list):
        return [strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: ({name: strict(s) for name, s in value.items()} if key == "properties"
                 else value if key in ("default", "enum", "example") else strict(value))
           for key, value in node.items()}
    if ("properties" in out and out.get("type") == "object" and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@cache
def crd_validator(api_version: str, kind: str) -> Any:
    """A validator for one custom resource, from its vendored published schema, made strict."""
    vendored = json.loads((SCHEMAS / CRDS[api_version, kind]).read_text())
    assert vendored["source"]["version"] == api_version.rsplit("/", 1)[1]
    return jsonschema.Draft4Validator(strict(vendored["openAPIV3Schema"]))


def validate(doc: dict[str, Any]) -> None:
    """Fail the test unless the document is valid: a listed CRD against its schema, any other kind against
    the Kubernetes schemas of every version we support."""
    name = f"{doc['kind']}/{doc['metadata']['name']}"
    key = (doc["apiVersion"], doc["kind"])
    if key in CRDS:
        errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
                  for e in crd_validator(*key).iter_errors(doc)]
        assert not errors, f"{name}: " + "; ".join(errors)
        return
    for version in K8S_VERSIONS:
        try:
            kv.validate(doc, version, strict=True)
        except kv.utils.ValidationError as exc:
            pytest.fail(f"{name} against {version}: {'.'.join(map(str, exc.path))}: {exc.message}")
        except kv.utils.SchemaNotFoundError as exc:
            pytest.fail(f"unknown kind (not a listed CRD): {exc.message}")


def render(kit: Any, tmp_path: Path, overlay: str, *components: str) -> list[dict[str, Any]]:
    """An overlay with components, as an operator's own overlay would add them."""
    return kit.compose(tmp_path / "-".join((overlay, *components)), overlay, components)


def predictor_container(isvc: dict[str, Any]) -> dict[str, Any]:
    """The InferenceService's predictor container."""
    return next(c for c in isvc["spec"]["predictor"]["containers"] if c["name"] == "kserve-container")


def replicas(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A PyTorchJob's replica specs by type."""
    return job["spec"]["pytorchReplicaSpecs"]


@pytest.mark.parametrize("component", sorted(CHANGES))
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_components_render_and_validate(kit: Any, overlay: str, component: str, tmp_path: Path) -> None:
    """Each component over each overlay: the kinds it promises, every document valid (CRDs included)."""
    added, removed = CHANGES[component]
    docs = render(kit, tmp_path, overlay, component)
    assert sorted(d["kind"] for d in docs) == sorted((OVERLAY_KINDS - removed) | added)
    for doc in docs:
        validate(doc)


def test_both_components_together(kit: Any, tmp_path: Path) -> None:
    """KServe serving and multi-node training compose: neither needs what the other deletes."""
    docs = render(kit, tmp_path, "gpu", "kserve", "pytorchjob")
    assert sorted(d["kind"] for d in docs) == sorted(
        {"ConfigMap", "PersistentVolumeClaim", "PodDisruptionBudget", "ServiceAccount", "InferenceService",
         "PyTorchJob"})
    for doc in docs:
        validate(doc)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rollouts_make_the_models_volume_writable_for_the_server_only(kit: Any, overlay: str,
                                                                     tmp_path: Path) -> None:
    """With the rollouts component the serving container can write routing.json (the API, the automatic
    rollback); the init container and the base keep /models read-only."""
    def mounts(docs: list[dict[str, Any]]) -> dict[str, bool]:
        pod = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
        found = {c["name"]: m.get("readOnly", False) for c in pod["containers"] + pod["initContainers"]
                 for m in c["volumeMounts"] if m["name"] == "models"}
        claim = next(v for v in pod["volumes"] if v["name"] == "models")["persistentVolumeClaim"]
        return found | {"volume": claim.get("readOnly", False)}

    base = mounts(kit.kustomize(kit.deploy / "overlays" / overlay))
    assert base == {"trainserve": True, "wait-for-model": True, "volume": True}
    assert mounts(render(kit, tmp_path, overlay, "rollouts")) == {"trainserve": False, "wait-for-model": True,
                                                                  "volume": False}


def test_the_crd_schema_check_catches_a_typo(kit: Any, tmp_path: Path) -> None:
    """Strict CRD validation is really on: a misspelt or misplaced field fails, in either resource."""
    docs = render(kit, tmp_path, "cpu", "kserve", "pytorchjob")
    isvc, job = kit.find(docs, "InferenceService"), kit.find(docs, "PyTorchJob")
    validator = crd_validator(isvc["apiVersion"], "InferenceService")
    predictor = isvc["spec"]["predictor"]
    # protocolVersion belongs to predictor.model (a serving runtime's model), not to a custom predictor.
    for wrong in ({**predictor, "protocolVersion": "v2"}, {**predictor, "minReplica": 2}):
        assert not validator.is_valid({**isvc, "spec": {"predictor": wrong}})
    master = replicas(job)["Master"]
    template = master["template"]
    (main,) = template["spec"]["containers"]
    deep = {**template, "spec": {**template["spec"], "containers": [{**main, "comand": []}]}}
    for wrong in ({**master, "replica": 1}, {**master, "template": deep}):  # inside the embedded pod, too
        broken = {**replicas(job), "Master": wrong}
        assert not crd_validator(job["apiVersion"], "PyTorchJob").is_valid(
            {**job, "spec": {**job["spec"], "pytorchReplicaSpecs": broken}})
    validate(isvc)
    validate(job)


def without_predictor_changes(pod: dict[str, Any]) -> dict[str, Any]:
    """The predictor's pod spec with what the component changes put back as the Deployment has it."""
    pod = json.loads(json.dumps(pod))
    for key in ("labels", "deploymentStrategy", "minReplicas", "maxReplicas", "scaleMetric", "scaleTarget"):
        pod.pop(key)
    (server,) = pod["containers"]
    server.pop("env")
    server["name"], server["ports"][0]["name"], server["ports"][1]["name"] = "trainserve", "http", "grpc"
    server["startupProbe"]["httpGet"] = {"path": "/healthz", "port": "http"}
    server["livenessProbe"]["httpGet"] = {"path": "/healthz", "port": "http"}
    server["readinessProbe"]["httpGet"] = {"path": "/readyz", "port": "http"}
    return pod


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_predictor_is_the_deployments_pod(kit: Any, overlay: str, tmp_path: Path,
                                             rendered: dict[str, list[dict[str, Any]]]) -> None:
    """The InferenceService runs exactly the overlay's serving pod (image, settings, resources, GPU,
    volumes, security, drain), with KServe's names, the v2 protocol and the autoscaler's bounds."""
    plain = rendered[overlay]
    isvc = kit.find(render(kit, tmp_path, overlay, "kserve"), "InferenceService")
    deployment, hpa = kit.find(plain, "Deployment"), kit.find(plain, "HorizontalPodAutoscaler")["spec"]
    predictor = isvc["spec"]["predictor"]
    assert without_predictor_changes(predictor) == deployment["spec"]["template"]["spec"]
    assert predictor["labels"] == deployment["spec"]["template"]["metadata"]["labels"]
    assert predictor["deploymentStrategy"] == deployment["spec"]["strategy"]
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (hpa["minReplicas"], hpa["maxReplicas"])
    assert predictor["scaleMetric"] == "cpu"
    assert predictor["scaleTarget"] == hpa["metrics"][0]["resource"]["target"]["averageUtilization"]
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    server = predictor_container(isvc)
    assert {"name": "PROTOCOL", "value": "v2"} in server["env"]
    pdb = kit.find(plain, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"]
    assert all(predictor["labels"].get(k) == v for k, v in pdb.items()), "the PDB covers the predictor pods"


# Frameworks a predictor may name instead of containers (KServe 0.20, PredictorSpec): a custom one names none.
FRAMEWORKS = {"sklearn", "xgboost", "tensorflow", "pytorch", "triton", "onnx", "huggingface", "pmml",
              "lightgbm", "paddle", "model"}
DNS_1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_custom_resources_pass_their_admission_webhooks(kit: Any, overlay: str, tmp_path: Path) -> None:
    """What the schemas cannot say, the operators' webhooks check: KServe 0.20's
    (pkg/apis/serving/v1beta1/inference_service_validation.go, predictor_custom.go) and the Training
    Operator 1.9's (pkg/webhooks/pytorch/pytorchjob_webhook.go), rule by rule."""
    docs = render(kit, tmp_path, overlay, "kserve", "pytorchjob")
    isvc = kit.find(docs, "InferenceService")
    annotations, predictor = isvc["metadata"]["annotations"], isvc["spec"]["predictor"]
    assert DNS_1035.fullmatch(isvc["metadata"]["name"])
    assert annotations["serving.kserve.io/autoscalerClass"] in {"hpa", "external", "keda", "none"}
    assert not FRAMEWORKS & set(predictor), "exactly one implementation: the custom containers"
    assert [c["name"] for c in predictor["containers"]] == ["kserve-container"]
    protocol = [e["value"] for e in predictor_container(isvc)["env"] if e["name"] == "PROTOCOL"]
    assert protocol == ["v2"]
    for c in predictor["containers"] + predictor["initContainers"]:
        assert "PYTHONPATH" not in {e["name"] for e in c.get("env", [])}, "a blocked variable"
    assert 0 <= predictor["minReplicas"] <= predictor["maxReplicas"]
    assert predictor["scaleMetric"] in {"cpu", "memory"} and 1 <= predictor["scaleTarget"] <= 100

    job = kit.find(docs, "PyTorchJob")
    assert DNS_1035.fullmatch(job["metadata"]["name"]) and len(job["metadata"]["name"]) <= 63
    roles = replicas(job)
    assert set(roles) <= {"Master", "Worker"} and roles["Master"]["replicas"] == 1
    assert roles["Worker"]["replicas"] >= 1
    for replica in roles.values():
        containers = replica["template"]["spec"]["containers"]
        assert "pytorch" in {c["name"] for c in containers} and all(c["image"] for c in containers)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_predictor_probes_hit_the_services_v2_health_routes(kit: Any, overlay: str, tmp_path: Path) -> None:
    """KServe's port rules (the first port, named http1, is the one it routes to; a custom predictor's gRPC
    port is named h2c) and probes that ask the service's own OIP live and ready routes on the port it
    listens on."""
    docs = render(kit, tmp_path, overlay, "kserve")
    server = predictor_container(kit.find(docs, "InferenceService"))
    port, grpc_port = server["ports"]
    assert port["name"] == "http1" and port["protocol"] == "TCP"
    assert grpc_port["name"] == "h2c" and grpc_port["protocol"] == "TCP"
    settings = kit.find(docs, "ConfigMap")["data"]
    assert port["containerPort"] == int(settings["TRAINSERVE_BIND"].rsplit(":", 1)[1])
    assert grpc_port["containerPort"] == int(settings["TRAINSERVE_GRPC_BIND"].rsplit(":", 1)[1])
    v2 = pytest.importorskip("service.web.api.v2", reason="service/web is not in this tree")
    app = flask.Flask("probes")
    app.register_blueprint(v2.bp)
    routes = app.url_map.bind("localhost")
    expected = {"startupProbe": "v2.live", "livenessProbe": "v2.live", "readinessProbe": "v2.ready"}
    for probe, endpoint in expected.items():
        get = server[probe]["httpGet"]
        assert get["port"] == port["name"], probe
        assert routes.match(get["path"], method="GET")[0] == endpoint, probe


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pytorchjob_runs_the_training_pod_through_torchrun(kit: Any, overlay: str, tmp_path: Path,
                                                          rendered: dict[str, list[dict[str, Any]]]) -> None:
    """Master and Workers run the overlay's training container as `pytorch` under torchrun, fed by the
    operator's variables; only the Master mounts the models claim, where the Job wrote; the global batch
    divides among the processes."""
    job = kit.find(rendered[overlay], "Job")
    trainer = job["spec"]["template"]["spec"]
    (train,) = trainer["containers"]
    claim = kit.find(rendered[overlay], "PersistentVolumeClaim")["metadata"]["name"]
    spec = kit.find(render(kit, tmp_path, overlay, "pytorchjob"), "PyTorchJob")["spec"]
    roles = spec["pytorchReplicaSpecs"]
    assert set(roles) == {"Master", "Worker"} and roles["Master"]["replicas"] == 1
    assert spec["runPolicy"]["activeDeadlineSeconds"] == job["spec"]["activeDeadlineSeconds"]
    out = train["args"][train["args"].index("--out") + 1]
    for role, replica in roles.items():
        pod = replica["template"]["spec"]
        (main,) = pod["containers"]
        assert main["name"] == "pytorch", role
        assert main["image"] == train["image"] and main["args"] == train["args"], role
        assert main["resources"] == train["resources"] and main["securityContext"] == train["securityContext"]
        assert pod["securityContext"] == trainer["securityContext"], role
        assert pod["automountServiceAccountToken"] is False, role
        assert replica["restartPolicy"] == "Never", role
        command = main["command"]
        assert command[0] == "torchrun" and command[-2:] == ["-m", "training"], role
        assert set(re.findall(r"\$\((\w+)\)", " ".join(command))) <= OPERATOR_ENV, role
        mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
                  if "persistentVolumeClaim" in v}
        if role == "Master":
            assert claims.get(mounts[out]) == claim
            assert main["ports"] == [{"name": "pytorchjob-port", "containerPort": 23456, "protocol": "TCP"}]
        else:
            assert not claims and out not in mounts, "workers never write the model repository"
    processes = (1 + roles["Worker"]["replicas"]) * int(spec["nprocPerNode"])
    args = train["args"]
    batch = int(args[args.index("--batch-size") + 1]) if "--batch-size" in args else 128
    assert batch % processes == 0


def test_operator_image_names_reach_the_custom_resources(kit: Any, tmp_path: Path) -> None:
    """An operator's `images:` entries retag the containers inside the InferenceService and PyTorchJob."""
    images = [{"name": "trainserve", "newName": "registry.example/trainserve", "newTag": "1.0"},
              {"name": "trainserve-train", "newName": "registry.example/trainserve-train", "newTag": "1.0"}]
    docs = kit.compose(tmp_path, "cpu", ["kserve", "pytorchjob"], images)
    predictor = kit.find(docs, "InferenceService")["spec"]["predictor"]
    served = [c["image"] for c in predictor["initContainers"] + predictor["containers"]]
    assert served == ["registry.example/trainserve:1.0"] * 2
    for replica in replicas(kit.find(docs, "PyTorchJob")).values():
        assert [c["image"] for c in replica["template"]["spec"]["containers"]] == [
            "registry.example/trainserve-train:1.0"]

