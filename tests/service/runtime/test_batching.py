"""The batching policy's contract, exactly: BatchQueue has no threads or clock of its own, so every case
is given its times and the outcome is certain."""

from __future__ import annotations

import pytest

from service.errors import QueueFull
from service.runtime.batching import BatchQueue, Queued


def queue(max_batch_size: int = 8, delay_s: float = 0.005, max_queue: int = 16) -> BatchQueue[str]:
    return BatchQueue("test", max_batch_size, delay_s, max_queue)


def request(name: str, rows: int = 1, at: float = 0.0, deadline: float = 100.0) -> Queued[str]:
    return Queued(name, rows, deadline, queued_at=at)


def test_a_batch_takes_queued_requests_in_order_while_their_rows_fit():
    q = queue(max_batch_size=8)
    for name, rows in (("a", 3), ("b", 4), ("c", 2), ("d", 1)):
        q.put(request(name, rows))
    first = q.take(now=1.0, expired=[])
    assert [r.item for r in first] == ["a", "b"]  # c (2 rows) would make 9: it waits, FIFO is kept
    assert [r.item for r in q.take(now=1.0, expired=[])] == ["c", "d"]
    assert q.take(now=1.0, expired=[]) == [] and len(q) == 0


def test_a_lone_request_runs_at_once_whatever_the_delay():
    q = queue(delay_s=10.0)
    q.pass_done(1.0)
    q.put(request("a"))
    batch = q.take(now=0.0, expired=[])
    assert q.wait_s(batch, now=0.0) == 0.0


def test_company_waits_no_longer_than_the_delay_nor_a_forward_pass():
    q = queue(delay_s=0.005)
    q.put(request("a", at=1.000))
    q.put(request("b", at=1.001))
    batch = q.take(now=1.001, expired=[])
    assert q.wait_s(batch, now=1.001) == 0.0  # no pass measured yet: waiting could only cost
    q.pass_done(0.002)
    assert q.wait_s(batch, now=1.001) == pytest.approx(0.001)  # min(delay, pass) after the first queued
    q.pass_done(0.100)
    assert q.wait_s(batch, now=1.001) == pytest.approx(0.004)  # the delay bounds it
    assert q.wait_s(batch, now=1.010) == 0.0


def test_a_full_batch_does_not_wait():
    q = queue(max_batch_size=2)
    q.pass_done(1.0)
    q.put(request("a"))
    q.put(request("b"))
    batch = q.take(now=0.0, expired=[])
    assert len(batch) == 2 and q.wait_s(batch, now=0.0) == 0.0


def test_top_up_adds_later_requests_that_fit():
    q = queue(max_batch_size=4)
    q.put(request("a", 2))
    batch = q.take(now=0.0, expired=[])
    q.put(request("b", 1))
    q.put(request("c", 2))
    assert q.top_up(batch, now=0.0, expired=[]) == 1
    assert [r.item for r in batch] == ["a", "b"] and len(q) == 1


def test_a_full_queue_refuses_at_once_and_keeps_what_it_has():
    q = queue(max_queue=2)
    q.put(request("a"))
    q.put(request("b"))
    with pytest.raises(QueueFull, match="2 requests queued"):
        q.put(request("c"))
    assert [r.item for r in q.take(now=0.0, expired=[])] == ["a", "b"]


def test_expired_requests_are_never_batched():
    q = queue()
    q.put(request("late", deadline=1.0))
    q.put(request("fine", deadline=9.0))
    expired: list[Queued[str]] = []
    batch = q.take(now=2.0, expired=expired)
    assert [r.item for r in batch] == ["fine"] and [r.item for r in expired] == ["late"]


def test_requests_larger_than_a_batch_are_refused_by_put():
    with pytest.raises(ValueError, match="more than the batch size"):
        queue(max_batch_size=4).put(request("big", rows=5))


def test_drop_removes_a_gone_callers_requests_only():
    q = queue()
    for name in ("a1", "b1", "a2"):
        q.put(request(name))
    dropped = q.drop(lambda item: not item.startswith("a"))
    assert [r.item for r in dropped] == ["a1", "a2"]
    assert [r.item for r in q.take(now=0.0, expired=[])] == ["b1"]


def test_oldest_is_the_head_of_the_queue():
    q = queue()
    assert q.oldest is None
    q.put(request("a", at=3.0))
    q.put(request("b", at=4.0))
    assert q.oldest == 3.0
