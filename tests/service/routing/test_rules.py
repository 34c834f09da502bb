"""The rollout rules without a service: the state's changes and what they refuse, the routing file written
whole under its lock with its history, the split by client key, the automatic rollback's judgement on
the service's counters, and the model page's view of a routing document."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.metrics_core import Metric

from service.contract import routing_state, routing_store
from service.contract.manifest import read_manifest
from service.contract.routing_state import Budget, RoutingConflict, RoutingError, RoutingState
from service.handoff.catalog import Catalog, ServedModel
from service.routing import split
from service.routing.watch import Counts, RollbackWatcher, canary_counts
from service.web import rollout

NAME = "mnist-tiny"


def test_a_default_pinned_then_rolled_back_restores_what_came_before():
    first = routing_state.set_default(RoutingState(), "1")
    second = routing_state.set_default(first, "2")
    assert (second.default, second.previous) == ("2", (None, "1"))
    assert second.pins() == {"1", "2"}  # the default a rollback goes back to stays loaded
    assert routing_state.rollback(second) == RoutingState(default="1", previous=(None,))
    assert routing_state.rollback(routing_state.rollback(second)) == RoutingState()
    with pytest.raises(RoutingConflict, match="no earlier default"):
        routing_state.rollback(RoutingState())


def test_a_candidate_pins_the_version_served_now_and_promotion_ends_it():
    canary = routing_state.start_canary(RoutingState(), "3", 10, None, current="2")
    assert (canary.default, canary.canary.version, canary.canary.budget) == ("2", "3", Budget())
    adjusted = routing_state.start_canary(canary, "3", 25, Budget(max_error_rate=None), current="2")
    assert (adjusted.canary.percent, adjusted.canary.budget.max_error_rate) == (25, None)
    shadowed = routing_state.start_shadow(adjusted, "3", 5, current="2")
    promoted = routing_state.set_default(shadowed, "3")
    assert (promoted.default, promoted.canary, promoted.shadow) == ("3", None, None)
    assert promoted.previous == ("2",)
    with pytest.raises(RoutingConflict, match="is the default"):
        routing_state.start_canary(promoted, "3", 10, None, current="3")
    with pytest.raises(RoutingConflict, match="no canary"):
        routing_state.stop_canary(promoted)
    with pytest.raises(RoutingConflict, match="no shadow"):
        routing_state.stop_shadow(promoted)


@pytest.mark.parametrize("bad", [0, -1, 100.5, float("nan"), True, "10"])
def test_a_percent_outside_0_to_100_is_refused(bad):
    with pytest.raises(RoutingError, match="percent"):
        routing_state.Canary("2", bad)


@pytest.mark.parametrize("data", [[], {"default": "01"}, {"default": 2}, {"canary": {"percent": 5}},
                                  {"canary": {"version": "2", "percent": 5, "budget": {"max_error_rate": 2}}},
                                  {"revision": -1}])
def test_a_malformed_state_is_a_routing_error(data):
    with pytest.raises(RoutingError):
        RoutingState.from_dict(data)


def test_the_json_form_round_trips():
    written = RoutingState("2", routing_state.Canary("3", 12.5, Budget(None, 0.2, 50), since=4),
                           routing_state.Shadow("1", 5), (None, "1"), revision=7)
    assert RoutingState.from_dict(json.loads(json.dumps(written.to_dict()))) == written


def test_the_budget_is_judged_only_over_its_minimum():
    budget = Budget(max_error_rate=0.05, max_disagreement=0.10, min_requests=100)
    assert budget.breached(99, 50, 0, 0) is None  # too few to judge
    assert budget.breached(100, 5, 100, 10) is None  # at the limits, not above
    assert budget.breached(100, 6, 0, 0)[0] == "errors"
    assert budget.breached(100, 0, 100, 11)[0] == "disagreement"
    assert Budget(None, None).breached(1000, 1000, 1000, 1000) is None


def test_the_file_is_written_whole_with_its_history_and_read_back(tmp_path: Path):
    (tmp_path / NAME).mkdir()
    assert routing_store.read(tmp_path, NAME) == (RoutingState(), [])
    routing_store.change(tmp_path, NAME, lambda s: routing_state.set_default(s, "1"), "set-default",
                         by="test")
    written = routing_store.change(tmp_path, NAME,
                                   lambda s: routing_state.start_canary(s, "2", 10, None, "1"),
                                   "canary", by="test", reason="why")
    assert written.revision == 2 and written.canary.since == 2
    again = routing_store.change(tmp_path, NAME, lambda s: routing_state.start_canary(s, "2", 10, None, "1"),
                                 "canary", by="x")
    assert again == written  # no change, nothing written
    read, history = routing_store.read(tmp_path, NAME)
    assert read == written
    assert [(h["revision"], h["action"], h.get("reason")) for h in history] == [(1, "set-default", None),
                                                                              (2, "canary", "why")]
    assert sorted(p.name for p in (tmp_path / NAME).iterdir()) == [".routing.lock", "routing.json"]
    with pytest.raises(routing_store.StoreError, match="not a model folder"):
        routing_store.change(tmp_path, "absent", lambda s: s, "x", by="test")


BUMP = """
import sys
from pathlib import Path
from service.contract import routing_state, routing_store
for _ in range(10):
    routing_store.change(Path(sys.argv[1]), "mnist-tiny",
                         lambda s: routing_state.set_default(s, str(int(s.default or 0) + 1)), "set-default",
                         by="a process")
