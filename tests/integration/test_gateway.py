"""The OTLP gateway (``vwo-otel gateway``): real OpenTelemetry OTLP exporters in several
processes, OTLP/JSON + gzip by hand, partial success, accounts, errors, back-pressure,
bounded shutdown and the command line — all against the loopback VWO receiver."""

from __future__ import annotations

import gzip
import http.client
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from typing import Any

import pytest
import requests
from conftest import ACCOUNT_ID, SDK_KEY

from vwo_otel import visitor_uuid
from vwo_otel.servers import otlp
from vwo_otel.servers.gateway import Account, Gateway, config_from_mapping, parse_account
from vwo_otel.testing.receiver import Receiver

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


HAVE_PROTO = otlp.protobuf_available()


try:
    import opentelemetry.exporter.otlp.proto.http  # noqa: F401

    HAVE_EXPORTER = HAVE_PROTO
except ImportError:  # pragma: no cover - the test extra installs it
    HAVE_EXPORTER = False


needs_proto = pytest.mark.skipif(not HAVE_PROTO, reason="opentelemetry-proto is not installed")


needs_exporter = pytest.mark.skipif(not HAVE_EXPORTER, reason="opentelemetry-exporter-otlp-proto-http is not installed")


JSON_HEADERS = {"Content-Type": "application/json"}


T0 = 1_700_000_000_000_000_000  # a span start time in unix ns -> sId 1700000000




def _v(value: Any) -> dict:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    return {"stringValue": value}


def _kvs(attrs: dict) -> list:
    return [{"key": k, "value": _v(v)} for k, v in attrs.items()]


def goal(user: str, **extra: Any) -> dict:
    return {"vwo.event.type": 2, "vwo.user_id": user, "vwo.campaign_id": 231, "vwo.variation_id": 2,
            "vwo.goal_id": 7, "vwo.revenue": 12.5, **extra}


def visit(user: str, **extra: Any) -> dict:
    return {"vwo.event.type": 1, "vwo.user_id": user, "vwo.campaign_id": 231, "vwo.variation_id": 1, **extra}


def traces_json(*resources: tuple[dict, list[dict]], start_ns: int = T0) -> dict:
    """resources: (resource attributes, [span attributes, ...]); span i starts ``start_ns`` + i s
    (give ``time.time_ns()`` where the events' age matters: a spool's ``max_age``)."""
    return {"resourceSpans": [
        {"resource": {"attributes": _kvs(res)},
         "scopeSpans": [{"scope": {"name": "t"}, "spans": [
             {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174", "name": "s",
              "kind": 1, "startTimeUnixNano": str(start_ns + i * 1_000_000_000),
              "endTimeUnixNano": str(start_ns + i * 1_000_000_000 + 5), "attributes": _kvs(attrs)}
             for i, attrs in enumerate(spans)]}]}
        for res, spans in resources]}


def logs_json(*resources: tuple[dict, list[dict]], observed_only: bool = False) -> dict:
    key = "observedTimeUnixNano" if observed_only else "timeUnixNano"
    return {"resourceLogs": [
        {"resource": {"attributes": _kvs(res)},
         "scopeLogs": [{"scope": {"name": "t"}, "logRecords": [
             {key: str(T0), "severityNumber": 9, "body": {"stringValue": "x"}, "attributes": _kvs(attrs)}
             for attrs in records]}]}
        for res, records in resources]}


def post(gw: Gateway, path: str, doc: Any, *, encoding: str | None = None,
         headers: dict | None = None) -> requests.Response:
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    hdrs = dict(JSON_HEADERS if headers is None else headers)
    if encoding == "gzip":
        body = gzip.compress(body)
    elif encoding == "deflate":
        body = zlib.compress(body)
    if encoding:
        hdrs["Content-Encoding"] = encoding
    return requests.post(gw.url + path, data=body, headers=hdrs, timeout=10)


EMITTER = os.path.join(ROOT, "tests", "apps", "otlp_emitter.py")


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    for var in [k for k in env if k.startswith("OTEL_")]:
        del env[var]
    return env


