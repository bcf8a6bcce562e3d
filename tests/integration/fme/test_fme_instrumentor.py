"""VWOFMEInstrumentor with the real FME SDK 1.65.0: the wire compared with what the SDK alone
sends, both brands, both signals, the SDK sending nothing itself (and leaving no thread behind),
events it cannot hand to vwo_otel sent by the SDK itself (never lost, never twice), threads,
``uninstrument``."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from fmetests import ACCOUNT, OTHER_ACCOUNT, needs_fme_delivery, run_app

from vwo_otel import visitor_uuid

pytest.importorskip("wingify", reason="needs the FME SDK: run in .venv-fme (python3 dev.py fme)")
pytest_plugins = ("fmetests",)  # the fixtures sdk_side and otel_side

SESSION = 1_700_000_000
SLOW = {"events_per_request": 1000, "request_time_interval": 600}
#: (alone, instrumented) runs of the same workload: 4 users x get_flag + track_event + set_attribute.
WORKLOAD = {"users": 4, "session": SESSION}


def normalized(d: dict) -> str:
    """An event ``d`` without what differs on purpose between the SDK alone and vwo_otel (see
    docs/fme.md, "What differs on the wire"), as comparable text."""
    d = json.loads(json.dumps(d))
    del d["msgId"], d["event"]["time"]  # msgId: unique in vwo_otel; time: another run
    props = d["event"]["props"]
    for key in ("vwo_sdkName", "vwo_sdkVersion", "vwoMeta"):  # vwo_otel's name; vwoMeta: sent less often
        props.pop(key, None)
    if d["sessionId"] != SESSION:  # the SDK's own events and holdout impressions: the time they were made
        del d["sessionId"]
    return json.dumps(d, sort_keys=True)


def by_user(events: list[dict]) -> Counter:
    return Counter((d["visId"], d["event"]["name"]) for d in events)


@needs_fme_delivery
@pytest.mark.parametrize("sdk_batch", [None, SLOW], ids=["sdk-real-time", "sdk-batch_event_data"])
@pytest.mark.parametrize("signal", ["span", "log"])
def test_the_wire_is_what_the_sdk_alone_sends(sdk_side, otel_side, sdk_batch, signal):
    env = {"batch": sdk_batch} if sdk_batch else {}
    alone = run_app(sdk_side, None, "alone", {**WORKLOAD, "flush": bool(sdk_batch), "sleep": 1, "hard_exit": True},
                    **env)
    assert alone.returncode == 0, alone.stderr
    expected = sdk_side.events()
    sdk_side.reset()
    app = run_app(sdk_side, otel_side, "instrumented", {**WORKLOAD, "flush": True}, signal=signal,
                  processor_batch=SLOW, **env)
    assert app.returncode == 0, app.stderr
    assert app.results()["values"] == alone.results()["values"]  # the SDK's decisions are untouched
    assert app.results()["flush"] is True
    assert sdk_side.event_requests() == []  # the SDK sent nothing itself
    sent = otel_side.events()
    assert sorted(map(normalized, sent)) == sorted(map(normalized, expected))
    assert len({d["msgId"] for d in sent}) == len(sent)  # unique, unlike the SDK's
    (request,) = otel_side.event_requests()  # one batch: the processor's settings, not the SDK's
    assert request.kind == "batch" and request.query["a"] == str(ACCOUNT)
    assert app.warnings() == []


@needs_fme_delivery
def test_wingify_init_is_the_same_client(sdk_side, otel_side):
    app = run_app(sdk_side, otel_side, "instrumented", {**WORKLOAD, "flush": True}, brand="wingify",
                  processor_batch=SLOW)
    assert app.returncode == 0, app.stderr
    assert app.results()["flush"] is True
    assert sdk_side.event_requests() == []
    users = by_user(otel_side.events())
    for i in range(4):
        visitor = visitor_uuid(ACCOUNT, f"user-{i}")
        assert users[(visitor, "purchase")] == 1 and users[(visitor, "vwo_syncVisitorProp")] == 1


@pytest.mark.parametrize("sdk_batch", [None, {}], ids=["sdk-real-time", "sdk-batch_event_data"])
def test_no_thread_of_the_sdk_keeps_the_process_alive(sdk_side, otel_side, sdk_batch):
    """The settings poll is a daemon timer; the SDK's batch queue starts no timer of its own."""
    env = {"batch": sdk_batch} if sdk_batch is not None else {}
    app = run_app(sdk_side, otel_side, "instrumented", {"users": 2, "sleep": 0.5}, timeout=15, **env)
    assert app.returncode == 0, app.stderr
    assert [t for t in app.results()["threads"] if not t[1]] == []  # (name, daemon, type)
    assert app.seconds < 10
    assert sdk_side.requests("settings")  # the SDK still fetches its settings itself


