"""``VWOFMEInstrumentor``'s conversion of one FME SDK event payload into VWO attributes, on
payloads as ``vwo-fme-python-sdk`` 1.65.0 builds them (captured from it against a loopback
server); the SDK itself is exercised in tests/integration/fme."""

from __future__ import annotations

import copy
import json

import pytest

from vwo_otel import attributes as A
from vwo_otel.instrumentation.fme import convert

KEY = "test-sdk-key-0123456789"
ACCOUNT = 12345
SDK = {"vwo_sdkName": "vwo-fme-python-sdk", "vwo_sdkVersion": "1.65.0", "vwo_envKey": KEY}
META = {"a": 12345, "env": KEY, "ll": 4, "lv": "3.11.7 (main) [GCC 12.2.0]", "th": 1}
UUID = "053F6036A3FE5D47935E2061315256BB"


def event(name: str, props: dict, visitor: dict | None = None, **d: object) -> dict:
    body = {"msgId": f"{UUID}-1796580278568", "visId": UUID, "sessionId": 1796580278,
            "event": {"props": {**SDK, **props}, "name": name, "time": 1796580278568}, **d}
    if visitor is not None:
        body["visitor"] = {"props": {"vwo_fs_environment": KEY, **visitor}}
    return {"d": body}


IMPRESSION = event("vwo_variationShown", {"id": 12, "variation": "2", "isFirst": 1, "vwoMeta": META},
                   {"ip": "10.0.0.1"}, visitor_ua="Mozilla/5.0", visitor_ip="10.0.0.1")
HOLDOUT = event("vwo_variationShown", {"id": 31, "variation": 2, "isFirst": 1, "fId": 1}, {})
PURCHASE = event("purchase", {"isCustomEvent": True, "variation": 1, "id": 7, "amount": 12.5}, {})
ATTRIBUTES = event("vwo_syncVisitorProp", {"isCustomEvent": True, "vwo_fs_environment": KEY},
                   {"plan": "gold", "n": 2}, visitor_ua="Mozilla/5.0", visitor_ip="10.0.0.1")
INIT = event("vwo_fmeSdkInit", {"vwo_fs_environment": KEY, "product": "fme", "data": {"isSDKInitialized": True}}, {})
USAGE = event("vwo_sdkUsageStats", {"product": "fme", "vwoMeta": META,
                                    "data": {"settingsFetchTime": 3, "sdkInitTime": 9,
                                             "initConfig": {"sdk_key": KEY, "account_id": ACCOUNT, "logger": {}}}})
del USAGE["d"]["event"]["props"]["vwo_envKey"]  # the SDK leaves it out of this event
TRACK_USAGE = event("vwo_feTrackUsage", {}, {})


def test_impression():
    name, attrs, time_ns = convert(IMPRESSION, ACCOUNT, KEY)
    assert name == "vwo_variationShown" and time_ns == 1796580278568 * 1_000_000
    assert attrs == {
        A.EVENT_TYPE: "vwo_variationShown", A.ACCOUNT_ID: ACCOUNT, A.VISITOR_UUID: UUID, A.SESSION_ID: 1796580278,
        A.VISITOR_UA: "Mozilla/5.0", A.VISITOR_IP: "10.0.0.1", A.CAMPAIGN_ID: 12, A.VARIATION_ID: 2,
        A.USAGE_STATS: json.dumps({k: v for k, v in META.items() if k != "env"}, separators=(",", ":")),
    }  # isFirst, visitor.props.ip (the visitor's IP) and the SDK's fields are the encoder's to write


def test_holdout_impression_carries_its_feature():
    _, attrs, _ = convert(HOLDOUT, ACCOUNT, KEY)
    assert (attrs[A.CAMPAIGN_ID], attrs[A.VARIATION_ID], attrs[A.FEATURE_ID]) == (31, 2, 1)
    assert A.EVENT_PROPERTIES not in attrs and A.VISITOR_PROPERTIES not in attrs


def test_custom_event_keeps_every_property_it_sent():
    _, attrs, _ = convert(PURCHASE, ACCOUNT, KEY)
    assert json.loads(attrs[A.EVENT_PROPERTIES]) == {"isCustomEvent": True, "variation": 1, "id": 7, "amount": 12.5}
    assert A.CAMPAIGN_ID not in attrs and A.VISITOR_UA not in attrs


def test_visitor_attributes():
    _, attrs, _ = convert(ATTRIBUTES, ACCOUNT, KEY)
    assert json.loads(attrs[A.VISITOR_PROPERTIES]) == {"plan": "gold", "n": 2}
    assert json.loads(attrs[A.EVENT_PROPERTIES]) == {"isCustomEvent": True}


@pytest.mark.parametrize("payload", [IMPRESSION, HOLDOUT, PURCHASE, ATTRIBUTES, INIT, USAGE, TRACK_USAGE],
                         ids=["impression", "holdout", "custom", "attributes", "init", "usage-stats", "track-usage"])
def test_the_sdk_key_never_becomes_an_attribute(payload):
    before = copy.deepcopy(payload)
    _, attrs, _ = convert(payload, ACCOUNT, KEY)
    assert not any(KEY in str(v) for v in attrs.values())
    assert payload == before  # the SDK's payload is left as it was (it sends it itself when vwo_otel cannot)


def test_usage_stats_event_keeps_its_init_config_without_the_key():
    _, attrs, _ = convert(USAGE, ACCOUNT, KEY)
    props = json.loads(attrs[A.EVENT_PROPERTIES])
    assert props["data"]["initConfig"] == {"account_id": ACCOUNT, "logger": {}}
    assert props["product"] == "fme" and A.VISITOR_PROPERTIES not in attrs


def test_an_event_that_would_still_carry_the_key_is_refused():
    leaky = event("purchase", {"isCustomEvent": True, "note": f"key={KEY}"}, {})
    with pytest.raises(ValueError, match="sdk key"):
        convert(leaky, ACCOUNT, KEY)


@pytest.mark.parametrize("bad", [None, {}, {"d": {}}, {"d": {"event": {"name": "", "time": 1}}},
                                 {"d": {"event": {"name": "x", "time": 1.5}}}])
def test_payloads_it_does_not_understand_raise(bad):
    with pytest.raises((KeyError, TypeError, ValueError)):
        convert(bad, ACCOUNT, KEY)
