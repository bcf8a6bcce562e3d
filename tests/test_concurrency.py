"""Batches in flight: the adaptive limit (``_engine.concurrency``) on a fake clock, and the
engine against the loopback receiver answering tens of milliseconds late."""

from __future__ import annotations

import threading
import time

import pytest

from vwo_otel._engine.concurrency import INITIAL_LIMIT, RTT_WINDOW, Concurrency, Signal, signal_of


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def grow(flow: Concurrency, clock: Clock, answers: int, seconds: float = 0.05) -> None:
    for _ in range(answers):
        clock.now += 0.001
        flow.answered("t", clock.now - seconds, seconds, Signal.HEALTHY, backlog=True)


# -- the controller on a fake clock ----------------------------------------------------------
def test_starts_small_and_grows_one_per_healthy_answer_while_a_backlog_waits():
    clock = Clock()
    flow = Concurrency(64, clock)
    assert flow.limit == INITIAL_LIMIT
    grow(flow, clock, 10)
    assert flow.limit == INITIAL_LIMIT + 10


def test_never_grows_without_a_backlog_nor_past_the_maximum():
    clock = Clock()
    flow = Concurrency(8, clock)
    assert flow.answered("t", clock.now, 0.05, Signal.HEALTHY, backlog=False) is False
    assert flow.limit == INITIAL_LIMIT
    grow(flow, clock, 100)
    assert flow.limit == 8
    assert Concurrency(1, clock).limit == 1


def test_slow_answers_do_not_grow_the_limit():
    """More requests in flight that only make answers slower (loopback: GIL contention) add nothing."""
    clock = Clock()
    flow = Concurrency(64, clock)
    grow(flow, clock, 3, seconds=0.010)
    limit = flow.limit
    grow(flow, clock, 10, seconds=0.030)  # 3x the fastest
    assert flow.limit == limit
    clock.now += RTT_WINDOW + 1  # the fastest answer is forgotten: a slower server is measured anew
    grow(flow, clock, 5, seconds=0.030)
    assert flow.limit > limit


def test_overload_halves_once_per_round_trip_then_growth_is_additive():
    clock = Clock()
    flow = Concurrency(64, clock)
    grow(flow, clock, 30)
    assert flow.limit == 32
    sent = clock.now - 0.05
    clock.now += 0.001
    flow.answered("a", sent, 0.05, Signal.OVERLOADED, backlog=True)
    assert flow.limit == 16
    flow.answered("b", sent, 0.05, Signal.OVERLOADED, backlog=True)  # sent before the cut: no news
    assert flow.limit == 16
    grow(flow, clock, 15)
    assert flow.limit == 16  # additive: one per `limit` healthy answers
    grow(flow, clock, 1)
    assert flow.limit == 17
    for _ in range(10):
        clock.now += 1
        flow.answered("c", clock.now, 0.0, Signal.OVERLOADED, backlog=True)
    assert flow.limit == 1


def test_429_or_503_holds_every_new_batch_until_that_request_is_answered_again():
    clock = Clock()
    flow = Concurrency(64, clock)
    assert flow.may_start(0)
    flow.answered("a", clock.now, 0.01, Signal.SLOW_DOWN, backlog=True)
    assert flow.limit == 1 and flow.paused and not flow.may_start(0)
    flow.answered("b", clock.now, 0.01, Signal.HEALTHY, backlog=True)  # another request's answer
    assert flow.paused
    flow.answered("a", clock.now + 1, 0.01, Signal.HEALTHY, backlog=True)  # its retry went through
    assert not flow.paused and flow.may_start(0)
    flow.answered("a", clock.now + 2, 0.01, Signal.SLOW_DOWN, backlog=True)
    flow.done("a")  # its batch settled (gave up, or shut down)
    assert flow.may_start(0)


@pytest.mark.parametrize(("status", "retryable", "signal"), [
    (200, False, Signal.HEALTHY), (204, False, Signal.HEALTHY), (400, False, Signal.NEUTRAL),
    (413, False, Signal.NEUTRAL), (429, False, Signal.SLOW_DOWN), (503, False, Signal.SLOW_DOWN),
    (500, False, Signal.OVERLOADED), (502, False, Signal.OVERLOADED), (408, False, Signal.OVERLOADED),
    (None, True, Signal.OVERLOADED), (None, False, Signal.NEUTRAL)])
