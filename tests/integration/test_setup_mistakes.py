"""Set-up mistakes that used to lose events or leak user ids into the app's own telemetry:
``VWOEvents`` on a provider without a VWO processor (or with it on another provider), and
attribute limits that would cut a user id (another visitor on the wire) or evict the event type."""

from __future__ import annotations

import logging
import os

import pytest
from conftest import ACCOUNT_ID, SDK_KEY
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from vwo_otel import VWOEvents, VWOExporter, VWOLogRecordProcessor, VWOSampler, VWOSpanProcessor, visitor_uuid

BATCH = {"events_per_request": 10, "request_time_interval": 60}


def _app_provider(**kwargs) -> tuple[TracerProvider, InMemorySpanExporter]:
    """A provider with the app's own exporter and no VWOSampler: every span it sees is exported."""
    app = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False, **kwargs)
    provider.add_span_processor(SimpleSpanProcessor(app))
    return provider, app


def test_no_vwo_processor_on_the_provider_emits_nothing_and_warns_once(caplog):
    provider, app = _app_provider()
    vwo = VWOEvents(tracer_provider=provider)
    with caplog.at_level(logging.WARNING, logger="vwo_otel"):
        vwo.activate(1, 2, "alice")
        vwo.track(1, 2, 3, "alice", revenue=5.0)
    assert app.get_finished_spans() == ()  # no user id reached the app's exporter
    warnings = [r.getMessage() for r in caplog.records if "not emitted" in r.getMessage()]
    assert len(warnings) == 1 and "VWOSpanProcessor" in warnings[0]


def test_processor_on_another_provider_is_the_same_mistake(receiver, caplog):
    provider, app = _app_provider()
    other = TracerProvider(shutdown_on_exit=False)
    processor = VWOSpanProcessor(VWOExporter(ACCOUNT_ID, SDK_KEY, endpoint=receiver.url), BATCH)
    other.add_span_processor(processor)
    with caplog.at_level(logging.WARNING, logger="vwo_otel"):
        VWOEvents(tracer_provider=provider).activate(1, 2, "alice")
    assert app.get_finished_spans() == ()
    assert any("not emitted" in r.getMessage() for r in caplog.records)
    processor.shutdown()
    assert receiver.events() == []


def test_adding_the_processor_later_starts_delivery(receiver):
    provider, app = _app_provider(sampler=VWOSampler())
    vwo = VWOEvents(tracer_provider=provider)
    vwo.activate(1, 2, "early")  # not emitted: no VWO processor yet
    processor = VWOSpanProcessor(VWOExporter(ACCOUNT_ID, SDK_KEY, endpoint=receiver.url), BATCH)
    provider.add_span_processor(processor)
    vwo.activate(1, 2, "late")
    assert processor.flush_events() is True
    assert [e["u"] for e in receiver.events()] == [visitor_uuid(ACCOUNT_ID, "late")]
    assert app.get_finished_spans() == ()
    processor.shutdown()


def test_app_exporters_beside_the_vwo_processor_without_vwo_sampler_would_leak(receiver, caplog):
    """Without VWOSampler the app's own processors would export every VWO span, user id included."""
    provider, app = _app_provider()
    processor = VWOSpanProcessor(VWOExporter(ACCOUNT_ID, SDK_KEY, endpoint=receiver.url), BATCH)
    provider.add_span_processor(processor)
    with caplog.at_level(logging.WARNING, logger="vwo_otel"):
        VWOEvents(tracer_provider=provider).activate(1, 2, "alice@example.com")
    assert app.get_finished_spans() == ()
    assert any("sampler=vwo_otel.VWOSampler" in r.getMessage() for r in caplog.records)
    processor.shutdown()


def test_a_shared_logger_provider_with_the_apps_log_exporter_would_leak(receiver, caplog):
    app = InMemoryLogRecordExporter()
    provider = LoggerProvider(shutdown_on_exit=False)
    provider.add_log_record_processor(SimpleLogRecordProcessor(app))
    processor = VWOLogRecordProcessor(VWOExporter(ACCOUNT_ID, SDK_KEY, endpoint=receiver.url), BATCH)
    provider.add_log_record_processor(processor)
    with caplog.at_level(logging.WARNING, logger="vwo_otel"):
        VWOEvents(logger_provider=provider).activate(1, 2, "bob@example.com")
    assert app.get_finished_logs() == ()
    assert any("LoggerProvider of its own" in r.getMessage() for r in caplog.records)
    processor.shutdown()


