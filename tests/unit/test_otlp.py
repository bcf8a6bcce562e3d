"""OTLP decoding for the gateway: protobuf and JSON export requests, attributes, record times, limits (no network)."""

from __future__ import annotations

import os

import pytest
from helpers import varint

from vwo_otel.servers import otlp

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


HAVE_PROTO = otlp.protobuf_available()


needs_proto = pytest.mark.skipif(not HAVE_PROTO, reason="opentelemetry-proto is not installed")




T0 = 1_700_000_000_000_000_000  # a span start time in unix ns -> sId 1700000000




@needs_proto
def test_hand_encoded_answers_parse_as_the_real_messages():
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

    r = ExportTraceServiceResponse.FromString(otlp.encode_response(otlp.TRACES, otlp.PROTOBUF, 300, "é bad"))
    assert (r.partial_success.rejected_spans, r.partial_success.error_message) == (300, "é bad")
    r2 = ExportLogsServiceResponse.FromString(otlp.encode_response(otlp.LOGS, otlp.PROTOBUF, 2**40, ""))
    assert r2.partial_success.rejected_log_records == 2**40
    assert otlp.encode_response(otlp.TRACES, otlp.PROTOBUF) == b""
    from google.protobuf import json_format

    j = json_format.Parse(otlp.encode_response(otlp.LOGS, otlp.JSON, 3, "x"), ExportLogsServiceResponse())
    assert (j.partial_success.rejected_log_records, j.partial_success.error_message) == (3, "x")
    assert not json_format.Parse(otlp.encode_response(otlp.TRACES, otlp.JSON),
                                 ExportTraceServiceResponse()).HasField("partial_success")
    try:
        from google.rpc.status_pb2 import Status
    except ImportError:  # pragma: no cover - googleapis-common-protos comes with the OTLP exporter
        return
    body, ctype = otlp.encode_status(otlp.PROTOBUF, otlp.RESOURCE_EXHAUSTED, "backlog full")
    st = Status.FromString(body)
    assert (st.code, st.message, ctype) == (8, "backlog full", otlp.PROTOBUF)


@pytest.mark.parametrize("name", sorted(os.listdir(os.path.join(ROOT, "examples", "collector"))))
def test_collector_examples_are_consistent(name):
    yaml = pytest.importorskip("yaml")
    from vwo_otel.servers.gateway import DEFAULT_MAX_BACKLOG

    with open(os.path.join(ROOT, "examples", "collector", name), encoding="utf-8") as f:
        cfg = yaml.safe_load(f)
    pipelines = cfg["service"]["pipelines"]
    signals = {p.split("/")[0] for p in pipelines}
    assert signals == ({"logs"} if name == "filelog.yaml" else {"traces", "logs"})  # a file holds log records only
    for pname, pipeline in pipelines.items():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind) or []:
                assert component in (cfg.get(kind) or {}), f"{name}: {pname} uses undefined {component}"
    for ename, exporter in cfg["exporters"].items():
        if ename.startswith("otlphttp"):
            assert exporter["endpoint"].startswith("http") and exporter["endpoint"].endswith(":4318")
            assert exporter["encoding"] in ("proto", "json") and exporter["compression"] in ("gzip", "deflate", "none")
            assert exporter["retry_on_failure"]["enabled"] and exporter["sending_queue"]["enabled"]
        if ename.startswith("loadbalancing"):
            assert exporter["routing_key"] == "attributes" and exporter["routing_attributes"] == ["vwo.account_id"]
            assert "otlp" in exporter["protocol"] and exporter["resolver"]["static"]["hostnames"]
    batch = (cfg.get("processors") or {}).get("batch")
    if batch:
        assert batch["send_batch_size"] <= batch["send_batch_max_size"] <= DEFAULT_MAX_BACKLOG
    for pname, processor in (cfg.get("processors") or {}).items():
        if pname.startswith("filter"):
            assert processor["traces"]["span"] == ['attributes["vwo.event.type"] == nil']
            assert processor["logs"]["log_record"] == ['attributes["vwo.event.type"] == nil']


def _logs_request(records: list, resource_attrs: dict | None = None) -> bytes:
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    for k, v in (resource_attrs or {}).items():
        rl.resource.attributes.append(KeyValue(key=k, value=AnyValue(string_value=v)))
    sl = rl.scope_logs.add()
    for attrs in records:
        rec = sl.log_records.add(time_unix_nano=T0)
        for k, v in attrs.items():
            value = AnyValue(int_value=v) if isinstance(v, int) else AnyValue(string_value=v)
            rec.attributes.append(KeyValue(key=k, value=value))
    return req.SerializeToString()