def test_signal_of_an_answer(status, retryable, signal):
    assert signal_of(status, retryable) is signal


# -- the engine against a server tens of milliseconds away -----------------------------------
class InFlight:
    """Samples the batcher's in-flight count and limit every millisecond (a thread of its own)."""

    def __init__(self, batcher) -> None:
        self.batcher = batcher
        self.most = self.most_limit = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.001):
            snap = self.batcher.snapshot()
            self.most = max(self.most, snap.in_flight)
            self.most_limit = max(self.most_limit, snap.in_flight_limit)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def test_in_flight_grows_past_the_old_fixed_four_when_the_server_is_50ms_away(pipeline, receiver, callbacks):
    events, proc, _ = pipeline({"events_per_request": 10, "request_time_interval": 60})
    receiver.stall(0.05)
    sampler = InFlight(proc.batcher)
    start = time.monotonic()
    for i in range(3000):  # 300 batches: 3.75 s at 4 in flight, well under 1 s with the limit grown
        events.activate(231, 1 + i % 2, f"user-{i}")
    assert proc.force_flush(10_000)
    took = time.monotonic() - start
    sampler.stop()
    assert receiver.event_count() == 3000 and not callbacks.failed
    assert sampler.most > 16 and sampler.most <= proc.batcher.max_concurrent_requests
    assert took < 3.0, took


def test_the_limit_never_passes_max_concurrent_requests(pipeline, receiver):
    events, proc, _ = pipeline({"events_per_request": 5, "request_time_interval": 60}, max_concurrent_requests=6)
    receiver.stall(0.03)
    sampler = InFlight(proc.batcher)
    for i in range(1000):
        events.activate(231, 1, f"user-{i}")
    assert proc.force_flush(10_000)
    sampler.stop()
    assert sampler.most <= 6 and sampler.most_limit == 6


def test_429_with_retry_after_pauses_the_whole_engine(pipeline, receiver, callbacks):
    events, proc, _ = pipeline({"events_per_request": 5, "request_time_interval": 60})
    receiver.stall(0.02)
    receiver.fail_next(1, 429, retry_after=1)
    for i in range(100):  # 20 batches
        events.activate(231, 1, f"user-{i}")
    assert proc.force_flush(10_000)
    assert receiver.event_count() == 100 and not callbacks.failed
    reqs = receiver.requests()
    refused = next(r["received_at"] for r in reqs if r["status"] == 429)
    # Requests already on the wire when the 429 came back may land just after it; no new one
    # starts until its retry, Retry-After later.
    later = [r["received_at"] - refused for r in reqs if r["received_at"] > refused + 0.1]
    assert later and min(later) >= 1.0 - 0.02, later


def test_a_server_that_slows_from_20_to_500ms_keeps_memory_bounded_and_drops_impressions_first(
        pipeline, receiver, callbacks):
    events, proc, _ = pipeline({"events_per_request": 10, "request_time_interval": 60}, max_queue_size=500)
    receiver.stall(0.02)
    for i in range(500):
        events.activate(231, 1, f"warm-{i}")
    assert proc.force_flush(10_000)
    receiver.stall(0.5)
    most = 0
    for i in range(3000):  # faster than 64 requests of 10 events per 0.5 s take; 150 conversions fit
        if i % 20 == 0:
            events.track(231, 1, 7, f"user-{i}")
        else:
            events.activate(231, 1, f"user-{i}")
        most = max(most, proc.batcher.queue_size())
    assert most <= 500
    assert proc.stats()["dropped"]["queue_full"] > 0

    def drops(calls: list) -> list:
        return [e for err, evs in calls if getattr(err, "reason", "") == "queue_full" for e in evs]

    assert callbacks.wait_for(lambda calls: len(drops(calls)) >= proc.stats()["dropped"]["queue_full"])
    assert {e["eT"] for e in drops(callbacks.calls)} == {1}  # impressions go first, conversions kept
    receiver.clear_faults()
    proc.force_flush(10_000)
