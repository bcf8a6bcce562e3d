"""Development mode (``disabled`` / ``VWO_DISABLED``), the DEBUG line per HTTP request, and
``processor.stats()``'s keys: over real loopback HTTP to the project's receiver."""

from __future__ import annotations

import logging
import re
import socket

import pytest
from conftest import ACCOUNT_ID, SDK_KEY
from opentelemetry.sdk.trace import TracerProvider

from vwo_otel import RetryPolicy, VWOEvents, VWOExporter, VWOSampler
from vwo_otel import attributes as A
from vwo_otel.env import ConfigError, exporter_from_env, span_processor_from_env
from vwo_otel.errors import PayloadTooLarge
from vwo_otel.event import VWOEvent

BASE = {"VWO_ACCOUNT_ID": str(ACCOUNT_ID), "VWO_SDK_KEY": SDK_KEY}
REQUEST_LINE = re.compile(r"VWO request (GET|POST) (/\S*) -> (\S+) \((\d+) events, (\d+) bytes, [\d.]+ ms\)$")


def _request_lines(caplog: pytest.LogCaptureFixture) -> list[re.Match[str]]:
    return [m for r in caplog.records if (m := REQUEST_LINE.search(r.getMessage()))]


def _no_secret_logged(caplog: pytest.LogCaptureFixture) -> None:
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert SDK_KEY not in text and "env=" not in text


def test_disabled_exporter_sends_nothing_and_reports_every_event(receiver, make_exporter, pipeline, callbacks):
    events, proc, _ = pipeline({"events_per_request": 3, "request_time_interval": 60},
                               exporter=make_exporter(disabled=True))
    for i in range(7):
        events.activate(1, 2, f"dev-{i}")
    assert proc.flush_events() is True
    assert receiver.requests() == []  # not one request reached the server
    assert sorted(len(evs) for err, evs in callbacks.calls if err is None) == [1, 3, 3]  # any order
    assert {e["eT"] for e in callbacks.ok_events} == {1}  # the wire dicts the app would have sent
    assert proc.stats() == {"events": {"delivered": 0, "failed": 0, "not_sent": 7}, "dropped": {}, "queued": 0}


def test_disabled_real_time_mode_sends_nothing(receiver, make_exporter, pipeline):
    events, proc, _ = pipeline(None, exporter=make_exporter(disabled=True))
    events.activate(1, 2, "rt-1")
    events.track(1, 2, 3, "rt-1")
    assert proc.force_flush(5000) is True
    assert receiver.requests() == []
    assert proc.stats()["events"] == {"delivered": 0, "failed": 0, "not_sent": 2}


def test_disabled_still_checks_events_as_sending_would(receiver, make_exporter, pipeline, callbacks):
    events, proc, _ = pipeline({"events_per_request": 2, "request_time_interval": 60},
                               exporter=make_exporter(disabled=True, max_payload_bytes=1024))
    events.push("big", {"note": "x" * 2000})  # larger than the payload cap on its own
    events.activate(1, 2, "small")
    assert proc.flush_events() is False
    assert receiver.requests() == []
    (err, bad), = callbacks.failed
    assert isinstance(err, PayloadTooLarge) and len(bad) == 1
    assert proc.stats()["events"] == {"delivered": 0, "failed": 1, "not_sent": 1}


def test_enabled_exporter_has_no_not_sent_count(receiver, pipeline):
    events, proc, _ = pipeline({"events_per_request": 2, "request_time_interval": 60})
    events.activate(1, 2, "u1")
    events.activate(1, 2, "u2")
    assert proc.flush_events() is True
    assert receiver.event_count() == 2
    assert proc.stats()["events"] == {"delivered": 2, "failed": 0}


def test_disabled_must_be_a_bool():
    with pytest.raises(TypeError, match="disabled must be True or False, got str 'false'"):
        VWOExporter(ACCOUNT_ID, SDK_KEY, disabled="false")  # type: ignore[arg-type]
    assert "disabled=True" in repr(VWOExporter(ACCOUNT_ID, SDK_KEY, disabled=True))


@pytest.mark.parametrize(("text", "disabled"), [("true", True), (" 1 ", True), ("off", False), ("", False)])
def test_vwo_disabled_variable(text, disabled):
    assert exporter_from_env(environ={**BASE, "VWO_DISABLED": text}).disabled is disabled


def test_vwo_disabled_bad_value_and_argument_wins():
    with pytest.raises(ConfigError, match="VWO_DISABLED must be true or false") as info:
        exporter_from_env(environ={**BASE, "VWO_DISABLED": "maybe"})
    assert info.value.variable == "VWO_DISABLED"
    assert exporter_from_env(environ={**BASE, "VWO_DISABLED": "true"}, disabled=False).disabled is False


def test_vwo_disabled_processor_from_env_sends_nothing(receiver, callbacks):
    env = {**BASE, "VWO_ENDPOINT": receiver.url, "VWO_DISABLED": "yes"}
    proc = span_processor_from_env({"events_per_request": 5, "flush_callback": callbacks}, environ=env)
    try:
        provider = TracerProvider(sampler=VWOSampler(), shutdown_on_exit=False)
        provider.add_span_processor(proc)
        VWOEvents(tracer_provider=provider).activate(1, 2, "env-user")
        assert proc.flush_events() is True
    finally:
        proc.shutdown()
    assert receiver.requests() == [] and len(callbacks.ok_events) == 1
    assert proc.stats()["events"]["not_sent"] == 1


def test_one_debug_line_per_http_request(receiver, pipeline, caplog):
    receiver.fail_next(1, 503)  # the first attempt fails: its retry is a request of its own
    events, proc, _ = pipeline({"events_per_request": 3, "request_time_interval": 60})
    with caplog.at_level(logging.DEBUG, logger="vwo_otel"):
        for i in range(3):
            events.activate(1, 2, f"log-{i}")
        assert proc.flush_events() is True
    lines = _request_lines(caplog)
    sent = receiver.requests()
    assert [(m[1], m[2], m[3], int(m[4]), int(m[5])) for m in lines] == [
        ("POST", "/server-side/batch-events", str(r["status"]), 3, r["body_bytes"]) for r in sent]
    assert [m[3] for m in lines] == ["503", "200"]
    _no_secret_logged(caplog)


def test_debug_line_for_real_time_get(receiver, pipeline, caplog):
    events, proc, _ = pipeline(None)
    with caplog.at_level(logging.DEBUG, logger="vwo_otel"):
        events.track(1, 2, 3, "rt-log")
        assert proc.force_flush(5000) is True
    (line,) = _request_lines(caplog)
    assert (line[1], line[3], line[4]) == ("GET", "200", "1") and line[2].startswith("/server-side/")
    _no_secret_logged(caplog)


def test_debug_line_for_a_request_without_answer(caplog):
    with socket.socket() as s:  # a loopback port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exporter = VWOExporter(ACCOUNT_ID, SDK_KEY, endpoint=f"http://127.0.0.1:{port}", timeout=2.0,
                           retry=RetryPolicy(budget=0.0))
    try:
        with caplog.at_level(logging.DEBUG, logger="vwo_otel"):
            (outcome,) = exporter.send_batch([VWOEvent(A.VISITOR, "no-answer", 1, 1, 2)])
    finally:
        exporter.shutdown()
    assert not outcome.ok
    (line,) = _request_lines(caplog)
    assert line.group(1, 2, 3) == ("POST", "/server-side/batch-events", "ConnectionError")
    _no_secret_logged(caplog)