def spawn_app(**cfg: Any) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, EMITTER, json.dumps({"batch": 64, **cfg})], cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@needs_exporter
def test_otlp_exporters_in_several_processes_deliver_every_event_exactly_once(make_gateway, receiver):
    gw = make_gateway(events_per_request=50, request_time_interval=1)
    apps = [
        dict(name="spans-a", signal="traces", n=240),
        dict(name="spans-b", signal="traces", n=240, gzip=True),
        dict(name="spans-c", signal="traces", n=240, account=ACCOUNT_ID),
        dict(name="logs-a", signal="logs", n=150),
        dict(name="logs-b", signal="logs", n=150, gzip=True, account=str(ACCOUNT_ID)),
    ]
    procs = [spawn_app(url=gw.url, **app) for app in apps]
    for proc in procs:
        out, err = proc.communicate(timeout=45)
        assert proc.returncode == 0 and json.loads(out.splitlines()[-1])["export_failed"] == 0, err[-2000:]
    total = sum(app["n"] for app in apps)
    assert receiver.wait_for_events(total, timeout=15)
    time.sleep(0.3)  # anything extra (a duplicate) would arrive now
    seen = Counter(ev["u"] for ev in receiver.events())
    expected = {visitor_uuid(ACCOUNT_ID, f"{app['name']}-{i}") for app in apps for i in range(app["n"])}
    assert set(seen) == expected
    assert max(seen.values()) == 1  # exactly once
    types = Counter(ev["eT"] for ev in receiver.events())
    assert types == {1: total // 3, 2: total // 3, 3: total // 3}
    stats = gw.stats()
    assert stats["accepted"] == total and stats["ignored_items"] > 0
    assert stats["rejected"] == {"malformed": 0, "unknown_account": 0}
    assert set(stats["responses"]) == {"200"}
    batches = [r for r in receiver.requests() if r["accepted"]]
    assert all(r["n_events"] <= 50 for r in batches)
    assert len(batches) <= total // 50 + 6  # batched across processes, not per process


def test_json_gzip_traces_become_vwo_events_with_span_start_as_sid(make_gateway, receiver):
    gw = make_gateway()
    doc = traces_json(({"service.name": "shop"}, [
        goal("alice"),
        visit("bob", **{"vwo.visitor.user_agent": "UA/1", "vwo.visitor.ip": "10.0.0.1"}),
        {"vwo.event.type": 3, "vwo.user_id": "carol", "vwo.dimension.key": "plan", "vwo.dimension.value": "pro"},
        {"http.route": "/not-vwo"},
    ]))
    r = post(gw, "/v1/traces", doc, encoding="gzip")
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    assert r.json() == {}  # full success: partial_success left unset
    assert gw.flush(5)
    events = {ev["u"]: ev for ev in receiver.events()}
    a = events[visitor_uuid(ACCOUNT_ID, "alice")]
    assert (a["eT"], a["e"], a["c"], a["g"], a["r"], a["sId"]) == (2, 231, 2, 7, 12.5, 1_700_000_000)
    b = events[visitor_uuid(ACCOUNT_ID, "bob")]
    assert (b["eT"], b["visitor_ua"], b["visitor_ip"], b["sId"]) == (1, "UA/1", "10.0.0.1", 1_700_000_001)
    c = events[visitor_uuid(ACCOUNT_ID, "carol")]
    assert c["eT"] == 3 and json.loads(c["t"]) == {"u": {"plan": "pro"}}
    assert len(events) == 3
    assert gw.stats()["ignored_items"] == 1


def test_json_logs_use_timestamp_or_observed_time_and_deflate(make_gateway, receiver):
    gw = make_gateway()
    r = post(gw, "/v1/logs", logs_json(({}, [goal("dora")])), encoding="deflate")
    assert r.status_code == 200 and r.json() == {}
    r = post(gw, "/v1/logs", logs_json(({}, [visit("eve")]), observed_only=True))
    assert r.status_code == 200 and r.json() == {}
    assert gw.flush(5)
    events = {ev["u"]: ev for ev in receiver.events()}
    assert events[visitor_uuid(ACCOUNT_ID, "dora")]["sId"] == 1_700_000_000
    assert events[visitor_uuid(ACCOUNT_ID, "eve")]["sId"] == 1_700_000_000


def test_chunked_request_body_is_accepted(make_gateway, receiver):
    gw = make_gateway()
    data = json.dumps(traces_json(({}, [goal("chunky")]))).encode()
    r = requests.post(gw.url + "/v1/traces", data=iter([data[:10], data[10:]]), headers=JSON_HEADERS, timeout=10)
    assert r.status_code == 200
    assert gw.flush(5) and receiver.event_count() == 1


def test_non_vwo_data_is_accepted_and_ignored(make_gateway, receiver):
    gw = make_gateway()
    r = post(gw, "/v1/traces", traces_json(({"service.name": "x"}, [{"http.route": "/a"}, {}])))
    assert r.status_code == 200 and r.json() == {}
    r = post(gw, "/v1/logs", {})  # an empty export request is valid
    assert r.status_code == 200 and r.json() == {}
    assert gw.flush(5) and receiver.event_count() == 0
    assert gw.stats()["ignored_items"] == 2


def test_partial_success_counts_malformed_and_unknown_account_items(make_gateway, receiver):
    gw = make_gateway()
    doc = traces_json(
        ({}, [goal("ok-1"), {"vwo.event.type": 2, "vwo.user_id": "no-ids"},
              goal("bad-acct", **{"vwo.account_id": "x1"})]),
        ({"vwo.account_id": 999}, [goal("unknown-1"), goal("unknown-2")]),
        ({"vwo.account_id": 999}, [goal("override", **{"vwo.account_id": ACCOUNT_ID})]),
    )
    r = post(gw, "/v1/traces", doc)
    assert r.status_code == 200
    partial = r.json()["partialSuccess"]
    assert int(partial["rejectedSpans"]) == 4
    msg = partial["errorMessage"]
    assert "2 unknown account" in msg and "999" in msg and "2 malformed" in msg and "campaign_id" in msg
    assert gw.flush(5)
    assert {ev["u"] for ev in receiver.events()} == {visitor_uuid(ACCOUNT_ID, u) for u in ("ok-1", "override")}
    stats = gw.stats()
    assert stats["rejected"] == {"malformed": 2, "unknown_account": 2}
    assert stats["accepted"] == 2


def test_no_account_and_no_default_is_rejected_not_crashed(make_gateway, receiver):
    gw = make_gateway(default_account=None)
    r = post(gw, "/v1/logs", logs_json(({}, [goal("orphan")]), ({"vwo.account_id": ACCOUNT_ID}, [goal("mine")])))
    assert r.status_code == 200
    partial = r.json()["partialSuccess"]
    assert int(partial["rejectedLogRecords"]) == 1 and "no vwo.account_id" in partial["errorMessage"]
    assert gw.flush(5)
    assert [ev["u"] for ev in receiver.events()] == [visitor_uuid(ACCOUNT_ID, "mine")]


def test_events_go_to_the_account_they_name_each_with_its_own_key_and_endpoint(make_gateway, receiver):
    other_id, other_key = 777001, "other-sdk-key-abcdef"
    with Receiver(account_id=other_id, sdk_key=other_key) as other:
        gw = make_gateway(accounts={ACCOUNT_ID: Account(ACCOUNT_ID, SDK_KEY),
                                    other_id: Account(other_id, other_key, endpoint=other.url)}, default_account=None)
        doc = traces_json(
            ({}, [goal("home-1", **{"vwo.account_id": str(ACCOUNT_ID)})]),
            ({"vwo.account_id": other_id}, [goal("other-1"), goal("other-2")]),
            ({"vwo.account_id": str(other_id)}, [goal("back-home", **{"vwo.account_id": ACCOUNT_ID})]),
            ({}, [goal("nobody"), goal("nobody-2")]),  # several accounts: no default, refused and said why
        )
        r = post(gw, "/v1/traces", doc)
        assert r.status_code == 200
        partial = r.json()["partialSuccess"]
        assert int(partial["rejectedSpans"]) == 2
        assert "2 unknown account" in partial["errorMessage"] and "several accounts" in partial["errorMessage"]
        assert gw.flush(5)
        assert sorted(ev["u"] for ev in receiver.events()) == sorted(
            visitor_uuid(ACCOUNT_ID, u) for u in ("home-1", "back-home"))
        assert sorted(ev["u"] for ev in other.events()) == sorted(
            visitor_uuid(other_id, u) for u in ("other-1", "other-2"))
        stats = gw.stats()["accounts"]
        assert stats[str(other_id)]["delivered"] == 2 and stats[str(ACCOUNT_ID)]["delivered"] == 2
        gw.stop(2)


@needs_proto
def test_protobuf_request_gets_protobuf_response_with_partial_success(make_gateway, receiver):
    from google.protobuf import json_format
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
        ExportLogsServiceRequest,
        ExportLogsServiceResponse,
    )
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
        ExportTraceServiceResponse,
    )

    gw = make_gateway()
    headers = {"Content-Type": "application/x-protobuf"}
    doc = traces_json(({"vwo.account_id": ACCOUNT_ID}, [goal("pb-1"), {"vwo.event.type": 9, "vwo.user_id": "x"}]),
                      ({"vwo.account_id": 4242}, [goal("pb-unknown")]))
    body = json_format.ParseDict(doc, ExportTraceServiceRequest()).SerializeToString()
    r = post(gw, "/v1/traces", body, headers=headers, encoding="gzip")
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/x-protobuf"
    resp = ExportTraceServiceResponse.FromString(r.content)
    assert resp.HasField("partial_success") and resp.partial_success.rejected_spans == 2
    assert "unknown account" in resp.partial_success.error_message and "malformed" in resp.partial_success.error_message

    body = json_format.ParseDict(logs_json(({}, [visit("pb-log")])), ExportLogsServiceRequest()).SerializeToString()
    r = post(gw, "/v1/logs", body, headers=headers)
    assert r.status_code == 200
    resp_logs = ExportLogsServiceResponse.FromString(r.content)
    assert not resp_logs.HasField("partial_success")
    assert gw.flush(5)
    assert sorted(ev["u"] for ev in receiver.events()) == sorted(
        visitor_uuid(ACCOUNT_ID, u) for u in ("pb-1", "pb-log"))