def fallback(sdk_side, otel_side, **env):
    """What the SDK sends when its events cannot go through vwo_otel, and the app's warnings."""
    alone = run_app(sdk_side, None, "alone", {**WORKLOAD, "sleep": 1, "hard_exit": True})
    expected = sorted(map(normalized, sdk_side.events()))
    sdk_side.reset()
    app = run_app(sdk_side, otel_side, "instrumented", {**WORKLOAD, "sleep": 1, "hard_exit": True}, **env)
    assert alone.returncode == app.returncode == 0, app.stderr
    assert otel_side.event_requests() == []
    assert sorted(map(normalized, sdk_side.events())) == expected  # none lost, none twice
    return app.warnings()


def test_without_a_vwo_processor_the_sdk_sends_its_events_itself(sdk_side, otel_side):
    (warning,) = fallback(sdk_side, otel_side, processor="none")
    assert f"events of account {ACCOUNT} reach no VWOSpanProcessor on the TracerProvider" in warning
    assert "handed_to_sdk" in warning and "VWOFMEInstrumentor().instrument(strict=True)" in warning


@needs_fme_delivery
def test_another_accounts_processor_leaves_the_events_to_the_sdk(sdk_side, otel_side):
    (warning,) = fallback(sdk_side, otel_side, processor=str(OTHER_ACCOUNT))
    assert f"account {ACCOUNT}" in warning and f"delivers account {OTHER_ACCOUNT}" in warning


@needs_fme_delivery
def test_a_shut_down_processor_leaves_the_events_to_the_sdk(sdk_side, otel_side):
    (warning,) = fallback(sdk_side, otel_side, processor="shutdown")
    assert "is shut down" in warning


@needs_fme_delivery
def test_events_from_four_threads_arrive_once_each(sdk_side, otel_side):
    users = 200
    app = run_app(sdk_side, otel_side, "instrumented", {"users": users, "threads": 4, "flush": True},
                  processor_batch={"events_per_request": 50, "request_time_interval": 1})
    assert app.returncode == 0, app.stderr
    assert app.results()["flush"] is True
    assert sdk_side.event_requests() == []
    sent = otel_side.events()
    assert len({d["msgId"] for d in sent}) == len(sent)
    counts = by_user(sent)
    for i in range(users):
        visitor = visitor_uuid(ACCOUNT, f"user-{i}")
        assert counts[(visitor, "purchase")] == 1 and counts[(visitor, "vwo_syncVisitorProp")] == 1
        assert 1 <= counts[(visitor, "vwo_variationShown")] <= 3
    assert app.results()["stats"]["events"]["delivered"] == len(sent)


@needs_fme_delivery
@pytest.mark.parametrize("sdk_batch", [None, {"events_per_request": 100, "request_time_interval": 1}],
                         ids=["sdk-real-time", "sdk-batch_event_data"])
def test_uninstrument_gives_the_sdk_back(sdk_side, otel_side, sdk_batch):
    env = {"batch": sdk_batch} if sdk_batch else {}
    app = run_app(sdk_side, otel_side, "instrumented",
                  {"users": 1, "flush": True, "uninstrument": True, "second_wave": 1, "sleep": 2, "hard_exit": True},
                  processor_batch=SLOW, **env)
    assert app.returncode == 0, app.stderr
    assert app.results()["restored"] is True
    before, after = visitor_uuid(ACCOUNT, "user-0"), visitor_uuid(ACCOUNT, "second-0")
    assert {d["visId"] for d in otel_side.events() if d["event"]["name"] == "purchase"} == {before}
    assert {d["visId"] for d in sdk_side.events() if d["event"]["name"] == "purchase"} == {after}


def test_strict_refuses_a_provider_that_delivers_no_vwo_account():
    """instrument(strict=True): events that would stay with the SDK are refused at set-up, before
    anything is patched (the account is known once the SDK is initialised: it falls back then)."""
    from opentelemetry.sdk.trace import TracerProvider

    from vwo_otel import VWOSampler
    from vwo_otel.errors import ConfigError
    from vwo_otel.instrumentation import VWOFMEInstrumentor

    bare = TracerProvider(sampler=VWOSampler(), shutdown_on_exit=False)
    instrumentor = VWOFMEInstrumentor()
    with pytest.raises(ConfigError, match=r"VWOFMEInstrumentor\(strict=True\): no VWOSpanProcessor"):
        instrumentor.instrument(tracer_provider=bare, strict=True)
    assert not instrumentor.is_instrumented_by_opentelemetry


