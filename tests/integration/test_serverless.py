"""Serverless (issue #23 item 2): with ``background=False`` and ``deliver_before_return`` an
invocation's events are delivered before its handler returns, within a deadline, and nothing
is left to a frozen process: no vwo_otel thread, no queued event. The app is frozen for real
(SIGSTOP right after the handler returns) while the receiver's count is checked, then thawed
(SIGCONT) for the next invocation; every event arrives exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter

import pytest
from conftest import ACCOUNT_ID, SDK_KEY

from vwo_otel import EventsDropped, VWOSpanProcessor, visitor_uuid
from vwo_otel.serverless import deliver_before_return

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

APP = textwrap.dedent("""
    import json, os, signal, sys, threading
    from opentelemetry.sdk.trace import TracerProvider
    import vwo_otel
    from vwo_otel.serverless import deliver_before_return
    url, key = sys.argv[1], sys.argv[2]
    exporter = vwo_otel.VWOExporter(12345, key, endpoint=url, timeout=2,
                                    retry=vwo_otel.RetryPolicy(budget=2, initial_backoff=0.01, max_backoff=0.05))
    processor = vwo_otel.VWOSpanProcessor(exporter, {"events_per_request": 20, "request_time_interval": 600},
                                          background=False)
    provider = TracerProvider(sampler=vwo_otel.VWOSampler(), shutdown_on_exit=False)
    provider.add_span_processor(processor)
    vwo = vwo_otel.VWOEvents(tracer_provider=provider)

    @deliver_before_return(processor, deadline=3.0)
    def handler(event, context):
        for i in range(event["n"]):
            vwo.activate(1, 1, f"{event['name']}-{i}")
        return {"threads": sorted(t.name for t in threading.enumerate() if t.name.startswith("vwo_otel"))}

    for line in sys.stdin:  # one invocation per line, as a runtime loop would call the handler
        event = json.loads(line)
        result = handler(event, None)
        result["queued"] = processor.stats()["queued"]
        result["after"] = sorted(t.name for t in threading.enumerate() if t.name.startswith("vwo_otel"))
        print(json.dumps(result), flush=True)
        os.kill(os.getpid(), signal.SIGSTOP)  # the platform freezes the process right after the return
""")


def state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def uids(name: str, n: int) -> Counter:
    return Counter(visitor_uuid(ACCOUNT_ID, f"{name}-{i}") for i in range(n))


def test_each_invocation_delivers_before_it_returns_and_leaves_nothing_to_a_frozen_process(receiver):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    app = subprocess.Popen([sys.executable, "-c", APP, receiver.url, SDK_KEY], env=env, stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True)
    try:
        expected: Counter = Counter()
        for k, (name, n) in enumerate([("first", 45), ("second", 1), ("third", 20)]):
            if k == 2:
                receiver.drop_next(1)  # the next request's connection breaks: retried within the deadline
            if k:
                app.send_signal(signal.SIGCONT)  # thawed for the next invocation
            app.stdin.write(json.dumps({"name": name, "n": n}) + "\n")
            app.stdin.flush()
            result = json.loads(app.stdout.readline())
            deadline = time.monotonic() + 5
            while state(app.pid) != "T" and time.monotonic() < deadline:
                time.sleep(0.01)
            assert state(app.pid) == "T"  # frozen: nothing of it can run now
            assert result["threads"] == [] and result["after"] == [], result  # not even during the handler
            assert result["queued"] == 0
            expected += uids(name, n)
            # everything it emitted had arrived before it returned: the frozen process sends nothing more
            assert Counter(e["u"] for e in receiver.events()) == expected
        app.send_signal(signal.SIGCONT)
        app.stdin.close()
        assert app.wait(timeout=10) == 0
        assert Counter(e["u"] for e in receiver.events()) == expected  # exactly once, nothing at exit
        assert len(receiver.requests()) == 3 + 1 + 1 + 1  # 45 -> 20 + 20 + 5; 1; 20 after one dropped
    finally:
        if app.poll() is None:
            app.send_signal(signal.SIGCONT)
            app.kill()


def test_what_misses_the_deadline_is_reported_not_left_queued(receiver, make_exporter, callbacks):
    from opentelemetry.sdk.trace import TracerProvider

    from vwo_otel import VWOEvents, VWOSampler

    processor = VWOSpanProcessor(make_exporter(timeout=5), {"events_per_request": 5, "request_time_interval": 600,
                                                            "flush_callback": callbacks}, background=False)
    provider = TracerProvider(sampler=VWOSampler(), shutdown_on_exit=False)
    provider.add_span_processor(processor)
    vwo = VWOEvents(tracer_provider=provider)
    wrapped = deliver_before_return(processor, deadline=0.5)

    @wrapped
    def handler() -> None:
        for i in range(12):
            vwo.activate(1, 1, f"late-{i}")

    receiver.stall(3.0)  # VWO answers after the invocation's deadline
    start = time.monotonic()
    handler()
    assert time.monotonic() - start < 0.5 + 0.5  # the deadline holds: the request is cut at it
    assert wrapped.ok is False and processor.stats()["queued"] == 0
    reported = Counter()
    for err, evs in callbacks.calls:
        reported[getattr(err, "reason", type(err).__name__)] += len(evs)
    # the first batch's request was cut at the deadline (VWO may or may not store it); the other
    # two were not sent in time: every event is reported, none stays queued
    assert reported == {"network": 5, "invocation_deadline": 7}, reported
    assert any(isinstance(err, EventsDropped) for err, _ in callbacks.calls)
    receiver.clear_faults()
    provider.shutdown()


def test_a_spool_needs_background_threads(make_exporter, tmp_path):
    with pytest.raises(ValueError, match="background"):
        VWOSpanProcessor(make_exporter(), {"events_per_request": 5, "request_time_interval": 60},
                         spool=str(tmp_path), background=False)


def test_a_servers_long_wait_sends_nothing_and_leaves_nothing_queued(receiver, make_exporter, callbacks):
    from opentelemetry.sdk.trace import TracerProvider

    from vwo_otel import VWOEvents, VWOSampler

    processor = VWOSpanProcessor(make_exporter(), {"events_per_request": 5, "request_time_interval": 600,
                                                   "flush_callback": callbacks}, background=False)
    provider = TracerProvider(sampler=VWOSampler(), shutdown_on_exit=False)
    provider.add_span_processor(processor)
    vwo = VWOEvents(tracer_provider=provider)
    receiver.fail_next(10, status=429, retry_after=3600)
    for invocation in range(2):
        with deliver_before_return(processor, deadline=1.0) as done:
            for i in range(10):
                vwo.activate(1, 1, f"held-{invocation}-{i}")
        assert done.ok is False and processor.stats()["queued"] == 0
    assert len(receiver.requests()) == 1  # the 429; then nothing until the wait is over
    reported = Counter()
    for err, evs in callbacks.calls:
        reported[getattr(err, "reason", None)] += len(evs)
    assert reported == {"invocation_deadline": 20}, reported
    provider.shutdown()
