"""The batcher's contract, with plain numpy functions standing in for the model (the batcher is generic)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from service.batching import Batcher, BatchStats
from service.errors import DeadlineExceeded, InferenceFailed, NotReady, QueueFull


class Recorder:
    """Counts forward passes and records each batch's sizes; optionally blocks until released."""

    def __init__(self, gate: threading.Event | None = None, fail_on: float | None = None) -> None:
        self.calls: list[list[int]] = []
        self.gate = gate
        self.fail_on = fail_on
        self.started = threading.Event()

    def __call__(self, parts: Sequence[np.ndarray]) -> np.ndarray:
        self.calls.append([len(p) for p in parts])
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        batch = np.concatenate(parts)
        if self.fail_on is not None and (batch == self.fail_on).any():
            raise RuntimeError("poisoned input")
        return batch * 2  # each row's answer identifies the row


class Stats:
    def __init__(self) -> None:
        self.batches: list[BatchStats] = []
        self.depths: list[int] = []

    def queue_depth(self, depth: int) -> None:
        self.depths.append(depth)

    def batch_done(self, stats: BatchStats) -> None:
        self.batches.append(stats)


def make(fn, max_batch_size=8, delay_s=0.005, max_queue=64, observer=None) -> Batcher:
    return Batcher(fn, "test", max_batch_size, delay_s, max_queue, observer).start()


def later(seconds: float = 5.0) -> float:
    return time.monotonic() + seconds


def test_concurrent_requests_are_merged_and_each_gets_its_own_rows():
    gate = threading.Event()
    fn = Recorder(gate)
    batcher = make(fn, max_batch_size=64)
    inputs = [np.full((1, 3), i, dtype=np.float32) for i in range(24)]
    with ThreadPoolExecutor(24) as pool:
        futures = [pool.submit(batcher.submit, x, later()) for x in inputs]
        assert fn.started.wait(5)
        time.sleep(0.05)  # the others queue up behind the first batch
        gate.set()
        results = [f.result(10) for f in futures]
    batcher.close()
    for x, y in zip(inputs, results, strict=True):
        np.testing.assert_array_equal(y, x * 2)
    assert sum(map(sum, fn.calls)) == 24
    assert len(fn.calls) < 24 / 2, f"expected merged batches, got {fn.calls}"


def test_a_lone_request_runs_at_once_without_waiting_out_the_delay():
    fn = Recorder()
    batcher = make(fn, delay_s=1.0)
    started = time.monotonic()
    batcher.submit(np.ones((1, 3), np.float32), later())
    assert time.monotonic() - started < 0.5
    batcher.close()


def test_a_batch_with_company_waits_for_more_no_longer_than_a_forward_pass_takes():
    # Waiting longer than a forward pass takes costs more than it saves: the requests that arrive
    # meanwhile would have formed the next batch anyway. The configured delay (1 s here) is only the cap.
    running = threading.Event()

    def fn(parts: Sequence[np.ndarray]) -> np.ndarray:
        running.set()
        time.sleep(0.02)
        return np.concatenate(parts)

    batcher = make(fn, delay_s=1.0)
    batcher.submit(np.ones((1, 1), np.float32), later())  # alone: runs at once; one pass measured
    running.clear()
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(batcher.submit, np.ones((1, 1), np.float32), later())
        assert running.wait(5)  # the model is busy: the next two queue up together
        started = time.monotonic()
        company = [pool.submit(batcher.submit, np.ones((1, 1), np.float32), later()) for _ in range(2)]
        for f in [first, *company]:
            f.result(10)
        waited = time.monotonic() - started
    batcher.close()
    assert waited < 0.5, f"two queued requests took {waited:.3f} s: the batch waited out the 1 s delay"


def test_large_requests_are_split_to_the_max_batch_size_and_joined_in_order():
    fn = Recorder()
    batcher = make(fn, max_batch_size=8)
    x = np.arange(30 * 2, dtype=np.float32).reshape(30, 2)
    np.testing.assert_array_equal(batcher.submit(x, later()), x * 2)
    assert all(sum(sizes) <= 8 for sizes in fn.calls)
    assert sum(map(sum, fn.calls)) == 30
    batcher.close()


def test_full_queue_answers_queue_full_at_once_and_queues_nothing():
    gate = threading.Event()
    fn = Recorder(gate)
    batcher = make(fn, max_queue=2)
    with ThreadPoolExecutor(3) as pool:
        running = pool.submit(batcher.submit, np.ones((1, 1), np.float32), later())
        assert fn.started.wait(5)
        queued = [pool.submit(batcher.submit, np.ones((1, 1), np.float32), later()) for _ in range(2)]
        deadline = time.monotonic() + 5
        while batcher_depth(batcher) < 2 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert batcher_depth(batcher) == 2
        started = time.monotonic()
        with pytest.raises(QueueFull) as exc:
            batcher.submit(np.ones((1, 1), np.float32), later())
        assert time.monotonic() - started < 0.1
        assert exc.value.headers()["Retry-After"] == "1"
        gate.set()
        for f in [running, *queued]:
            f.result(10)
    batcher.close()


def batcher_depth(batcher: Batcher) -> int:
    return len(batcher._queue)


