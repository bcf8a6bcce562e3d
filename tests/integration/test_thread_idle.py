"""Delivery threads that end when quiet (``delivery.THREAD_IDLE``), over real HTTP to the loopback
receiver: whatever waits for a timer (a parked batch's retry, the age trigger) is still sent by
a thread that stays after the others ended."""

from __future__ import annotations

import time

from helpers import wait_until

from vwo_otel import RetryPolicy


def test_a_parked_batch_is_retried_after_the_thread_that_parked_it_ended(pipeline, receiver, make_exporter,
                                                                        tmp_path):
    """Two threads; one sends the batch, VWO answers 503 past the retry budget, the batch parks
    on disk until a backoff longer than ``THREAD_IDLE``. The sender (extra once the 503 halved
    the limit to 1) ended when idle, and it alone had the parked retry's time: the thread that
    stayed slept with no timer, so the parked events were never sent again (VWO back long since)."""
    from vwo_otel._engine.delivery import THREAD_IDLE

    # no retry within the budget; parked, the first probe comes after 8 s (+-20 %): past THREAD_IDLE
    policy = RetryPolicy(budget=0.3, initial_backoff=4.0, max_backoff=8.0)
    events, proc, _ = pipeline({"events_per_request": 10, "request_time_interval": 60},
                               exporter=make_exporter(retry=policy), spool=str(tmp_path / "spool"))
    receiver.fail_next(1, status=503)
    start = time.monotonic()
    events.activate(1, 1, "parked")
    assert proc.flush_events() is False  # parked on disk
    assert proc.batcher.backlog.on_disk() == 1 and proc.batcher.snapshot().threads == 2
    assert 8.0 * 0.8 > THREAD_IDLE  # the probe is due after the idle thread may end
    assert wait_until(lambda: receiver.event_count() == 1, 8.0 * 1.2 + THREAD_IDLE), (
        f"parked event not retried {time.monotonic() - start:.1f} s later")
    assert wait_until(lambda: proc.batcher.backlog.on_disk() == 0, 5)


def test_a_batch_parked_by_a_long_retry_after_is_sent_when_the_wait_is_over(pipeline, receiver, make_exporter,
                                                                            tmp_path):
    """The same with a server's wait: a 503 asking for 7 s (past the retry budget) holds the
    engine at one batch in flight and parks the batch until then; the thread that parked it ends
    after ``THREAD_IDLE``, and the one that stays must still send it when the wait is over."""
    from vwo_otel._engine.delivery import THREAD_IDLE

    policy = RetryPolicy(budget=0.3, initial_backoff=0.05, max_backoff=0.1)
    events, proc, _ = pipeline({"events_per_request": 10, "request_time_interval": 60},
                               exporter=make_exporter(retry=policy), spool=str(tmp_path / "spool"))
    receiver.fail_next(1, status=503, retry_after=7)
    start = time.monotonic()
    events.activate(1, 1, "held")
    assert proc.flush_events() is False
    assert proc.batcher.backlog.on_disk() == 1
    assert 7 > THREAD_IDLE
    assert wait_until(lambda: receiver.event_count() == 1, 7 + THREAD_IDLE), (
        f"held event not sent {time.monotonic() - start:.1f} s later")
