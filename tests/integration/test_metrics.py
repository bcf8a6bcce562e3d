"""Delivery telemetry as OpenTelemetry metrics (``meter_provider=``), read with the SDK's
InMemoryMetricReader, over real loopback HTTP to the receiver."""

from __future__ import annotations

import gc
import socket
from typing import Any

import pytest
from conftest import ACCOUNT_ID, SDK_KEY
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from vwo_otel import RetryPolicy, VWOEvents, VWOExporter, VWOLogRecordProcessor, VWOSampler, VWOSpanProcessor
from vwo_otel import metrics as M

BATCH = {"events_per_request": 10, "request_time_interval": 60}


@pytest.fixture
def reader():
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    reader.provider = provider
    yield reader
    provider.shutdown()


def points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    """name -> data points of everything collected now."""
    out: dict[str, list[Any]] = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                out.setdefault(metric.name, []).extend(metric.data.data_points)
    return out


def value(pts: list[Any], **attrs: Any) -> int:
    """Sum of the points whose attributes include ``attrs`` (None = attribute absent)."""
    total = 0
    for p in pts:
        a = dict(p.attributes)
        if all((k not in a) if v is None else a.get(k) == v for k, v in attrs.items()):
            total += p.value
    return total


def hist(pts: list[Any], **attrs: Any) -> tuple[int, float]:
    """(count, sum) of the histogram points matching ``attrs``."""
    n, s = 0, 0.0
    for p in pts:
        a = dict(p.attributes)
        if all(a.get(k) == v for k, v in attrs.items()):
            n += p.count
            s += p.sum
    return n, s


def emit(events: VWOEvents, n: int) -> None:
    for i in range(n):
        events.activate(231, 1 + i % 2, f"user-{i}")


def test_no_meter_provider_means_no_metrics(pipeline):
    _, processor, _ = pipeline(BATCH)
    assert processor.metrics is None


def test_bad_meter_provider_is_refused(make_exporter):
    with pytest.raises(TypeError, match="meter_provider"):
        VWOSpanProcessor(make_exporter(), BATCH, meter_provider="global")


def test_batches_counted_with_semconv_names(pipeline, reader, receiver, callbacks):
    events, processor, _ = pipeline(BATCH, meter_provider=reader.provider, max_queue_size=321)
    emit(events, 25)
    assert processor.flush_events() is True
    got = points(reader)

    comp = processor.metrics.attributes
    assert comp["otel.component.type"] == "vwo_span_processor"
    assert comp["otel.component.name"].startswith("vwo_span_processor/")
    assert value(got["otel.sdk.processor.span.processed"], **{"error.type": None}) == 25
    assert value(got["otel.sdk.exporter.span.exported"], **{"error.type": None}) == 25
    assert value(got["otel.sdk.exporter.span.exported"], **{"error.type": "delivery_failed"}) == 0
    assert value(got["otel.sdk.processor.span.queue.size"]) == 0
    assert value(got["otel.sdk.processor.span.queue.capacity"]) == 321
    for p in got["otel.sdk.processor.span.processed"]:
        assert p.attributes["otel.component.name"] == comp["otel.component.name"]

    wire = [r for r in receiver.requests() if r["accepted"]]
    assert len(wire) == 3
    req = got["vwo.exporter.requests"]
    assert value(req, **{"vwo.request.outcome": "success", "http.response.status_code": 200,
                         "http.request.method": "POST", "error.type": None}) == 3
    assert hist(got["vwo.exporter.batch.events"]) == (3, 25)
    assert hist(got["vwo.exporter.batch.bytes"]) == (3, sum(r["body_bytes"] for r in wire))
    n, seconds = hist(got["vwo.exporter.duration"], **{"vwo.request.outcome": "success"})
    assert n == 3 and 0 < seconds < 10


def test_retries_failures_and_status_codes(pipeline, reader, receiver, callbacks):
    events, processor, _ = pipeline(BATCH, meter_provider=reader.provider)
    receiver.fail_next(2, status=503)
    emit(events, 10)  # a full batch: 503, 503, then 200
    assert callbacks.wait_for(lambda c: len(c) == 1)
    receiver.fail_next(1, status=403)  # not retryable: the batch fails
    emit(events, 10)
    assert callbacks.wait_for(lambda c: len(c) == 2)
    got = points(reader)
    req = got["vwo.exporter.requests"]
    assert value(req, **{"vwo.request.outcome": "http_error", "http.response.status_code": 503,
                         "error.type": "503"}) == 2
    assert value(req, **{"vwo.request.outcome": "http_error", "error.type": "403"}) == 1
    assert value(req, **{"vwo.request.outcome": "success"}) == 1
    assert hist(got["vwo.exporter.duration"])[0] == 4
    exported = got["otel.sdk.exporter.span.exported"]
    assert value(exported, **{"error.type": None}) == 10
    assert value(exported, **{"error.type": "delivery_failed"}) == 10
    assert value(got["otel.sdk.processor.span.processed"], **{"error.type": None}) == 20


def test_payload_too_large_is_its_own_outcome(pipeline, reader, receiver, callbacks):
    events, processor, _ = pipeline(BATCH, meter_provider=reader.provider)
    receiver.set_max_body(700)  # the batch of 10 is cut by 413s until pieces fit
    emit(events, 10)
    assert processor.flush_events() is True
    req = points(reader)["vwo.exporter.requests"]
    assert value(req, **{"vwo.request.outcome": "payload_too_large", "http.response.status_code": 413}) >= 1
    assert value(req, **{"vwo.request.outcome": "success"}) >= 2
    assert hist(points(reader)["vwo.exporter.batch.events"])[1] > 10  # the re-sent halves count again