"""


def test_writers_in_several_processes_lose_no_change(tmp_path: Path, repo_root: Path):
    (tmp_path / NAME).mkdir()
    writers = [subprocess.Popen([sys.executable, "-c", BUMP, str(tmp_path)], cwd=repo_root) for _ in range(3)]
    assert [writer.wait(timeout=120) for writer in writers] == [0, 0, 0]
    written, history = routing_store.read(tmp_path, NAME)
    assert (written.default, written.revision, len(history)) == ("30", 30, 30)


@pytest.fixture(scope="module")
def catalog(artifact_root: Path, candidate_root: Path) -> Catalog:
    """Versions 1, 2 (artifact_root) and 3 (candidate_root) of mnist-tiny, as served."""
    served = Catalog()
    for root, version in ((artifact_root, "1"), (artifact_root, "2"), (candidate_root, "3")):
        served.add(ServedModel(read_manifest(root / NAME / version), "cpu", 0.0))
    return served


def _with(catalog: Catalog, routing: RoutingState | None) -> Catalog:
    copy = Catalog(routing={NAME: routing} if routing else {})
    for model in catalog:
        copy.add(model)
    return copy


def test_the_url_wins_and_a_client_key_always_gets_the_same_version(catalog):
    routed = _with(catalog, RoutingState("1", routing_state.Canary("3", 30), routing_state.Shadow("2", 100)))
    assert split.resolve(routed, NAME, "3", "any").role == routing_state.NAMED
    assert split.resolve(_with(catalog, None), NAME, None, None).model.manifest.version == "3"  # newest
    keys = [f"client-{i}" for i in range(2000)]
    first = [split.resolve(routed, NAME, None, k) for k in keys]
    assert [r.model.manifest.version for r in first] == \
        [split.resolve(routed, NAME, None, k).model.manifest.version for k in keys]
    canary = [r for r in first if r.role == routing_state.CANARY]
    assert 0.27 <= len(canary) / len(keys) <= 0.33
    assert all(r.model.manifest.version == "3" and r.other.manifest.version == "1" for r in canary)
    # A request the default answers gets the shadow's copy (100 %); one the canary answers, the default's.
    pairs = {(r.model.manifest.version, r.other.manifest.version)
             for r in first if r.role == routing_state.DEFAULT}
    assert pairs == {("1", "2")}


def test_a_candidate_that_is_not_served_gets_no_share(catalog):
    routed = _with(catalog, RoutingState("1", routing_state.Canary("9", 100), routing_state.Shadow("9", 100)))
    decision = split.resolve(routed, NAME, None, "key", draw=random.Random(0).random)
    assert (decision.model.manifest.version, decision.role, decision.other) == \
        ("1", routing_state.DEFAULT, None)
    assert split.effective(routed, NAME) == {"default": "1", "canary": None, "shadow": None, "revision": 0}


def _families(rows: list[tuple[str, dict[str, str], float]]) -> list[Metric]:
    family = Metric("trainserve", "counters", "counter")
    for name, labels, value in rows:
        family.add_sample(name, labels, value)
    return [family]


def test_the_watcher_rolls_back_a_canary_over_its_budget_once(tmp_path: Path):
    (tmp_path / NAME).mkdir()
    budget = Budget(max_error_rate=0.1, max_disagreement=None, min_requests=20)
    routing_store.change(tmp_path, NAME, lambda s: routing_state.start_canary(s, "3", 50, budget, "1"),
                         "canary", by="t")
    labels = {"model": NAME, "version": "3", "role": "canary"}
    counters: list[tuple[str, dict[str, str], float]] = []
    applied, counted = [], []
    watcher = RollbackWatcher(tmp_path, lambda: _families(counters), applied.append,
                              lambda *a: counted.append(a))
    watcher.check(0.0)  # the counts when the canary is first seen are its base
    counters[:] = [("trainserve_routed_requests_total", labels | {"outcome": "success"}, 18),
                   ("trainserve_routed_requests_total", labels | {"outcome": "error"}, 1)]
    watcher.check(1.0)
    assert routing_store.read(tmp_path, NAME)[0].canary is not None  # 19 requests: too few to judge
    assert canary_counts(_families(counters), NAME, "3") == Counts(19, 1, 0, 0)
    counters.append(("trainserve_routed_requests_total", labels | {"outcome": "error"}, 2))
    watcher.check(1.2)  # within WATCH_S of the last check: not judged yet
    assert not counted
    watcher.check(2.0)
    written, history = routing_store.read(tmp_path, NAME)
    assert written.canary is None and written.default == "1"
    assert (history[-1]["action"], history[-1]["by"]) == ("rollback-canary", "automatic rollback")
    assert applied == [NAME] and counted == [(NAME, "3", "errors")]
    watcher.check(3.0)
    assert len(counted) == 1


def test_the_model_page_puts_the_document_in_words():
    agreement = {"canary": {"agree": 9, "disagree": 1, "rate": 0.9}}
    document = {
        "state": {"default": "1", "canary": {"version": "3", "percent": 10, "budget": Budget().to_dict()},
                  "shadow": None},
        "effective": {"default": "1", "canary": {"version": "3", "percent": 10}, "shadow": None},
        "served": ["1", "3"],
        "history": [{"at": "T", "action": "canary", "by": "training", "default": "1",
                     "canary": {"version": "3", "percent": 10}, "shadow": None}],
        "versions": {v: {"requests": {"total": n, "errors": e, "error_rate": e / n, "by_role": {}},
                         "latency_seconds": {"p50": 0.002, "p99": None}, "labels": {"7": 5, "1": 9},
                         "agreement": agreement if v == "3" else {}}
                     for v, n, e in (("1", 90, 0), ("3", 10, 1))}}
    assert rollout.summary(document)[0].startswith("A request that names no version gets version 1 (the "
                                                   "default set by an operator)")
    assert "version 3 answers 10 % of them" in rollout.summary(document)[1]
    assert "above error rate 5.0 % or disagreement 10.0 % over 100 requests" in rollout.summary(document)[1]
    rows = rollout.rows(document)
    assert [(r["version"], r["role"], r["errors"], r["error_rate"]) for r in rows] == [
        ("3", "canary", "1", "10.0 %"), ("1", "default", "0", "0.0 %")]
    assert (rows[0]["agreement"], rows[0]["labels"], rows[0]["p50"], rows[0]["p99"]) == (
        "canary 90.0 % of 10", "1 9, 7 5", "2.0 ms", "—")
    assert rollout.changes(document) == ["T canary by training → default 1, canary 3 at 10 %"]
