"""VWO event batching over real loopback HTTP: count and age triggers, the timer, real-time
mode, ``flush_callback``, ``flush_events``, ``force_flush``, shutdown, process exit,
thread safety and what the queue holds.

Timing tests use ``request_time_interval=1`` (VWO's minimum) and compare the receiver's
arrival time with the moment the first event was emitted: never earlier than the
interval, and within an honest tolerance after it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from urllib.parse import parse_qs

import pytest
from conftest import ACCOUNT_ID, FAST_RETRY, SDK_KEY
from helpers import wait_until
from opentelemetry.sdk.trace import ReadableSpan

from vwo_otel import (
    EventsDropped,
    HTTPStatusError,
    NetworkError,
    RetryPolicy,
    VWODeliveryError,
    VWOEvent,
    VWOExporter,
    __version__,
    visitor_uuid,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
INTERVAL = 1.0  # VWO's minimum request_time_interval
#: How late after its deadline a timer-driven request may arrive (thread wake-up + one loopback POST).
LATE = 0.5
TIMED = {"events_per_request": 100, "request_time_interval": 1}
HELD = {"events_per_request": 100, "request_time_interval": 60}


def closed_port() -> int:
    """A loopback port nobody listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def u(user_id: str) -> str:
    return visitor_uuid(ACCOUNT_ID, user_id)


def by_request(receiver) -> list[list[dict]]:
    """Accepted events grouped per request, in arrival order, wire-shaped."""
    groups: dict[int, list[dict]] = {}
    for ev in receiver.events(with_raw=True):
        rid = ev.pop("request_id")
        ev.pop("raw")
        groups.setdefault(rid, []).append(ev)
    return [groups[k] for k in sorted(groups)]


def arrival(receiver, index: int) -> float:
    return receiver.requests()[index]["received_at"]


# == 2. batching triggers ==================================================================

def test_count_trigger_sends_exactly_events_per_request(pipeline, receiver):
    events, proc, _ = pipeline(batch_events={"events_per_request": 5, "request_time_interval": 60})
    users = [f"count-{i}" for i in range(12)]
    for user in users:
        events.activate(7, 1, user)
    assert len(proc.batcher.snapshot().pending) == 2  # 10 cut into two requests on the emitting thread
    assert receiver.wait_for_events(10, timeout=5)
    assert [r["n_events"] for r in receiver.requests()] == [5, 5]
    assert proc.flush_events() is True
    assert [r["n_events"] for r in receiver.requests()] == [5, 5, 2]
    assert [r["path"] for r in receiver.requests()] == ["/server-side/batch-events"] * 3
    assert [r["method"] for r in receiver.requests()] == ["POST"] * 3
    # batches are in flight concurrently, so they may arrive in any order; each is a run of users
    assert sorted([ev["u"] for ev in batch] for batch in by_request(receiver)) == sorted(
        [u(x) for x in users[i:i + 5]] for i in range(0, 12, 5))


def test_batch_request_query_identifies_account_and_sdk(pipeline, receiver):
    events, proc, _ = pipeline(batch_events={"events_per_request": 2})
    events.activate(1, 2, "q1")
    events.activate(1, 2, "q2")
    assert receiver.wait_for_events(2, timeout=5)
    (req,) = receiver.requests()
    query = {k: v[0] for k, v in parse_qs(req["query"]).items()}
    assert query["a"] == str(ACCOUNT_ID)
    assert query["env"] == "***"  # the receiver checked the real key (401 otherwise) and masked it
    assert query["sdk-v"] == __version__
    assert query["sdk"]


def test_time_trigger_counts_from_first_event_and_later_events_do_not_extend_it(pipeline, receiver, callbacks):
    events, proc, _ = pipeline(batch_events=TIMED)
    t_first = time.time()
    events.activate(3, 1, "early")
    time.sleep(0.6)  # part of the scenario: more events later in the same window
    events.track(3, 1, 9, "late", revenue=4.0)
    events.push("late", {"k": "v"})
    t_last = time.time()
    assert receiver.wait_for_events(3, timeout=5)
    reqs = receiver.requests()
    assert [r["n_events"] for r in reqs] == [3]
    age = reqs[0]["received_at"] - t_first
    assert INTERVAL <= age < INTERVAL + LATE, age
    # a deadline pushed back by the later events would be >= t_last + 1 s
    assert reqs[0]["received_at"] < t_last + INTERVAL
    # the queue is empty and the timer cleared once the request is cut
    assert callbacks.wait_for(lambda calls: len(calls) == 1, timeout=5)
    assert proc.batcher.snapshot().pending == ()
    assert proc.batcher.snapshot().deadline == math.inf