def test_network_errors_and_dropped_by_reason(reader, callbacks):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exporter = VWOExporter(ACCOUNT_ID, SDK_KEY, endpoint=f"http://127.0.0.1:{port}", retry=RetryPolicy(budget=0.0),
                           timeout=2.0)
    processor = VWOSpanProcessor(exporter, {**BATCH, "flush_callback": callbacks}, max_queue_size=5,
                                 meter_provider=reader.provider)
    provider = TracerProvider(sampler=VWOSampler(), shutdown_on_exit=False)
    provider.add_span_processor(processor)
    events = VWOEvents(tracer_provider=provider)
    emit(events, 7)  # 5 fit, 2 are dropped: queue_full
    assert processor.flush_events() is False
    provider.shutdown()
    emit(events, 3)  # after shutdown: already_shutdown
    got = points(reader)
    processed = got["otel.sdk.processor.span.processed"]
    assert value(processed, **{"error.type": "queue_full"}) == 2
    assert value(processed, **{"error.type": "already_shutdown"}) == 3
    assert value(processed, **{"error.type": None}) == 5
    assert value(got["otel.sdk.exporter.span.exported"], **{"error.type": "delivery_failed"}) == 5
    req = got["vwo.exporter.requests"]
    assert value(req, **{"vwo.request.outcome": "network_error", "error.type": "ConnectionError"}) == 1
    assert all("http.response.status_code" not in p.attributes for p in req)


def test_queue_size_while_vwo_stalls(pipeline, reader, receiver, callbacks):
    receiver.stall(5.0, n=1)
    events, processor, _ = pipeline(BATCH, meter_provider=reader.provider)
    emit(events, 13)  # one batch in flight (stalled) + 3 pending
    assert value(points(reader)["otel.sdk.processor.span.queue.size"]) == 13
    receiver.clear_faults()
    assert processor.flush_events() is True
    assert value(points(reader)["otel.sdk.processor.span.queue.size"]) == 0


def test_realtime_get_requests(pipeline, reader, receiver):
    events, processor, _ = pipeline(None, meter_provider=reader.provider)
    emit(events, 2)
    events.push("user-9", {"plan": "pro"})
    assert processor.flush_events() is True
    got = points(reader)
    assert value(got["vwo.exporter.requests"], **{"http.request.method": "GET", "vwo.request.outcome": "success"}) == 3
    assert hist(got["vwo.exporter.batch.events"], **{"http.request.method": "GET"}) == (3, 3)
    n, nbytes = hist(got["vwo.exporter.batch.bytes"], **{"http.request.method": "GET"})
    assert n == 3 and nbytes > 3 * 50  # a real-time GET carries its event in the query


def test_log_record_processor_uses_log_names(make_exporter, reader, receiver):
    processor = VWOLogRecordProcessor(make_exporter(), BATCH, meter_provider=reader.provider)
    lp = LoggerProvider(shutdown_on_exit=False)
    lp.add_log_record_processor(processor)
    emit(VWOEvents(logger_provider=lp), 4)
    assert processor.flush_events() is True
    got = points(reader)
    assert processor.metrics.attributes["otel.component.type"] == "vwo_log_record_processor"
    assert value(got["otel.sdk.processor.log.processed"]) == 4
    assert value(got["otel.sdk.exporter.log.exported"], **{"error.type": None}) == 4
    assert "otel.sdk.processor.span.processed" not in got
    lp.shutdown()


def test_exporter_traffic_is_neither_traced_nor_counted_twice(pipeline, reader, receiver):
    """With requests instrumented (traces and metrics), VWO's own requests create no
    client span and no http.client metric: only the vwo.exporter.* instruments see them."""
    instrumentation = pytest.importorskip("opentelemetry.instrumentation.requests")
    spans = InMemorySpanExporter()
    app_provider = TracerProvider(shutdown_on_exit=False)
    app_provider.add_span_processor(SimpleSpanProcessor(spans))
    instrumentor = instrumentation.RequestsInstrumentor()
    instrumentor.instrument(tracer_provider=app_provider, meter_provider=reader.provider)
    try:
        events, processor, provider = pipeline(BATCH, meter_provider=reader.provider)
        emit(events, 20)
        assert processor.flush_events() is True
    finally:
        instrumentor.uninstrument()
    got = points(reader)
    assert spans.get_finished_spans() == ()
    assert not [name for name in got if name.startswith("http.client")], sorted(got)
    assert value(got["vwo.exporter.requests"]) == 2


def test_metrics_do_not_keep_a_dropped_processor_alive(make_exporter, reader):
    processor = VWOSpanProcessor(make_exporter(), BATCH, meter_provider=reader.provider)
    processor.shutdown()
    del processor
    gc.collect()
    got = points(reader)
    assert "otel.sdk.processor.span.queue.size" not in got or not got["otel.sdk.processor.span.queue.size"]


def test_request_outcome_names():
    assert [M.request_outcome(s) for s in (200, 204, 413, 401, 503, None)] == [
        "success", "success", "payload_too_large", "http_error", "http_error", "network_error"]