@pytest.mark.parametrize("path, body, headers, status", [
    ("/v1/traces", b"{}", {"Content-Type": "text/plain"}, 415),
    ("/v1/traces", b"{}", {"Content-Type": "application/json", "Content-Encoding": "br"}, 415),
    ("/v1/traces", b"{not json", JSON_HEADERS, 400),
    ("/v1/traces", b"[1, 2]", JSON_HEADERS, 400),
    ("/v1/traces", b'{"resourceSpans": {"a": 1}}', JSON_HEADERS, 400),
    ("/v1/logs", b'{"resourceLogs": [{"scopeLogs": [{"logRecords": [{"attributes": '
                 b'[{"key": "vwo.event.type", "value": {"intValue": "2"}}], "timeUnixNano": "soon"}]}]}]}',
     JSON_HEADERS, 400),
    ("/v1/traces", b"\x1f\x8b not gzip", {"Content-Type": "application/json", "Content-Encoding": "gzip"}, 400),
    ("/v1/metrics", b"{}", JSON_HEADERS, 404),
])
def test_bad_requests_get_the_right_status(make_gateway, path, body, headers, status):
    gw = make_gateway()
    r = requests.post(gw.url + path, data=body, headers=headers, timeout=10)
    assert r.status_code == status, r.text
    if headers.get("Content-Type") == "application/json" and status != 415:
        assert r.headers["Content-Type"] == "application/json" and "message" in r.json()  # google.rpc.Status
    # the connection is still usable and the gateway still serves
    assert post(gw, "/v1/traces", traces_json(({}, [goal("after")]))).status_code == 200


