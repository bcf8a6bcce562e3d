"""Delivery threads that end when quiet (``delivery.THREAD_IDLE``), over real HTTP to the loopback
receiver: whatever waits for a timer (a parked batch's retry, the age trigger) is still sent by
a thread that stays after the others ended."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
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


EXIT_AFTER_QUIET = r"""
import sys, time
from opentelemetry.sdk.trace import TracerProvider
from vwo_otel import RetryPolicy, VWOEvents, VWOExporter, VWOSampler, VWOSpanProcessor
from vwo_otel._engine.delivery import THREAD_IDLE

exporter = VWOExporter(12345, "test-sdk-key-0123456789", endpoint=sys.argv[1],
                       retry=RetryPolicy(budget=5, initial_backoff=0.01, max_backoff=0.05))
proc = VWOSpanProcessor(exporter, {"events_per_request": 5, "request_time_interval": 60}, shutdown_timeout=10)
provider = TracerProvider(sampler=VWOSampler(), shutdown_on_exit=False)
provider.add_span_processor(proc)
events = VWOEvents(tracer_provider=provider)
for i in range(400):  # a burst: the limit, and the delivery threads, grow past 64
    events.activate(231, 1, f"first-{i}")
assert proc.force_flush(20_000)
deadline = time.monotonic() + THREAD_IDLE + 5
while proc.batcher.snapshot().threads > 2 and time.monotonic() < deadline:  # quiet: the threads end
    time.sleep(0.05)
for i in range(2000):  # the last burst, then the program ends: delivered at exit
    events.activate(231, 1, f"last-{i}")
"""


@pytest.mark.xfail(sys.version_info >= (3, 12), strict=False,
                   reason="Python 3.12+ refuses new threads at exit: the 2 threads a quiet spell left deliver "
                          "the last burst alone (1ba1cf6 on 3.12: 880 of 2400 delivered in shutdown_timeout 10 s, "
                          "the rest reported); not strict: on 3.13 a fresh clone's run delivered all 2400 once")
def test_exit_after_the_threads_ended_still_delivers_a_burst_in_time(receiver):
    """A program that went quiet (its burst's threads ended) then emits a burst and ends: the
    delivery at exit needs more threads than the quiet engine kept, and 3.12+ starts none then."""
    receiver.stall(0.2)  # a server 200 ms away
    proc = subprocess.run([sys.executable, "-c", EXIT_AFTER_QUIET, receiver.url], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert receiver.event_count() == 2400, (receiver.event_count(), proc.stderr[-1500:])
