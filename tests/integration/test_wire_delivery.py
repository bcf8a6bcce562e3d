"""The wire format as the loopback receiver checks it: batch requests and real-time GETs over HTTP."""

from __future__ import annotations

import json
import time
from urllib.parse import parse_qs

from conftest import ACCOUNT_ID, SDK_KEY
from opentelemetry.sdk.trace import TracerProvider

from vwo_otel import HTTPStatusError, VWOEvents, VWOExporter, VWOSampler, VWOSpanProcessor
from vwo_otel import attributes as A
from vwo_otel._version import SDK_NAME, __version__

COMMON_KEYS = {"eT", "u", "sId", "visitor_ua", "visitor_ip"}


BATCH = {"events_per_request": 100, "request_time_interval": 60}


def _flush(processor: VWOSpanProcessor, receiver, n: int) -> None:
    assert processor.force_flush(10_000), "force_flush reported a failed or unfinished delivery"
    assert receiver.wait_for_events(n, timeout=5), f"receiver got {receiver.event_count()} of {n} events"


def _raw_events(receiver) -> list[dict]:
    """The events exactly as they were sent (the receiver keeps their JSON; its events() view is normalised)."""
    return [json.loads(ev["raw"]) for ev in receiver.events(with_raw=True)]


def test_visitor_uuid_on_the_wire(pipeline, receiver):
    events, processor, _ = pipeline(BATCH)
    for user in ("Varun", "Alice", "__123__"):
        events.activate(1, 1, user)
    _flush(processor, receiver, 3)
    assert [ev["u"] for ev in receiver.events()] == [
        "C4D95C097902569F9A2D2E87CD3201C8", "E3B732864F315FB6974BC3EF4E2FD920", "50A5B167FB6356A796F91D8951E480EE",
    ]


def test_one_batch_post_with_account_key_and_sdk_in_query(pipeline, receiver):
    events, processor, _ = pipeline(BATCH)
    events.activate(231, 1, "Varun")
    events.track(231, 1, 2, "Varun", revenue=12.5)
    events.track(231, 1, 2, "Alice")
    events.push("Varun", {"plan": "pro"})
    _flush(processor, receiver, 4)

    reqs = receiver.requests()
    assert len(reqs) == 1, reqs
    req = reqs[0]
    assert req["method"] == "POST"
    assert req["path"] == "/server-side/batch-events"
    assert req["status"] == 200 and req["accepted"] and req["n_events"] == 4
    query = parse_qs(req["query"], keep_blank_values=True)
    assert query["a"] == [str(ACCOUNT_ID)]
    assert query["env"] == ["***"]  # the receiver masks the key in what it stores; it checked it equals SDK_KEY
    assert query["sdk"] == [SDK_NAME]
    assert query["sdk-v"] == [__version__]


def test_batch_with_wrong_key_is_refused(receiver, callbacks):
    """The counterpart of the test above: the receiver really does check the key (401 otherwise)."""
    exporter = VWOExporter(ACCOUNT_ID, "some-other-key", endpoint=receiver.url, timeout=5.0)
    processor = VWOSpanProcessor(exporter, {**BATCH, "flush_callback": callbacks})
    provider = TracerProvider(sampler=VWOSampler(), shutdown_on_exit=False)
    provider.add_span_processor(processor)
    try:
        VWOEvents(tracer_provider=provider).activate(1, 2, "u")
        assert processor.force_flush(10_000) is False
        assert callbacks.wait_for(lambda calls: len(calls) == 1, 5)
        err, evs = callbacks.calls[0]
        assert isinstance(err, HTTPStatusError) and err.status == 401
        assert len(evs) == 1
        assert receiver.event_count() == 0
    finally:
        provider.shutdown()


def test_event_keys_by_type(pipeline, receiver):
    events, processor, _ = pipeline(BATCH)
    events.activate(231, 1, "Varun")
    events.is_feature_enabled(232, 2, "Varun")
    events.track(231, 1, 2, "Varun", revenue=12.5)
    events.track(231, 1, 3, "Varun")
    events.push("Varun", {"plan": "pro"})
    _flush(processor, receiver, 5)

    visit, feature, goal_r, goal, dim = _raw_events(receiver)
    assert set(visit) == COMMON_KEYS | {"e", "c"}
    assert (visit["eT"], visit["e"], visit["c"]) == (1, 231, 1)
    assert set(feature) == COMMON_KEYS | {"e", "c"}
    assert (feature["eT"], feature["e"], feature["c"]) == (1, 232, 2)
    assert set(goal_r) == COMMON_KEYS | {"e", "c", "g", "r"}
    assert (goal_r["eT"], goal_r["e"], goal_r["c"], goal_r["g"], goal_r["r"]) == (2, 231, 1, 2, 12.5)
    assert set(goal) == COMMON_KEYS | {"e", "c", "g"}, "r must be absent when no revenue is given"
    assert (goal["eT"], goal["g"]) == (2, 3)
    assert set(dim) == COMMON_KEYS | {"t"}
    assert dim["eT"] == 3
    assert isinstance(dim["t"], str), "t is a JSON *string*, not an object"
    assert json.loads(dim["t"]) == {"u": {"plan": "pro"}}
    for ev in (visit, feature, goal_r, goal, dim):
        assert ev["u"] == "C4D95C097902569F9A2D2E87CD3201C8"


