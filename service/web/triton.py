"""Triton's protocol extensions as documents: model configuration, statistics and the repository index.

Pure functions over what the HTTP side knows (the catalog, the settings, the artifact folders, the
collected metric families): no HTTP. Statistics come from the service's Prometheus metrics, which every
HTTP worker and every runtime writes (multiprocess mode): their counts and sums are exact whichever worker
answers, they survive a runtime restart, and they include requests refused before they reached a model
(400, 429, 503, 504), which a runtime's own counters would never see.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prometheus_client.metrics_core import Metric

from service.config import ServiceConfig
from service.contract.manifest import artifact_dirs
from service.handoff.catalog import Catalog, ServedModel
from service.policy import Rule
from service.web.dataplane import PLATFORMS
from service.web.tensors import outputs_for

_NS = 1e9
_PER_EXAMPLE = ("label", "outlier", "outlier_score")  # one value per example, not one per output


def model_config(model: ServedModel, catalog: Catalog, config: ServiceConfig) -> dict[str, Any]:
    """The model's configuration as Triton's ``GET /v2/models/{name}/config`` gives it."""
    m = model.manifest
    gpu = model.device.startswith("cuda")
    types = {"logits": "TYPE_FP32", "probabilities": "TYPE_FP32", "label": "TYPE_STRING",
             "decisions": "TYPE_BOOL", "outlier": "TYPE_BOOL", "outlier_score": "TYPE_FP32"}
    return {
        "name": m.name,
        "platform": PLATFORMS[model.format],
        "backend": "pytorch",
        "version_policy": triton_policy(config.policy.rule(m.name)),
        # The largest batch the runtime runs in one pass; bigger requests are split, not refused.
        "max_batch_size": catalog.max_batch_size,
        "input": [{"name": m.input.name, "data_type": "TYPE_FP32",
                   "format": "FORMAT_NONE" if m.input.kind == "features" else "FORMAT_NCHW",
                   "dims": list(m.input.shape)}],
        "output": [{"name": name, "data_type": types[name],
                    "dims": [1] if name in _PER_EXAMPLE else [m.num_outputs]}
                   for name in outputs_for(m.task, m.outliers is not None)],
        "dynamic_batching": {
            "max_queue_delay_microseconds": round(config.max_batch_delay_ms * 1000),
            "preserve_ordering": True,
            "default_queue_policy": {"timeout_action": "REJECT", "allow_timeout_override": False,
                                     "max_queue_size": config.max_queue,
                                     "default_timeout_microseconds": round(config.request_timeout_s * 1e6)}},
        "instance_group": [{"name": f"{m.name}_0", "kind": "KIND_GPU" if gpu else "KIND_CPU", "count": 1,
                            "gpus": [int(model.device.partition(":")[2] or 0)] if gpu else []}],
        "parameters": {"labels": {"string_value": ",".join(m.labels)},
                       "device": {"string_value": model.device}},
    }


def triton_policy(rule: Rule) -> dict[str, Any]:
    """A version policy as Triton's model configuration writes it."""
    if rule.kind == "latest":
        return {"latest": {"num_versions": rule.count}}
    if rule.kind == "specific":
        return {"specific": {"versions": sorted(int(v) for v in rule.versions)}}
    return {"all": {}}


def repository_index(config: ServiceConfig, catalog: Catalog, ready_only: bool) -> list[dict[str, str]]:
    """Every artifact folder in the repository with its state: READY when served, else UNAVAILABLE and why."""
    refused = {Path(folder).parts[-2:]: why for folder, why in catalog.refused.items()}
    folders = list(artifact_dirs(config.model_dir)) if config.model_dir.is_dir() else []
    on_disk: dict[str, set[str]] = defaultdict(set)
    for folder in folders:
        if (folder.parent.name, folder.name) not in refused:
            on_disk[folder.parent.name].add(folder.name)
    selected = {name: config.policy.select(name, versions) for name, versions in on_disk.items()}
    out = []
    for folder in folders:
        name, version = folder.parent.name, folder.name
        if catalog.serves(f"{name}/{version}"):
            out.append({"name": name, "version": version, "state": "READY", "reason": ""})
        elif not ready_only:
            why = refused.get((name, version)) or _not_loaded(config, name,
                                                              version in selected.get(name, set()))
            out.append({"name": name, "version": version, "state": "UNAVAILABLE", "reason": why})
    return out


def _not_loaded(config: ServiceConfig, name: str, selected: bool) -> str:
    if not selected:
        return f"not served: the version policy ({config.policy.rule(name)}) does not select it"
    if config.model_control == "poll":
        return f"not loaded yet: the runtime looks for new versions every {config.poll_interval_s:g}s"
    if config.model_control == "explicit":
        return f"not loaded: POST /v2/repository/models/{name}/load loads it"
    return "not loaded: it appeared after the model runtime started (model control is 'none')"


def statistics(families: Iterable[Metric], models: Iterable[ServedModel]) -> dict[str, Any]:
    """Triton's ``GET /v2/models/stats`` document for ``models``, from the service's metric families."""
    sums: dict[tuple[str, str, str], float] = defaultdict(float)
    for family in families:
        for s in family.samples:
            model, version = s.labels.get("model", ""), s.labels.get("version", "")
            if s.name in _WANTED:
                sums[model, version, s.name + s.labels.get("outcome", "")] += s.value
            elif s.name == "trainserve_last_inference_timestamp_seconds":
                sums[model, version, s.name] = max(sums[model, version, s.name], s.value)
    return {"model_stats": [_model_stats(m, lambda n, m=m: sums[m.manifest.name, m.manifest.version, n])
                            for m in models]}


_WANTED = frozenset({"trainserve_inference_images_total", "trainserve_batch_size_images_count",
                     "trainserve_failed_batches_total", "trainserve_inference_seconds_count",
                     "trainserve_inference_seconds_sum", "trainserve_queue_wait_seconds_count",
                     "trainserve_queue_wait_seconds_sum", "trainserve_computed_requests_total",
                     "trainserve_computed_request_seconds_total"})


def _model_stats(model: ServedModel, get: Any) -> dict[str, Any]:
    def duration(name: str, outcome: str = "") -> dict[str, int]:
        return {"count": int(get(f"{name}_count{outcome}")), "ns": round(get(f"{name}_sum{outcome}") * _NS)}

    zero = {"count": 0, "ns": 0}
    return {
        "name": model.manifest.name, "version": model.manifest.version,
        "last_inference": round(get("trainserve_last_inference_timestamp_seconds") * 1000),
        "inference_count": int(get("trainserve_inference_images_total")),
        "execution_count": int(get("trainserve_batch_size_images_count")
                               - get("trainserve_failed_batches_total")),
        "inference_stats": {
            "success": duration("trainserve_inference_seconds", "success"),
            "fail": duration("trainserve_inference_seconds", "fail"),
            "queue": duration("trainserve_queue_wait_seconds"),
            # Copying rows in and out of shared memory is not timed apart from the forward pass.
            "compute_input": zero,
            "compute_infer": {"count": int(get("trainserve_computed_requests_total")),
                              "ns": round(get("trainserve_computed_request_seconds_total") * _NS)},
            "compute_output": zero, "cache_hit": zero, "cache_miss": zero},
        # Batch sizes are kept as histogram buckets (ranges), not per exact size: none is claimed here.
        "batch_stats": [],
        "memory_usage": [],
    }
