"""What a flush promises and what flush_callback is owed, over real loopback HTTP:
a flush is True only if every event emitted before it was delivered (a drop or a failed
delivery makes it False until a flush has returned False for it); no result is ever
skipped for a slow callback (delivery waits instead); a callback raising KeyboardInterrupt
does not stall later flushes."""

from __future__ import annotations

import threading
import time

import pytest

from vwo_otel import EventsDropped, RetryPolicy
from vwo_otel._engine import settle

SMALL = {"events_per_request": 10, "request_time_interval": 60}


def flush_within(proc, timeout: float = 5.0) -> bool | None:
    """``proc.flush_events()`` on another thread; None if it has not returned within ``timeout``."""
    result: list = []
    t = threading.Thread(target=lambda: result.append(proc.flush_events()), daemon=True)
    t.start()
    t.join(timeout)
    return result[0] if result else None


# == a flush answers for drops before it ==================================================

def test_flush_is_false_when_events_emitted_before_it_were_dropped(pipeline, receiver, callbacks):
    events, proc, _ = pipeline(SMALL, max_queue_size=20, max_concurrent_requests=1)
    receiver.stall(10)  # nothing leaves: 20 fit, 380 are dropped
    for i in range(400):
        events.activate(1, 1, f"drop-{i}")
    assert proc.stats()["dropped"] == {"queue_full": 380}
    receiver.clear_faults()
    assert proc.flush_events() is False
    assert receiver.event_count() == 20
    assert proc.flush_events() is True  # nothing dropped or failed since the flush that said so
    assert sum(err.count for err, _ in callbacks.calls if isinstance(err, EventsDropped)) == 380


def test_force_flush_is_false_after_a_drop_too(pipeline, receiver):
    events, proc, _ = pipeline(SMALL, max_queue_size=5)
    receiver.stall(10)
    for i in range(8):
        events.activate(1, 1, f"drop-{i}")
    receiver.clear_faults()
    assert proc.force_flush(5000) is False
    assert proc.force_flush(5000) is True


def test_a_malformed_event_makes_the_next_flush_false(pipeline, receiver):
    from opentelemetry import trace

    from vwo_otel import attributes as A

    events, proc, provider = pipeline(SMALL)
    events.activate(1, 1, "fine")
    with trace.get_tracer("t", tracer_provider=provider).start_as_current_span(
            "vwo", attributes={A.EVENT_TYPE: 2, A.USER_ID: "no-campaign"}):
        pass
    assert proc.stats()["dropped"] == {"malformed": 1}
    assert proc.flush_events() is False
    assert receiver.event_count() == 1
    assert proc.flush_events() is True


def test_an_async_flush_does_not_use_up_the_drops_a_sync_flush_must_report(pipeline, receiver, callbacks):
    events, proc, _ = pipeline({"events_per_request": 5, "request_time_interval": 60}, max_queue_size=5)
    receiver.stall(10)
    for i in range(8):
        events.activate(1, 1, f"drop-{i}")
    receiver.clear_faults()
    assert callbacks.wait_for(lambda calls: len(callbacks.ok_events) == 5)  # settled: the flush below is done at once
    assert proc.flush_events("async") is None
    assert proc.flush_events() is False
    assert proc.flush_events() is True


def test_every_waiting_flush_reports_a_drop_before_it(pipeline, receiver):
    """Two flushes called after a drop, while delivery is slow: both say False."""
    events, proc, _ = pipeline(SMALL, max_queue_size=5)
    receiver.stall(0.3)
    for i in range(8):
        events.activate(1, 1, f"drop-{i}")
    results: list = []
    flushers = [threading.Thread(target=lambda: results.append(proc.flush_events())) for _ in range(2)]
    for t in flushers:
        t.start()
    for t in flushers:
        t.join(5)
    assert results == [False, False]
    receiver.clear_faults()
    assert proc.flush_events() is True


# == a flush answers for failed deliveries before it ========================================

#: A retry budget that runs out fast: VWO answering 503 throughout fails a batch within it.
SHORT_BUDGET = RetryPolicy(budget=0.3, initial_backoff=0.05, max_backoff=0.1)