def test_timer_starts_when_first_event_arrives_not_at_construction(pipeline, receiver):
    """Over real HTTP; that an idle processor runs no timer however long it waits is
    tests/unit/test_engine.py's (on its fake clock)."""
    events, proc, _ = pipeline(batch_events=TIMED)
    assert proc.batcher.snapshot().deadline == math.inf
    t_first = time.time()
    events.activate(1, 1, "after-idle")
    assert receiver.wait_for_events(1, timeout=5)
    age = arrival(receiver, 0) - t_first
    assert INTERVAL <= age < INTERVAL + LATE, age


def test_timer_cleared_after_time_flush_and_restarted_by_next_event(pipeline, receiver):
    events, proc, _ = pipeline(batch_events=TIMED)
    events.activate(1, 1, "window-1")
    assert receiver.wait_for_events(1, timeout=5)
    # no timer left (that idle time sends nothing: test_never_an_empty_request, and the unit layer)
    assert wait_until(lambda: proc.batcher.snapshot().deadline == math.inf)
    assert len(receiver.requests()) == 1
    t_second = time.time()
    events.activate(1, 1, "window-2")
    assert receiver.wait_for_events(2, timeout=5)
    assert len(receiver.requests()) == 2
    age = arrival(receiver, 1) - t_second
    assert INTERVAL <= age < INTERVAL + LATE, age


def test_count_flush_resets_the_timer(pipeline, receiver):
    events, proc, _ = pipeline(batch_events={"events_per_request": 3, "request_time_interval": 1})
    t0 = time.time()
    for i in range(3):
        events.activate(1, 1, f"full-{i}")
    assert receiver.wait_for_events(3, timeout=5)
    assert arrival(receiver, 0) - t0 < INTERVAL  # sent for the count, not by the timer
    assert proc.batcher.snapshot().deadline == math.inf
    time.sleep(0.5)  # part of the scenario: the next event comes half-way through the old window
    t1 = time.time()
    events.activate(1, 1, "next")
    assert receiver.wait_for_events(4, timeout=5)
    age = arrival(receiver, 1) - t1  # a stale timer from t0 would fire ~0.5 s after t1
    assert INTERVAL <= age < INTERVAL + LATE, age
    assert [r["n_events"] for r in receiver.requests()] == [3, 1]


def test_never_an_empty_request(pipeline, receiver, callbacks):
    events, proc, _ = pipeline(batch_events={"events_per_request": 2, "request_time_interval": 1})
    # idle over more than one interval: nothing is sent
    assert not receiver.wait_for_events(1, timeout=INTERVAL + 0.2)
    assert receiver.requests() == []
    # flushing an empty queue sends nothing and succeeds
    assert proc.flush_events() is True
    assert proc.flush_events("async") is None
    assert proc.force_flush(1000) is True
    # a batch cut by the count leaves no timer behind that could send an empty request
    events.activate(1, 1, "a")
    events.activate(1, 1, "b")
    assert receiver.wait_for_events(2, timeout=5)
    assert not receiver.wait_for_events(3, timeout=INTERVAL + 0.2)
    assert [r["n_events"] for r in receiver.requests()] == [2]
    assert proc.flush_events() is True
    assert len(receiver.requests()) == 1
    assert [len(evs) for _, evs in callbacks.calls] == [2]


def test_interval_beyond_the_platform_wait_limit(pipeline, receiver, caplog):
    """request_time_interval has no maximum ("as per requirements"): one longer than
    threading.TIMEOUT_MAX (~292 years) must still just hold events, with no thread errors."""
    caplog.set_level(logging.WARNING, logger="vwo_otel")
    events, proc, _ = pipeline(batch_events={"events_per_request": 2, "request_time_interval": 1e12})
    events.activate(1, 1, "huge-1")
    assert not receiver.wait_for_events(1, timeout=0.3)  # held by the (very long) timer
    events.activate(1, 1, "huge-2")
    assert receiver.wait_for_events(2, timeout=5)
    events.activate(1, 1, "huge-3")
    assert proc.flush_events() is True
    assert [r["n_events"] for r in receiver.requests()] == [2, 1]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


# == 3. real-time mode =====================================================================

