"""``VWOEvents(..., to_gateway=True)`` with spans: a sampler that keeps VWO spans from the
provider's exporters loses them on the way to the gateway, and says so (no network)."""

from __future__ import annotations

import logging

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased

import vwo_otel


def _provider(sampler) -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler, shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))  # stands for the OTLP exporter to the gateway
    return provider, exporter


def test_spans_to_a_gateway_reach_the_exporter_when_sampled(caplog):
    provider, exporter = _provider(ParentBased(ALWAYS_ON))
    vwo_otel.VWOEvents(tracer_provider=provider, to_gateway=True).track(231, 2, 7, "u1")
    assert [s.attributes["vwo.user_id"] for s in exporter.get_finished_spans()] == ["u1"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_vwo_sampler_with_to_gateway_is_refused_with_the_fix(caplog):
    provider, exporter = _provider(vwo_otel.VWOSampler())
    vwo = vwo_otel.VWOEvents(tracer_provider=provider, to_gateway=True)
    vwo.track(231, 2, 7, "u1")
    vwo.track(231, 2, 7, "u2")
    assert exporter.get_finished_spans() == ()
    (warning,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "VWOSampler" in warning.getMessage() and "log records" in warning.getMessage()


def test_an_unsampled_span_to_a_gateway_is_named_once(caplog):
    provider, exporter = _provider(ALWAYS_OFF)
    vwo = vwo_otel.VWOEvents(tracer_provider=provider, to_gateway=True)
    for user in ("u1", "u2"):
        vwo.track(231, 2, 7, user)
    assert exporter.get_finished_spans() == ()
    (warning,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "not sampled" in warning.getMessage() and "to_gateway=True" in warning.getMessage()
