"""The demo: a small app emits VWO events through OpenTelemetry with batching, against the
embedded loopback receiver (or ``--endpoint``), and shows what went over the wire. It emits both
kinds: the legacy SDK's (activate / track / push) and FME's (variation_shown / track_event /
set_attribute), through one processor, each in its own wire format."""

from __future__ import annotations

import random
import threading
import time
from typing import Any, TextIO

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from .api import VWOEvents, VWOSampler
from .export.exporter import VWOExporter
from .export.fme import masked
from .processor import VWOSpanProcessor
from .testing.receiver import Receiver

DEMO_ACCOUNT_ID = 123456
DEMO_SDK_KEY = "demo-sdk-key"


def run_demo(out: TextIO, *, endpoint: str | None = None, account_id: int = DEMO_ACCOUNT_ID,
             sdk_key: str = DEMO_SDK_KEY, users: int = 300, events_per_request: int = 100,
             request_time_interval: float = 1.0, seed: int = 7) -> int:
    """Run the demo app and print a report to ``out``; returns a process exit code."""
    receiver = None
    if endpoint is None:
        receiver = Receiver(account_id=account_id, sdk_key=sdk_key).start()
        endpoint = receiver.url
        out.write(f"embedded VWO-compatible receiver listening on {endpoint}\n")
    results: list[tuple[BaseException | None, int]] = []  # (error or None, events) per settled request
    settled = threading.Condition()

    def flush_callback(err: BaseException | None, events: list[Any]) -> None:
        with settled:
            results.append((err, len(events)))
            settled.notify_all()

    # The app's own tracing keeps working beside VWO: its spans go to its exporter only.
    app_spans = InMemorySpanExporter()
    provider = TracerProvider(sampler=VWOSampler())
    provider.add_span_processor(SimpleSpanProcessor(app_spans))
    exporter = VWOExporter(account_id, sdk_key, endpoint=endpoint)
    processor = VWOSpanProcessor(exporter, {
        "events_per_request": events_per_request,
        "request_time_interval": request_time_interval,
        "flush_callback": flush_callback,
    })
    provider.add_span_processor(processor)
    vwo = VWOEvents(tracer_provider=provider)
    tracer = provider.get_tracer("demo-app")

    rng = random.Random(seed)
    emitted = 0
    started = time.perf_counter()
    for i in range(users):
        user = f"user-{i}"
        with tracer.start_as_current_span("GET /checkout"):
            variation = rng.choice((1, 2))
            vwo.activate(231, variation, user, visitor_ua="demo-browser/1.0", visitor_ip="127.0.0.1")
            emitted += 1
            if rng.random() < 0.3:
                vwo.track(231, variation, 2, user, revenue=round(rng.uniform(5, 120), 2))
                emitted += 1
            if i % 10 == 0:
                vwo.push(user, {"plan": rng.choice(("free", "pro")), "country": "DE"})
                emitted += 2
            # the same app's FME flag (VWO's current SDK's events, in its batch-events-v2 format)
            flag_variation = rng.choice((1, 2))
            vwo.variation_shown(1021, flag_variation, user, visitor_ua="demo-browser/1.0")
            emitted += 1
            if rng.random() < 0.2:
                vwo.track_event("purchase", user, {"amount": round(rng.uniform(5, 120), 2), "currency": "EUR"})
                emitted += 1
            if i % 25 == 0:
                vwo.set_attribute({"plan": rng.choice(("free", "pro"))}, user)
                emitted += 1
    emit_seconds = time.perf_counter() - started
    out.write(f"emitted {emitted} VWO events from {users} simulated requests in {emit_seconds * 1000:.1f} ms on "
              f"the app's thread ({emit_seconds * 1e6 / emitted:.1f} us per event, counting each request's own "
              "span and a cold start (the first calls); `benchmarks/run.py` measures the warm cost)\n")
    out.write(f"waiting for the request_time_interval ({request_time_interval:g} s) to send the last, partial batch\n")
    with settled:  # the timer sends the partial batch after the interval; a request takes up to the timeout
        settled.wait_for(lambda: sum(n for _, n in results) >= emitted, request_time_interval + exporter.timeout)
    ok = processor.flush_events()  # nothing should be left; proves flush_events is safe when idle
    provider.shutdown()

    delivered = sum(n for err, n in results if err is None)
    failed = sum(n for err, n in results if err is not None)
    out.write("\nflush_callback results:\n")
    for err, n in results:
        out.write(f"  {'ok ' if err is None else 'ERR'} {n:4d} events{'' if err is None else ': ' + str(err)}\n")
    out.write(f"delivered {delivered}/{emitted}, failed {failed}; app spans exported to the app's own "
              f"exporter: {len(app_spans.get_finished_spans())} (VWO event spans among them: "
              f"{sum(1 for s in app_spans.get_finished_spans() if s.name.startswith('vwo.'))})\n")
    if receiver is not None:
        s = receiver.summary()
        out.write("\nwhat went over the wire (as the receiver saw it):\n")
        for r in receiver.requests():
            out.write(f"  {r['method']} {r['path']} -> {r['status']}: "
                      f"{r['n_events']} events, {r['body_bytes']} bytes\n")
        out.write(f"requests {s['requests']}, events {s['events']}, events per request "
                  f"{s['events_per_request']:.1f}, bytes per event {s['bytes_per_event']:.1f}\n")
        for path in sorted({r["path"] for r in receiver.requests()}):
            mine = [r for r in receiver.requests() if r["path"] == path and r["accepted"]]
            n = sum(r["n_events"] for r in mine)
            if n:
                out.write(f"  {path}: {n} events in {len(mine)} requests, "
                          f"{sum(r['body_bytes'] for r in mine) / n:.1f} bytes per event\n")
        stored = receiver.events()
        sample = [e for e in stored if "eT" in e][:2] + [masked(e) for e in stored if "d" in e][:1]  # key: ***
        out.write("first events as stored: " + "; ".join(str(e) for e in sample) + "\n")
        receiver.stop()
    return 0 if ok and delivered == emitted else 1