def test_chunked_body_over_the_limit_is_413_and_the_connection_stays_usable(make_gateway, receiver):
    gw = make_gateway(max_body_bytes=2048)
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    try:
        conn.request("POST", "/v1/traces", body=iter([b"x" * 2000, b"x" * 2000]), headers=JSON_HEADERS)
        r = conn.getresponse()
        assert r.status == 413 and "larger than 2048 bytes" in json.loads(r.read())["message"]
        data = json.dumps(traces_json(({}, [goal("after-413")]))).encode()
        conn.request("POST", "/v1/traces", body=iter([data]), headers=JSON_HEADERS)  # same connection
        r = conn.getresponse()
        assert r.status == 200, r.read()
        r.read()
    finally:
        conn.close()
    assert gw.flush(5) and receiver.event_count() == 1
    assert gw.stats()["responses"] == {"200": 1, "413": 1}


@pytest.mark.parametrize("head, status, words", [
    (b"Content-Type: application/json\r\n", 411, "Content-Length required"),
    (b"Content-Length: -3\r\n", 400, "bad Content-Length"),
    (b"Transfer-Encoding: gzip\r\n", 400, "Only Transfer-Encoding: chunked is supported"),  # h11's words
    (b"Transfer-Encoding: chunked\r\n\r\n-2\r\n{}\r\n0\r\n", 400, "malformed chunked body"),
])
def test_unreadable_bodies_are_refused_and_the_connection_closed(make_gateway, head, status, words):
    gw = make_gateway()
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as raw:
        raw.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n")
        answer = b""
        while chunk := raw.recv(65536):  # the gateway closes the connection after answering
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 %d " % status), answer
    assert b"Connection: close" in answer and words.encode() in answer
    assert post(gw, "/v1/traces", traces_json(({}, [goal("after")]))).status_code == 200