def test_the_legacy_instrumentor_points_to_this_one(caplog):
    """Tried as a new user would: VWOInstrumentor with the FME SDK installed says which to use."""
    import logging

    from vwo_otel.instrumentation import VWOInstrumentor

    with caplog.at_level(logging.ERROR, logger="vwo_otel"):
        VWOInstrumentor().instrument()
    assert "use vwo_otel.instrumentation.VWOFMEInstrumentor" in caplog.text


def test_the_settings_file_found_valid_is_not_checked_again_but_any_other_is():
    """The SDK checks its whole settings file against its JSON schema on every call (about 0.8 ms);
    instrumented, the object it last found valid is not checked again: a new one always is."""
    import copy
    import json
    from pathlib import Path

    from opentelemetry.sdk.trace import TracerProvider
    from wingify.services.settings_manager import SettingsManager

    from vwo_otel import VWOSampler
    from vwo_otel.instrumentation import VWOFMEInstrumentor

    settings = json.loads((Path(__file__).parents[2] / "data" / "fme_settings.json").read_text())
    broken = copy.deepcopy(settings)
    broken["features"] = "not a list"
    instrumentor = VWOFMEInstrumentor()
    instrumentor.instrument(tracer_provider=TracerProvider(sampler=VWOSampler(), shutdown_on_exit=False))
    try:
        assert SettingsManager.is_settings_valid(settings) is True
        assert SettingsManager.is_settings_valid(broken) is False  # another object: checked
        assert SettingsManager.is_settings_valid(settings) is True
        settings_copy = copy.deepcopy(settings)
        settings_copy["accountId"] = "x"  # an update is a new object: checked again
        assert SettingsManager.is_settings_valid(settings_copy) is SettingsManager.__dict__[
            "is_settings_valid"].__wrapped__(settings_copy)
    finally:
        instrumentor.uninstrument()
    assert isinstance(vars(SettingsManager)["is_settings_valid"], staticmethod)


@pytest.mark.parametrize("brand", ["vwo", "wingify"])
def test_strict_refuses_init_for_an_account_no_processor_delivers(brand):
    """instrument(strict=True), then vwo.init / wingify.init for another account than the
    processor's: refused (ConfigError naming both accounts) before the client is made."""
    import importlib

    from opentelemetry.sdk.trace import TracerProvider

    from vwo_otel import VWOExporter, VWOSampler, VWOSpanProcessor
    from vwo_otel.errors import ConfigError
    from vwo_otel.instrumentation import VWOFMEInstrumentor

    sdk = importlib.import_module(brand)
    provider = TracerProvider(sampler=VWOSampler(), shutdown_on_exit=False)
    processor = VWOSpanProcessor(VWOExporter(OTHER_ACCOUNT, "k" * 32), None)
    provider.add_span_processor(processor)
    instrumentor = VWOFMEInstrumentor()
    instrumentor.instrument(tracer_provider=provider, strict=True)
    try:
        with pytest.raises(ConfigError) as info:
            sdk.init({"account_id": ACCOUNT, "sdk_key": "k" * 32})
        assert f"account {ACCOUNT}" in str(info.value) and f"account {OTHER_ACCOUNT}" in str(info.value)
    finally:
        instrumentor.uninstrument()
        processor.shutdown()
    assert not hasattr(importlib.import_module("wingify.wingify").init, "__wrapped__")


@needs_fme_delivery
@pytest.mark.parametrize("processor_batch, named", [('"realtime"', True), (None, False)],
                         ids=["processor-real-time", "processor-batches"])
def test_the_sdks_batch_settings_before_a_real_time_processor_are_named(sdk_side, otel_side, processor_batch,
                                                                        named):
    """The SDK given batch_event_data, its events go through a processor that sends each one on its
    own (under opentelemetry-instrument: no VWO_EVENTS_PER_REQUEST): one warning says the SDK's
    batch settings do not apply; every event still arrives once, through vwo_otel."""
    app = run_app(sdk_side, otel_side, "instrumented", {**WORKLOAD, "flush": True}, batch=SLOW,
                  processor_batch=processor_batch)
    assert app.returncode == 0, app.stderr
    assert sdk_side.event_requests() == [] and otel_side.event_requests() != []
    warnings = [w for w in app.warnings() if "batch_event_data" in w]
    if named:
        (warning,) = warnings
        assert f"account {ACCOUNT}" in warning and "sends each event on its own" in warning
        assert "VWO_EVENTS_PER_REQUEST" in warning
    else:
        assert warnings == []
