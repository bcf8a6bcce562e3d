"""Batching defaults as they show over real HTTP to the loopback receiver."""

from __future__ import annotations

import time

from conftest import ACCOUNT_ID, SDK_KEY

from vwo_otel import VWOExporter

CLOSED = "http://127.0.0.1:9"  # never contacted by these construction-only tests


def test_default_interval_applies_over_http(pipeline, receiver, callbacks):
    """Only events_per_request: one event is held with a 600 s timer; the count still triggers."""
    events, proc, _ = pipeline(batch_events={"events_per_request": 2})
    before = time.monotonic()
    events.activate(1, 1, "solo")
    deadline = proc.batcher.snapshot().deadline
    assert before + 600 <= deadline <= time.monotonic() + 600
    assert receiver.requests() == []
    events.activate(1, 1, "pair")
    assert receiver.wait_for_events(2, timeout=5)
    assert [r["n_events"] for r in receiver.requests()] == [2]
    assert callbacks.wait_for(lambda calls: len(calls) == 1, timeout=5)


def test_default_count_applies_over_http(pipeline, receiver):
    """Only request_time_interval: the 100th queued event cuts a request of exactly 100."""
    events, proc, _ = pipeline(batch_events={"request_time_interval": 1})
    for i in range(150):
        events.activate(1, 1, f"user-{i}")
    assert len(proc.batcher.snapshot().pending) == 50  # the first 100 were cut on the emitting thread
    assert receiver.wait_for_events(150, timeout=5)
    assert [r["n_events"] for r in receiver.requests()] == [100, 50]


def test_exporter_endpoint_trailing_slash_stripped():
    assert VWOExporter(ACCOUNT_ID, SDK_KEY, endpoint="http://127.0.0.1:9/").endpoint == "http://127.0.0.1:9"
