"""FME events (vwo-fme-python-sdk's format): the table rows, the decoder, the v2 wire format and
``VWOEvents``' FME methods (no network)."""

from __future__ import annotations

import json
import math

import pytest
from conftest import ACCOUNT_ID, SDK_KEY

from vwo_otel import VWOEvents, VWOExporter, visitor_uuid
from vwo_otel import attributes as A
from vwo_otel.event import FMEEvent, MalformedEvent, VWOEvent, from_attributes
from vwo_otel.event_types import CUSTOM, DROP_PRIORITY, SDK_EVENT, TYPES, row_for
from vwo_otel.export.fme import FMEFormat, masked
from vwo_otel.export.wire import batch_body

T_NS = 1_795_663_948_123_456_789
T_MS = T_NS // 1_000_000
VARUN = "C4D95C097902569F9A2D2E87CD3201C8"


def decode(**attrs):
    return from_attributes({k.replace("__", "."): v for k, v in attrs.items()}, T_NS)


def impression(**extra):
    return from_attributes({A.EVENT_TYPE: A.VARIATION_SHOWN, A.USER_ID: "Varun", A.CAMPAIGN_ID: 231,
                            A.VARIATION_ID: 2, **extra}, T_NS)


def d_of(event, fmt=None):
    return (fmt or FMEFormat(ACCOUNT_ID, SDK_KEY)).event_dict(event)["d"]


def test_names_find_their_rows():
    assert row_for(A.VARIATION_SHOWN).key == A.VARIATION_SHOWN
    assert row_for("purchase").key == CUSTOM and row_for("vwo_feTrackUsage").key == SDK_EVENT
    assert row_for("vwo_fmeSdkInit").key == "vwo_fmeSdkInit"
    assert row_for(1).key == 1 and row_for(True) is None and row_for(9) is None and row_for("") is None
    assert {DROP_PRIORITY[CUSTOM], DROP_PRIORITY[A.VARIATION_SHOWN]} == {1, 0}  # conversions outrank impressions