def test_log_provider_without_vwo_log_processor_emits_nothing(caplog):
    app = InMemoryLogRecordExporter()
    provider = LoggerProvider(shutdown_on_exit=False)
    provider.add_log_record_processor(SimpleLogRecordProcessor(app))
    with caplog.at_level(logging.WARNING, logger="vwo_otel"):
        VWOEvents(logger_provider=provider).push("alice", {"plan": "pro"})
    assert app.get_finished_logs() == ()
    assert any("VWOLogRecordProcessor" in r.getMessage() for r in caplog.records)


def test_value_length_limit_never_sends_another_visitor(receiver):
    provider = TracerProvider(shutdown_on_exit=False, span_limits=SpanLimits(max_attribute_length=16))
    processor = VWOSpanProcessor(VWOExporter(ACCOUNT_ID, SDK_KEY, endpoint=receiver.url), BATCH)
    provider.add_span_processor(processor)
    vwo = VWOEvents(tracer_provider=provider)
    long_user = "user-0123456789-abcdef"  # 22 characters: the limit would cut it to another id
    with pytest.raises(ValueError, match="length limit of 16"):
        vwo.activate(1, 2, long_user)
    vwo.activate(1, 2, "short-user")
    assert processor.flush_events() is True
    assert [e["u"] for e in receiver.events()] == [visitor_uuid(ACCOUNT_ID, "short-user")]
    processor.shutdown()


def test_attribute_count_limit_that_would_evict_vwo_fields_fails_loudly(receiver):
    provider = TracerProvider(shutdown_on_exit=False, span_limits=SpanLimits(max_span_attributes=3))
    processor = VWOSpanProcessor(VWOExporter(ACCOUNT_ID, SDK_KEY, endpoint=receiver.url), BATCH)
    provider.add_span_processor(processor)
    with pytest.raises(ValueError, match="at most 3 attributes"):
        VWOEvents(tracer_provider=provider).activate(1, 2, "alice")
    processor.shutdown()
    assert receiver.events() == []


def test_log_record_limits_are_checked_too():
    from opentelemetry.sdk._logs import LogRecordLimits

    provider = LoggerProvider(shutdown_on_exit=False, log_record_limits=LogRecordLimits(max_attribute_length=8))
    processor = VWOLogRecordProcessor(VWOExporter(ACCOUNT_ID, SDK_KEY, endpoint="http://127.0.0.1:9"), BATCH)
    provider.add_log_record_processor(processor)
    with pytest.raises(ValueError, match="length limit of 8"):
        VWOEvents(logger_provider=provider).activate(1, 2, "a-long-user-id")
    processor.shutdown()


def test_a_disabled_scope_is_named_for_events_made_before_the_app_set_its_provider():
    """``VWOEvents()`` made at import time holds OpenTelemetry's proxy tracer; once the app sets a
    provider whose tracer configurator disables the ``vwo_otel`` scope, the warning names the
    scope (it told the app to use an SDK provider with VWOSampler, which it did)."""
    import subprocess
    import sys

    script = """if True:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider, _TracerConfig
        from vwo_otel import VWOEvents, VWOExporter, VWOSampler, VWOSpanProcessor
        events = VWOEvents()  # before the app's provider: a proxy tracer
        provider = TracerProvider(sampler=VWOSampler(), shutdown_on_exit=False, _tracer_configurator=lambda s:
                                  _TracerConfig(is_enabled=s.name != "vwo_otel"))
        processor = VWOSpanProcessor(VWOExporter(1, "k" * 32, endpoint="http://127.0.0.1:9"),
                                     {"events_per_request": 10, "request_time_interval": 60})
        provider.add_span_processor(processor)
        trace.set_tracer_provider(provider)
        events.activate(1, 2, "u")
        assert processor.stats()["queued"] == 0
    """
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "VWO_SIGNALS": "false"})
    assert done.returncode == 0, done.stderr
    assert "configurator disables the instrumentation scope 'vwo_otel'" in done.stderr, done.stderr