@pytest.mark.parametrize("fme", [False, True], ids=["legacy", "fme"])
def test_a_batch_that_failed_before_a_flush_makes_it_false(pipeline, make_exporter, receiver, callbacks, fme):
    """No spool: VWO answers 503 past the retry budget and the batch is reported failed before
    anyone flushes; the next flush answers False for it, the one after True."""
    receiver.fail_next(10_000, status=503)
    events, proc, _ = pipeline({"events_per_request": 4, "request_time_interval": 60},
                               exporter=make_exporter(retry=SHORT_BUDGET))
    for i in range(4):
        if fme:
            events.track_event("purchase", f"f3-{i}")
        else:
            events.activate(1, 1, f"f3-{i}")
    assert callbacks.wait_for(lambda calls: len(callbacks.failed) == 1)  # settled and reported: failed
    assert proc.stats()["events"] == {"delivered": 0, "failed": 4}
    receiver.clear_faults()
    assert proc.flush_events() is False
    assert proc.flush_events() is True  # the flush before answered for that failure
    assert proc.force_flush(5000) is True


def test_force_flush_is_false_after_a_failed_batch_too(pipeline, make_exporter, receiver, callbacks):
    receiver.fail_next(1, status=403)  # final at once
    events, proc, _ = pipeline({"events_per_request": 2, "request_time_interval": 60})
    events.activate(1, 1, "a")
    events.activate(1, 1, "b")
    assert callbacks.wait_for(lambda calls: len(callbacks.failed) == 1)
    assert proc.force_flush(5000) is False
    assert proc.force_flush(5000) is True


def test_a_mixed_batch_whose_fme_half_failed_makes_the_next_flush_false(pipeline, receiver, callbacks):
    """One batch, both formats: VWO refuses the FME request (sent first: its event came first)
    and takes the legacy one. The failed half alone makes the next flush False."""
    receiver.fail_next(1, status=403)
    events, proc, _ = pipeline({"events_per_request": 4, "request_time_interval": 60})
    events.track_event("purchase", "F1")
    events.activate(1, 1, "L1")
    events.track_event("purchase", "F2")
    events.activate(1, 1, "L2")
    assert callbacks.wait_for(lambda calls: len(calls) == 2)
    assert [len(evs) for err, evs in callbacks.failed] == [2] and len(callbacks.ok_events) == 2
    assert all("d" in e for err, evs in callbacks.failed for e in evs)  # the FME events failed
    assert receiver.event_count() == 2
    assert proc.flush_events() is False
    assert proc.flush_events() is True


def test_a_failure_a_waiting_flush_answered_for_is_not_answered_again(pipeline, receiver, callbacks):
    """The batch fails while the flush waits for it: that flush is False, the next one True."""
    receiver.stall(0.3, n=1)
    receiver.fail_next(1, status=403)
    events, proc, _ = pipeline(SMALL)
    events.activate(1, 1, "late-fail")
    assert proc.flush_events() is False
    assert len(callbacks.failed) == 1
    assert proc.flush_events() is True


def test_a_failure_after_a_flush_was_called_is_the_next_flushs(pipeline, receiver, callbacks):
    """Two batches: the first fails while a flush covering only it waits, the second (emitted
    after that flush was called) fails later; each flush answers False for its own."""
    receiver.fail_next(2, status=403)
    events, proc, _ = pipeline(SMALL, max_concurrent_requests=1)
    events.activate(1, 1, "first")
    assert proc.flush_events() is False
    events.activate(1, 1, "second")
    assert proc.flush_events() is False
    assert proc.flush_events() is True
    assert len(callbacks.failed) == 2


# == no result is skipped for a slow callback ============================================

