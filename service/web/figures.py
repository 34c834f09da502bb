"""One model's live figures, summarised from the service's own metric families (what /metrics shows).

Pure functions over prometheus_client's collected families: no HTTP, no state. Percentiles are estimated
from histogram buckets the way Prometheus' ``histogram_quantile`` does (linear within a bucket), so the
page and a Grafana panel over the same scrape agree.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any

from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample

# The endpoints that run a model: a metadata or readiness call is not an inference request.
INFERENCE_ENDPOINTS = frozenset({"v1.predict", "v1.classify", "v2.infer"})
QUANTILES = (0.5, 0.9, 0.99)


def summarize(families: Iterable[Metric], model: str, version: str) -> dict[str, Any]:
    """Requests, latency percentiles, batch sizes and queue waits of ``model`` (``version`` for batches), and
    the corrections of ``version``'s answers stored since the service started (true label -> answer)."""
    samples = [s for family in families for s in family.samples if s.labels.get("model") == model]
    is_version = partial(_of_version, version)
    by_status: dict[str, float] = defaultdict(float)
    for s in samples:
        if s.name == "trainserve_requests_total" and _inference(s):
            by_status[s.labels["status"]] += s.value
    batches = _histogram(samples, "trainserve_batch_size_images", is_version)
    corrected: dict[str, dict[str, int]] = defaultdict(dict)  # true label -> the model's answer -> count
    for s in samples:
        if s.name == "trainserve_corrections_total" and is_version(s) and s.value:
            row = corrected[s.labels["label"]]
            row[s.labels["predicted"]] = row.get(s.labels["predicted"], 0) + int(s.value)
    return {
        "model": model, "version": version,
        "requests": {"total": int(sum(by_status.values())),
                     "by_status": {k: int(v) for k, v in sorted(by_status.items())}},
        "latency_seconds": _percentiles(_histogram(samples, "trainserve_request_duration_seconds",
                                                   _inference)),
        "queue_wait_seconds": _percentiles(_histogram(samples, "trainserve_queue_wait_seconds", is_version)),
        "compute_seconds": _percentiles(_histogram(samples, "trainserve_compute_seconds", is_version)),
        "batches": {"count": int(batches["count"]), "images": int(batches["sum"]),
                    "mean_size": batches["sum"] / batches["count"] if batches["count"] else None,
                    "sizes": _bucket_counts(batches["buckets"])},
        "corrections": {"total": sum(sum(row.values()) for row in corrected.values()),
                        "by_label": {label: dict(sorted(row.items()))
                                     for label, row in sorted(corrected.items())}},
    }


def by_version(families: Iterable[Metric], model: str, versions: Sequence[str]) -> dict[str, Any]:
    """Each version's figures side by side, for a rollout: requests by role and outcome, latency
    percentiles, the labels it predicted, and (for a canary or shadow) its agreement with the default."""
    samples = [s for family in families for s in family.samples
               if s.labels.get("model") == model and s.labels.get("version") in versions]
    out: dict[str, Any] = {}
    for version in versions:
        mine = [s for s in samples if s.labels["version"] == version]
        requests: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        labels: dict[str, int] = defaultdict(int)
        compared: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        copies: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for s in mine:
            value = int(s.value)
            if s.name == "trainserve_routed_requests_total":
                requests[s.labels["role"]][s.labels["outcome"]] += value
            elif s.name == "trainserve_predicted_labels_total":
                labels[s.labels["label"]] += value
            elif s.name == "trainserve_compared_examples_total":
                compared[s.labels["role"]][s.labels["outcome"]] += value
            elif s.name == "trainserve_comparison_copies_total":
                copies[s.labels["role"]][s.labels["outcome"]] += value
        total = sum(sum(by.values()) for by in requests.values())
        errors = sum(by.get("error", 0) for by in requests.values())
        out[version] = {
            "requests": {"total": total, "errors": errors, "error_rate": errors / total if total else None,
                         "by_role": {role: dict(by) for role, by in sorted(requests.items())}},
            "latency_seconds": _percentiles(_histogram(mine, "trainserve_inference_seconds", _any)),
            "labels": dict(sorted(labels.items())),
            "agreement": {role: _agreement(compared.get(role, {}), copies.get(role, {}))
                          for role in sorted({*compared, *copies})},
        }
    return out


def _agreement(counts: dict[str, int], copies: dict[str, int]) -> dict[str, Any]:
    agree, disagree = counts.get("agree", 0), counts.get("disagree", 0)
    return {"agree": agree, "disagree": disagree,
            "rate": agree / (agree + disagree) if agree + disagree else None,
            "copies": dict(sorted(copies.items()))}


def _any(sample: Sample) -> bool:
    return True


def _inference(sample: Sample) -> bool:
    return sample.labels.get("endpoint") in INFERENCE_ENDPOINTS


def _of_version(version: str, sample: Sample) -> bool:
    return sample.labels.get("version") == version


def _histogram(samples: Sequence[Sample], name: str, keep: Callable[[Sample], bool]) -> dict[str, Any]:
    """One histogram summed over the samples ``keep`` accepts: cumulative buckets, count and sum."""
    buckets: dict[float, float] = defaultdict(float)
    count = total = 0.0
    for s in samples:
        if not keep(s):
            continue
        if s.name == f"{name}_bucket":
            buckets[float(s.labels["le"])] += s.value
        elif s.name == f"{name}_count":
            count += s.value
        elif s.name == f"{name}_sum":
            total += s.value
    return {"buckets": sorted(buckets.items()), "count": count, "sum": total}


def _percentiles(histogram: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"count": int(histogram["count"])}
    for q in QUANTILES:
        out[f"p{round(q * 100)}"] = quantile(histogram["buckets"], q)
    return out


def quantile(buckets: Sequence[tuple[float, float]], q: float) -> float | None:
    """The q-quantile from cumulative (upper bound, count) buckets, as Prometheus' histogram_quantile.

    None without observations. An answer in the +Inf bucket is the highest finite bound: the histogram
    cannot say more.
    """
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, cumulative in buckets:
        if cumulative >= rank:
            if math.isinf(bound):
                return lower_bound
            if cumulative == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (cumulative - lower_count)
        lower_bound, lower_count = bound, cumulative
    return lower_bound


def _bucket_counts(buckets: Sequence[tuple[float, float]]) -> dict[str, int]:
    """Observations per bucket (not cumulative), keyed by the bucket's range: "1", "2", "3-4", "5-8"..."""
    out, lower, previous = {}, 0.0, 0.0
    for bound, cumulative in buckets:
        first = int(lower) + 1
        if math.isinf(bound):
            key = f"{first}+"
        else:
            key = str(int(bound)) if first >= bound else f"{first}-{int(bound)}"
        out[key] = int(cumulative - previous)
        lower, previous = bound, cumulative
    return out
