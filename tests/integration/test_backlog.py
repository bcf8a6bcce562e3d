"""The backlog under bursts, over real loopback HTTP: the default queue absorbs a backfill
(one thread or many) without a drop, and ``block_when_full`` lets an emitting thread wait a
bounded time for room instead of dropping, never after shutdown and never on the engine's
own threads."""

from __future__ import annotations

import threading
import time

import pytest
from conftest import ACCOUNT_ID
from helpers import wait_until

from vwo_otel import EventsDropped, VWOSpanProcessor, visitor_uuid
from vwo_otel._engine.batcher import DEFAULT_MAX_QUEUE_SIZE

#: VWO's usual batch settings for a backfill: large batches, the timer far away.
BURST = {"events_per_request": 100, "request_time_interval": 60}
#: How late a timed wait may end (thread wake-up on a loaded machine).
LATE = 0.5


def delivered_users(receiver) -> list[str]:
    return [e["u"] for e in receiver.events()]


def test_default_queue_is_sized_for_bursts():
    assert DEFAULT_MAX_QUEUE_SIZE >= 100_000


def test_one_thread_bursting_20000_events_on_defaults_loses_none(pipeline, receiver, callbacks):
    events, proc, _ = pipeline(BURST)
    n = 20_000
    for i in range(n):
        events.activate(1, 1, f"burst-{i}")
    assert proc.flush_events() is True
    assert proc.stats()["dropped"] == {}
    got = delivered_users(receiver)
    assert len(got) == n and set(got) == {visitor_uuid(ACCOUNT_ID, f"burst-{i}") for i in range(n)}
    assert len(callbacks.ok_events) == n and not callbacks.failed


def test_16_threads_bursting_2000_events_each_on_defaults_lose_none(pipeline, receiver, callbacks):
    events, proc, _ = pipeline(BURST)
    threads, per = 16, 2000
    start = threading.Barrier(threads)

    def emit(t: int) -> None:
        start.wait()
        for i in range(per):
            events.activate(1, 1, f"t{t}-{i}")

    workers = [threading.Thread(target=emit, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
    assert proc.flush_events() is True
    assert proc.stats()["dropped"] == {}
    got = delivered_users(receiver)
    assert len(got) == threads * per and len(set(got)) == threads * per


def test_block_when_full_waits_at_most_its_timeout_then_drops_with_a_report(pipeline, receiver, callbacks):
    events, proc, _ = pipeline({"events_per_request": 5, "request_time_interval": 60}, max_queue_size=5,
                               max_concurrent_requests=1, block_when_full=0.3)
    receiver.stall(10)  # the first batch hangs in flight: no room frees up
    for i in range(5):
        events.activate(1, 1, f"fill-{i}")
    start = time.monotonic()
    events.activate(1, 1, "waits")
    took = time.monotonic() - start
    assert 0.3 <= took < 0.3 + LATE
    assert proc.stats()["dropped"] == {"queue_full": 1}
    assert callbacks.wait_for(lambda calls: any(isinstance(err, EventsDropped) for err, _ in calls), timeout=3)
    (err, evs), = [(err, evs) for err, evs in callbacks.calls if isinstance(err, EventsDropped)]
    assert err.reason == "queue_full" and [e["u"] for e in evs] == [visitor_uuid(ACCOUNT_ID, "waits")]
    receiver.clear_faults()
    assert proc.flush_events() is False  # the dropped event was emitted before this flush
    assert proc.flush_events() is True


def test_block_when_full_queues_the_event_once_room_frees(pipeline, receiver, callbacks):
    events, proc, _ = pipeline({"events_per_request": 5, "request_time_interval": 60}, max_queue_size=5,
                               max_concurrent_requests=1, block_when_full=5.0)
    receiver.stall(0.3, n=1)  # the first request is answered 0.3 s late
    for i in range(5):
        events.activate(1, 1, f"fill-{i}")
    start = time.monotonic()
    events.activate(1, 1, "waits")
    took = time.monotonic() - start
    assert 0.2 <= took < 0.3 + LATE  # waited for the first batch to be delivered, not for its timeout
    assert proc.flush_events() is True
    assert proc.stats()["dropped"] == {}
    assert visitor_uuid(ACCOUNT_ID, "waits") in delivered_users(receiver)


def test_block_when_full_sends_a_partial_batch_instead_of_waiting_for_the_timer(pipeline, receiver):
    """A queue smaller than a batch: the waiting emitter cuts what is queued so room frees."""
    events, proc, _ = pipeline({"events_per_request": 100, "request_time_interval": 60}, max_queue_size=10,
                               block_when_full=5.0)
    start = time.monotonic()
    for i in range(50):
        events.activate(1, 1, f"small-{i}")
    assert time.monotonic() - start < 5.0
    assert proc.flush_events() is True
    assert proc.stats()["dropped"] == {} and receiver.event_count() == 50




def test_shutdown_releases_a_blocked_emitter_and_later_emits_never_block(pipeline, receiver, callbacks):
    events, proc, provider = pipeline({"events_per_request": 5, "request_time_interval": 60}, max_queue_size=5,
                                      max_concurrent_requests=1, block_when_full=30.0, shutdown_timeout=0.5)
    receiver.stall(10)
    for i in range(5):
        events.activate(1, 1, f"fill-{i}")
    returned = threading.Event()

    def blocked() -> None:
        events.activate(1, 1, "blocked")
        returned.set()

    t = threading.Thread(target=blocked)
    t.start()
    assert wait_until(lambda: proc.batcher.snapshot().emitters_waiting == 1)
    start = time.monotonic()
    proc.shutdown()
    assert returned.wait(1.0), "shutdown must release an emitter waiting for room"
    assert time.monotonic() - start < 0.5 + LATE
    t.join(1)
    start = time.monotonic()
    events.activate(1, 1, "after")
    assert time.monotonic() - start < 0.1
    assert proc.stats()["dropped"]["already_shutdown"] == 2
    receiver.clear_faults()


def test_a_callback_that_emits_into_a_full_queue_is_never_blocked(pipeline, receiver):
    """flush_callback runs on the thread that makes room for results: it must not wait for room."""
    holder: dict = {}
    full = threading.Event()
    took: list[float] = []

    def callback(err, evs) -> None:
        if err is None and not took:
            assert full.wait(5)
            start = time.monotonic()
            holder["events"].activate(1, 1, "from-callback")
            took.append(time.monotonic() - start)

    events, proc, _ = pipeline({"events_per_request": 5, "request_time_interval": 60, "flush_callback": callback},
                               max_queue_size=5, max_concurrent_requests=1, block_when_full=30.0)
    holder["events"] = events
    for i in range(5):
        events.activate(1, 1, f"first-{i}")
    assert receiver.wait_for_events(5, timeout=3)
    receiver.stall(10)
    for i in range(5):
        events.activate(1, 1, f"fill-{i}")  # the queue is full and this batch hangs in flight
    assert proc.batcher.snapshot().held == 5
    full.set()
    assert wait_until(lambda: bool(took))
    assert took[0] < 0.5
    assert proc.stats()["dropped"] == {"queue_full": 1}
    receiver.clear_faults()


@pytest.mark.parametrize(("value", "error"), [(-1, ValueError), (float("inf"), ValueError), (True, TypeError),
                                              ("1", TypeError)])
def test_block_when_full_is_validated(make_exporter, value, error):
    with pytest.raises(error, match="block_when_full"):
        VWOSpanProcessor(make_exporter(), {"events_per_request": 5, "request_time_interval": 60},
                         block_when_full=value)
