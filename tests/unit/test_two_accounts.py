"""VWOEvents' events carry no account: every VWO processor on the provider takes each one. With
processors of two accounts on one provider each event reaches both accounts; that set-up is
named in one warning (the events still go as before: the README says to give each account a
provider of its own)."""

from __future__ import annotations

import logging

from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk.trace import TracerProvider

from vwo_otel import VWOEvents, VWOExporter, VWOLogRecordProcessor, VWOSampler, VWOSpanProcessor

BATCH = {"events_per_request": 5000, "request_time_interval": 600}


def _processor(account: int, cls=VWOSpanProcessor):
    return cls(VWOExporter(account, "key", disabled=True), BATCH, background=False)


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_processors_of_two_accounts_on_one_provider_are_named_once(caplog):
    caplog.set_level(logging.WARNING, logger="vwo_otel")
    provider = TracerProvider(sampler=VWOSampler())
    first, second = _processor(111), _processor(222)
    provider.add_span_processor(first)
    provider.add_span_processor(second)
    vwo = VWOEvents(tracer_provider=provider)
    vwo.activate(1, 2, "user-1")
    vwo.track_event("purchase", "user-1")
    assert first.stats()["queued"] == second.stats()["queued"] == 2  # delivered as before, to both
    (warning,) = [w for w in _warnings(caplog) if "accounts 111, 222" in w]
    assert "each event is delivered to every one of them" in warning


def test_log_records_too(caplog):
    caplog.set_level(logging.WARNING, logger="vwo_otel")
    provider = LoggerProvider(shutdown_on_exit=False)
    provider.add_log_record_processor(_processor(333, VWOLogRecordProcessor))
    provider.add_log_record_processor(_processor(111, VWOLogRecordProcessor))
    VWOEvents(logger_provider=provider).push("user-1", {"plan": "pro"})
    assert any("accounts 111, 333" in w for w in _warnings(caplog))


def test_one_account_is_not_warned_about(caplog):
    caplog.set_level(logging.WARNING, logger="vwo_otel")
    provider = TracerProvider(sampler=VWOSampler())
    provider.add_span_processor(_processor(111))
    provider.add_span_processor(_processor(111))  # two processors of one account: nothing to name
    VWOEvents(tracer_provider=provider).activate(1, 2, "user-1")
    assert not [w for w in _warnings(caplog) if "accounts" in w]
