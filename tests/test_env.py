"""Configuration from the environment: VWO_* variables, explicit arguments win, clear errors."""

from __future__ import annotations

import logging

import pytest
from conftest import ACCOUNT_ID, SDK_KEY
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk.trace import TracerProvider

import vwo_otel
from vwo_otel import RetryPolicy, VWOEvents, VWOLogRecordProcessor, VWOSampler, VWOSpanProcessor, checks
from vwo_otel.env import (
    VARIABLES,
    ConfigError,
    batch_events_from_env,
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


def test_unset_and_empty_are_not_given():
    assert read_env({}) == {}
    assert read_env({"VWO_ENDPOINT": "", "VWO_TIMEOUT": "   "}) == {}


@pytest.mark.parametrize("name, bad, allowed", [
    ("VWO_ACCOUNT_ID", "abc", "a positive int"),
    ("VWO_ACCOUNT_ID", "0", "a positive int"),
    ("VWO_ENDPOINT", "ftp://x", "an http(s) URL"),
    ("VWO_ENDPOINT", "localhost:8000", "an http(s) URL"),
    ("VWO_EVENTS_PER_REQUEST", "0", "an int from 1 to 5000"),
    ("VWO_EVENTS_PER_REQUEST", "5001", "an int from 1 to 5000"),
    ("VWO_EVENTS_PER_REQUEST", "10.5", "an int from 1 to 5000"),
    ("VWO_REQUEST_TIME_INTERVAL", "0.5", "a number of seconds >= 1"),
    ("VWO_REQUEST_TIME_INTERVAL", "inf", "a number of seconds >= 1"),
    ("VWO_MAX_QUEUE_SIZE", "0", "an int >= 1"),
    ("VWO_SHUTDOWN_TIMEOUT", "0", "a number of seconds > 0"),
    ("VWO_SHUTDOWN_TIMEOUT", "soon", "a number of seconds > 0"),
    ("VWO_RETRY_BUDGET", "-1", "a number of seconds >= 0"),
    ("VWO_MAX_PAYLOAD_BYTES", "100", "an int from 1024 to 10485760"),
    ("VWO_MAX_PAYLOAD_BYTES", "20000000", "an int from 1024 to 10485760"),
    ("VWO_TIMEOUT", "nan", "a number of seconds > 0"),
    ("VWO_METRICS", "maybe", "true or false"),
])
def test_bad_value_names_variable_and_range(name, bad, allowed):
    with pytest.raises(ConfigError) as info:
        read_env({**BASE, name: bad})
    assert info.value.variable == name
    assert str(info.value).startswith(f"{name} must be {allowed}")
    assert repr(bad) in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("name, allowed", [
    ("VWO_EVENTS_PER_REQUEST", checks.EVENTS_PER_REQUEST), ("VWO_REQUEST_TIME_INTERVAL", checks.REQUEST_TIME_INTERVAL),
    ("VWO_MAX_PAYLOAD_BYTES", checks.MAX_PAYLOAD_BYTES), ("VWO_TIMEOUT", checks.TIMEOUT),
])
def test_ranges_are_the_checks_ranges(name, allowed):
    assert VARIABLES[name].allowed == str(allowed)


def test_endpoint_is_checked_as_the_argument_is():
    with pytest.raises(ConfigError, match="VWO_ENDPOINT must be an http"):
        read_env({**BASE, "VWO_ENDPOINT": "https://dev.visualwebsiteoptimizer.com/server-side/batch-events-v2"})
    assert read_env({"VWO_ENDPOINT": "http://127.0.0.1:9/eu/"}) == {"endpoint": "http://127.0.0.1:9/eu"}


def test_a_misspelt_variable_is_an_error_naming_the_closest_one(caplog):
    with pytest.raises(ConfigError) as info:
        read_env({**BASE, "VWO_EVNETS_PER_REQUEST": "50"})
    assert info.value.variable == "VWO_EVNETS_PER_REQUEST"
    assert "did you mean VWO_EVENTS_PER_REQUEST?" in str(info.value)
    with pytest.raises(ConfigError, match="VWO_SDK_KEY_EU"):
        span_processor_from_env(environ={**BASE, "VWO_SDK_KEY_EU": "x"})
    # a name like no variable that is read (another tool's, say): one warning, not an error
    with caplog.at_level(logging.WARNING, logger="vwo_otel"):
        assert read_env({"VWO_Q": "1"}) == {}
        read_env({"VWO_Q": "1"})
    assert [r.getMessage() for r in caplog.records if "VWO_Q" in r.getMessage()] == [
        "VWO_Q is not a vwo_otel variable and is ignored; the variables read are " + ", ".join(VARIABLES)]


def test_the_gateways_keys_and_empty_values_are_not_unknown():
    env = {**BASE, "VWO_SDK_KEY_123": "key-of-account-123", "VWO_TYPO": " ", "VWOX": "1"}
    assert read_env(env) == {"account_id": ACCOUNT_ID, "sdk_key": SDK_KEY}


def test_config_error_is_one_class_wherever_it_is_imported_from():
    from vwo_otel.errors import ConfigError as from_errors

    assert ConfigError is from_errors is vwo_otel.ConfigError


def test_every_variable_is_documented_in_readme():
    import pathlib

    readme = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
    for name in VARIABLES:
        assert f"`{name}`" in readme, name


@pytest.mark.parametrize("missing", ["VWO_ACCOUNT_ID", "VWO_SDK_KEY"])
def test_missing_credentials_are_named(missing):
    env = dict(BASE)
    del env[missing]
    with pytest.raises(ConfigError, match=f"{missing} is not set") as info:
        exporter_from_env(environ=env)
    assert info.value.variable == missing


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


def test_bad_explicit_argument_is_the_constructors_error():
    with pytest.raises(ValueError, match="timeout must be"):
        exporter_from_env(environ=BASE, timeout=-1)


def test_sdk_key_never_shown_in_errors():
    with pytest.raises(ConfigError) as info:
        read_env({**BASE, "VWO_TIMEOUT": "x"})
    assert SDK_KEY not in str(info.value)


def test_batching_from_env():
    assert batch_events_from_env(environ={}) is None  # nothing set: real time, as VWO's SDKs
    b = batch_events_from_env(environ={"VWO_EVENTS_PER_REQUEST": "50"})
    assert (b.events_per_request, b.request_time_interval) == (50, 600.0)
    b = batch_events_from_env(environ={"VWO_REQUEST_TIME_INTERVAL": "5"})
    assert (b.events_per_request, b.request_time_interval) == (100, 5.0)
    cb = lambda err, events: None  # noqa: E731
    b = batch_events_from_env({"flush_callback": cb, "events_per_request": 9},
                              environ={"VWO_EVENTS_PER_REQUEST": "50", "VWO_REQUEST_TIME_INTERVAL": "5"})
    assert (b.events_per_request, b.request_time_interval, b.flush_callback) == (9, 5.0, cb)
    assert batch_events_from_env(None, environ={"VWO_EVENTS_PER_REQUEST": "50"}) is None
    with pytest.raises(ValueError, match="at least one|events_per_request|request_time_interval"):
        batch_events_from_env({"flush_callback": cb}, environ={})


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
    with pytest.raises(ConfigError, match="VWO_MAX_CONCURRENT_REQUESTS must be an int from 1 to 64"):
        span_processor_from_env(environ={**env, "VWO_MAX_CONCURRENT_REQUESTS": "65"})


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
