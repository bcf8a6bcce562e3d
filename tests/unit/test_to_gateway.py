"""``VWOEvents(..., to_gateway=True)`` with spans: a sampler that keeps VWO spans from the
provider's exporters loses them on the way to the gateway, and says so (no network)."""

from __future__ import annotations

import logging

import pytest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
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


def _logs(resource: dict | None = None):
    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider(resource=Resource.create(resource or {}), shutdown_on_exit=False)
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    return provider, exporter


def _accounts(exporter) -> list:
    return [r.log_record.attributes.get("vwo.account_id") for r in exporter.get_finished_logs()]


def test_each_record_to_a_gateway_carries_the_resources_account():
    """A collector that splits a batch can send records without their resource's attributes:
    the account the resource names travels on each record too (as a string of digits, which
    collectors route by)."""
    provider, exporter = _logs({"vwo.account_id": "123456"})
    vwo = vwo_otel.VWOEvents(logger_provider=provider, to_gateway=True)
    vwo.activate(231, 2, "u1")
    vwo.track_event("purchase", "u2")
    assert _accounts(exporter) == ["123456", "123456"]
    provider = TracerProvider(resource=Resource.create({"vwo.account_id": 42}), shutdown_on_exit=False)
    spans = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    vwo_otel.VWOEvents(tracer_provider=provider, to_gateway=True).track(231, 2, 7, "u1")
    assert [s.attributes["vwo.account_id"] for s in spans.get_finished_spans()] == ["42"]


def test_account_id_argument_wins_over_the_resource_and_is_checked():
    provider, exporter = _logs({"vwo.account_id": "123456"})
    vwo_otel.VWOEvents(logger_provider=provider, to_gateway=True, account_id=654321).activate(231, 2, "u1")
    assert _accounts(exporter) == ["654321"]
    with pytest.raises(ValueError, match="account_id"):
        vwo_otel.VWOEvents(logger_provider=provider, to_gateway=True, account_id="12ab")
    with pytest.raises(ValueError, match="to_gateway=True"):  # a VWO processor delivers to its own account
        vwo_otel.VWOEvents(logger_provider=provider, account_id=654321)


def test_without_an_account_records_carry_none_and_a_bad_resource_account_is_named():
    provider, exporter = _logs()
    vwo_otel.VWOEvents(logger_provider=provider, to_gateway=True).activate(231, 2, "u1")
    assert _accounts(exporter) == [None]  # a gateway with one account and default_account takes it
    provider, exporter = _logs({"vwo.account_id": "not-an-id"})
    with pytest.raises(ValueError, match="resource attribute vwo.account_id"):
        vwo_otel.VWOEvents(logger_provider=provider, to_gateway=True).activate(231, 2, "u1")
