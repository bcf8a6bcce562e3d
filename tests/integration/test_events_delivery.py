"""``VWOEvents`` and the attribute contract delivered over HTTP to the loopback receiver."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from cases import BAD_CALLS, MALFORMED
from conftest import ACCOUNT_ID
from opentelemetry.sdk.trace import SpanProcessor

from vwo_otel import VWOEvents, visitor_uuid
from vwo_otel import attributes as A

BATCH = {"events_per_request": 100, "request_time_interval": 60}


U_VARUN = "C4D95C097902569F9A2D2E87CD3201C8"


class CountingProcessor(SpanProcessor):
    """Counts every span that ends on the provider (VWO or not, sampled or not)."""

    def __init__(self) -> None:
        self.ended: list = []

    def on_end(self, span: Any) -> None:
        self.ended.append(span)


def _delivered(processor, receiver, n: int) -> list[dict]:
    assert processor.force_flush(10_000), "force_flush reported a failed or unfinished delivery"
    assert receiver.wait_for_events(n, timeout=5), f"receiver got {receiver.event_count()} of {n} events"
    assert receiver.event_count() == n
    return receiver.events()


def _strip(ev: dict) -> dict:
    return {k: v for k, v in ev.items() if k not in ("sId", "u", "visitor_ua", "visitor_ip")}


def test_activate(pipeline, receiver):
    events, processor, _ = pipeline(BATCH)
    assert events.activate(231, 1, "Varun") is None
    (ev,) = _delivered(processor, receiver, 1)
    assert _strip(ev) == {"eT": 1, "e": 231, "c": 1}
    assert ev["u"] == U_VARUN


def test_is_feature_enabled_is_a_visitor_event(pipeline, receiver):
    events, processor, _ = pipeline(BATCH)
    events.is_feature_enabled(77, 3, "Varun", visitor_ua="ua", visitor_ip="10.0.0.1")
    (ev,) = _delivered(processor, receiver, 1)
    assert _strip(ev) == {"eT": 1, "e": 77, "c": 3}
    assert (ev["visitor_ua"], ev["visitor_ip"]) == ("ua", "10.0.0.1")


@pytest.mark.parametrize(
    ("kwargs", "expected_r"),
    [({}, None), ({"revenue": None}, None), ({"revenue": 10}, 10), ({"revenue": 12.5}, 12.5),
     ({"revenue": 0}, 0), ({"revenue": -3.25}, -3.25)],
    ids=["no-revenue", "revenue-None", "int", "float", "zero", "negative-refund"],
)
def test_track(pipeline, receiver, kwargs, expected_r):
    events, processor, _ = pipeline(BATCH)
    events.track(231, 1, 2, "Varun", **kwargs)
    (ev,) = _delivered(processor, receiver, 1)
    expected = {"eT": 2, "e": 231, "c": 1, "g": 2}
    if expected_r is not None:
        expected["r"] = expected_r
    assert _strip(ev) == expected
    if expected_r is not None:
        assert type(ev["r"]) is type(expected_r), "an int revenue goes out as an int, a float as a float"


def test_push_multiple_keys_one_event_each(pipeline, receiver):
    events, processor, _ = pipeline(BATCH)
    events.push("Varun", {"plan": "pro", "country": "IN", "score": 7, "ratio": 0.5})
    evs = _delivered(processor, receiver, 4)
    assert [ev["eT"] for ev in evs] == [3, 3, 3, 3]
    assert [json.loads(ev["t"]) for ev in evs] == [
        {"u": {"plan": "pro"}}, {"u": {"country": "IN"}}, {"u": {"score": "7"}}, {"u": {"ratio": "0.5"}},
    ]
    assert {ev["u"] for ev in evs} == {U_VARUN}


def test_int_user_id_is_its_str(pipeline, receiver):
    events, processor, _ = pipeline(BATCH)
    events.activate(1, 1, 42)
    events.activate(1, 1, "42")
    a, b = _delivered(processor, receiver, 2)
    assert a["u"] == b["u"] == visitor_uuid(ACCOUNT_ID, "42")


def test_unicode_user_and_dimension(pipeline, receiver):
    events, processor, _ = pipeline(BATCH)
    events.push("J\u00fcrgen \u2603", {"st\u00e4dt": "M\u00fcnchen"})
    (ev,) = _delivered(processor, receiver, 1)
    assert ev["u"] == visitor_uuid(ACCOUNT_ID, "J\u00fcrgen \u2603")
    assert json.loads(ev["t"]) == {"u": {"st\u00e4dt": "M\u00fcnchen"}}




@pytest.mark.parametrize(("method", "args", "kwargs", "argname"), [c[1:] for c in BAD_CALLS],
                         ids=[c[0] for c in BAD_CALLS])
def test_bad_input_raises_names_argument_and_emits_nothing(pipeline, receiver, method, args, kwargs, argname):
    events, processor, provider = pipeline(BATCH)
    counter = CountingProcessor()
    provider.add_span_processor(counter)

    events.activate(10, 1, "before")  # queued before the bad call
    events.track(10, 1, 5, "before", revenue=1.5)
    assert len(counter.ended) == 2

    with pytest.raises((TypeError, ValueError), match=argname):
        getattr(events, method)(*args, **kwargs)
    assert len(counter.ended) == 2, "a refused call must emit no span at all (not even part of a push)"

    events.push("after", {"k": "v"})  # the instance keeps working
    evs = _delivered(processor, receiver, 3)
    assert [(ev["eT"], ev["u"]) for ev in evs] == [
        (1, visitor_uuid(ACCOUNT_ID, "before")), (2, visitor_uuid(ACCOUNT_ID, "before")),
        (3, visitor_uuid(ACCOUNT_ID, "after")),
    ]
    assert processor.stats()["events"] == {"delivered": 3, "failed": 0}




@pytest.mark.parametrize(("attrs", "named"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_span_is_skipped_with_log_and_batch_survives(pipeline, receiver, caplog, attrs, named):
    events, processor, provider = pipeline({"events_per_request": 4, "request_time_interval": 60})
    tracer = provider.get_tracer("my.app")
    caplog.set_level(logging.WARNING, logger="vwo_otel")

    events.activate(1, 1, "Varun")
    tracer.start_span("bad vwo event", attributes=attrs).end()  # raises nothing in the app
    events.track(1, 1, 2, "Varun", revenue=3.0)
    with tracer.start_as_current_span("also bad, set after start") as span:
        for k, v in attrs.items():
            span.set_attribute(k, v)
    events.push("Varun", {"k": "v"})
    events.activate(2, 2, "Alice")  # 4 good events: a full batch

    assert receiver.wait_for_events(4, timeout=10)
    assert processor.force_flush(10_000) is False  # the malformed record was dropped
    evs = receiver.events()
    assert [ev["eT"] for ev in evs] == [1, 2, 3, 1]
    (req,) = receiver.requests()
    assert req["n_events"] == 4 and req["status"] == 200

    lines = [r for r in caplog.records if r.name.startswith("vwo_otel") and "malformed" in r.getMessage()]
    assert lines, "a skipped malformed VWO span must be logged"
    assert lines[0].levelno == logging.WARNING
    assert named in lines[0].getMessage(), lines[0].getMessage()


def test_malformed_log_lines_are_rate_limited(pipeline, receiver, caplog):
    """A buggy emitter in a hot loop must not flood the log."""
    events, processor, provider = pipeline(BATCH)
    tracer = provider.get_tracer("my.app")
    caplog.set_level(logging.WARNING, logger="vwo_otel")
    for _ in range(100):
        tracer.start_span("bad", attributes={A.EVENT_TYPE: 2, A.USER_ID: "u"}).end()
    events.activate(1, 1, "Varun")
    assert processor.force_flush(10_000) is False  # the malformed records were dropped
    assert receiver.wait_for_events(1, timeout=5)
    lines = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert 1 <= len(lines) <= 2


def test_users_own_tracer_with_documented_attributes(pipeline, receiver):
    """The attribute names in vwo_otel.attributes are a public contract: any tracer can emit events."""
    _, processor, provider = pipeline(BATCH)
    tracer = provider.get_tracer("my.app")
    tracer.start_span("checkout.impression", attributes={
        A.EVENT_TYPE: A.VISITOR, A.USER_ID: "Varun", A.CAMPAIGN_ID: 231, A.VARIATION_ID: 1,
        A.VISITOR_UA: "Mozilla/5.0", A.VISITOR_IP: "192.0.2.1",
    }).end()
    tracer.start_span("checkout.conversion", attributes={
        A.EVENT_TYPE: A.GOAL, A.USER_ID: "Varun", A.CAMPAIGN_ID: 231, A.VARIATION_ID: 1, A.GOAL_ID: 2,
        A.REVENUE: 12.5,
    }).end()
    tracer.start_span("conversion.no.revenue", attributes={
        A.EVENT_TYPE: A.GOAL, A.USER_ID: "Varun", A.CAMPAIGN_ID: 231, A.VARIATION_ID: 1, A.GOAL_ID: 3,
    }).end()
    with tracer.start_as_current_span("profile.update") as span:  # attributes set after start count too
        span.set_attribute(A.EVENT_TYPE, A.CUSTOM_DIMENSION)
        span.set_attribute(A.USER_ID, "Varun")
        span.set_attribute(A.DIMENSION_KEY, "plan")
        span.set_attribute(A.DIMENSION_VALUE, "pro")
    tracer.start_span("GET /health", attributes={"http.route": "/health"}).end()  # not a VWO event

    evs = _delivered(processor, receiver, 4)
    assert evs[0] == {"eT": 1, "u": U_VARUN, "sId": evs[0]["sId"], "e": 231, "c": 1,
                      "visitor_ua": "Mozilla/5.0", "visitor_ip": "192.0.2.1"}
    assert _strip(evs[1]) == {"eT": 2, "e": 231, "c": 1, "g": 2, "r": 12.5}
    assert _strip(evs[2]) == {"eT": 2, "e": 231, "c": 1, "g": 3}
    assert _strip(evs[3]) == {"eT": 3, "t": '{"u":{"plan":"pro"}}'}


def test_own_tracer_matches_vwo_events(pipeline, receiver):
    """An event from the app's tracer is byte-for-byte what VWOEvents sends for the same call."""
    events, processor, provider = pipeline(BATCH)
    events.track(231, 1, 2, "Varun", revenue=12.5, visitor_ua="ua", visitor_ip="ip")
    provider.get_tracer("my.app").start_span("x", attributes={
        A.EVENT_TYPE: 2, A.USER_ID: "Varun", A.CAMPAIGN_ID: 231, A.VARIATION_ID: 1, A.GOAL_ID: 2, A.REVENUE: 12.5,
        A.VISITOR_UA: "ua", A.VISITOR_IP: "ip",
    }).end()
    _delivered(processor, receiver, 2)
    a, b = (ev["raw"] for ev in receiver.events(with_raw=True))
    a, b = json.loads(a), json.loads(b)
    assert abs(a.pop("sId") - b.pop("sId")) <= 1
    assert a == b


@pytest.mark.parametrize("call", [
    lambda vwo: vwo.activate(1, 2, "user-\ud800"),
    lambda vwo: vwo.push("u", {"plan": "pro-\udcff"}),
    lambda vwo: vwo.track(1, 2, 3, "u", visitor_ua="UA \ud83d"),
], ids=["user_id", "dimension value", "visitor_ua"])
def test_lone_surrogate_is_refused_at_the_call(call):
    """No UTF-8 request can carry a lone surrogate: refused at the call, naming the argument,
    instead of failing the whole batch later on the delivery thread."""
    from opentelemetry.sdk.trace import TracerProvider

    from vwo_otel import VWOExporter, VWOSpanProcessor

    provider = TracerProvider(shutdown_on_exit=False)
    processor = VWOSpanProcessor(VWOExporter(12345, "sdk-key-0123456789", endpoint="http://127.0.0.1:9"),
                                 {"events_per_request": 10})
    provider.add_span_processor(processor)
    with pytest.raises(ValueError, match="lone surrogate"):
        call(VWOEvents(tracer_provider=provider))
    assert processor.stats()["queued"] == 0
    processor.shutdown()