def test_an_impression_decodes_and_encodes_as_fme_does():
    ev = impression(**{A.VISITOR_UA: "UA", A.VISITOR_IP: "1.2.3.4", A.VISITOR_PROPERTIES: '{"plan": "pro"}'})
    assert isinstance(ev, FMEEvent) and ev.etype == ev.name == A.VARIATION_SHOWN
    assert (ev.time, ev.time_ms) == (T_NS // 10**9, T_MS)
    d = d_of(ev)
    assert d["visId"] == VARUN and d["sessionId"] == T_NS // 10**9
    assert d["event"]["name"] == A.VARIATION_SHOWN and d["event"]["time"] == T_MS
    props = d["event"]["props"]
    assert props == {"vwo_sdkName": "vwo-otel-python", "vwo_sdkVersion": props["vwo_sdkVersion"],
                     "vwo_envKey": SDK_KEY, "id": 231, "variation": "2", "isFirst": 1}
    assert d["visitor"]["props"] == {"vwo_fs_environment": SDK_KEY, "plan": "pro", "ip": "1.2.3.4"}
    assert (d["visitor_ua"], d["visitor_ip"]) == ("UA", "1.2.3.4")
    assert "visitor_ua" not in d_of(impression())  # absent when unknown, as the FME SDK sends it
    holdout = d_of(impression(**{A.FEATURE_ID: 9, A.VISITOR_IP: "1.2.3.4"}))  # as the SDK's holdout payload
    assert holdout["event"]["props"]["fId"] == 9 and holdout["event"]["props"]["variation"] == 2
    assert "ip" not in holdout["visitor"]["props"]


def test_a_custom_event_carries_its_properties_over_the_placeholders():
    ev = decode(vwo__event__type="purchase", vwo__user_id="Varun", vwo__event__properties='{"amount": 12.5, "id": 7}',
                vwo__session_id=1700000000)
    assert ev.etype == CUSTOM and ev.name == "purchase"
    d = d_of(ev)
    assert d["event"]["name"] == "purchase" and d["sessionId"] == 1700000000
    props = d["event"]["props"]
    assert props["isCustomEvent"] is True and props["variation"] == 1
    assert props["amount"] == 12.5 and props["id"] == 7  # FME's track_event: the event's own keys win


def test_visitor_attributes_go_into_visitor_props():
    ev = decode(vwo__event__type=A.SYNC_VISITOR_PROP, vwo__user_id="Varun",
                vwo__visitor__properties='{"plan": "pro", "age": 3}')
    d = d_of(ev)
    assert d["event"]["props"]["isCustomEvent"] is True and d["event"]["props"]["vwo_fs_environment"] == SDK_KEY
    assert d["visitor"]["props"] == {"vwo_fs_environment": SDK_KEY, "plan": "pro", "age": 3}


def test_the_sdks_own_events_keep_their_shape():
    """The init event carries vwo_fs_environment; the usage statistics neither vwo_envKey nor a
    visitor object; a web visitor's id (D + 32 hex) is a valid FME visId."""
    init = d_of(decode(vwo__event__type="vwo_fmeSdkInit", vwo__visitor__uuid="D" + VARUN, vwo__account_id=ACCOUNT_ID))
    assert init["visId"] == "D" + VARUN and init["event"]["props"]["vwo_fs_environment"] == SDK_KEY
    stats = d_of(decode(vwo__event__type="vwo_sdkUsageStats", vwo__visitor__uuid=VARUN, vwo__account_id=ACCOUNT_ID,
                        vwo__event__properties='{"product": "fme"}'))
    assert "vwo_envKey" not in stats["event"]["props"] and "visitor" not in stats
    with pytest.raises(MalformedEvent, match="32 uppercase hex"):  # the legacy format's u: no web ids
        from_attributes({A.EVENT_TYPE: 1, A.VISITOR_UUID: "D" + VARUN, A.ACCOUNT_ID: ACCOUNT_ID, A.CAMPAIGN_ID: 1,
                         A.VARIATION_ID: 2}, T_NS)


def test_an_sdk_event_is_carried_as_the_sdk_made_it():
    ev = decode(vwo__event__type="vwo_feTrackUsage", vwo__visitor__uuid=VARUN, vwo__account_id=ACCOUNT_ID,
                vwo__event__properties='{"product": "fme", "data": {"isSDKInitialized": true}}')
    props = d_of(ev)["event"]["props"]
    assert props["product"] == "fme" and props["data"] == {"isSDKInitialized": True}
    assert "isCustomEvent" not in props and "isFirst" not in props


@pytest.mark.parametrize(("attrs", "names"), [
    ({A.EVENT_TYPE: "1", A.USER_ID: "u"}, "int 1, 2 or 3"),  # a legacy type written as text
    ({A.EVENT_TYPE: " purchase", A.USER_ID: "u"}, "FME event name"),
    ({A.EVENT_TYPE: "x" * 300, A.USER_ID: "u"}, "FME event name"),
    ({A.EVENT_TYPE: A.VARIATION_SHOWN, A.USER_ID: "u", A.VARIATION_ID: 1}, A.CAMPAIGN_ID),
    ({A.EVENT_TYPE: A.VARIATION_SHOWN, A.USER_ID: "u", A.CAMPAIGN_ID: 1, A.VARIATION_ID: "2"}, A.VARIATION_ID),
    ({A.EVENT_TYPE: "purchase", A.USER_ID: "u", A.EVENT_PROPERTIES: "[1]"}, A.EVENT_PROPERTIES),
    ({A.EVENT_TYPE: "purchase", A.USER_ID: "u", A.EVENT_PROPERTIES: '{"a": NaN}'}, A.EVENT_PROPERTIES),
    ({A.EVENT_TYPE: "purchase", A.USER_ID: "u", A.EVENT_PROPERTIES: {"a": 1}}, A.EVENT_PROPERTIES),
    ({A.EVENT_TYPE: "purchase", A.USER_ID: "u", A.SESSION_ID: -1}, A.SESSION_ID),
    ({A.EVENT_TYPE: A.SYNC_VISITOR_PROP, A.USER_ID: "u"}, A.VISITOR_PROPERTIES),
    ({A.EVENT_TYPE: "purchase"}, "user_id"),
])
def test_malformed_fme_records_name_the_attribute(attrs, names):
    with pytest.raises(MalformedEvent, match=names.replace(".", r"\.")):
        from_attributes(attrs, T_NS)


def test_message_ids_are_unique_and_stable_across_retries_and_the_spool():
    a, b = impression(), impression()  # one visitor, one millisecond: FME's own msgIds would be equal
    fmt = FMEFormat(ACCOUNT_ID, SDK_KEY)
    assert d_of(a, fmt)["msgId"] != d_of(b, fmt)["msgId"]
    assert d_of(a, fmt)["msgId"] == d_of(a, fmt)["msgId"]  # encoded again for a retry or a split
    back = VWOEvent.from_fields(json.loads(json.dumps(a.fields())))  # a spool row and back
    assert isinstance(back, FMEEvent) and back == a and d_of(back, fmt)["msgId"] == d_of(a, fmt)["msgId"]
    given = impression(**{A.MESSAGE_ID: "order-77"})
    assert d_of(given, fmt)["msgId"] == "order-77"  # the app's own idempotency key


def test_usage_stats_ride_only_until_vwo_accepted_them():
    fmt = FMEFormat(ACCOUNT_ID, SDK_KEY)
    ev = impression(**{A.USAGE_STATS: '{"ll": 1, "eb": 1}'})
    first, parts = fmt.encode([ev, impression(**{A.USAGE_STATS: '{"ll": 1}'})])
    assert [("vwoMeta" in d["d"]["event"]["props"]) for d in first] == [True, False]  # once per request
    assert "vwoMeta" in fmt.encode([ev])[0][0]["d"]["event"]["props"]  # not accepted yet: the next request too
    assert json.loads(parts[0])["d"]["event"]["props"]["vwoMeta"]["env"] == SDK_KEY  # off the span, on the wire
    assert first[0]["d"]["event"]["props"]["vwoMeta"]["env"] == "***"  # and not in reports
    fmt.accepted(first[:1])
    assert "vwoMeta" not in d_of(ev, fmt)["event"]["props"]


def test_batch_and_realtime_requests():
    fmt = FMEFormat(ACCOUNT_ID, SDK_KEY)
    assert fmt.batch.path == "/server-side/batch-events-v2"
    assert fmt.batch.query["a"] == str(ACCOUNT_ID) and fmt.batch.query["env"] == SDK_KEY
    assert set(fmt.batch.query) == {"a", "env", "sn", "sv"} and fmt.batch.headers["Authorization"] == SDK_KEY
    events = [impression(), decode(vwo__event__type="purchase", vwo__user_id="u")]
    dicts, parts = fmt.encode(events)
    assert json.loads(batch_body(parts)) == {"ev": [fmt.event_dict(ev) for ev in events]}
    assert b" " not in batch_body(parts)
    assert [masked(json.loads(p)) for p in parts] == dicts  # reports: the same events, the key as ***
    req = fmt.realtime(impression(**{A.VISITOR_UA: "UA"}))
    assert (req.method, req.path) == ("POST", "/events/t") and "Authorization" not in req.headers
    assert req.query["en"] == A.VARIATION_SHOWN and req.query["p"] == "FS" and req.query["eTime"] == str(T_MS)
    assert req.headers["X-Device-User-Agent"] == "UA" and json.loads(req.body)["d"]["visId"] == VARUN


def test_reports_show_stars_wherever_the_sdk_key_is_and_the_bytes_keep_it():
    """Each place the format writes the key, and any other string holding it (an app's own
    property), reads ``***`` in the dicts reports get; the bytes sent are untouched."""
    fmt = FMEFormat(ACCOUNT_ID, SDK_KEY)
    events = [impression(**{A.USAGE_STATS: '{"ll": 1}'}),
              decode(vwo__event__type="purchase", vwo__user_id="u",
                     vwo__event__properties=json.dumps({"note": f"key={SDK_KEY}!", "list": [SDK_KEY], SDK_KEY: 1})),
              decode(vwo__event__type=A.SYNC_VISITOR_PROP, vwo__user_id="u", vwo__visitor__properties='{"a": 1}'),
              decode(vwo__event__type="vwo_sdkUsageStats", vwo__visitor__uuid=VARUN, vwo__account_id=ACCOUNT_ID,
                     vwo__event__properties='{"product": "fme"}')]
    dicts, parts = fmt.encode(events)
    assert all(SDK_KEY not in json.dumps(d) for d in dicts)
    assert [p.count(SDK_KEY.encode()) for p in parts] == [3, 5, 3, 0]
    impression_props = dicts[0]["d"]["event"]["props"]
    assert (impression_props["vwo_envKey"], impression_props["vwoMeta"]["env"]) == ("***", "***")
    assert dicts[0]["d"]["visitor"]["props"]["vwo_fs_environment"] == "***"
    custom = dicts[1]["d"]["event"]["props"]
    assert (custom["vwo_envKey"], custom["note"], custom["list"], custom["***"]) == ("***", "key=***!", ["***"], 1)
    assert dicts[3]["d"]["event"]["props"] == json.loads(parts[3])["d"]["event"]["props"]  # no key: as sent


def test_one_exporter_encodes_each_event_in_its_format():
    exporter = VWOExporter(ACCOUNT_ID, SDK_KEY)
    legacy = from_attributes({A.EVENT_TYPE: 1, A.USER_ID: "Varun", A.CAMPAIGN_ID: 1, A.VARIATION_ID: 2}, T_NS)
    dicts = exporter.encode([impression(), legacy, impression()])
    assert ["d" in d for d in dicts] == [True, False, True] and dicts[1]["u"] == visitor_uuid(ACCOUNT_ID, "Varun")
    exporter.shutdown()


def test_the_table_covers_every_row_in_both_directions():
    """Every row's fields decode and its wire keys encode: a new row needs no code elsewhere."""
    fmt = FMEFormat(ACCOUNT_ID, SDK_KEY)
    for key, row in TYPES.items():
        attrs = {A.EVENT_TYPE: key if not row.fme or key not in (CUSTOM, SDK_EVENT) else
                 ("purchase" if key == CUSTOM else "vwo_x"), A.USER_ID: "u"}
        for f in row.all_fields:
            attrs[f.attr] = {"id": 5, "number": 1.5, "key": "k", "value": "v", "json": '{"a": 1}'}[f.kind.value]
        ev = from_attributes(attrs, T_NS)
        assert ev.etype == key
        if row.fme:
            assert d_of(ev, fmt)["event"]["name"] == attrs[A.EVENT_TYPE]


class _Provider:
    """Records what ``VWOEvents`` emits (no SDK): a tracer provider whose spans are plain records."""

    def __init__(self):
        self.spans = []

    def get_tracer(self, *args, **kwargs):
        return self

    def start_span(self, name, attributes=None, **kwargs):
        self.spans.append((name, dict(attributes)))

        class _Span:
            def end(self_inner):
                pass

            def is_recording(self_inner):
                return True

        return _Span()


def test_vwo_events_fme_methods_emit_the_contract():
    provider = _Provider()
    vwo = VWOEvents(tracer_provider=provider)
    vwo.variation_shown(231, 2, "Varun", feature_id=4, visitor_properties={"plan": "pro"}, session_id=17)
    vwo.track_event("purchase", "Varun", {"amount": 12.5})
    vwo.set_attribute({"plan": "pro"}, "Varun")
    names = [name for name, _ in provider.spans]
    assert names == ["vwo.variation_shown", "vwo.event", "vwo.sync_visitor_prop"]
    events = [from_attributes(attrs, T_NS) for _, attrs in provider.spans]
    assert [e.name for e in events] == [A.VARIATION_SHOWN, "purchase", A.SYNC_VISITOR_PROP]
    assert events[0].feature_id == 4 and events[0].session_id == 17
    assert json.loads(events[1].props) == {"amount": 12.5}


@pytest.mark.parametrize(("call", "names"), [
    (lambda v: v.track_event("vwo_variationShown", "u"), "event_name"),
    (lambda v: v.track_event("", "u"), "event_name"),
    (lambda v: v.track_event("purchase", ""), "user_id"),
    (lambda v: v.track_event("purchase", "u", {"a": math.nan}), "properties"),
    (lambda v: v.track_event("purchase", "u", {1: "a"}), "properties"),
    (lambda v: v.track_event("purchase", "u", {"a": object()}), "properties"),
    (lambda v: v.set_attribute({}, "u"), "attributes"),
    (lambda v: v.variation_shown(1, "2", "u"), "variation_id"),
    (lambda v: v.variation_shown(1, 2, "u", feature_id=-1), "feature_id"),
    (lambda v: v.variation_shown(1, 2, "u", session_id=1.5), "session_id"),
])
def test_bad_fme_calls_name_the_argument(call, names):
    provider = _Provider()
    with pytest.raises((TypeError, ValueError), match=names):
        call(VWOEvents(tracer_provider=provider))
    assert provider.spans == []


@pytest.mark.parametrize("text", ['{"x": 1e400}', '{"x": [1, -1e999]}', '{"x": ' + "[" * 40 + "]" * 40 + "}",
                                  '{"x": ' + "[" * 100_000 + "]" * 100_000 + "}"])
def test_properties_vwo_could_not_take_are_refused_at_decode(text):
    """1e400 parses as infinity (no JSON encoder writes it back: VWO would refuse the whole batch);
    nesting past MAX_JSON_DEPTH (or deep enough to exhaust the parser's recursion) is refused too,
    as a malformed event, never an exception into the app's thread."""
    with pytest.raises(MalformedEvent, match=A.EVENT_PROPERTIES.replace(".", r"\.")):
        from_attributes({A.EVENT_TYPE: "purchase", A.USER_ID: "u", A.EVENT_PROPERTIES: text}, T_NS)


def test_vwo_events_refuses_deep_properties_naming_them():
    deep: dict = {}
    inner = deep
    for _ in range(5000):
        inner["x"] = {}
        inner = inner["x"]
    with pytest.raises(ValueError, match="properties"):
        VWOEvents(tracer_provider=_Provider()).track_event("purchase", "u", deep)


def test_an_event_no_encoder_can_write_fails_alone():
    """A value that is not JSON (NaN) raises in the encoder, so the engine reports that event
    alone instead of VWO refusing its whole batch."""
    ev = decode(vwo__event__type="purchase", vwo__user_id="u")
    ev.props = '{"x": NaN}'  # got past the decoder some other way (a damaged spool row)
    with pytest.raises(ValueError):
        FMEFormat(ACCOUNT_ID, SDK_KEY).encode([ev])


@pytest.mark.parametrize("key", ["props", "event", "d", "name"])
def test_a_key_that_is_also_a_word_of_the_format_leaves_the_reports_shape(key):
    """Masking renames keys only among the app's properties: with an sdk key such as ``props``
    the reports keep the format's structure (``accepted`` read them and raised KeyError)."""
    fmt = FMEFormat(ACCOUNT_ID, key)
    ev = decode(vwo__event__type="purchase", vwo__user_id="u",
                vwo__event__properties=json.dumps({"amount": 1, f"my_{key}": f"x-{key}-x"}))
    (report,), _ = fmt.encode([impression(**{A.USAGE_STATS: '{"ll": 1}'})])
    (custom,), _ = fmt.encode([ev])
    fmt.accepted([report, custom])  # reads d.event.props: no KeyError
    for d in (report["d"], custom["d"]):
        assert {"msgId", "visId", "sessionId", "event"} <= set(d) and {"props", "name", "time"} <= set(d["event"])
        assert d["event"]["props"]["vwo_envKey"] == "***"
    assert custom["d"]["event"]["props"]["my_***"] == "x-***-x"  # the app's own names and values: masked


def test_a_short_test_key_masks_itself_not_the_letters_of_other_words():
    """With a one-letter test key, reports keep the app's words readable (``checks.mask_secret``)."""
    fmt = FMEFormat(ACCOUNT_ID, "k")
    ev = decode(vwo__event__type="checkout_click", vwo__user_id="u",
                vwo__event__properties=json.dumps({"link": "bookmark", "key": "k"}))
    (report,), _ = fmt.encode([ev])
    props = report["d"]["event"]["props"]
    assert report["d"]["event"]["name"] == "checkout_click"
    assert props["link"] == "bookmark" and props["key"] == "***" and props["vwo_envKey"] == "***"
