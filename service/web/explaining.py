"""What an ``:explain`` request asks for and what its answer is: pure functions, no HTTP framework and no
torch (the attributions are computed in the model runtime, ``service/runtime/explain.py``).

A request names examples (as ``:predict`` or ``:classify`` do) and, optionally, labels to explain besides
each example's predicted one, a method and its steps. It becomes rows for the runtime: one per example and
label, the predicted label first; the bounds (TRAINSERVE_EXPLAIN_MAX_EXAMPLES, _MAX_STEPS) are checked
here, before anything reaches the runtime.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from service.config import ServiceConfig
from service.errors import InvalidInput
from service.handoff import protocol
from service.handoff.catalog import ServedModel
from service.web.exchange import Answer, json_answer, predictions_payload

CAPTUM = {"integrated_gradients": "IntegratedGradients", "occlusion": "Occlusion"}


@dataclass(frozen=True)
class Plan:
    """The rows an explanation sends to the runtime and how to read them back."""

    rows: np.ndarray  # [examples * per_example, *shape]
    targets: list[int]  # one per row: -1 (the predicted class) or a column of the model's output
    per_example: int
    method: str
    steps: int


def scored_labels(found: ServedModel) -> list[str]:
    """The label each output column scores (binary: only the positive label)."""
    m = found.manifest
    return [m.labels[1]] if m.task == "binary" else list(m.labels)


def default_method(found: ServedModel) -> str:
    """Integrated Gradients where the served file has gradients; occlusion where it runs forward only."""
    return "integrated_gradients" if found.format in protocol.GRADIENT_FORMATS else "occlusion"


def plan(found: ServedModel, inputs: np.ndarray, targets: list[str], method: str | None, steps: int | None,
         config: ServiceConfig) -> Plan:
    """The runtime's rows for ``inputs``; InvalidInput (400) past a bound or for a method the file lacks."""
    method = method or default_method(found)
    if method == "integrated_gradients" and found.format not in protocol.GRADIENT_FORMATS:
        raise InvalidInput(f"model {found.key} is served as {found.format}, which has no gradients: use "
                           "method occlusion")
    steps = config.explain_steps if steps is None else steps
    if steps > config.explain_max_steps:
        raise InvalidInput(f"steps is {steps}; the limit is {config.explain_max_steps} "
                           "(TRAINSERVE_EXPLAIN_MAX_STEPS)")
    labels = scored_labels(found)
    unknown = [t for t in targets if t not in labels]
    if unknown:
        raise InvalidInput(f"targets {unknown[:5]} are not labels of model {found.key} (it has "
                           f"{', '.join(labels)})")
    columns = [labels.index(t) for t in dict.fromkeys(targets)]
    per_example = 1 + len(columns)
    if len(inputs) * per_example > config.explain_maps:
        maps = len(inputs) * per_example
        raise InvalidInput(f"{len(inputs)} examples with {per_example} labels each is {maps} "
                           f"attribution maps; the limit is {config.explain_maps} "
                           "(TRAINSERVE_EXPLAIN_MAX_EXAMPLES, at most TRAINSERVE_MAX_BATCH_SIZE)")
    rows = np.ascontiguousarray(np.repeat(inputs, per_example, axis=0))
    return Plan(rows, [-1, *columns] * len(inputs), per_example, method, steps)


def parameters(found: ServedModel, method: str, steps: int) -> tuple[str, dict[str, Any]]:
    """The Captum class and the parameters an answer names for ``method``."""
    if method == "integrated_gradients":
        return CAPTUM[method], {"n_steps": steps, "baseline": "zeros", "integration": "gausslegendre"}
    if found.manifest.input.kind == "features":
        return "FeatureAblation", {"baseline": "zeros", "perturbation": "one feature at a time"}
    return CAPTUM[method], {"baseline": "zeros", "window": protocol.OCCLUSION_WINDOW,
                            "stride": protocol.OCCLUSION_STRIDE}


def explain_answer(found: ServedModel, ask: Plan, attributions: np.ndarray, logits: np.ndarray,
                   plain: bool) -> Answer:
    """KServe's v1 explain answer: ``predictions`` as ``:predict`` gives them, and one explanation each."""
    firsts = logits[::ask.per_example]
    payload = predictions_payload(found, firsts, None, plain=plain)
    labels = scored_labels(found)
    captum, named = parameters(found, ask.method, ask.steps)
    features = found.manifest.input.features if found.manifest.input.kind == "features" else None
    explanations = []
    for example, row_logits in enumerate(firsts):
        predicted = int(np.argmax(row_logits))
        start = example * ask.per_example
        maps: dict[str, Any] = {}
        for row in range(start, start + ask.per_example):
            column = predicted if ask.targets[row] < 0 else ask.targets[row]
            values = attributions[row]
            maps[labels[column]] = dict(zip(features, values.tolist(), strict=True)) if features else values
        explanations.append({"label": labels[predicted], "method": ask.method, "captum": captum,
                             "parameters": named, "attributions": maps})
    payload["explanations"] = explanations
    return json_answer(payload)
