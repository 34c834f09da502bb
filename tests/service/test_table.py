"""The runtime's model table: a retired version is dropped by the timer set for it, and dropping one copy
of a version leaves alone the copy of it that serves (a rollback within the grace period)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from service.contract.manifest import Manifest, read_manifest
from service.runtime.table import Change, ModelTable

SHIPPED = read_manifest(Path(__file__).resolve().parents[2] / "models" / "mnist-cnn" / "1")


@dataclasses.dataclass(eq=False)
class Copy:
    """What the table reads of a loaded model (a LoadedModel without the module)."""

    key: str
    device: str = "cpu"
    load_seconds: float = 0.0
    format: str = "torchscript"

    @property
    def manifest(self) -> Manifest:
        name, version = self.key.split("/")
        return dataclasses.replace(SHIPPED, name=name, version=version)


@pytest.fixture
def table():
    forgotten: list[Copy] = []
    table = ModelTable(max_batch_size=4, max_batch_delay_s=0.0, max_queue=4, max_wait_s=float("inf"),
                       forget=forgotten.append, grace_s=0.0)
    table.forgotten = forgotten
    yield table
    table.close()


def test_a_rollback_within_the_grace_period_drops_only_the_old_copies(table) -> None:
    first, second, again = Copy("m/1"), Copy("m/2"), Copy("m/1")
    table.apply(Change(added=[first]))
    table.apply(Change(added=[second], retired=["m/1"]))  # version 2 published
    table.apply(Change(added=[again], retired=["m/2"]))  # and removed before version 1 was dropped
    table.sweep()
    assert table.models == [None, None, again]
    assert table.forgotten == [second]  # the metrics of m/1 belong to the copy that serves
    assert [m.key for m in table.listed.values()] == ["m/1"]


def test_a_retired_version_with_no_other_copy_is_forgotten(table) -> None:
    first, second = Copy("m/1"), Copy("m/2")
    table.apply(Change(added=[first]))
    table.apply(Change(added=[second], retired=["m/1"]))
    assert table.sweep() is None
    assert table.forgotten == [first] and table.models == [None, second]