@needs_proto
def test_the_protobuf_walk_decodes_only_vwo_items_and_their_account():
    vwo = {"vwo.event.type": 1, "vwo.user_id": "u", "vwo.campaign_id": 3, "vwo.variation_id": 1}
    body = _logs_request([vwo, {"http.route": "/x"}, {**vwo, "vwo.user_id": "v"}], {"vwo.account_id": "42"})
    d = otlp.decode(otlp.LOGS, otlp.PROTOBUF, body)
    assert d.items == 3 and d.vwo_items == 2 and d.oversized == 0
    (group,) = d.groups
    assert group.account == "42" and [i.attributes["vwo.user_id"] for i in group.items] == ["u", "v"]
    assert all(i.time_ns == T0 for i in group.items)


@needs_proto
def test_the_walk_is_bounded_before_anything_is_decoded():
    vwo = {"vwo.event.type": 1, "vwo.user_id": "u", "vwo.campaign_id": 3, "vwo.variation_id": 1}
    body = _logs_request([vwo] * 50)
    assert otlp.decode(otlp.LOGS, otlp.PROTOBUF, body, max_items=60).vwo_items == 50
    with pytest.raises(otlp.TooLarge, match="more than 40"):
        otlp.decode(otlp.LOGS, otlp.PROTOBUF, body, max_items=40)
    with pytest.raises(otlp.TooLarge):  # millions of fields no one knows cost a bounded walk
        otlp.decode(otlp.LOGS, otlp.PROTOBUF, b"\x12\x00" * 200_000)
    with pytest.raises(otlp.TooLarge, match="values"):
        otlp.decode(otlp.LOGS, otlp.JSON, b'{"resourceLogs":[' + b"{}," * 100 + b"{}]}", max_items=5)


@needs_proto
def test_an_oversized_vwo_item_is_counted_not_decoded_and_bad_wire_is_a_decode_error():
    big = {"vwo.event.type": 1, "vwo.user_id": "u" * (otlp.MAX_ITEM_BYTES + 10)}
    small = {"vwo.event.type": 1, "vwo.user_id": "s", "vwo.campaign_id": 3, "vwo.variation_id": 1}
    d = otlp.decode(otlp.LOGS, otlp.PROTOBUF, _logs_request([big, small]))
    assert d.oversized == 1 and d.vwo_items == 2 and len(d.groups[0].items) == 1
    for bad in (b"\x0a\x05\x12", b"\x0b\x00", b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"):
        with pytest.raises(otlp.DecodeError):
            otlp.decode(otlp.LOGS, otlp.PROTOBUF, bad)
    # a malformed VWO record is a decode error; a malformed record of someone else's is ignored
    record = b"\x32\x20" + b"\x0a\x0evwo.event.type"  # attributes: a KeyValue cut short
    scope = b"\x12" + varint(len(record)) + record
    body = b"\x0a" + varint(len(scope) + 2) + b"\x12" + varint(len(scope)) + scope
    with pytest.raises(otlp.DecodeError):
        otlp.decode(otlp.LOGS, otlp.PROTOBUF, body)
    other = b"\x32\x20" + b"\x0a\x0ehttp.route.xyz"
    scope = b"\x12" + varint(len(other)) + other
    body = b"\x0a" + varint(len(scope) + 2) + b"\x12" + varint(len(scope)) + scope
    assert otlp.decode(otlp.LOGS, otlp.PROTOBUF, body).vwo_items == 0


def test_gzip_inflates_in_steps_and_stops_past_the_limit():
    import gzip

    data = b"x" * (3 * 1024 * 1024 + 5)
    assert otlp.decompress(gzip.compress(data), "gzip", len(data)) == data
    assert otlp.decompress(gzip.compress(b"a") + gzip.compress(b"b"), "gzip", 10) == b"ab"  # two members
    with pytest.raises(otlp.TooLarge):
        otlp.decompress(gzip.compress(data), "gzip", len(data) - 1)
    with pytest.raises(otlp.DecodeError, match="truncated"):
        otlp.decompress(gzip.compress(data)[:-20], "gzip", len(data))