@needs_proto
def test_undecodable_protobuf_is_400(make_gateway):
    gw = make_gateway()
    r = requests.post(gw.url + "/v1/traces", data=b"\xff\xff\xff", headers={"Content-Type": "application/x-protobuf"})
    assert r.status_code == 400 and r.headers["Content-Type"] == "application/x-protobuf"


def test_oversized_body_is_413_and_get_is_405(make_gateway):
    gw = make_gateway(max_body_bytes=2048)
    assert post(gw, "/v1/traces", b"x" * 4096).status_code == 413
    assert requests.get(gw.url + "/v1/traces", timeout=5).status_code == 405
    assert requests.get(gw.url + "/healthz", timeout=5).text == "ok\n"
    bomb = gzip.compress(b" " * (2 * 1024 * 1024))
    gw2 = make_gateway(max_inflated_bytes=1024 * 1024)
    r = requests.post(gw2.url + "/v1/traces", data=bomb, headers={**JSON_HEADERS, "Content-Encoding": "gzip"})
    assert r.status_code == 413


def test_without_opentelemetry_proto_protobuf_is_415_and_json_still_works(make_gateway, receiver, monkeypatch):
    monkeypatch.setattr(otlp, "_Span", None)
    assert not otlp.protobuf_available()
    gw = make_gateway()
    r = requests.post(gw.url + "/v1/traces", data=b"\x0a\x00", headers={"Content-Type": "application/x-protobuf"})
    assert r.status_code == 415
    assert post(gw, "/v1/traces", traces_json(({}, [goal("json-only")]))).status_code == 200
    assert gw.flush(5) and receiver.event_count() == 1


def test_full_backlog_answers_429_with_retry_after_and_keeps_nothing(make_gateway, receiver):
    gw = make_gateway(max_backlog=10, events_per_request=5, retry_after=1)
    receiver.stall(30)
    r = post(gw, "/v1/traces", traces_json(({}, [goal(f"a{i}") for i in range(8)])))
    assert r.status_code == 200
    refused = traces_json(({}, [goal(f"b{i}") for i in range(3)]))
    r = post(gw, "/v1/traces", refused)
    assert r.status_code == 429 and r.headers["Retry-After"] == "1"
    assert r.json()["code"] == otlp.RESOURCE_EXHAUSTED
    assert gw.stats()["accounts"][str(ACCOUNT_ID)]["backlog"] == 8  # none of the refused request was kept
    receiver.clear_faults()  # VWO answers again: the backlog drains
    assert receiver.wait_for_events(8, timeout=10)
    deadline = time.monotonic() + 10
    while gw.stats()["accounts"][str(ACCOUNT_ID)]["backlog"] and time.monotonic() < deadline:
        time.sleep(0.02)
    r = post(gw, "/v1/traces", refused)  # the sender's retry
    assert r.status_code == 200
    assert gw.flush(5)
    seen = Counter(ev["u"] for ev in receiver.events())
    assert len(seen) == 11 and max(seen.values()) == 1
    assert gw.stats()["responses"] == {"200": 2, "429": 1}