def test_real_time_sends_each_event_with_vwo_get_endpoints(pipeline, receiver):
    events, proc, _ = pipeline(batch_events=None, max_concurrent_requests=1)  # one at a time: arrival order
    events.activate(11, 2, "alice", visitor_ua="UA/1.0", visitor_ip="10.0.0.1")
    events.is_feature_enabled(12, 3, "bob")
    events.track(11, 2, 7, "alice", revenue=12.5)
    events.track(11, 2, 8, "carol")
    events.push("dave", {"plan": "gold", "tier": 2})
    assert receiver.wait_for_events(6, timeout=5)
    reqs = receiver.requests()
    assert len(reqs) == 6
    assert all(r["method"] == "GET" and r["n_events"] == 1 and r["accepted"] for r in reqs)
    assert [r["path"] for r in reqs] == ["/server-side/track-user"] * 2 + ["/server-side/track-goal"] * 2 + [
        "/server-side/push"] * 2
    queries = [{k: v[0] for k, v in parse_qs(r["query"], keep_blank_values=True).items()} for r in reqs]
    users = ["alice", "bob", "alice", "carol", "dave", "dave"]
    for q, user in zip(queries, users, strict=False):
        assert q["account_id"] == str(ACCOUNT_ID)
        assert q["env"] == "***"
        assert q["u"] == u(user)
        assert q["ap"] == "server"
        assert q["sdk-v"] == __version__ and q["sdk"]
        assert q["sId"].isdigit() and abs(int(q["sId"]) - time.time()) < 60
        assert 0.0 <= float(q["random"]) < 1.0
        assert "visitor_ua" in q and "visitor_ip" in q
    assert (queries[0]["experiment_id"], queries[0]["combination"]) == ("11", "2")
    assert json.loads(queries[0]["ed"]) == {"p": "server"}
    assert (queries[0]["visitor_ua"], queries[0]["visitor_ip"]) == ("UA/1.0", "10.0.0.1")
    assert (queries[1]["experiment_id"], queries[1]["combination"]) == ("12", "3")
    assert (queries[2]["goal_id"], float(queries[2]["r"])) == ("7", 12.5)
    assert queries[3]["goal_id"] == "8" and "r" not in queries[3]
    assert [json.loads(q["tags"]) for q in queries[4:]] == [{"u": {"plan": "gold"}}, {"u": {"tier": "2"}}]
    stored = receiver.events()
    assert [ev["eT"] for ev in stored] == [1, 1, 2, 2, 3, 3]
    assert (stored[0]["visitor_ua"], stored[0]["visitor_ip"]) == ("UA/1.0", "10.0.0.1")


def test_real_time_emit_returns_before_the_network(pipeline, receiver):
    events, proc, _ = pipeline(batch_events=None)
    receiver.stall(1.0, n=1)
    start = time.monotonic()
    events.activate(1, 1, "fast-1")
    events.track(1, 1, 2, "fast-2")
    events.push("fast-3", {"k": "v"})
    took = time.monotonic() - start
    assert took < 0.5, f"emitting waited on the stalled receiver ({took:.2f} s)"
    assert receiver.wait_for_events(3, timeout=5)


# == 4. flush_callback =====================================================================

def test_flush_callback_once_per_request_with_events_as_sent(pipeline, receiver, callbacks):
    events, proc, _ = pipeline(batch_events={"events_per_request": 4, "request_time_interval": 60},
                               max_concurrent_requests=1)  # one request at a time: callbacks in order
    events.activate(5, 1, "cb-1", visitor_ua="Agent", visitor_ip="192.0.2.7")
    events.track(5, 1, 3, "cb-1", revenue=19.99)
    events.track(5, 2, 3, "cb-2")
    events.push("cb-3", {"country": "IN"})
    events.is_feature_enabled(6, 1, "cb-4")
    events.activate(6, 2, "cb-5")
    events.push("cb-5", {"a": "1", "b": "2"})
    assert callbacks.wait_for(lambda calls: len(calls) == 2, timeout=5)
    assert all(err is None for err, _ in callbacks.calls)
    assert [evs for _, evs in callbacks.calls] == by_request(receiver)
    assert callbacks.ok_events == receiver.events()
    assert callbacks.calls[0][1][1]["r"] == 19.99
    assert callbacks.calls[0][1][3]["t"] == '{"u":{"country":"IN"}}'


@pytest.mark.parametrize("status", [403, 401])
def test_flush_callback_gets_http_status_error_on_final_status(pipeline, receiver, callbacks, status):
    events, proc, _ = pipeline(batch_events=HELD)
    receiver.fail_next(1, status)
    events.activate(1, 1, "bad-1")
    events.activate(1, 2, "bad-2")
    assert proc.flush_events() is False
    assert len(callbacks.calls) == 1
    err, evs = callbacks.calls[0]
    assert isinstance(err, HTTPStatusError) and isinstance(err, VWODeliveryError)
    assert err.status == status
    assert [(e["u"], e["e"], e["c"], e["eT"]) for e in evs] == [(u("bad-1"), 1, 1, 1), (u("bad-2"), 1, 2, 1)]
    assert [r["status"] for r in receiver.requests()] == [status]  # a final status is not retried
    assert receiver.events() == []
    # later batches are unaffected
    events.activate(1, 1, "good")
    assert proc.flush_events() is True
    assert callbacks.calls[1][0] is None
    assert callbacks.calls[1][1] == receiver.events()