def test_a_slow_callback_gets_every_result_and_memory_stays_bounded(pipeline, receiver, monkeypatch):
    """Failing events, a callback slower than delivery and a small cap on waiting results:
    delivery waits for the callback; every event is reported exactly once."""
    monkeypatch.setattr(settle, "MAX_HELD_RESULTS", 20)
    holder: dict = {}
    reported: list = []
    waiting: list[int] = []

    def slow(err, evs) -> None:
        reported.extend(e["u"] for e in evs)
        waiting.append(holder["proc"].batcher.snapshot().results_waiting)
        time.sleep(0.005)

    receiver.fail_next(10_000, status=400)  # final: no retries, every batch fails at once
    events, proc, _ = pipeline({"events_per_request": 5, "request_time_interval": 60, "flush_callback": slow},
                               max_queue_size=1000)
    holder["proc"] = proc
    n = 300
    for i in range(n):
        events.activate(1, 1, f"slow-{i}")
    assert proc.flush_events() is False
    assert len(reported) == n and len(set(reported)) == n
    assert proc.stats()["events"] == {"delivered": 0, "failed": n} and proc.stats()["dropped"] == {}
    # at most the cap plus one batch per delivery thread (each may settle one more before waiting)
    assert max(waiting) <= 20 + proc.batcher.max_concurrent_requests * 5
    receiver.clear_faults()


def test_a_stuck_callback_holds_delivery_back_and_the_queue_bound_reports_the_rest(pipeline, receiver,
                                                                                    monkeypatch):
    """A callback that does not return: delivery stops after the cap, the queue fills and
    later events are dropped (reported). Once it returns, every event is accounted for."""
    monkeypatch.setattr(settle, "MAX_HELD_RESULTS", 20)
    release = threading.Event()
    calls: list = []

    def stuck(err, evs) -> None:
        calls.append((err, list(evs)))
        release.wait(10)

    events, proc, _ = pipeline({"events_per_request": 5, "request_time_interval": 60, "flush_callback": stuck},
                               max_queue_size=30)
    n = 300
    for i in range(n):
        events.activate(1, 1, f"stuck-{i}")
    dropped = proc.stats()["dropped"].get("queue_full", 0)
    assert dropped > 0  # delivery waited for the callback, so the queue bound applied
    assert receiver.event_count() < n
    release.set()
    assert proc.flush_events() is False  # events emitted before it were dropped
    ok = sum(len(evs) for err, evs in calls if err is None)
    reported_drops = sum(err.count for err, _ in calls if isinstance(err, EventsDropped))
    assert ok == receiver.event_count() and reported_drops == dropped
    assert ok + reported_drops == n


def test_a_flush_from_inside_a_slow_callback_returns_while_results_are_held(pipeline, receiver, monkeypatch):
    """Backpressure must not deadlock a callback that flushes (it waits for delivery)."""
    monkeypatch.setattr(settle, "MAX_HELD_RESULTS", 10)
    holder: dict = {}
    results: list = []

    def flushing(err, evs) -> None:
        if not results:
            results.append(holder["proc"].flush_events())

    events, proc, _ = pipeline({"events_per_request": 5, "request_time_interval": 60, "flush_callback": flushing},
                               max_queue_size=1000)
    holder["proc"] = proc
    for i in range(200):
        events.activate(1, 1, f"inside-{i}")
    assert flush_within(proc) is True
    assert results == [True] and receiver.event_count() == 200


# == a callback raising KeyboardInterrupt =================================================

@pytest.mark.parametrize("every_time", [False, True])
def test_a_callback_raising_keyboard_interrupt_does_not_block_later_flushes(pipeline, receiver, every_time):
    calls: list = []

    def interrupting(err, evs) -> None:
        calls.append(len(evs))
        if every_time or len(calls) == 1:
            raise KeyboardInterrupt

    events, proc, _ = pipeline({"events_per_request": 5, "request_time_interval": 60,
                                "flush_callback": interrupting})
    for i in range(10):
        events.activate(1, 1, f"ki-{i}")
    assert flush_within(proc) is True, "flush_events() blocked after a callback raised KeyboardInterrupt"
    assert calls == [5, 5]
    for i in range(5):
        events.activate(1, 1, f"later-{i}")
    assert flush_within(proc) is True
    assert calls == [5, 5, 5] and receiver.event_count() == 15
