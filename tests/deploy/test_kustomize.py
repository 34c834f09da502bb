"""The Kubernetes manifests: every overlay renders, every document validates strictly against the API
schemas, and the pieces fit together (selectors, probes, volumes, settings, GPU scheduling)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (in the e2e extra)")

# Oldest Kubernetes minor still in common use that the manifests promise to fit, and the newest schemas.
K8S_VERSIONS = ("1.29", kv.utils.latest_version())
# Custom resources: no schema ships for them; they are checked by hand below.
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}


OVERLAYS = ("cpu", "gpu")


def with_servicemonitor(kit: Any, overlay: str, tmp_path: Path) -> list[dict[str, Any]]:
    """An overlay plus the optional ServiceMonitor component, as an operator would add it."""
    return kit.compose(tmp_path, overlay, ["servicemonitor"])


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    """The pod template's spec of a Deployment or Job."""
    return doc["spec"]["template"]["spec"]


def container(doc: dict[str, Any], name: str) -> dict[str, Any]:
    """One container of a workload, by name."""
    return next(c for c in pod_spec(doc)["containers"] if c["name"] == name)


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """Whether a matchLabels selector selects these labels."""
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_document_validates_strictly(kit: Any, overlay: str, tmp_path: Path) -> None:
    """Strict schemas reject unknown fields and kinds; only the listed CRDs are let through unvalidated."""
    docs = with_servicemonitor(kit, overlay, tmp_path)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "Job",
                            "PersistentVolumeClaim", "PodDisruptionBudget", "Service", "ServiceAccount",
                            "ServiceMonitor"])
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CRDS:
            continue
        for version in K8S_VERSIONS:
            try:
                kv.validate(doc, version, strict=True)
            except kv.utils.ValidationError as exc:
                path = ".".join(str(p) for p in exc.path)
                name = f"{doc['kind']}/{doc['metadata']['name']}"
                pytest.fail(f"{name} against {version}: {path}: {exc.message}")
            except kv.utils.SchemaNotFoundError as exc:
                pytest.fail(f"unknown kind (not a listed CRD): {exc.message}")


