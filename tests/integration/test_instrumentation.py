"""VWOInstrumentor: the official vwo-python-sdk driven with a settings file against the loopback
receiver, its wire compared with what the SDK alone sends; plus the precomputed visitor id
(``vwo.visitor.uuid`` + ``vwo.account_id``) in the decoder and the encoder."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ACCOUNT_ID, FAST_RETRY, SDK_KEY
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from vwo_otel import ConfigError, VWOExporter, VWOLogRecordProcessor, VWOSampler, VWOSpanProcessor
from vwo_otel import attributes as A
from vwo_otel._version import SDK_NAME
from vwo_otel.event import MalformedEvent, VWOEvent, from_attributes
from vwo_otel.export.legacy import LegacyFormat
from vwo_otel.export.wire import visitor_uuid
from vwo_otel.instrumentation import VWOInstrumentor
from vwo_otel.testing.receiver import Receiver

vwo = pytest.importorskip("vwo", reason="needs vwo-python-sdk 1.68.x (and setuptools<81 for pkg_resources)")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

from vwo.constants import constants as vwo_constants  # noqa: E402
from vwo.event.event_dispatcher import EventDispatcher  # noqa: E402

SETTINGS = json.loads((Path(__file__).parent.parent / "data" / "vwo_settings.json").read_text())
OTHER_ACCOUNT, OTHER_KEY = 67890, "other-sdk-key-0123456789"
#: Every SDK-built impression gets this sId, so runs compare byte for byte.
FIXED_SID = 1_700_000_000
USERS = [f"user-{i}" for i in range(8)]


class QuietSDKLogger:
    """The VWO SDK's logger interface, saying nothing (it logs every call otherwise)."""

    def log(self, level: Any, message: str) -> None:
        pass


def settings(account_id: int = ACCOUNT_ID, sdk_key: str = SDK_KEY, **extra: Any) -> str:
    return json.dumps({**SETTINGS, "accountId": account_id, "sdkKey": sdk_key, **extra})


def launch(settings_file: str | None = None, **kwargs: Any) -> Any:
    client = vwo.launch(settings_file or settings(), logger=QuietSDKLogger(), **kwargs)
    assert client is not None, "vwo.launch refused the test settings file"
    return client


def workload(client: Any, users: list[str] = USERS) -> list[Any]:
    """Every tracking API once per user; the SDK's return values."""
    out = []
    for i, user in enumerate(users):
        ua = "Mozilla/5.0 test" if i % 2 else None
        out.append(client.activate("ab", user, user_agent=ua, user_ip_address="10.0.0.1" if ua else None))
        out.append(client.is_feature_enabled("ft", user))
        out.append(client.track("ab", user, "signup"))
        out.append(client.track("ab", user, "purchase", revenue_value=12.5 + i))
        out.append(client.push("plan", f"gold-{i}", user))
    return out