def test_flush_callback_gets_http_status_error_for_wrong_sdk_key(pipeline, receiver, callbacks):
    """Not injected: the receiver itself refuses a key that is not the account's (401)."""
    exporter = VWOExporter(ACCOUNT_ID, "not-the-key", endpoint=receiver.url, retry=RetryPolicy(budget=1.0))
    events, proc, _ = pipeline(batch_events=HELD, exporter=exporter)
    events.activate(1, 1, "wrong-key")
    assert proc.flush_events() is False
    (err, evs), = callbacks.calls
    assert isinstance(err, HTTPStatusError) and err.status == 401
    assert [e["u"] for e in evs] == [u("wrong-key")]
    assert "not-the-key" not in str(err)


def test_flush_callback_gets_network_error_on_connection_refused(pipeline, callbacks):
    exporter = VWOExporter(ACCOUNT_ID, SDK_KEY, endpoint=f"http://127.0.0.1:{closed_port()}",
                           retry=RetryPolicy(budget=0.3, initial_backoff=0.01, max_backoff=0.05))
    events, proc, _ = pipeline(batch_events=HELD, exporter=exporter)
    events.activate(1, 1, "nobody-home")
    events.push("nobody-home", {"k": "v"})
    assert proc.flush_events() is False
    (err, evs), = callbacks.calls
    assert isinstance(err, NetworkError) and isinstance(err, VWODeliveryError)
    assert err.status is None
    assert SDK_KEY not in str(err)
    assert [(e["u"], e["eT"]) for e in evs] == [(u("nobody-home"), 1), (u("nobody-home"), 3)]
    assert proc.stats()["events"]["failed"] == 2


def test_raising_flush_callback_is_logged_and_delivery_continues(pipeline, receiver, caplog):
    calls: list = []
    done = threading.Condition()

    def callback(err, evs):
        with done:
            calls.append((err, evs))
            done.notify_all()
        if len(calls) == 1:
            raise RuntimeError("boom from the user's callback")

    caplog.set_level(logging.WARNING, logger="vwo_otel")
    events, proc, _ = pipeline(batch_events={"events_per_request": 2, "request_time_interval": 60,
                                             "flush_callback": callback})
    events.activate(1, 1, "r1")
    events.activate(1, 1, "r2")
    with done:
        assert done.wait_for(lambda: len(calls) == 1, timeout=5)
    events.activate(1, 1, "r3")
    events.activate(1, 1, "r4")
    assert receiver.wait_for_events(4, timeout=5)
    with done:
        assert done.wait_for(lambda: len(calls) == 2, timeout=5)
    assert [err for err, _ in calls] == [None, None]
    assert [[e["u"] for e in evs] for _, evs in calls] == [[u("r1"), u("r2")], [u("r3"), u("r4")]]
    logged = [r for r in caplog.records if r.name == "vwo_otel" and r.exc_info]
    assert len(logged) == 1
    assert "flush_callback" in logged[0].getMessage()
    assert "boom from the user's callback" in str(logged[0].exc_info[1])
    assert proc.flush_events() is True


def test_sync_flush_from_inside_flush_callback_returns(pipeline, receiver):
    """Inside a callback, a sync flush waits for delivery (not for callbacks: it runs in one)."""
    results: list = []
    done = threading.Condition()
    holder: dict = {}

    def callback(err, evs):
        if not holder.get("called"):
            holder["called"] = True
            result = holder["proc"].flush_events()
            with done:
                results.append(result)
                done.notify_all()

    events, proc, _ = pipeline(batch_events={"events_per_request": 2, "request_time_interval": 60,
                                             "flush_callback": callback}, shutdown_timeout=1.0)
    holder["proc"] = proc
    for i in range(3):
        events.activate(1, 1, f"reentrant-{i}")
    with done:
        assert done.wait_for(lambda: results, timeout=2), "flush_events() inside flush_callback never returned"
    assert results == [True]
    assert receiver.event_count() == 3  # the flush delivered the third event before returning


def test_flush_events_mode_none_means_sync_as_vwo_documents(pipeline, receiver, callbacks):
    events, proc, _ = pipeline(batch_events=HELD)
    events.activate(2, 1, "mode-none")
    assert proc.flush_events(mode=None) is True  # VWO's Flask example passes request.args.get("mode")
    assert receiver.event_count() == 1 and len(callbacks.calls) == 1


def test_force_flush_with_a_huge_timeout_does_not_overflow(pipeline, receiver):
    events, proc, _ = pipeline(batch_events=HELD)
    events.activate(2, 1, "huge-timeout")
    assert proc.force_flush(timeout_millis=10**16) is True
    assert receiver.event_count() == 1


