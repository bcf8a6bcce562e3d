"""OTLP decoding for the gateway: protobuf and JSON export requests, attributes, record times, limits (no network)."""

from __future__ import annotations

import os

import pytest

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


@pytest.mark.parametrize("name", ["agent.yaml", "loadbalancing.yaml", "gateway-sidecar.yaml"])
def test_collector_examples_are_consistent(name):
    yaml = pytest.importorskip("yaml")
    from vwo_otel.servers.gateway import DEFAULT_MAX_BACKLOG

    with open(os.path.join(ROOT, "examples", "collector", name), encoding="utf-8") as f:
        cfg = yaml.safe_load(f)
    pipelines = cfg["service"]["pipelines"]
    assert {p.split("/")[0] for p in pipelines} == {"traces", "logs"}
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