def test_captured_example_event_shape(pipeline, receiver):
    """The example captured from the official SDK: same keys and values (sId aside)."""
    events, processor, _ = pipeline(BATCH)
    events.track(231, 1, 2, "Varun", revenue=12.5)
    _flush(processor, receiver, 1)
    (ev,) = _raw_events(receiver)
    expected = {"u": "C4D95C097902569F9A2D2E87CD3201C8", "visitor_ua": "", "visitor_ip": "",
                "c": 1, "e": 231, "g": 2, "eT": 2, "r": 12.5}
    assert {k: v for k, v in ev.items() if k != "sId"} == expected


def test_push_one_event_per_key(pipeline, receiver):
    events, processor, _ = pipeline(BATCH)
    events.push("Alice", {"plan": "pro", "country": "IN", "age": 42})
    _flush(processor, receiver, 3)
    got = _raw_events(receiver)
    assert [ev["eT"] for ev in got] == [3, 3, 3]
    assert [json.loads(ev["t"]) for ev in got] == [
        {"u": {"plan": "pro"}}, {"u": {"country": "IN"}}, {"u": {"age": "42"}},  # values go out as strings
    ]


def test_sid_is_unix_seconds_of_the_event(pipeline, receiver):
    events, processor, provider = pipeline(BATCH)
    before = time.time()
    events.activate(1, 1, "Varun")
    after = time.time()
    # An event that happened earlier keeps its own time, not the time of delivery.
    past = int(before) - 3600
    span = provider.get_tracer("app").start_span(
        "vwo.visitor", attributes={A.EVENT_TYPE: 1, A.USER_ID: "Alice", A.CAMPAIGN_ID: 1, A.VARIATION_ID: 1},
        start_time=past * 1_000_000_000,
    )
    span.end()
    _flush(processor, receiver, 2)
    now_ev, past_ev = _raw_events(receiver)
    assert isinstance(now_ev["sId"], int)
    assert int(before) <= now_ev["sId"] <= after
    assert abs(now_ev["sId"] - time.time()) < 60
    assert past_ev["sId"] == past


def test_visitor_ua_and_ip(pipeline, receiver):
    events, processor, _ = pipeline(BATCH)
    ua, ip = "Mozilla/5.0 (X11; Linux x86_64) \u00e9t\u00e9", "203.0.113.7"
    events.activate(1, 1, "Varun")  # unknown: empty strings
    events.activate(1, 1, "Varun", visitor_ua=ua, visitor_ip=ip)
    events.track(1, 1, 1, "Varun", visitor_ua=ua)
    events.push("Varun", {"k": "v"}, visitor_ip=ip)
    events.track(1, 1, 1, "Varun", visitor_ua=None, visitor_ip=None)  # None: unknown
    _flush(processor, receiver, 5)
    got = [(ev["visitor_ua"], ev["visitor_ip"]) for ev in _raw_events(receiver)]
    assert got == [("", ""), (ua, ip), (ua, ""), ("", ip), ("", "")]


def test_body_is_compact_json(pipeline, receiver):
    """The body on the wire is compact: its byte count equals the compact encoding of its events."""
    events, processor, _ = pipeline(BATCH)
    events.activate(1, 2, "Varun", visitor_ua="a b: c, d")
    events.track(1, 2, 3, "Varun", revenue=9.75)
    events.push("Varun", {"k": "v w"})
    _flush(processor, receiver, 3)
    (req,) = receiver.requests()
    raws = [ev["raw"] for ev in receiver.events(with_raw=True)]  # each re-encoded compactly by the receiver
    assert req["body_bytes"] == len(b'{"ev":[' + ",".join(raws).encode() + b"]}")


def test_realtime_requests(pipeline, receiver):
    """batch_events=None: VWO's single-event GETs, with ua/ip as headers when set."""
    events, processor, _ = pipeline(None, max_concurrent_requests=1)  # one at a time: arrival order
    events.activate(231, 1, "Varun", visitor_ua="UA", visitor_ip="198.51.100.1")
    events.track(231, 1, 2, "Varun", revenue=12.5)
    events.push("Varun", {"plan": "pro"})
    assert receiver.wait_for_events(3, timeout=10)
    reqs = receiver.requests()
    assert [(r["method"], r["path"], r["status"]) for r in reqs] == [
        ("GET", "/server-side/track-user", 200),
        ("GET", "/server-side/track-goal", 200),
        ("GET", "/server-side/push", 200),
    ]
    q = [parse_qs(r["query"]) for r in reqs]
    assert q[0]["account_id"] == [str(ACCOUNT_ID)] and q[0]["env"] == ["***"]
    assert q[0]["experiment_id"] == ["231"] and q[0]["combination"] == ["1"]
    assert q[1]["goal_id"] == ["2"] and q[1]["r"] == ["12.5"]
    assert json.loads(q[2]["tags"][0]) == {"u": {"plan": "pro"}}
    got = receiver.events()
    assert (got[0]["visitor_ua"], got[0]["visitor_ip"]) == ("UA", "198.51.100.1")
    assert [ev["eT"] for ev in got] == [1, 2, 3]
    assert all(ev["u"] == "C4D95C097902569F9A2D2E87CD3201C8" for ev in got)


def test_sdk_key_only_in_query_and_header_not_in_body(pipeline, receiver):
    events, processor, _ = pipeline(BATCH)
    events.activate(1, 2, "Varun")
    _flush(processor, receiver, 1)
    raw = receiver.events(with_raw=True)[0]["raw"]
    assert SDK_KEY not in raw