def test_request_larger_than_the_whole_backlog_is_taken_whole_not_rejected(make_gateway, receiver):
    gw = make_gateway(max_backlog=4, events_per_request=2)
    r = post(gw, "/v1/traces", traces_json(({}, [goal(f"big{i}") for i in range(5)])))
    assert r.status_code == 200 and r.json() == {}
    assert gw.flush(5) and receiver.event_count() == 5


@needs_exporter
def test_otlp_exporter_retries_through_429_and_nothing_is_duplicated(make_gateway, receiver):
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    import vwo_otel

    gw = make_gateway(max_backlog=5, events_per_request=5, retry_after=1)
    receiver.stall(30)
    assert post(gw, "/v1/traces", traces_json(({}, [goal(f"fill{i}") for i in range(5)]))).status_code == 200
    threading.Timer(0.8, receiver.clear_faults).start()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=gw.url + "/v1/traces", timeout=10)))
    started = time.monotonic()
    # exported synchronously, retried
    vwo_otel.VWOEvents(tracer_provider=provider, to_gateway=True).track(231, 2, 7, "retried")
    assert time.monotonic() - started >= 0.8
    provider.shutdown()
    assert receiver.wait_for_events(6, timeout=10)
    assert gw.flush(5)
    seen = Counter(ev["u"] for ev in receiver.events())
    assert seen[visitor_uuid(ACCOUNT_ID, "retried")] == 1 and len(seen) == 6
    assert gw.stats()["responses"].get("429", 0) >= 1


def test_stopping_gateway_answers_503_with_retry_after(make_gateway):
    gw = make_gateway(retry_after=3)
    gw.stop_accepting()
    r = post(gw, "/v1/logs", logs_json(({}, [goal("late")])))
    assert r.status_code == 503 and r.headers["Retry-After"] == "3"
    assert requests.get(gw.url + "/healthz", timeout=5).status_code == 200  # liveness: it still serves
    ready = requests.get(gw.url + "/readyz", timeout=5)
    assert ready.status_code == 503 and ready.headers["Retry-After"] == "3" and "draining" in ready.text
    assert gw.stop(2)
    with pytest.raises(requests.ConnectionError):
        post(gw, "/v1/logs", logs_json(({}, [goal("later")])))


def test_shutdown_is_bounded_when_vwo_hangs(make_gateway, receiver):
    gw = make_gateway(events_per_request=5, shutdown_timeout=30)
    receiver.stall(30)
    assert post(gw, "/v1/traces", traces_json(({}, [goal(f"s{i}") for i in range(12)]))).status_code == 200
    time.sleep(0.2)  # the first batch is in flight, stalled
    started = time.monotonic()
    assert gw.stop(1.0) is False
    assert time.monotonic() - started < 3.0
    account = gw.stats()["accounts"][str(ACCOUNT_ID)]
    assert sum(account["dropped"].values()) == 12
    assert account["requests_failed"] == 0  # drops are counted as drops, not as failed requests


def test_shutdown_delivers_what_is_queued(make_gateway, receiver):
    gw = make_gateway(events_per_request=100, request_time_interval=600)
    assert post(gw, "/v1/traces", traces_json(({}, [goal(f"q{i}") for i in range(7)]))).status_code == 200
    assert receiver.event_count() == 0
    assert gw.stop(5) is True
    assert receiver.event_count() == 7


