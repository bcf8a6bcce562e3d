"""Events parked in the spool past the retry budget are delivered once VWO answers again, over
real HTTP (a probe of fewer parked events than ``events_per_request`` once raised
``IndexError``: they stayed on disk and this process never sent them again)."""

from __future__ import annotations

from collections import Counter

from conftest import ACCOUNT_ID
from helpers import wait_until

from vwo_otel import RetryPolicy, visitor_uuid


def test_fewer_parked_events_than_a_batch_are_delivered_once_vwo_is_back(pipeline, receiver, make_exporter,
                                                                         callbacks, tmp_path):
    policy = RetryPolicy(budget=0.3, initial_backoff=0.02, max_backoff=0.1)
    events, proc, _ = pipeline({"events_per_request": 10, "request_time_interval": 60},
                               exporter=make_exporter(retry=policy), spool=str(tmp_path / "spool"))
    receiver.fail_next(1_000_000, status=503)  # VWO down longer than the retry budget
    for i in range(3):
        events.activate(1, 1, f"parked-{i}")
    assert proc.flush_events() is False  # not delivered: parked on disk, not reported
    assert proc.batcher.backlog.on_disk() == 3 and callbacks.calls == []
    probes = len(receiver.requests())
    assert wait_until(lambda: len(receiver.requests()) > probes, 5), "a probe of the parked events after the backoff"
    receiver.clear_faults()  # VWO is back
    assert wait_until(lambda: receiver.event_count() >= 3, 10), receiver.event_count()
    assert proc.flush_events() is True
    assert Counter(e["u"] for e in receiver.events()) == Counter(visitor_uuid(ACCOUNT_ID, f"parked-{i}")
                                                                 for i in range(3))
    assert callbacks.failed == [] and len(callbacks.ok_events) == 3
    assert proc.batcher.backlog.on_disk() == 0


def test_every_flush_says_false_while_events_emitted_before_it_are_parked(pipeline, receiver, make_exporter,
                                                                           callbacks, tmp_path):
    """Not only the flush during which the batch was parked: each later one returns False (at
    once, not waiting out the outage) while those events wait on disk, and ``stats()`` counts
    them; True again once they are delivered."""
    policy = RetryPolicy(budget=0.3, initial_backoff=0.02, max_backoff=0.1)
    events, proc, _ = pipeline({"events_per_request": 4, "request_time_interval": 60},
                               exporter=make_exporter(retry=policy), spool=str(tmp_path / "spool"))
    receiver.fail_next(1_000_000, status=503)
    for i in range(4):
        events.activate(1, 1, f"held-{i}")
    assert proc.flush_events() is False  # the flush the parking happened in
    assert proc.force_flush(2000) is False and proc.flush_events() is False  # later ones too
    assert proc.stats()["on_disk"] == 4 and proc.stats()["queued"] == 0 and callbacks.calls == []
    receiver.clear_faults()
    assert wait_until(lambda: receiver.event_count() >= 4, 10), receiver.event_count()
    assert wait_until(lambda: proc.stats()["on_disk"] == 0, 5)
    assert proc.flush_events() is True
    assert len(callbacks.ok_events) == 4 and callbacks.failed == []
