"""``VWO_*`` variables end to end: processors built from the environment deliver to the loopback receiver."""

from __future__ import annotations

import pytest
from conftest import ACCOUNT_ID, SDK_KEY
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk.trace import TracerProvider

from vwo_otel import RetryPolicy, VWOEvents, VWOLogRecordProcessor, VWOSampler, VWOSpanProcessor
from vwo_otel.env import (
    ConfigError,
    exporter_from_env,
    log_processor_from_env,
    read_env,
    span_processor_from_env,
)

BASE = {"VWO_ACCOUNT_ID": str(ACCOUNT_ID), "VWO_SDK_KEY": SDK_KEY}


def test_reads_every_variable():
    env = {
        **BASE, "VWO_ENDPOINT": "http://127.0.0.1:9/x", "VWO_EVENTS_PER_REQUEST": "250",
        "VWO_REQUEST_TIME_INTERVAL": "2.5", "VWO_MAX_QUEUE_SIZE": "77", "VWO_SHUTDOWN_TIMEOUT": "3",
        "VWO_RETRY_BUDGET": "0", "VWO_MAX_PAYLOAD_BYTES": "2048", "VWO_TIMEOUT": " 1.5 ", "VWO_METRICS": "true",
    }
    assert read_env(env) == {
        "account_id": ACCOUNT_ID, "sdk_key": SDK_KEY, "endpoint": "http://127.0.0.1:9/x",
        "events_per_request": 250, "request_time_interval": 2.5, "max_queue_size": 77, "shutdown_timeout": 3.0,
        "retry_budget": 0.0, "max_payload_bytes": 2048, "timeout": 1.5, "metrics": True,
    }


def test_endpoint_is_checked_as_the_argument_is():
    with pytest.raises(ConfigError, match="VWO_ENDPOINT must be an http"):
        read_env({**BASE, "VWO_ENDPOINT": "https://dev.visualwebsiteoptimizer.com/server-side/batch-events-v2"})
    assert read_env({"VWO_ENDPOINT": "http://127.0.0.1:9/eu/"}) == {"endpoint": "http://127.0.0.1:9/eu"}


def test_exporter_from_env_and_explicit_arguments_win():
    env = {**BASE, "VWO_ENDPOINT": "http://127.0.0.1:9", "VWO_TIMEOUT": "3", "VWO_RETRY_BUDGET": "7",
           "VWO_MAX_PAYLOAD_BYTES": "4096"}
    ex = exporter_from_env(environ=env)
    assert (ex.account_id, ex.endpoint, ex.timeout, ex.retry.budget, ex.max_payload_bytes) == (
        ACCOUNT_ID, "http://127.0.0.1:9", 3.0, 7.0, 4096)
    ex = exporter_from_env(environ=env, account_id=42, endpoint="http://127.0.0.1:10", timeout=1,
                              retry=RetryPolicy(budget=1), max_payload_bytes=2048)
    assert (ex.account_id, ex.endpoint, ex.timeout, ex.retry.budget, ex.max_payload_bytes) == (
        42, "http://127.0.0.1:10", 1.0, 1.0, 2048)
    assert SDK_KEY not in repr(ex)
    ex = exporter_from_env(environ=BASE)
    assert ex.endpoint == "https://dev.visualwebsiteoptimizer.com"


def test_processor_from_env_settings_and_overrides():
    env = {**BASE, "VWO_ENDPOINT": "http://127.0.0.1:9", "VWO_EVENTS_PER_REQUEST": "20",
           "VWO_MAX_QUEUE_SIZE": "300", "VWO_SHUTDOWN_TIMEOUT": "2"}
    p = span_processor_from_env(environ=env)
    assert isinstance(p, VWOSpanProcessor)
    b = p.batcher
    assert (b.events_per_request, b.max_queue_size, b.shutdown_timeout, b.realtime) == (20, 300, 2.0, False)
    assert p.metrics is None
    p.shutdown()
    p = span_processor_from_env(environ=env, batch_events=None, max_queue_size=10, shutdown_timeout=1,
                                  endpoint="http://127.0.0.1:10")
    b = p.batcher
    assert (b.realtime, b.max_queue_size, b.shutdown_timeout, b.exporter.endpoint) == (
        True, 10, 1.0, "http://127.0.0.1:10")
    p.shutdown()
    with pytest.raises(TypeError, match="not both"):
        span_processor_from_env(environ=env, exporter=b.exporter, account_id=1)
    with pytest.raises(ConfigError, match="VWO_MAX_QUEUE_SIZE"):
        span_processor_from_env(environ={**env, "VWO_MAX_QUEUE_SIZE": "-3"})


def test_max_concurrent_requests_from_env():
    env = {**BASE, "VWO_ENDPOINT": "http://127.0.0.1:9", "VWO_MAX_CONCURRENT_REQUESTS": "2"}
    p = span_processor_from_env(environ=env)
    assert p.batcher.max_concurrent_requests == 2
    p.shutdown()
    with pytest.raises(ConfigError, match="VWO_MAX_CONCURRENT_REQUESTS must be an int from 1 to 256"):
        span_processor_from_env(environ={**env, "VWO_MAX_CONCURRENT_REQUESTS": "257"})


def test_spool_from_env(tmp_path):
    p = span_processor_from_env(environ={**BASE, "VWO_ENDPOINT": "http://127.0.0.1:9",
                                         "VWO_SPOOL": str(tmp_path / "spool")})
    assert p.batcher.spool is not None and p.batcher.spool.directory == str(tmp_path / "spool")
    p.shutdown()
    p = span_processor_from_env(environ={**BASE, "VWO_ENDPOINT": "http://127.0.0.1:9"})
    assert p.batcher.spool is None
    p.shutdown()


def test_metrics_flag_uses_the_global_meter_provider():
    p = log_processor_from_env(environ={**BASE, "VWO_ENDPOINT": "http://127.0.0.1:9",
                                                "VWO_METRICS": "1"})
    assert isinstance(p, VWOLogRecordProcessor) and p.metrics is not None
    p.shutdown()


def test_reads_os_environ(monkeypatch, receiver):
    monkeypatch.setenv("VWO_ACCOUNT_ID", str(ACCOUNT_ID))
    monkeypatch.setenv("VWO_SDK_KEY", SDK_KEY)
    monkeypatch.setenv("VWO_ENDPOINT", receiver.url)
    monkeypatch.setenv("VWO_EVENTS_PER_REQUEST", "3")
    processor = span_processor_from_env()
    provider = TracerProvider(sampler=VWOSampler(), shutdown_on_exit=False)
    provider.add_span_processor(processor)
    events = VWOEvents(tracer_provider=provider)
    for i in range(6):
        events.activate(1, 2, f"u{i}")
    assert receiver.wait_for_events(6, timeout=10)
    assert [r["n_events"] for r in receiver.requests()] == [3, 3]
    provider.shutdown()


def test_log_processor_from_env_delivers(receiver):
    env = {**BASE, "VWO_ENDPOINT": receiver.url, "VWO_REQUEST_TIME_INTERVAL": "60"}
    processor = log_processor_from_env(environ=env)
    lp = LoggerProvider(shutdown_on_exit=False)
    lp.add_log_record_processor(processor)
    VWOEvents(logger_provider=lp).push("u1", {"plan": "pro", "country": "DE"})
    assert processor.flush_events() is True
    assert receiver.event_count() == 2
    lp.shutdown()