# == 5. flush_events =======================================================================

def test_flush_events_sync_sends_queue_and_returns_after_callbacks(pipeline, receiver, callbacks):
    events, proc, _ = pipeline(batch_events=HELD)
    for i in range(3):
        events.activate(2, 1, f"sync-{i}")
    assert receiver.requests() == [] and callbacks.calls == []
    assert proc.flush_events("sync") is True
    # already done when it returns: no waiting here
    assert len(callbacks.calls) == 1
    assert callbacks.calls[0][0] is None
    assert callbacks.calls[0][1] == receiver.events()
    assert receiver.event_count() == 3
    assert proc.batcher.snapshot().pending == () and proc.batcher.snapshot().deadline == math.inf
    assert proc.flush_events() is True  # default mode is sync; nothing left, nothing sent
    assert len(receiver.requests()) == 1


def test_flush_events_sync_waits_for_a_slow_callback(pipeline, receiver):
    calls: list = []

    def slow_callback(err, evs):
        time.sleep(0.3)
        calls.append((err, evs))

    events, proc, _ = pipeline(batch_events={**HELD, "flush_callback": slow_callback})
    events.activate(1, 1, "slow-cb-1")
    assert proc.flush_events() is True
    assert len(calls) == 1  # returned only after the callback finished
    events.activate(1, 1, "slow-cb-2")
    assert proc.force_flush(5000) is True
    assert len(calls) == 2
    assert [[e["u"] for e in evs] for _, evs in calls] == [[u("slow-cb-1")], [u("slow-cb-2")]]


def test_flush_events_clears_the_timer(pipeline, receiver):
    events, proc, _ = pipeline(batch_events=TIMED)
    events.activate(1, 1, "flushed")
    assert proc.flush_events() is True
    assert proc.batcher.snapshot().deadline == math.inf
    time.sleep(0.5)  # part of the scenario: the next event comes half-way through the old window
    t1 = time.time()
    events.activate(1, 1, "after-flush")
    assert receiver.wait_for_events(2, timeout=5)
    age = arrival(receiver, 1) - t1  # the old timer would have fired ~0.5 s after t1
    assert INTERVAL <= age < INTERVAL + LATE, age
    assert [r["n_events"] for r in receiver.requests()] == [1, 1]


def test_flush_events_sync_false_when_delivery_failed(pipeline, receiver, callbacks):
    events, proc, _ = pipeline(batch_events=HELD)
    receiver.fail_next(1, 400)
    events.activate(1, 1, "fails")
    assert proc.flush_events() is False
    assert len(callbacks.calls) == 1 and isinstance(callbacks.calls[0][0], HTTPStatusError)
    events.activate(1, 1, "succeeds")
    assert proc.flush_events() is True


def test_flush_events_async_returns_none_at_once(pipeline, receiver, callbacks):
    events, proc, _ = pipeline(batch_events=HELD)
    for i in range(3):
        events.activate(1, 1, f"async-{i}")
    receiver.stall(1.0, n=1)
    start = time.monotonic()
    result = proc.flush_events(mode="async")
    took = time.monotonic() - start
    assert result is None
    assert took < 0.5, f"async flush waited on the stalled receiver ({took:.2f} s)"
    assert receiver.wait_for_events(3, timeout=5)
    assert callbacks.wait_for(lambda calls: len(calls) == 1, timeout=5)
    assert callbacks.calls[0][0] is None


@pytest.mark.parametrize("mode", ["later", "", "sync ", 1])
def test_flush_events_rejects_other_modes_and_keeps_the_queue(pipeline, receiver, callbacks, mode):
    events, proc, _ = pipeline(batch_events=HELD)
    for i in range(3):
        events.activate(1, 1, f"kept-{i}")
    with pytest.raises(ValueError) as info:
        proc.flush_events(mode=mode)
    msg = str(info.value)
    assert "'sync'" in msg and "'async'" in msg
    assert len(proc.batcher.snapshot().pending) == 3
    assert receiver.requests() == [] and callbacks.calls == []
    assert proc.flush_events() is True
    assert [r["n_events"] for r in receiver.requests()] == [3]
    assert [e["u"] for e in receiver.events()] == [u(f"kept-{i}") for i in range(3)]


# == 6. force_flush and shutdown ===========================================================

def test_force_flush_delivers(pipeline, receiver, callbacks):
    events, proc, _ = pipeline(batch_events=HELD)
    for i in range(4):
        events.activate(1, 1, f"ff-{i}")
    assert proc.force_flush(5000) is True
    assert receiver.event_count() == 4
    assert len(callbacks.calls) == 1 and callbacks.calls[0][0] is None