def test_deadline_passing_in_the_queue_gives_deadline_exceeded_and_skips_the_work():
    gate = threading.Event()
    fn = Recorder(gate)
    batcher = make(fn)
    with ThreadPoolExecutor(1) as pool:
        blocker = pool.submit(batcher.submit, np.ones((1, 1), np.float32), later())
        assert fn.started.wait(5)
        with pytest.raises(DeadlineExceeded):
            batcher.submit(np.full((1, 1), 7, np.float32), time.monotonic() + 0.05)
        gate.set()
        blocker.result(10)
    batcher.submit(np.ones((1, 1), np.float32), later())
    batcher.close()
    assert sum(map(sum, fn.calls)) == 2  # the expired row was never computed


def test_a_failing_batch_fails_every_request_in_it_and_the_batcher_keeps_running():
    gate = threading.Event()
    fn = Recorder(gate, fail_on=-1.0)
    stats = Stats()
    batcher = make(fn, max_batch_size=64, observer=stats)
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(batcher.submit, np.ones((1, 1), np.float32), later())
        assert fn.started.wait(5)
        values = [-1.0, 2.0, 3.0, 4.0]
        rest = [pool.submit(batcher.submit, np.full((1, 1), v, np.float32), later()) for v in values]
        time.sleep(0.05)
        gate.set()
        first.result(10)
        for f in rest:
            with pytest.raises(InferenceFailed):
                f.result(10)
    np.testing.assert_array_equal(batcher.submit(np.full((2, 1), 5, np.float32), later()), [[10], [10]])
    assert batcher.running
    assert [b.failed for b in stats.batches] == [False, True, False]
    batcher.close()


def test_wrong_number_of_output_rows_fails_the_batch():
    batcher = make(lambda parts: np.zeros((1, 1), np.float32))
    with pytest.raises(InferenceFailed, match="returned 1 rows for 3"):
        batcher.submit(np.zeros((3, 1), np.float32), later())
    batcher.close()


def test_close_drains_queued_requests_then_refuses_new_ones():
    gate = threading.Event()
    fn = Recorder(gate)
    batcher = make(fn, max_batch_size=1)
    with ThreadPoolExecutor(5) as pool:
        futures = [pool.submit(batcher.submit, np.full((1, 1), i, np.float32), later()) for i in range(4)]
        assert fn.started.wait(5)
        while batcher_depth(batcher) < 3:
            time.sleep(0.005)
        closer = pool.submit(batcher.close, 10)
        time.sleep(0.05)
        with pytest.raises(NotReady):
            batcher.submit(np.ones((1, 1), np.float32), later())
        gate.set()
        closer.result(10)
        assert [f.result(10)[0, 0] for f in futures] == [0, 2, 4, 6]
    assert not batcher.running


def test_observer_sees_batch_sizes_waits_and_queue_depth():
    stats = Stats()
    gate = threading.Event()
    fn = Recorder(gate)
    batcher = make(fn, observer=stats)
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(batcher.submit, np.ones((3, 1), np.float32), later())
        assert fn.started.wait(5)  # the lone first request leads; the second one queues behind it
        second = pool.submit(batcher.submit, np.ones((2, 1), np.float32), later())
        time.sleep(0.05)
        gate.set()
        first.result(5), second.result(5)
    batcher.close()
    assert [b.rows for b in stats.batches] == [3, 2]
    assert stats.batches[0].compute_s >= 0 and len(stats.batches[0].queue_wait_s) == 1
    assert stats.depths[0] == 1 and stats.depths[-1] == 0


def test_a_lone_request_runs_in_its_own_thread_and_queued_ones_in_the_batching_thread():
    threads: list[str] = []
    gate = threading.Event()

    def fn(parts: Sequence[np.ndarray]) -> np.ndarray:
        threads.append(threading.current_thread().name)
        if len(threads) == 1:
            assert gate.wait(5)
        return np.concatenate(parts)

    batcher = make(fn, max_batch_size=8, delay_s=0.0)
    with ThreadPoolExecutor(4, thread_name_prefix="request") as pool:
        lone = pool.submit(batcher.submit, np.ones((1, 1), np.float32), later())
        time.sleep(0.05)
        queued = [pool.submit(batcher.submit, np.full((1, 1), i, np.float32), later()) for i in range(3)]
        time.sleep(0.05)
        assert len(threads) == 1  # nothing runs beside the leader's forward pass
        gate.set()
        assert lone.result(5).tolist() == [[1.0]]
        assert [f.result(5).tolist() for f in queued] == [[[0.0]], [[1.0]], [[2.0]]]
    batcher.close()
    assert threads[0].startswith("request") and threads[1:] == ["batcher-test"]  # the 3 in one batch


def test_a_leader_whose_forward_pass_fails_gets_a_500_and_the_batcher_goes_on():
    batcher = make(Recorder(fail_on=7.0))
    with pytest.raises(InferenceFailed):
        batcher.submit(np.full((1, 2), 7.0, np.float32), later())
    np.testing.assert_array_equal(batcher.submit(np.ones((1, 2), np.float32), later()), 2.0)
    batcher.close()
    with pytest.raises(NotReady):
        batcher.submit(np.ones((1, 2), np.float32), later())