def test_config_from_mapping_and_validation(tmp_path):
    cfg = config_from_mapping(
        {"accounts": {"111": "key-one", "222": {"sdk_key_env": "K222", "endpoint": "http://127.0.0.1:9/p"}},
         "events_per_request": 50, "retry_budget": 5},
        environ={"K222": "key-two"}, port=0)
    assert cfg.accounts[222].sdk_key == "key-two" and cfg.accounts[222].endpoint == "http://127.0.0.1:9/p"
    assert cfg.default_account is None and cfg.events_per_request == 50 and cfg.retry.budget == 5 and cfg.port == 0
    assert config_from_mapping({"accounts": {"111": "key-one"}, "default_account": "111"}).default_account == 111
    assert "key-one" not in repr(cfg) and "key-two" not in repr(cfg)
    for bad, words in [
        ({"accounts": {}}, "at least one"),
        ({"accounts": {"abc": "k"}}, "account id"),
        ({"accounts": {"1": ""}}, "sdk key"),
        ({"accounts": {"1": "k"}, "default_account": 2}, "default_account"),
        ({"accounts": {"1": "k", "2": "k"}, "default_account": 1}, "several accounts has no default"),
        ({"accounts": {"1": "k"}, "colour": "red"}, "unknown"),
        ({"accounts": {"1": "k"}, "events_per_request": 0}, "events_per_request"),
        ({"accounts": {"1": {"sdk_key_env": "MISSING"}}}, "MISSING"),
        ({"accounts": {"1": "k"}, "endpoint": "ftp://x"}, "endpoint"),
        ({"accounts": {"1": "k"}, "max_backlog": 50}, r"max_backlog \(50\) must be at least events_per_request"),
        ({"accounts": {"1": "k"}, "max_backlog_bytes": 1000}, "max_backlog_bytes"),
        ({"accounts": {"1": "k"}, "max_items": 0}, "max_items"),
        ({"accounts": {"1": "k"}, "spool_max_bytes": 10}, "spool_max_bytes"),
        ({"accounts": {"1": "k"}, "spool_max_age": -1}, "spool_max_age"),
    ]:
        with pytest.raises(ValueError, match=words):
            config_from_mapping(bad, environ={})
    assert parse_account("123=abc").sdk_key == "abc"
    assert parse_account("123", environ={"VWO_SDK_KEY_123": "fromenv"}).sdk_key == "fromenv"
    with pytest.raises(ValueError, match="VWO_SDK_KEY_123"):
        parse_account("123", environ={})


def test_sdk_key_never_logged(make_gateway, receiver, caplog):
    caplog.set_level(logging.DEBUG, logger="vwo_otel")
    receiver.fail_next(3, status=500)
    gw = make_gateway()
    post(gw, "/v1/traces", traces_json(({}, [goal("log-1"), {"vwo.event.type": 2}]), ({"vwo.account_id": 5}, [{}])))
    gw.flush(5)
    gw.stop(2)
    assert caplog.records and SDK_KEY not in caplog.text
    assert SDK_KEY not in repr(gw) and SDK_KEY not in json.dumps(gw.stats())


def test_cli_gateway_runs_until_sigterm_and_drains(receiver, tmp_path):
    config = tmp_path / "gateway.json"
    config.write_text(json.dumps({"accounts": {str(ACCOUNT_ID): {"sdk_key_env": "TEST_GW_KEY"}},
                                  "default_account": ACCOUNT_ID, "request_time_interval": 600}))
    env = {**_env(), "TEST_GW_KEY": SDK_KEY}
    proc = subprocess.Popen(
        [sys.executable, "-m", "vwo_otel", "gateway", "--config", str(config), "--port", "0",
         "--endpoint", receiver.url, "--events-per-request", "100", "--log-level", "DEBUG"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "listening on http://127.0.0.1:" in line, proc.stderr.read() if proc.poll() is not None else line
        url = line.split("listening on ", 1)[1].split()[0]
        body = json.dumps(traces_json(({}, [goal(f"cli{i}") for i in range(3)])))
        r = requests.post(url + "/v1/traces", data=body, headers=JSON_HEADERS, timeout=10)
        assert r.status_code == 200
        assert receiver.event_count() == 0  # batched: the interval is long
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert receiver.event_count() == 3
    stats = json.loads(out.strip().splitlines()[-1])
    assert stats["accepted"] == 3 and stats["accounts"][str(ACCOUNT_ID)]["delivered"] == 3
    assert SDK_KEY not in out and SDK_KEY not in err


def test_cli_rejects_bad_configuration_without_echoing_the_key():
    proc = subprocess.run([sys.executable, "-m", "vwo_otel", "gateway", "--account", "abc=secret-key-123"],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "account" in proc.stderr and "secret-key-123" not in proc.stderr