def test_force_flush_false_when_delivery_failed(pipeline, receiver, callbacks):
    events, proc, _ = pipeline(batch_events=HELD)
    receiver.fail_next(1, 400)
    events.activate(1, 1, "ff-bad")
    assert proc.force_flush(5000) is False
    assert isinstance(callbacks.calls[0][0], HTTPStatusError)


def test_force_flush_false_when_timeout_too_short(pipeline, receiver, callbacks):
    events, proc, _ = pipeline(batch_events=HELD)
    receiver.stall(2.0)
    events.activate(1, 1, "slow")
    start = time.monotonic()
    result = proc.force_flush(timeout_millis=200)
    took = time.monotonic() - start
    assert result is False
    assert took < 1.0, f"force_flush(200 ms) took {took:.2f} s"
    receiver.clear_faults()  # end the stall: the event still gets through
    assert receiver.wait_for_events(1, timeout=5)
    assert callbacks.wait_for(lambda calls: len(calls) == 1, timeout=5)
    assert callbacks.calls[0][0] is None


def test_tracer_provider_force_flush_delivers(pipeline, receiver, callbacks):
    events, proc, provider = pipeline(batch_events=HELD)
    events.activate(1, 1, "provider-1")
    events.track(1, 1, 4, "provider-1")
    assert provider.force_flush() is True
    assert receiver.event_count() == 2
    assert len(callbacks.calls) == 1


def test_shutdown_flushes_then_refuses_new_events(pipeline, receiver, callbacks):
    events, proc, _ = pipeline(batch_events=HELD)
    for i in range(3):
        events.activate(1, 1, f"sd-{i}")
    proc.shutdown()
    assert receiver.event_count() == 3
    assert len(callbacks.calls) == 1 and callbacks.calls[0][0] is None
    events.activate(1, 1, "too-late")
    assert callbacks.wait_for(lambda calls: len(calls) == 2, timeout=5)
    err, evs = callbacks.calls[1]
    assert isinstance(err, EventsDropped) and err.reason == "already_shutdown"
    assert [e["u"] for e in evs] == [u("too-late")]
    assert proc.stats()["dropped"] == {"already_shutdown": 1}
    # idempotent and quick the second time; nothing else is sent
    start = time.monotonic()
    proc.shutdown()
    assert time.monotonic() - start < 0.5
    assert proc.flush_events() is False  # an event emitted before it was dropped (already_shutdown)
    assert receiver.event_count() == 3 and len(receiver.requests()) == 1


def test_shutdown_is_bounded_when_the_receiver_stalls(pipeline, receiver, callbacks):
    events, proc, _ = pipeline(batch_events=HELD, shutdown_timeout=1.0)
    receiver.stall(30.0)
    events.activate(1, 1, "stuck-1")
    events.activate(1, 1, "stuck-2")
    start = time.monotonic()
    proc.shutdown()
    took = time.monotonic() - start
    assert took < 1.0 + 1.5, f"shutdown(shutdown_timeout=1) took {took:.2f} s"
    # every event is accounted for as failed, none reported as delivered
    assert callbacks.wait_for(lambda calls: sum(len(e) for err, e in calls if err) == 2, timeout=5)
    assert callbacks.ok_events == []
    start = time.monotonic()
    proc.shutdown()
    assert time.monotonic() - start < 0.5


# == 7. process exit =======================================================================

EXIT_SCRIPT = textwrap.dedent("""
    import sys, time
    from opentelemetry.sdk.trace import TracerProvider
    from vwo_otel import VWOEvents, VWOExporter, VWOSampler, VWOSpanProcessor
    endpoint, key, shutdown_timeout, provider_exit = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
    exporter = VWOExporter(12345, key, endpoint=endpoint)
    def report(err, evs):
        print("callback", type(err).__name__, getattr(err, "reason", ""), len(evs), flush=True)
    processor = VWOSpanProcessor(exporter, {"events_per_request": 100, "request_time_interval": 600,
                                            "flush_callback": report}, shutdown_timeout=shutdown_timeout)
    provider = TracerProvider(sampler=VWOSampler(), shutdown_on_exit=provider_exit == "1")
    provider.add_span_processor(processor)
    events = VWOEvents(tracer_provider=provider)
    for i in range(5):
        events.activate(1, 2, f"exit-{i}")
    print("end", time.time(), flush=True)
""")


def run_exit_script(endpoint: str, shutdown_timeout: float = 10.0,
                    provider_exit: bool = False) -> tuple[float, list[str]]:
    """Run the script; return how long the process took to exit after its last line, and
    what its flush_callback printed (at exit)."""
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT, endpoint, SDK_KEY, str(shutdown_timeout), "1" if provider_exit else "0"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    ended = time.time()
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    (end,) = [float(line.split()[1]) for line in lines if line.startswith("end ")]
    return ended - end, [line for line in lines if line.startswith("callback ")]