def parsed_tags(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Events with ``t`` parsed: the SDK writes that JSON string with spaces, vwo_otel compactly."""
    return [{**e, "t": json.loads(e["t"])} if "t" in e else e for e in events]


def sdk_requests(rx: Receiver) -> list[dict[str, Any]]:
    """Requests the VWO SDK sent itself (not vwo_otel's exporter)."""
    return [r for r in rx.requests() if f"sdk={SDK_NAME}" not in r["query"]]


@pytest.fixture
def sdk_host(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> Receiver:
    """The SDK's collection host pointed at the receiver; every impression's sId fixed."""
    scheme, host = receiver.url.split("://", 1)
    monkeypatch.setattr(vwo_constants, "HTTPS_PROTOCOL", scheme + "://")
    monkeypatch.setattr(vwo_constants.ENDPOINTS, "BASE_URL", host)
    from vwo.helpers import generic_util
    monkeypatch.setattr(generic_util, "get_current_unix_timestamp", lambda: FIXED_SID)
    return receiver


@pytest.fixture
def instrument() -> Iterator[Callable[..., VWOInstrumentor]]:
    """``instrument(**kwargs)`` -> the instrumentor; uninstrumented after the test."""
    instrumentor = VWOInstrumentor()

    def make(**kwargs: Any) -> VWOInstrumentor:
        instrumentor.instrument(**kwargs)
        return instrumentor

    yield make
    instrumentor.uninstrument()


def alone(rx: Receiver, batch: bool) -> tuple[list[Any], list[dict[str, Any]]]:
    """The workload through the SDK alone: (return values, events the receiver accepted)."""
    client = launch(batch_events={"events_per_request": 1000, "request_time_interval": 60} if batch else None)
    values = workload(client)
    if batch:
        client.flush_events(mode="sync")
    events = rx.events()
    assert len(events) == 5 * len(USERS)
    rx.reset()
    return values, events


# -- the wire: the same events as the SDK alone sends, and the SDK sends nothing itself ------------------

@pytest.mark.parametrize("sdk_batch", [False, True], ids=["sdk-real-time", "sdk-batch_events"])
def test_span_route_sends_what_the_sdk_alone_sends(sdk_host, pipeline, instrument, sdk_batch):
    expected_values, expected = alone(sdk_host, sdk_batch)
    _, processor, provider = pipeline({"events_per_request": 1000, "request_time_interval": 60})
    instrument(tracer_provider=provider)
    client = launch(batch_events={"events_per_request": 1000, "request_time_interval": 60} if sdk_batch else None)
    assert workload(client) == expected_values  # return values (decisions) unchanged
    assert sdk_host.requests() == []  # queued in vwo_otel, nothing sent by the SDK
    assert client.flush_events(mode="sync") is (True if sdk_batch else None)  # the SDK's own return value
    # the same u, sId, e, c, g, r, t, visitor_ua, visitor_ip, in the same order
    assert parsed_tags(sdk_host.events()) == parsed_tags(expected)
    assert sdk_requests(sdk_host) == []
    assert [r["path"] for r in sdk_host.requests()] == ["/server-side/batch-events"]
    assert processor.stats()["events"] == {"delivered": len(expected), "failed": 0}


def test_log_route_sends_what_the_sdk_alone_sends(sdk_host, make_exporter, instrument):
    _, expected = alone(sdk_host, batch=False)
    processor = VWOLogRecordProcessor(make_exporter(), {"events_per_request": 1000, "request_time_interval": 60})
    provider = LoggerProvider(shutdown_on_exit=False)
    provider.add_log_record_processor(processor)
    try:
        instrument(logger_provider=provider)
        client = launch()
        workload(client)
        client.flush_events(mode="sync")
        assert parsed_tags(sdk_host.events()) == parsed_tags(expected)
        assert sdk_requests(sdk_host) == []
    finally:
        provider.shutdown()


def test_visitor_id_is_the_one_the_sdk_computed(sdk_host, pipeline, instrument):
    _, _, provider = pipeline()
    instrument(tracer_provider=provider)
    client = launch()
    client.activate("ab", "Varun")
    client.flush_events(mode="sync")
    (event,) = sdk_host.events()
    assert event["u"] == "C4D95C097902569F9A2D2E87CD3201C8"  # VWO's published vector for account 12345
    assert event["sId"] == FIXED_SID


# -- flush_events / set_opt_out ------------------------------------------------------------------------

def test_flush_events_sync_and_async_flush_vwo_otel(sdk_host, pipeline, instrument):
    _, processor, provider = pipeline({"events_per_request": 1000, "request_time_interval": 60})
    instrument(tracer_provider=provider)
    client = launch(batch_events={"events_per_request": 1000, "request_time_interval": 60})
    client.activate("ab", "a")
    assert client.flush_events(mode="sync") is True
    assert sdk_host.event_count() == 1  # delivered before flush_events returned
    client.activate("ab", "b")
    started = time.monotonic()
    sdk_host.stall(0.5, n=1)
    assert client.flush_events(mode="async") is True
    assert time.monotonic() - started < 0.4  # did not wait for the stalled request
    assert sdk_host.wait_for_events(2, timeout=5)
    assert processor.flush_events("sync") is True  # waits for the answer of the async flush's request
    assert processor.stats() == {"events": {"delivered": 2, "failed": 0}, "dropped": {}, "queued": 0}


def test_set_opt_out_delivers_what_the_client_queued(sdk_host, pipeline, instrument):
    _, _, provider = pipeline({"events_per_request": 1000, "request_time_interval": 60})
    instrument(tracer_provider=provider)
    client = launch()
    client.activate("ab", "a")
    assert client.set_opt_out() is True
    assert sdk_host.event_count() == 1
    assert client.activate("ab", "b") is None  # opted out: the SDK tracks nothing more
    assert sdk_requests(sdk_host) == []


# -- several accounts in one process --------------------------------------------------------------------

def two_account_pipeline(rx_a: Receiver, rx_b: Receiver) -> tuple[TracerProvider, VWOSpanProcessor, VWOSpanProcessor]:
    batch = {"events_per_request": 1000, "request_time_interval": 60}
    proc_a = VWOSpanProcessor(VWOExporter(ACCOUNT_ID, SDK_KEY, endpoint=rx_a.url, retry=FAST_RETRY), batch)
    proc_b = VWOSpanProcessor(VWOExporter(OTHER_ACCOUNT, OTHER_KEY, endpoint=rx_b.url, retry=FAST_RETRY), batch)
    provider = TracerProvider(sampler=VWOSampler(), shutdown_on_exit=False)
    provider.add_span_processor(proc_a)
    provider.add_span_processor(proc_b)
    return provider, proc_a, proc_b


def run_two_accounts(sdk_host: Receiver, instrument: Callable[..., Any]) -> tuple[Receiver, Any, Any]:
    rx_b = Receiver(account_id=OTHER_ACCOUNT, sdk_key=OTHER_KEY).start()
    provider, proc_a, proc_b = two_account_pipeline(sdk_host, rx_b)
    instrument(tracer_provider=provider)
    client_a, client_b = launch(), launch(settings(OTHER_ACCOUNT, OTHER_KEY))
    for user in USERS:
        client_a.activate("ab", user)
        client_b.track("ab", user, "purchase", revenue_value=3)
    client_a.flush_events(mode="sync")
    client_b.flush_events(mode="sync")
    provider.shutdown()
    rx_b.stop()
    return rx_b, proc_a, proc_b


def test_each_account_keeps_its_account_and_visitor_ids(sdk_host, instrument):
    rx_b, _, _ = run_two_accounts(sdk_host, instrument)
    # each receiver checks its own account id and sdk key: a request for the other would be refused
    assert [(e["eT"], e["u"]) for e in sdk_host.events()] == [(1, visitor_uuid(ACCOUNT_ID, u)) for u in USERS]
    assert [(e["eT"], e["u"], e["r"]) for e in rx_b.events()] == [(2, visitor_uuid(OTHER_ACCOUNT, u), 3) for u in USERS]
    assert sdk_requests(sdk_host) == [] and sdk_requests(rx_b) == []
    assert all(r["accepted"] for r in sdk_host.requests() + rx_b.requests())


def test_a_processor_takes_only_its_own_accounts_events(sdk_host, instrument):
    _, proc_a, proc_b = run_two_accounts(sdk_host, instrument)
    assert proc_a.stats()["events"] == {"delivered": len(USERS), "failed": 0}
    assert proc_b.stats()["events"] == {"delivered": len(USERS), "failed": 0}


# -- an account the provider does not deliver (issue #21 item 10) ----------------------------------------

def test_another_accounts_events_are_named_counted_and_sent_by_the_sdk(sdk_host, pipeline, instrument, caplog):
    """The settings file's account differs from the exporter's: the SDK sends those events itself
    (on the request thread); the one warning names both accounts and stats() counts them."""
    _, processor, provider = pipeline()
    instrument(tracer_provider=provider)
    client = launch(settings(OTHER_ACCOUNT, OTHER_KEY))
    with caplog.at_level(logging.WARNING, logger="vwo_otel"):
        workload(client, USERS[:2])
    sent_by_sdk = sdk_requests(sdk_host)
    assert len(sent_by_sdk) == 10  # activate, is_feature_enabled, 2 track, push; for 2 users
    assert processor.stats()["events"] == {"delivered": 0, "failed": 0, "handed_to_sdk": 10}
    (line,) = [r.getMessage() for r in caplog.records if str(OTHER_ACCOUNT) in r.getMessage()]
    assert f"account {OTHER_ACCOUNT}" in line and f"account {ACCOUNT_ID}" in line, line
    assert "handed_to_sdk" in line and "strict=True" in line, line


def test_strict_refuses_another_account_at_launch_naming_both(sdk_host, pipeline, instrument):
    _, processor, provider = pipeline()
    instrument(tracer_provider=provider, strict=True)
    with pytest.raises(ConfigError) as info:
        launch(settings(OTHER_ACCOUNT, OTHER_KEY))
    assert f"account {OTHER_ACCOUNT}" in str(info.value) and f"account {ACCOUNT_ID}" in str(info.value)
    client = launch()  # the account the provider delivers: as usual
    client.activate("ab", "a")
    assert client.flush_events(mode="sync") is None and sdk_requests(sdk_host) == []
    assert processor.stats()["events"] == {"delivered": 1, "failed": 0}


def test_strict_refuses_at_instrument_time(sdk_host, make_exporter, instrument):
    """Where instrument() can tell: a provider with no VWO processor, or account_id= given (the
    account of the settings file the app will launch) that no processor delivers."""
    bare = TracerProvider(sampler=VWOSampler(), shutdown_on_exit=False)
    with pytest.raises(ConfigError, match="no VWOSpanProcessor on the TracerProvider"):
        instrument(tracer_provider=bare, strict=True)
    provider = TracerProvider(sampler=VWOSampler(), shutdown_on_exit=False)
    provider.add_span_processor(VWOSpanProcessor(make_exporter(), None))
    with pytest.raises(ConfigError) as info:
        instrument(tracer_provider=provider, strict=True, account_id=OTHER_ACCOUNT)
    assert f"account {OTHER_ACCOUNT}" in str(info.value) and f"account {ACCOUNT_ID}" in str(info.value)
    assert EventDispatcher.dispatch.__name__ == "dispatch" and not hasattr(EventDispatcher.dispatch, "__wrapped__")
    instrument(tracer_provider=provider, strict=True, account_id=ACCOUNT_ID)  # matches: instrumented
    assert hasattr(EventDispatcher.dispatch, "__wrapped__")
    provider.shutdown()


# -- what stays with the SDK -------------------------------------------------------------------------------

def test_event_arch_accounts_go_as_legacy_batch_events(sdk_host, pipeline, instrument):
    """Alone, an event-architecture account (isEventArchEnabled) without batch_events sends one
    POST /events/t per call on the calling thread. Instrumented, its events go through vwo_otel in
    the legacy batch format, the one the SDK's own batching sends for such accounts: the same
    events, once each; uninstrumented, the client sends in real time again."""
    arch = settings(isEventArchEnabled=True)
    workload(launch(arch), USERS[:2])
    assert [(r["method"], r["path"]) for r in sdk_host.requests()] == [("POST", "/events/t")] * 10
    sdk_host.reset()
    batching = launch(arch, batch_events={"events_per_request": 1000, "request_time_interval": 60})
    workload(batching, USERS[:2])
    batching.flush_events(mode="sync")
    expected = parsed_tags(sdk_host.events())
    assert len(expected) == 10
    sdk_host.reset()
    _, processor, provider = pipeline({"events_per_request": 1000, "request_time_interval": 60})
    instrumentor = instrument(tracer_provider=provider)
    client = launch(arch)
    workload(client, USERS[:2])
    assert client.flush_events(mode="sync") is True
    assert sdk_requests(sdk_host) == []
    got = parsed_tags(sdk_host.events())
    assert sorted(map(json.dumps, got)) == sorted(map(json.dumps, expected))
    assert processor.stats()["events"] == {"delivered": 10, "failed": 0}
    sdk_host.reset()
    instrumentor.uninstrument()
    client.activate("ab", "late")
    assert [(r["method"], r["path"]) for r in sdk_host.requests()] == [("POST", "/events/t")]


def test_event_arch_with_batch_events_goes_through_vwo_otel(sdk_host, pipeline, instrument):
    # with batch_events the SDK itself uses its legacy dispatch (and batch format) for these accounts
    _, processor, provider = pipeline()
    instrument(tracer_provider=provider)
    client = launch(settings(isEventArchEnabled=True), batch_events={"events_per_request": 100})
    client.activate("ab", "a")
    client.flush_events(mode="sync")
    assert [e["u"] for e in sdk_host.events()] == [visitor_uuid(ACCOUNT_ID, "a")]
    assert sdk_requests(sdk_host) == []


def test_without_a_vwo_processor_the_sdk_sends_itself(sdk_host, instrument, caplog):
    provider = TracerProvider(sampler=VWOSampler(), shutdown_on_exit=False)  # no VWO processor
    instrument(tracer_provider=provider)
    client = launch()
    with caplog.at_level(logging.WARNING, logger="vwo_otel"):
        client.activate("ab", "a")
        client.activate("ab", "b")
    assert [r["path"] for r in sdk_requests(sdk_host)] == ["/server-side/track-user"] * 2
    assert [r.getMessage() for r in caplog.records].count(
        "vwo_otel: the VWO SDK's events of account 12345 reach no VWOSpanProcessor on the TracerProvider (it has "
        "no open VWO processor): the SDK sends them itself, on the calling thread (counted in "
        "processor.stats()['events']['handed_to_sdk']; VWOInstrumentor().instrument(strict=True) refuses such a "
        "set-up)") == 1


def test_an_unrecorded_span_is_sent_by_the_sdk(sdk_host, make_exporter, instrument, caplog):
    provider = TracerProvider(sampler=ALWAYS_OFF, shutdown_on_exit=False)  # not wrapped in VWOSampler
    processor = VWOSpanProcessor(make_exporter(), None)
    provider.add_span_processor(processor)
    instrument(tracer_provider=provider)
    with caplog.at_level(logging.WARNING, logger="vwo_otel"):
        launch().activate("ab", "a")
    assert [r["path"] for r in sdk_requests(sdk_host)] == ["/server-side/track-user"]
    assert "was not recorded" in caplog.text
    provider.shutdown()


def test_a_stock_processor_under_vwo_sampler_is_not_a_receiver(sdk_host, make_exporter, instrument):
    """VWOSampler keeps VWO spans unsampled, so a stock processor with a VWOExporter never sees
    them: the SDK must send them itself instead of vwo_otel losing them."""
    provider = TracerProvider(sampler=VWOSampler(), shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(make_exporter()))
    instrument(tracer_provider=provider)
    launch().activate("ab", "a")
    assert [r["path"] for r in sdk_requests(sdk_host)] == ["/server-side/track-user"]
    provider.shutdown()


def test_a_shared_logger_provider_is_not_used(sdk_host, make_exporter, instrument):
    """A LoggerProvider that also feeds the app's log exporter would hand it every event (visitor
    uuid, IP, user agent): the SDK sends the events itself, nothing reaches the app's exporter."""
    app = InMemoryLogRecordExporter()
    provider = LoggerProvider(shutdown_on_exit=False)
    provider.add_log_record_processor(SimpleLogRecordProcessor(app))
    provider.add_log_record_processor(VWOLogRecordProcessor(make_exporter(), None))
    instrument(logger_provider=provider)
    launch().activate("ab", "a")
    assert app.get_finished_logs() == ()
    assert [r["path"] for r in sdk_requests(sdk_host)] == ["/server-side/track-user"]
    provider.shutdown()


def test_after_the_processor_shut_down_the_sdk_sends_itself(sdk_host, make_exporter, instrument):
    provider = TracerProvider(sampler=VWOSampler(), shutdown_on_exit=False)
    processor = VWOSpanProcessor(make_exporter(), None)
    provider.add_span_processor(processor)
    instrument(tracer_provider=provider)
    client = launch()
    client.activate("ab", "before")
    provider.shutdown()
    client.activate("ab", "after")
    assert processor.stats()["dropped"] == {}  # nothing refused as already_shutdown
    assert [r["path"] for r in sdk_requests(sdk_host)] == ["/server-side/track-user"]  # "after", by the SDK


def test_development_mode_sends_nothing(sdk_host, pipeline, instrument):
    _, processor, provider = pipeline(None)
    instrument(tracer_provider=provider)
    workload(launch(is_development_mode=True), USERS[:2])
    assert sdk_host.requests() == [] and processor.stats()["events"] == {"delivered": 0, "failed": 0}


def test_uninstrument_restores_the_sdk(sdk_host, pipeline):
    original = EventDispatcher.dispatch
    _, processor, provider = pipeline(None)
    instrumentor = VWOInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    assert EventDispatcher.dispatch is not original
    instrumentor.uninstrument()
    assert EventDispatcher.dispatch is original
    launch().activate("ab", "a")
    assert [r["path"] for r in sdk_requests(sdk_host)] == ["/server-side/track-user"]
    assert processor.stats()["events"] == {"delivered": 0, "failed": 0}


def test_declares_the_supported_sdk_versions():
    assert list(VWOInstrumentor().instrumentation_dependencies()) == ["vwo-python-sdk >= 1.68, < 1.69"]


# -- the precomputed visitor id in the event model and on the wire --------------------------------------

U = visitor_uuid(ACCOUNT_ID, "Varun")


def precomputed(**extra: Any) -> dict[str, Any]:
    return {A.EVENT_TYPE: 1, A.VISITOR_UUID: U, A.ACCOUNT_ID: ACCOUNT_ID, A.CAMPAIGN_ID: 5, A.VARIATION_ID: 2,
            **extra}


def test_a_precomputed_visitor_id_is_sent_as_is():
    event = from_attributes(precomputed(), FIXED_SID * 10**9)
    assert (event.visitor_uuid, event.account_id, event.user_id, event.time) == (U, ACCOUNT_ID, "", FIXED_SID)
    encoder = LegacyFormat(ACCOUNT_ID, SDK_KEY)
    assert encoder.event_dict(event)["u"] == U
    assert encoder.realtime(event).query["u"] == U
    assert VWOEvent.from_fields(event.fields()) == event  # the spool's round trip keeps it


@pytest.mark.parametrize("attrs, message", [
    (precomputed(**{A.ACCOUNT_ID: None}), "vwo.visitor.uuid needs vwo.account_id"),
    (precomputed(**{A.VISITOR_UUID: U.lower()}), "vwo.visitor.uuid must be 32 uppercase hex"),
    (precomputed(**{A.ACCOUNT_ID: 0}), "vwo.account_id must be a positive int"),
])
def test_a_bad_precomputed_visitor_id_is_malformed(attrs, message):
    with pytest.raises(MalformedEvent, match=message):
        from_attributes({k: v for k, v in attrs.items() if v is not None}, None)


def test_a_visitor_id_never_goes_to_another_account():
    event = from_attributes(precomputed(), None)
    with pytest.raises(ValueError, match=f"an event of account {ACCOUNT_ID} .* for account {OTHER_ACCOUNT}"):
        LegacyFormat(OTHER_ACCOUNT, SDK_KEY).event_dict(event)


# -- zero-code: opentelemetry-instrument picks the instrumentor up by its entry point ------------------

ZERO_CODE_APP = """
import json, sys
import vwo
from vwo.constants import constants
scheme, host = sys.argv[1].split("://", 1)
constants.HTTPS_PROTOCOL, constants.ENDPOINTS.BASE_URL = scheme + "://", host  # loopback, whatever happens
client = vwo.launch(open(sys.argv[2]).read())
print("variation:", client.activate("ab", "Varun"), flush=True)
client.track("ab", "Varun", "purchase", revenue_value=7)
# no flush: vwo_otel delivers its queue at exit
"""


@pytest.mark.parametrize("app_env", [{}, {"VWO_ENV": "staging", "VWO_DEBUG": "1"}], ids=["plain", "app-vwo-vars"])
def test_opentelemetry_instrument_loads_it(tmp_path, receiver, app_env):
    """With the app's own VWO_* variables too: they never hand delivery back to the SDK."""
    from importlib import metadata

    bin_dir = Path(sys.executable).parent
    path = [str(tmp_path)]
    if "vwo" not in {ep.name for ep in metadata.entry_points(group="opentelemetry_instrumentor")}:
        # the entry point pyproject.toml declares, for an install that predates it
        dist = tmp_path / "vwo_otel_instrumentor-0.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: vwo-otel-instrumentor\nVersion: 0\n")
        (dist / "entry_points.txt").write_text(
            "[opentelemetry_instrumentor]\nvwo = vwo_otel.instrumentation:VWOInstrumentor\n")
    (tmp_path / "app.py").write_text(ZERO_CODE_APP)
    (tmp_path / "settings.json").write_text(settings())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "VWO_"))}
    env.update({
        "PYTHONPATH": os.pathsep.join(path + [env.get("PYTHONPATH", "")]),
        "VWO_ACCOUNT_ID": str(ACCOUNT_ID), "VWO_SDK_KEY": SDK_KEY, "VWO_ENDPOINT": receiver.url,
        "VWO_EVENTS_PER_REQUEST": "100", "VWO_REQUEST_TIME_INTERVAL": "600", "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none", "PYTHONWARNINGS": "ignore", **app_env,
    })
    proc = subprocess.run([str(bin_dir / "opentelemetry-instrument"), sys.executable, "app.py", receiver.url,
                           "settings.json"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert receiver.wait_for_events(2, timeout=10), proc.stderr
    assert [(e["eT"], e["u"]) for e in receiver.events()] == [(1, U), (2, U)]
    assert sdk_requests(receiver) == [] and len(receiver.requests()) == 1  # one batch, from vwo_otel


@pytest.mark.parametrize("processor_batch, named", [(None, True), ({"events_per_request": 1000}, False)],
                         ids=["processor-real-time", "processor-batches"])
def test_the_sdks_batch_events_before_a_real_time_processor_are_named(sdk_host, pipeline, instrument, caplog,
                                                                     processor_batch, named):
    """The SDK launched with batch_events, its events go through a processor that sends each one on
    its own (under opentelemetry-instrument: no VWO_EVENTS_PER_REQUEST): one warning says the SDK's
    batch settings do not apply; every event still goes through vwo_otel."""
    caplog.set_level(logging.WARNING, logger="vwo_otel")
    _, processor, provider = pipeline(processor_batch)
    instrument(tracer_provider=provider)
    client = launch(batch_events={"events_per_request": 1000, "request_time_interval": 60})
    workload(client)
    assert processor.flush_events() is True
    assert sdk_requests(sdk_host) == [] and processor.stats()["events"]["delivered"] == 5 * len(USERS)
    warnings = [r.getMessage() for r in caplog.records if "was given batch_events" in r.getMessage()]
    if named:
        (warning,) = warnings
        assert f"account {ACCOUNT_ID}" in warning and "sends each event on its own" in warning
        assert "VWO_EVENTS_PER_REQUEST" in warning
    else:
        assert warnings == []
