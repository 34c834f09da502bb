"""The runtime's model table, without a process: a retired version is dropped by the timer set for it, and
dropping one copy of a version leaves alone the copy of it that serves (a rollback within the grace period);
indices are never reused; the catalog the workers build from its message, alone and merged."""

from __future__ import annotations

import json

import pytest

from service.contract.routing_state import RoutingState
from service.handoff.catalog import Catalog
from service.runtime.table import Change, ModelTable


@pytest.fixture
def table():
    forgotten: list = []
    table = ModelTable(max_batch_size=4, max_batch_delay_s=0.0, max_queue=4, max_wait_s=float("inf"),
                       forget=forgotten.append, grace_s=0.0)
    table.forgotten = forgotten
    yield table
    table.close()


def test_a_rollback_within_the_grace_period_drops_only_the_old_copies(table, model_copy) -> None:
    first, second, again = model_copy("m/1"), model_copy("m/2"), model_copy("m/1")
    table.apply(Change(added=[first]))
    table.apply(Change(added=[second], retired=["m/1"]))  # version 2 published
    table.apply(Change(added=[again], retired=["m/2"]))  # and removed before version 1 was dropped
    table.sweep()
    assert table.models == [None, None, again]
    assert table.forgotten == [second]  # the metrics of m/1 belong to the copy that serves
    assert [m.key for m in table.listed.values()] == ["m/1"]


def test_a_retired_version_with_no_other_copy_is_forgotten(table, model_copy) -> None:
    first, second = model_copy("m/1"), model_copy("m/2")
    table.apply(Change(added=[first]))
    table.apply(Change(added=[second], retired=["m/1"]))
    assert table.sweep() is None
    assert table.forgotten == [first] and table.models == [None, second]


def _catalog(table: ModelTable) -> Catalog:
    """The catalog a worker builds from the table's message, which reaches it as JSON."""
    return Catalog.from_message(json.loads(json.dumps(table.catalog_message)))


def test_an_index_is_never_reused_and_a_retiring_version_stays_addressable(table, model_copy) -> None:
    table.apply(Change(added=[model_copy("m/1")]))
    first = _catalog(table)
    table.apply(Change(added=[model_copy("m/2")], retired=["m/1"]))
    swapped = _catalog(table)
    # A request resolved against the first catalog still reaches version 1; a new one resolves version 2.
    assert swapped.position == {"m/1": 0, "m/2": 1}
    assert swapped.get("m").manifest.version == "2" and not swapped.serves("m/1")
    assert swapped.epoch == first.epoch + 1 == table.state.epoch
    assert swapped.generation.same_runtime(first.generation)
    table.sweep()  # no grace here: version 1 goes
    assert _catalog(table).position == {"m/2": 1}
    table.apply(Change(added=[model_copy("m/3")]))
    assert _catalog(table).position == {"m/2": 1, "m/3": 2}


def test_a_merged_catalog_keeps_every_runtime_generation_and_the_newest_routing(table, model_copy) -> None:
    other = ModelTable(max_batch_size=2, max_batch_delay_s=0.0, max_queue=4, max_wait_s=1.0)
    try:
        table.apply(Change(added=[model_copy("m/1")], routing={"m": RoutingState("1", revision=3).to_dict()}))
        other.apply(Change(added=[model_copy("m/1"), model_copy("n/1")],
                           routing={"m": RoutingState("1", revision=4).to_dict()}))
        mine, theirs = (_catalog(t) for t in (table, other))
    finally:
        other.close()
    merged = Catalog.merge([mine, theirs])
    assert merged.generations == (mine.generation, theirs.generation)
    assert sorted(m.key for m in merged) == ["m/1", "n/1"] and merged.max_batch_size == 2
    assert merged.routing["m"].revision == 4
    with pytest.raises(ValueError, match="2 runtimes"):
        merged.epoch  # noqa: B018  (a merged catalog has no single epoch)