@pytest.mark.parametrize("provider_exit", [False, True], ids=["own-atexit", "provider-atexit"])
def test_exit_delivers_queue_without_waiting_for_timer(receiver, provider_exit):
    lag, reports = run_exit_script(receiver.url, provider_exit=provider_exit)
    assert lag < 5.0, f"process lingered {lag:.1f} s after its last line"
    assert receiver.event_count() == 5
    assert [e["u"] for e in receiver.events()] == [u(f"exit-{i}") for i in range(5)]
    assert [r["n_events"] for r in receiver.requests()] == [5]
    assert reports == ["callback NoneType  5"]  # flush_callback ran at exit, with success


def _reported_failed(reports: list[str]) -> int:
    """Events the script's flush_callback saw as not delivered."""
    return sum(int(line.split()[-1]) for line in reports if not line.startswith("callback NoneType"))


def test_exit_is_bounded_when_receiver_stalls(receiver):
    receiver.stall(30.0)
    lag, reports = run_exit_script(receiver.url, shutdown_timeout=1.0)
    assert lag < 1.0 + 2.5, f"process lingered {lag:.1f} s with shutdown_timeout=1"
    assert _reported_failed(reports) == 5, reports


def test_exit_is_bounded_when_endpoint_unreachable():
    lag, reports = run_exit_script(f"http://127.0.0.1:{closed_port()}", shutdown_timeout=1.0)
    assert lag < 1.0 + 2.5, f"process lingered {lag:.1f} s with shutdown_timeout=1"
    assert _reported_failed(reports) == 5, reports


# == 9. thread safety ======================================================================

def test_concurrent_emitters_and_flushers_deliver_each_event_exactly_once(pipeline, receiver, callbacks):
    n_threads, per_thread = 8, 500
    total = n_threads * per_thread
    events, proc, _ = pipeline(batch_events={"events_per_request": 7, "request_time_interval": 1})
    start = threading.Barrier(n_threads + 2)  # emitters, one flusher, one cutter
    emitting = threading.Event()
    emitting.set()
    errors: list = []
    flush_results: list = []

    def emit(t: int) -> None:
        try:
            start.wait()
            for i in range(per_thread):
                events.activate(t + 1, i % 3, f"t{t}-u{i}")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def flusher() -> None:  # waits for delivery: sync flush_events and force_flush in turn
        try:
            start.wait()
            k = 0
            while emitting.is_set():
                flush_results.append(proc.flush_events() if k % 2 == 0 else proc.force_flush(5000))
                k += 1
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def cutter() -> None:  # cheap async flushes: many cuts racing the emitters' own cuts
        try:
            start.wait()
            while emitting.is_set():
                assert proc.flush_events("async") is None
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    emitters = [threading.Thread(target=emit, args=(t,)) for t in range(n_threads)]
    flushers = [threading.Thread(target=flusher), threading.Thread(target=cutter)]
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often, so races have a chance to show
    try:
        for th in [*emitters, *flushers]:
            th.start()
        for th in emitters:
            th.join(60)
        emitting.clear()
        for th in flushers:
            th.join(60)
    finally:
        sys.setswitchinterval(switch)
    assert errors == []
    assert proc.flush_events() is True
    assert receiver.wait_for_events(total, timeout=20)
    assert callbacks.wait_for(lambda calls: sum(len(e) for _, e in calls) >= total, timeout=20)

    expected = Counter(u(f"t{t}-u{i}") for t in range(n_threads) for i in range(per_thread))
    got = Counter(ev["u"] for ev in receiver.events())
    assert got == expected  # none lost, none duplicated
    assert max(got.values()) == 1
    reqs = receiver.requests()
    assert all(r["accepted"] and 1 <= r["n_events"] <= 7 for r in reqs)
    assert sum(r["n_events"] for r in reqs) == total
    assert callbacks.failed == []
    assert sum(len(e) for _, e in callbacks.calls) == total
    assert Counter(e["u"] for e in callbacks.ok_events) == expected
    assert flush_results and all(flush_results)  # every sync flush / force_flush reported success
    assert proc.stats()["events"] == {"delivered": total, "failed": 0}


# == 10. the queue holds compact records ===================================================

