"""``VWO_*`` variables: parsing, ranges from ``checks``, unknown names (no network)."""

from __future__ import annotations

import logging

import pytest
from conftest import ACCOUNT_ID, SDK_KEY

import vwo_otel
from vwo_otel import checks
from vwo_otel.env import (
    VARIABLES,
    ConfigError,
    batch_events_from_env,
    exporter_from_env,
    read_env,
    span_processor_from_env,
)

BASE = {"VWO_ACCOUNT_ID": str(ACCOUNT_ID), "VWO_SDK_KEY": SDK_KEY}


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
    ("VWO_METRICS", "maybe", "true or false (1/0, yes/no, on/off)"),
    ("VWO_DISABLED", "maybe", "true or false (1/0, yes/no, on/off)"),
    ("VWO_SIGNALS", "maybe", "true or false (1/0, yes/no, on/off)"),
])
def test_bad_value_names_variable_and_range(name, bad, allowed):
    with pytest.raises(ConfigError) as info:
        read_env({**BASE, name: bad})
    assert info.value.variable == name
    assert str(info.value).startswith(f"{name} must be {allowed}")
    assert repr(bad) in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("bad", ["clé-0123456789", "key\twith-a-tab"])
def test_a_bad_sdk_key_is_told_what_it_must_be_never_shown(bad):
    """``checks.sdk_key`` takes printable ASCII only (the key is a header): the variable's error
    says so ("printable text" was not what refused an accented key), without the key."""
    with pytest.raises(ConfigError) as info:
        read_env({**BASE, "VWO_SDK_KEY": bad})
    assert "printable ASCII" in str(info.value) and bad not in str(info.value), str(info.value)


@pytest.mark.parametrize("name, allowed", [
    ("VWO_EVENTS_PER_REQUEST", checks.EVENTS_PER_REQUEST), ("VWO_REQUEST_TIME_INTERVAL", checks.REQUEST_TIME_INTERVAL),
    ("VWO_MAX_PAYLOAD_BYTES", checks.MAX_PAYLOAD_BYTES), ("VWO_TIMEOUT", checks.TIMEOUT),
])
def test_ranges_are_the_checks_ranges(name, allowed):
    assert VARIABLES[name].allowed == str(allowed)


#: Names an app may well use for its own settings (issue #21 item 9: 6 of these 10 switched VWO off).
APP_VARIABLES = {"VWO_ENV": "staging", "VWO_API_KEY": "app-key-1", "VWO_ACCOUNT": "acme", "VWO_TIMEOUT_MS": "1500",
                 "VWO_ENABLED": "true", "VWO_DEBUG": "1", "VWO_LOG_LEVEL": "debug", "VWO_CAMPAIGN_KEY": "checkout",
                 "VWO_SETTINGS_FILE": "/etc/vwo.json", "VWO_USER_ID": "u-1"}


def _unknown_warnings(caplog: pytest.LogCaptureFixture, name: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and name in r.getMessage()]


@pytest.mark.parametrize("name", list(APP_VARIABLES))
def test_an_apps_own_variable_disables_nothing(name, caplog):
    env = {**BASE, name: APP_VARIABLES[name]}
    with caplog.at_level(logging.WARNING, logger="vwo_otel"):
        assert read_env(env) == {"account_id": ACCOUNT_ID, "sdk_key": SDK_KEY}
        processor = span_processor_from_env(environ=env)  # read three times inside: still one warning
        processor.shutdown()
        assert exporter_from_env(environ=env).account_id == ACCOUNT_ID
    (line,) = _unknown_warnings(caplog, name)
    assert line.startswith(f"vwo_otel: ignoring {name}: not a vwo_otel variable")
    assert "did you mean" not in line  # an app's own name is no misspelling of ours


def test_a_misspelt_variable_is_one_warning_naming_the_closest_one(caplog):
    env = {**BASE, "VWO_EVNETS_PER_REQUEST": "50", "VWO_ENDPIONT": "http://127.0.0.1:1"}
    with caplog.at_level(logging.WARNING, logger="vwo_otel"):
        assert read_env(env) == {"account_id": ACCOUNT_ID, "sdk_key": SDK_KEY}  # ignored, nothing disabled
        batch_events_from_env(environ=env)
    (line,) = _unknown_warnings(caplog, "VWO_EVNETS_PER_REQUEST")  # both names in one line, once
    assert "VWO_EVNETS_PER_REQUEST (did you mean VWO_EVENTS_PER_REQUEST?)" in line
    assert "VWO_ENDPIONT (did you mean VWO_ENDPOINT?)" in line
    # the gateway's own per-account keys are known; a near one is only a warning
    processor = span_processor_from_env(environ={**BASE, "VWO_SDK_KEY_EU": "x"})
    assert processor.batcher.exporter.account_id == ACCOUNT_ID
    processor.shutdown()


def test_the_gateways_keys_and_empty_values_are_not_unknown():
    env = {**BASE, "VWO_SDK_KEY_123": "key-of-account-123", "VWO_TYPO": " ", "VWOX": "1"}
    assert read_env(env) == {"account_id": ACCOUNT_ID, "sdk_key": SDK_KEY}


def test_config_error_is_one_class_wherever_it_is_imported_from():
    from vwo_otel.errors import ConfigError as from_errors

    assert ConfigError is from_errors is vwo_otel.ConfigError


def test_every_variable_is_documented_in_readme():
    import pathlib

    readme = (pathlib.Path(__file__).parent.parent.parent / "README.md").read_text()
    for name in VARIABLES:
        assert f"`{name}`" in readme, name


@pytest.mark.parametrize("missing", ["VWO_ACCOUNT_ID", "VWO_SDK_KEY"])
def test_missing_credentials_are_named(missing):
    env = dict(BASE)
    del env[missing]
    with pytest.raises(ConfigError, match=f"{missing} is not set") as info:
        exporter_from_env(environ=env)
    assert info.value.variable == missing


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