def test_the_schema_check_catches_a_typo(kit: Any, rendered: dict[str, list[dict[str, Any]]]) -> None:
    """Strict validation is really on: a misspelt field fails."""
    deployment = kit.find(rendered["cpu"], "Deployment")
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kv.utils.ValidationError):
        kv.validate(broken, K8S_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_hpa_pdb_and_monitor_select_the_serving_pods(kit: Any, overlay: str, tmp_path: Path) -> None:
    """Every selector finds the serving pods and none finds the training Job's pods."""
    docs = with_servicemonitor(kit, overlay, tmp_path)
    deployment, job = kit.find(docs, "Deployment"), kit.find(docs, "Job")
    server = deployment["spec"]["template"]["metadata"]["labels"]
    trainer = job["spec"]["template"]["metadata"]["labels"]
    service = kit.find(docs, "Service")
    selectors = {
        "Deployment": deployment["spec"]["selector"]["matchLabels"],
        "Service": service["spec"]["selector"],
        "PodDisruptionBudget": kit.find(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
    }
    for kind, selector in selectors.items():
        assert matches(selector, server), kind
        assert not matches(selector, trainer), kind
    hpa = kit.find(docs, "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "trainserve"}
    assert hpa["minReplicas"] >= 1 and hpa["maxReplicas"] > hpa["minReplicas"]
    monitor = kit.find(docs, "ServiceMonitor")["spec"]
    assert matches(monitor["selector"]["matchLabels"], service["metadata"]["labels"])
    port_names = {p["name"] for p in service["spec"]["ports"]}
    assert [e["port"] for e in monitor["endpoints"]] == ["http"] and "http" in port_names
    assert monitor["endpoints"][0]["path"] == "/metrics"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_grpc_port_is_served_and_named_for_http2(kit: Any, overlay: str,
                                                     rendered: dict[str, list[dict[str, Any]]]) -> None:
    """The pod listens for gRPC where TRAINSERVE_GRPC_BIND says; the Service names it grpc (appProtocol)."""
    docs = rendered[overlay]
    bind = kit.find(docs, "ConfigMap")["data"]["TRAINSERVE_GRPC_BIND"]
    ports = {p["name"]: p for p in container(kit.find(docs, "Deployment"), "trainserve")["ports"]}
    assert ports["grpc"]["containerPort"] == int(bind.rsplit(":", 1)[1])
    exposed = {p["name"]: p for p in kit.find(docs, "Service")["spec"]["ports"]}["grpc"]
    assert exposed["appProtocol"] == "grpc" and exposed["targetPort"] == "grpc"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_unprivileged_on_a_read_only_root(kit: Any, overlay: str,
                                                   rendered: dict[str, list[dict[str, Any]]]) -> None:
    """Non-root, no privilege escalation, no capabilities, read-only root, for every container."""
    for kind in ("Deployment", "Job"):
        spec = pod_spec(kit.find(rendered[overlay], kind))
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == 10001
        assert spec["automountServiceAccountToken"] is False
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, c["name"]
            assert sc["allowPrivilegeEscalation"] is False, c["name"]
            assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
            assert c["resources"]["requests"] and c["resources"]["limits"], c["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_drain_and_writable_paths_fit_the_service(kit: Any, overlay: str,
                                                        rendered: dict[str, list[dict[str, Any]]]) -> None:
    """Readiness is /readyz, liveness /healthz; the grace period outlasts the drain; the metrics folder and
    /tmp are on emptyDirs; the models come read-only from the claim the Job writes."""
    docs = rendered[overlay]
    deployment = kit.find(docs, "Deployment")
    spec, server = pod_spec(deployment), container(deployment, "trainserve")
    settings = kit.find(docs, "ConfigMap")["data"]
    assert server["envFrom"] == [{"configMapRef": {"name": kit.find(docs, "ConfigMap")["metadata"]["name"]}}]
    assert server["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert server["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert server["startupProbe"]["httpGet"]["path"] == "/healthz"
    pause = float(server["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert spec["terminationGracePeriodSeconds"] > pause + float(settings["TRAINSERVE_GRACEFUL_TIMEOUT_S"])

    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in server["volumeMounts"]}
    metrics_parent = str(Path(settings["PROMETHEUS_MULTIPROC_DIR"]).parent)
    for path in (metrics_parent, "/tmp"):
        assert "emptyDir" in volumes[mounts[path]["name"]], path
    models = mounts[settings["TRAINSERVE_MODEL_DIR"]]
    assert models["readOnly"] is True
    claim = volumes[models["name"]]["persistentVolumeClaim"]["claimName"]
    assert claim == kit.find(docs, "PersistentVolumeClaim")["metadata"]["name"]

    job = kit.find(docs, "Job")
    job_volumes = {v["name"]: v for v in pod_spec(job)["volumes"]}
    out = container(job, "train")["args"]
    out_dir = out[out.index("--out") + 1]
    job_mount = next(m for m in container(job, "train")["volumeMounts"] if m["mountPath"] == out_dir)
    assert job_volumes[job_mount["name"]]["persistentVolumeClaim"]["claimName"] == claim
    assert not job_mount.get("readOnly", False)


def test_gpu_overlay_asks_for_a_gpu_node(kit: Any, rendered: dict[str, list[dict[str, Any]]]) -> None:
    """GPU pods request nvidia.com/gpu, land on GPU nodes, tolerate their taint and run the CUDA image."""
    docs = rendered["gpu"]
    assert kit.find(docs, "ConfigMap")["data"]["TRAINSERVE_DEVICE"] == "cuda"
    for kind, name in (("Deployment", "trainserve"), ("Job", "train")):
        workload = kit.find(docs, kind)
        spec, main = pod_spec(workload), container(workload, name)
        assert main["resources"]["limits"]["nvidia.com/gpu"] == 1, kind
        assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}, kind
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
        assert main["image"].endswith(":cuda"), kind
    cpu = kit.find(rendered["cpu"], "Deployment")
    assert "nvidia.com/gpu" not in container(cpu, "trainserve")["resources"]["limits"]
    assert container(cpu, "trainserve")["image"].endswith(":cpu")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_service_accepts_every_setting(kit: Any, overlay: str,
                                           rendered: dict[str, list[dict[str, Any]]]) -> None:
    """The ConfigMap's settings parse with the service's own config reader, and it knows every key."""
    config = pytest.importorskip("service.config", reason="service/config.py is not in this tree yet")
    settings = kit.find(rendered[overlay], "ConfigMap")["data"]
    parsed = config.ServiceConfig.from_env(settings)
    known = {f"TRAINSERVE_{name.upper()}" for name in parsed.__dataclass_fields__}
    known.add("PROMETHEUS_MULTIPROC_DIR")
    assert set(settings) <= known, f"settings the service does not read: {sorted(set(settings) - known)}"
    assert parsed.worker_count * parsed.torch_thread_count <= float(
        container(kit.find(rendered[overlay], "Deployment"), "trainserve")["resources"]["limits"]["cpu"])


def test_pods_wait_for_a_published_model(kit: Any, rendered: dict[str, list[dict[str, Any]]],
                                         tmp_path: Path) -> None:
    """The init container's script runs, and lets the pod start once the Job has published an artifact."""
    spec = pod_spec(kit.find(rendered["cpu"], "Deployment"))
    (init,) = spec["initContainers"]
    assert init["command"] == ["python", "-c"]
    assert [m["mountPath"] for m in init["volumeMounts"]] == ["/models"]
    published = tmp_path / "mnist-cnn" / "1"
    published.mkdir(parents=True)
    (published / "manifest.json").write_text("{}")
    script = init["args"][0].replace('"/models"', repr(str(tmp_path)))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30,
                          check=False)
    assert done.returncode == 0, done.stderr