def test_queue_holds_vwo_events_not_spans(pipeline, receiver):
    events, proc, _ = pipeline(batch_events=HELD)
    events.activate(10, 1, "compact", visitor_ua="UA")
    events.track(10, 1, 5, "compact", revenue=3)
    events.push("compact", {"k": "v"})
    pending = list(proc.batcher.snapshot().pending)
    assert len(pending) == 3
    assert all(type(ev) is VWOEvent for ev in pending)
    assert not any(isinstance(ev, ReadableSpan) for ev in pending)
    assert not hasattr(pending[0], "__dict__")  # slotted record, no span baggage
    assert [(ev.etype, ev.user_id) for ev in pending] == [(1, "compact"), (2, "compact"), (3, "compact")]
    assert (pending[0].campaign_id, pending[0].variation_id, pending[0].visitor_ua) == (10, 1, "UA")
    assert (pending[1].goal_id, pending[1].revenue) == (5, 3)
    assert (pending[2].key, pending[2].value) == ("k", "v")
    assert proc.flush_events() is True
    assert receiver.event_count() == 3


# == concurrent requests ====================================================================

def test_batches_are_in_flight_concurrently_so_latency_does_not_cap_throughput(pipeline, receiver):
    """Four batches against a server that answers 0.5 s late: with four requests in flight
    they all land in about one answer time; one at a time would need 2 s."""
    events, proc, _ = pipeline(batch_events={"events_per_request": 5, "request_time_interval": 60})
    assert proc.batcher.max_concurrent_requests == 128  # the default maximum of the adaptive limit
    receiver.stall(0.5, n=4)
    start = time.monotonic()
    for i in range(20):
        events.activate(1, 1, f"conc-{i}")
    assert proc.flush_events() is True
    assert time.monotonic() - start < 1.5
    assert sorted(r["n_events"] for r in receiver.requests()) == [5, 5, 5, 5]


def test_flush_waits_for_every_batch_even_when_they_settle_out_of_order(make_exporter, pipeline, receiver,
                                                                        callbacks):
    """The first batch is held back and fails; the later two settle first. The flush
    returns only after all three, and says that one failed."""
    from vwo_otel import VWOExporter

    release = threading.Event()

    class FirstBatchLate(VWOExporter):
        def send_batch(self, events):
            if events[0].user_id == "ooo-0":
                release.wait(5)
                receiver.fail_next(1, status=403)
            return super().send_batch(events)

    exporter = FirstBatchLate(ACCOUNT_ID, SDK_KEY, endpoint=receiver.url, retry=FAST_RETRY)
    events, proc, _ = pipeline(batch_events={"events_per_request": 2, "request_time_interval": 60},
                               exporter=exporter)
    for i in range(6):
        events.activate(1, 1, f"ooo-{i}")
    result: list = []
    flusher = threading.Thread(target=lambda: result.append(proc.flush_events()))
    flusher.start()
    assert callbacks.wait_for(lambda calls: len(calls) == 2, timeout=5)  # batches 2 and 3 settled first
    assert result == []  # ... and the flush still waits for batch 1
    release.set()
    flusher.join(5)
    assert result == [False]  # batch 1 failed: the flush says so
    assert [err is None for err, _ in callbacks.calls] == [True, True, False]
    assert proc.flush_events() is True  # nothing left, nothing failed since


def test_max_concurrent_requests_is_validated():
    from vwo_otel import VWOExporter, VWOSpanProcessor

    exporter = VWOExporter(1, "k", endpoint="http://127.0.0.1:9")
    for bad in (0, 257, 2.0, True):
        with pytest.raises((TypeError, ValueError), match="max_concurrent_requests"):
            VWOSpanProcessor(exporter, HELD, max_concurrent_requests=bad)


# == the callback thread survives anything a callback does =====================================

def test_a_callback_that_calls_sys_exit_does_not_stop_later_callbacks(pipeline, receiver):
    calls: list = []

    def exits_once(err, evs):
        calls.append(len(evs))
        if len(calls) == 1:
            sys.exit("a callback that exits")

    events, proc, _ = pipeline(batch_events={"events_per_request": 100, "request_time_interval": 60,
                                             "flush_callback": exits_once})
    events.activate(1, 1, "exit-1")
    assert proc.flush_events() is True
    events.activate(1, 1, "exit-2")
    assert proc.force_flush(3000) is True  # the callback thread is back: the flush completes
    assert calls == [1, 1]


def test_after_shutdown_refused_events_are_reported_off_the_emitting_thread(pipeline, receiver):
    threads: list = []
    done = threading.Event()

    def slow(err, evs):
        threads.append(threading.current_thread())
        time.sleep(0.2)
        done.set()

    events, proc, _ = pipeline(batch_events={"events_per_request": 100, "request_time_interval": 60,
                                             "flush_callback": slow})
    proc.shutdown()
    start = time.monotonic()
    for i in range(5):
        events.activate(1, 1, f"late-{i}")
    assert time.monotonic() - start < 0.15  # five slow callbacks inline would take a second
    assert done.wait(5)
    assert threading.main_thread() not in threads
    assert proc.stats()["dropped"]["already_shutdown"] == 5
