"""Which failures a later try may fix (``VWODeliveryError.retryable``), over real HTTP: what
the spool parks when ``RetryPolicy.max_retries`` or the budget stops the retries, and what no
resend fixes (reported at once, never parked) (issue #21 items 3 and 6)."""

from __future__ import annotations

import time
from collections import Counter

from conftest import ACCOUNT_ID
from helpers import wait_until

from vwo_otel import HTTPStatusError, RetryPolicy, VWODeliveryError, visitor_uuid


def users(prefix: str, n: int) -> Counter:
    return Counter(visitor_uuid(ACCOUNT_ID, f"{prefix}-{i}") for i in range(n))


def send(exporter, n: int, prefix: str, ua: str = ""):
    from vwo_otel import VWOEvent, attributes

    return exporter.send_batch([VWOEvent(attributes.VISITOR, f"{prefix}-{i}", int(time.time()), 1, 1, visitor_ua=ua)
                                for i in range(n)])


def test_what_each_failure_says_about_a_resend(receiver, make_exporter):
    exporter = make_exporter(retry=RetryPolicy(budget=5, initial_backoff=0.01, max_retries=0))
    receiver.fail_next(1, status=503)
    (out,) = send(exporter, 2, "a")
    assert isinstance(out.error, HTTPStatusError) and out.error.retryable  # max_retries stopped it, not the answer
    assert "max_retries" in str(out.error) and out.error.retry_after is None
    receiver.fail_next(1, status=429, retry_after=30)
    (out,) = send(exporter, 2, "b")
    assert out.error.retryable and out.error.retry_after == 30  # the server's wait holds the engine
    for status in (400, 401, 403, 404):
        receiver.fail_next(1, status=status)
        (out,) = send(exporter, 1, f"c{status}")
        assert out.error.status == status and not out.error.retryable
    receiver.set_max_body(300)
    outs = send(exporter, 1, "d", ua="x" * 400)  # one event over the server's limit: no resend fixes it
    assert outs[-1].error.status == 413 and not outs[-1].error.retryable


def test_pieces_the_budget_left_unsent_park_in_the_spool(pipeline, receiver, make_exporter, callbacks, tmp_path):
    """A batch cut into several requests (payload cap); the first answer comes after the budget:
    the rest are "not sent". With a spool they park and are delivered, never reported failed."""
    policy = RetryPolicy(budget=0.3, initial_backoff=0.01, max_backoff=0.05, max_retries=0)
    exporter = make_exporter(retry=policy, max_payload_bytes=1024)
    events, proc, _ = pipeline({"events_per_request": 40, "request_time_interval": 60}, exporter=exporter,
                               spool=str(tmp_path / "spool"))
    receiver.stall(0.5, n=1)  # the first request answers after the whole budget
    receiver.fail_next(1, status=503)
    for i in range(40):
        events.activate(1, 1, f"cut-{i}", visitor_ua="u" * 60)
    assert wait_until(lambda: receiver.event_count() == 40, timeout=15), receiver.event_count()
    assert callbacks.failed == []
    assert Counter(e["u"] for e in receiver.events()) == users("cut", 40)
    assert proc.flush_events() is True


def test_max_retries_stops_the_retries_the_spool_still_parks(pipeline, receiver, make_exporter, callbacks,
                                                            tmp_path):
    policy = RetryPolicy(budget=5, initial_backoff=0.01, max_backoff=0.05, max_retries=0)
    events, proc, _ = pipeline({"events_per_request": 5, "request_time_interval": 60},
                               exporter=make_exporter(retry=policy), spool=str(tmp_path / "spool"))
    receiver.fail_next(1, status=502)
    for i in range(5):
        events.activate(1, 1, f"park-{i}")
    assert wait_until(lambda: receiver.event_count() == 5, timeout=10)
    assert callbacks.failed == [] and len(receiver.requests()) == 2


def test_failures_no_resend_fixes_are_reported_not_parked(pipeline, receiver, make_exporter, callbacks, tmp_path):
    events, proc, _ = pipeline({"events_per_request": 5, "request_time_interval": 60},
                               spool=str(tmp_path / "spool"))
    receiver.fail_next(1, status=403)
    for i in range(5):
        events.activate(1, 1, f"final-{i}")
    assert proc.flush_events() is False
    ((err, evs),) = callbacks.failed
    assert isinstance(err, VWODeliveryError) and err.status == 403 and len(evs) == 5
    assert proc.batcher.backlog.on_disk() == 0 and len(receiver.requests()) == 1


def test_a_batch_of_both_wire_formats_parks_exactly_what_failed(pipeline, receiver, make_exporter, callbacks,
                                                                 tmp_path):
    """One request per wire format: the failed one's events park, the accepted one's leave the
    disk (the backlog once paired a batch's events with the outcomes in the wrong order: the
    accepted FME event was sent twice and a legacy one lost)."""
    policy = RetryPolicy(budget=5, initial_backoff=0.01, max_backoff=0.05, max_retries=0)
    events, proc, _ = pipeline({"events_per_request": 3, "request_time_interval": 60},
                               exporter=make_exporter(retry=policy), spool=str(tmp_path / "spool"))
    receiver.fail_next(1, status=502)  # the first request: the legacy events'
    events.activate(1, 1, "legacy-0")
    events.track_event("purchase", "fme-0")
    events.activate(1, 1, "legacy-1")
    assert wait_until(lambda: receiver.event_count() == 3, timeout=10)
    time.sleep(0.3)
    reqs = receiver.requests()
    assert [r["status"] for r in reqs].count(502) == 1 and receiver.event_count() == 3
    assert sorted(r["n_events"] for r in reqs if r["status"] == 200) == [1, 2]  # FME once, both legacy ones
    assert callbacks.failed == []
