"""A server's wait longer than the retry budget (``Retry-After: 3600``, an HTTP-date in 2099):
the engine holds every new request for it (capped by ``RetryPolicy.max_retry_after``), keeps
what waits (memory queue, or the spool's parking) instead of failing it in a burst, probes
with one batch when the wait is over, and flush / shutdown stay bounded (issue #21 item 3)."""

from __future__ import annotations

import email.utils
import time
from collections import Counter

import pytest
from conftest import FAST_RETRY
from helpers import wait_until

from vwo_otel import EventsDropped, RetryPolicy, visitor_uuid

BATCH = {"events_per_request": 10, "request_time_interval": 60}
DATE_2099 = email.utils.format_datetime(email.utils.parsedate_to_datetime("Thu, 01 Jan 2099 00:00:00 GMT"),
                                        usegmt=True)




@pytest.mark.parametrize("retry_after", [3600, DATE_2099], ids=["3600s", "http-date-2099"])
def test_a_wait_past_the_budget_holds_every_request_and_fails_nothing(pipeline, receiver, callbacks, retry_after):
    events, proc, _ = pipeline(BATCH)  # FAST_RETRY: a 5 s budget
    receiver.fail_next(10_000, status=429, retry_after=retry_after)
    for i in range(400):  # 40 batches
        events.activate(1, 1, f"held-{i}")
    assert wait_until(lambda: receiver.requests())  # the first answer came: 429, wait an hour
    start = time.monotonic()
    assert proc.flush_events() is False  # nothing can go before the wait is over: False at once
    assert time.monotonic() - start < 1.0
    time.sleep(0.3)
    # VWO got only the requests already on their way when its first 429 came back, not 40
    assert len(receiver.requests()) <= 2, [r["status"] for r in receiver.requests()]
    assert callbacks.failed == []  # none failed in a burst
    assert proc.stats()["events"] == {"delivered": 0, "failed": 0}
    start = time.monotonic()
    proc.shutdown()  # shutdown_timeout 10 s, but nothing may be sent before the wait is over
    assert time.monotonic() - start < 2.0
    assert len(receiver.requests()) <= 2
    dropped = [(err, evs) for err, evs in callbacks.calls if isinstance(err, EventsDropped)]
    assert sum(len(evs) for _, evs in dropped) == 400  # reported at shutdown, as today
    assert {err.reason for err, _ in dropped} == {"shutdown_timeout"}


def test_after_the_wait_one_probe_batch_then_everything(pipeline, receiver, make_exporter, callbacks):
    policy = RetryPolicy(budget=0.5, initial_backoff=0.01, max_backoff=0.05, max_retry_after=1.0)
    events, proc, _ = pipeline(BATCH, exporter=make_exporter(retry=policy))
    receiver.fail_next(1, status=429, retry_after=3600)  # capped at 1 s
    for i in range(200):
        events.activate(1, 1, f"later-{i}")
    assert wait_until(lambda: receiver.event_count() == 200, timeout=10)
    reqs = receiver.requests()
    refused = reqs[0]["received_at"]
    assert reqs[0]["status"] == 429
    after = [r for r in reqs if r["received_at"] > refused + 0.5]
    assert min(r["received_at"] for r in after) - refused >= 0.95  # held for the (capped) wait
    # the first request after the wait is one probe batch: the next starts after its answer
    probe, *rest = sorted(after, key=lambda r: r["received_at"])
    assert probe["status"] == 200 and all(r["received_at"] >= probe["received_at"] for r in rest)
    assert callbacks.failed == []
    got = Counter(e["u"] for e in receiver.events())
    assert got == Counter(visitor_uuid(12345, f"later-{i}") for i in range(200))


def test_with_a_spool_what_waits_is_parked_not_failed(pipeline, receiver, make_exporter, callbacks, tmp_path):
    policy = RetryPolicy(budget=0.5, initial_backoff=0.01, max_backoff=0.05, max_retry_after=1.0)
    # the age trigger at 1 s: a parked batch read back while the app still emits shifts the
    # batches' boundaries, and the last few events wait for it (as VWO's batching says)
    events, proc, _ = pipeline({**BATCH, "request_time_interval": 1}, exporter=make_exporter(retry=policy),
                               spool=str(tmp_path / "spool"))
    receiver.fail_next(1, status=503, retry_after=3600)
    for i in range(100):
        events.activate(1, 1, f"parked-{i}")
    assert wait_until(lambda: receiver.event_count() == 100, timeout=10)
    assert callbacks.failed == []
    reqs = receiver.requests()
    refused = reqs[0]["received_at"]  # requests already on their way may land just after it
    assert min(r["received_at"] for r in reqs if r["received_at"] > refused + 0.1) - refused >= 0.95


def test_the_cap_is_a_policy_field_next_to_the_budget():
    assert RetryPolicy().max_retry_after == 3600.0
    with pytest.raises(ValueError):
        RetryPolicy(max_retry_after=-1)
    assert FAST_RETRY.max_retry_after == 3600.0


def test_a_flush_near_the_end_of_the_wait_waits_for_what_it_held(pipeline, receiver, make_exporter, callbacks):
    """An attack review's find: the batches a long wait held were released (as not delivered)
    to the flushes then waiting, and counted as settled for any flush after: one made once less
    than the retry budget of the wait was left returned True at once, nothing delivered. True
    means delivered; those batches still go when the wait is over."""
    policy = RetryPolicy(budget=1.0, initial_backoff=0.01, max_backoff=0.05)
    events, proc, _ = pipeline(BATCH, exporter=make_exporter(retry=policy))
    receiver.fail_next(1, status=503, retry_after=3)
    for i in range(10):
        events.activate(1, 1, f"held-{i}")
    assert wait_until(lambda: receiver.requests())  # 503, wait 3 s: longer than the budget
    time.sleep(2.3)  # 0.7 s of the wait left: less than the budget, a flush waits it out
    # True only once delivered: it returned False at once while they were still on their way,
    # and also when called just after the receiver stored them, before their answer was settled
    assert proc.flush_events() is True and receiver.event_count() == 10
    assert proc.flush_events() is True
