"""A gateway you can expose: bearer tokens (optionally limited to accounts), refusal to bind
beyond loopback without them, TLS, no silent loss for a batch larger than the backlog, and
400 (never 500) for hostile OTLP/JSON — over real loopback HTTP(S) to the loopback receiver."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import time
from collections import Counter

import pytest
import requests
import trustme
from conftest import ACCOUNT_ID, SDK_KEY
from helpers import ld
from test_gateway import JSON_HEADERS, ROOT, _env, goal, needs_exporter, needs_proto, post, traces_json

from vwo_otel import visitor_uuid
from vwo_otel.cli import main
from vwo_otel.servers import otlp
from vwo_otel.servers.gateway import Account, Gateway, GatewayConfig, config_from_mapping
from vwo_otel.testing.receiver import Receiver

TOKEN = "tok-all-accounts-0123456789"
LIMITED = "tok-one-account-0123456789"
OTHER_ID, OTHER_KEY = 222, "other-sdk-key-abcdef"


def bearer(token: str) -> dict[str, str]:
    return {**JSON_HEADERS, "Authorization": f"Bearer {token}"}




@pytest.fixture
def other_receiver():
    """A second VWO account's receiver (account 222)."""
    with Receiver(account_id=OTHER_ID, sdk_key=OTHER_KEY) as rx:
        yield rx


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> dict[str, str]:
    """A throwaway CA and a certificate for 127.0.0.1 (trustme): cert chain, key, CA file."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    d = tmp_path_factory.mktemp("tls")
    paths = {"cert": str(d / "cert.pem"), "key": str(d / "key.pem"), "ca": str(d / "ca.pem")}
    cert.cert_chain_pems[0].write_to_path(paths["cert"])
    for blob in cert.cert_chain_pems[1:]:
        blob.write_to_path(paths["cert"], append=True)
    cert.private_key_pem.write_to_path(paths["key"])
    ca.cert_pem.write_to_path(paths["ca"])
    return paths


# -- authentication ----------------------------------------------------------------------------

def test_without_or_with_a_wrong_token_is_401_and_nothing_is_kept(make_gateway, receiver):
    gw = make_gateway(auth_tokens=[TOKEN])
    doc = traces_json(({}, [goal("anon", **{"vwo.revenue": 1_000_000.0})]))
    for headers in (JSON_HEADERS, bearer("tok-wrong-0123456789xx"), bearer(TOKEN + "x"),
                    {**JSON_HEADERS, "Authorization": f"Basic {TOKEN}"}):
        r = post(gw, "/v1/traces", doc, headers=headers)
        assert r.status_code == 401, headers
        assert r.headers["WWW-Authenticate"].startswith("Bearer") and r.json()["code"] == otlp.UNAUTHENTICATED
    stats = gw.stats()
    assert stats["accepted"] == 0 and stats["responses"] == {"401": 4} and stats["requests"]["traces"] == 0
    r = post(gw, "/v1/traces", traces_json(({}, [goal("signed")])), headers=bearer(TOKEN))
    assert r.status_code == 200 and r.json() == {}
    assert gw.flush(5)
    assert [ev["u"] for ev in receiver.events()] == [visitor_uuid(ACCOUNT_ID, "signed")]
    assert TOKEN not in repr(gw.config) + repr(gw) + json.dumps(gw.stats())


def test_401_is_answered_before_the_body_and_the_sender_still_reads_it(make_gateway):
    gw = make_gateway(auth_tokens=[TOKEN])
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
    body = json.dumps(traces_json(({}, [goal(f"k{i}") for i in range(1200)]))).encode()
    assert 300_000 < len(body) < 1_000_000  # more than the socket buffers hold: the gateway drops it unread
    conn.request("POST", "/v1/traces", body, JSON_HEADERS)
    r = conn.getresponse()
    assert r.status == 401 and r.will_close and json.loads(r.read())["code"] == otlp.UNAUTHENTICATED  # no reset
    conn.request("POST", "/v1/traces", body, bearer(TOKEN))  # http.client opens a new connection
    r = conn.getresponse()
    r.read()
    assert r.status == 200
    conn.close()
    assert gw.stats()["responses"] == {"200": 1, "401": 1}


def test_401_does_not_wait_for_a_big_or_slow_anonymous_body(make_gateway):
    gw = make_gateway(auth_tokens=[TOKEN])
    socks = []
    for _ in range(40):  # more than the gateway's workers: none may be held by a body never sent
        s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
        s.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 10000000\r\n\r\n{")
        socks.append(s)
    for s in socks:
        answer = s.recv(4096)
        assert answer.startswith(b"HTTP/1.1 401") and b"Connection: close" in answer
        s.close()
    r = post(gw, "/v1/traces", traces_json(({}, [goal("after")])), headers=bearer(TOKEN))
    assert r.status_code == 200


def test_a_token_limited_to_accounts_gets_403_for_another_account_and_nothing_is_kept(
        make_gateway, receiver, other_receiver):
    gw = make_gateway(accounts={ACCOUNT_ID: Account(ACCOUNT_ID, SDK_KEY),
                                OTHER_ID: Account(OTHER_ID, OTHER_KEY, endpoint=other_receiver.url)},
                      auth_tokens={LIMITED: [ACCOUNT_ID], TOKEN: None}, default_account=None)
    theirs = goal("heist", **{"vwo.revenue": 1_000_000.0, "vwo.account_id": OTHER_ID})
    mine = {"vwo.account_id": ACCOUNT_ID}
    r = post(gw, "/v1/traces", traces_json((mine, [goal("mine-1"), theirs])), headers=bearer(LIMITED))
    assert r.status_code == 403 and r.json()["code"] == otlp.PERMISSION_DENIED
    assert str(OTHER_ID) in r.json()["message"]
    r = post(gw, "/v1/traces", traces_json(({"vwo.account_id": OTHER_ID}, [goal("by-resource")])),
             headers=bearer(LIMITED))
    assert r.status_code == 403
    assert all(a["backlog"] == 0 for a in gw.stats()["accounts"].values())  # nothing of either request
    r = post(gw, "/v1/traces", traces_json((mine, [goal("mine-2")])), headers=bearer(LIMITED))
    assert r.status_code == 200
    r = post(gw, "/v1/traces", traces_json(({}, [goal("any", **{"vwo.account_id": OTHER_ID})])),
             headers=bearer(TOKEN))
    assert r.status_code == 200
    assert gw.flush(5)
    assert [ev["u"] for ev in receiver.events()] == [visitor_uuid(ACCOUNT_ID, "mine-2")]
    assert [ev["u"] for ev in other_receiver.events()] == [visitor_uuid(OTHER_ID, "any")]


def test_stats_needs_a_token_for_every_account_and_healthz_stays_open(make_gateway):
    gw = make_gateway(auth_tokens={TOKEN: None, LIMITED: [ACCOUNT_ID]})
    assert requests.get(gw.url + "/stats", timeout=5).status_code == 401
    assert requests.get(gw.url + "/stats", headers=bearer("tok-wrong-0123456789xx"), timeout=5).status_code == 401
    assert requests.get(gw.url + "/stats", headers=bearer(LIMITED), timeout=5).status_code == 403
    r = requests.get(gw.url + "/stats", headers=bearer(TOKEN), timeout=5)
    assert r.status_code == 200 and r.json()["responses"] == {"401": 2, "403": 1}
    assert requests.get(gw.url + "/healthz", timeout=5).status_code == 200


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "gateway.example"])
def test_binding_beyond_loopback_without_tokens_refuses_to_start(host):
    with pytest.raises(ValueError, match="auth_tokens"):
        GatewayConfig(accounts={ACCOUNT_ID: Account(ACCOUNT_ID, SDK_KEY)}, host=host)
    assert GatewayConfig(accounts={ACCOUNT_ID: Account(ACCOUNT_ID, SDK_KEY)}, host=host, auth_tokens=[TOKEN])


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_needs_no_token(host):
    assert GatewayConfig(accounts={ACCOUNT_ID: Account(ACCOUNT_ID, SDK_KEY)}, host=host).auth_tokens == {}


@pytest.mark.parametrize("tokens, words", [
    (["short"], "from 16 to 4096"),
    (["has a space in it 0123"], "without spaces"),
    ("tok-all-accounts-0123456789", "list of tokens"),
    ({TOKEN: [999]}, "not configured"),
    ({TOKEN: ACCOUNT_ID}, "list of account ids"),
])
def test_bad_auth_tokens_are_refused_naming_the_field(tokens, words):
    with pytest.raises(ValueError, match="auth_tokens") as info:
        config_from_mapping({"accounts": {str(ACCOUNT_ID): SDK_KEY}, "auth_tokens": tokens})
    assert words in str(info.value) and "0123456789" not in str(info.value)


def test_cli_refuses_a_public_bind_without_tokens_and_an_unset_token_variable(capsys):
    assert main(["gateway", "--account", f"{ACCOUNT_ID}={SDK_KEY}", "--host", "0.0.0.0", "--port", "0"]) == 2
    assert "auth_tokens" in capsys.readouterr().err
    assert main(["gateway", "--account", f"{ACCOUNT_ID}={SDK_KEY}", "--auth-token-env", "NO_SUCH_TEST_VAR"]) == 2
    assert "NO_SUCH_TEST_VAR" in capsys.readouterr().err


# -- TLS ----------------------------------------------------------------------------------------

def test_tls_round_trip_with_a_token(make_gateway, receiver, tls_files):
    gw = make_gateway(auth_tokens=[TOKEN], tls_cert=tls_files["cert"], tls_key=tls_files["key"])
    assert gw.url.startswith("https://127.0.0.1:")
    body = json.dumps(traces_json(({}, [goal("over-tls")])))
    r = requests.post(gw.url + "/v1/traces", data=body, headers=bearer(TOKEN), verify=tls_files["ca"], timeout=10)
    assert r.status_code == 200
    r = requests.post(gw.url + "/v1/traces", data=body, headers=JSON_HEADERS, verify=tls_files["ca"], timeout=10)
    assert r.status_code == 401
    with pytest.raises(requests.ConnectionError):  # plain HTTP to a TLS port gets no HTTP answer
        requests.post(gw.url.replace("https", "http"), data=body, headers=bearer(TOKEN), timeout=5)
    assert gw.flush(5)
    assert [ev["u"] for ev in receiver.events()] == [visitor_uuid(ACCOUNT_ID, "over-tls")]


def test_bad_tls_files_refuse_to_start(tmp_path, tls_files):
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(ValueError, match="tls_cert"):
        Gateway(GatewayConfig(accounts={ACCOUNT_ID: Account(ACCOUNT_ID, SDK_KEY)}, tls_cert=str(junk)))
    with pytest.raises(ValueError, match="tls_cert"):
        GatewayConfig(accounts={ACCOUNT_ID: Account(ACCOUNT_ID, SDK_KEY)}, tls_cert=str(tmp_path / "missing.pem"))
    with pytest.raises(ValueError, match="tls_key needs tls_cert"):
        GatewayConfig(accounts={ACCOUNT_ID: Account(ACCOUNT_ID, SDK_KEY)}, tls_key=tls_files["key"])


@needs_exporter
def test_real_otlp_exporter_over_tls_with_a_bearer_header(make_gateway, receiver, tls_files, monkeypatch):
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    import vwo_otel

    for var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):  # requests lets these override certificate_file
        monkeypatch.delenv(var, raising=False)
    gw = make_gateway(auth_tokens=[TOKEN], tls_cert=tls_files["cert"], tls_key=tls_files["key"])
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(
        endpoint=gw.url + "/v1/traces", certificate_file=tls_files["ca"],
        headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)))
    vwo_otel.VWOEvents(tracer_provider=provider, to_gateway=True).track(231, 2, 7, "exporter-tls")
    provider.shutdown()
    assert gw.flush(5)
    assert [ev["u"] for ev in receiver.events()] == [visitor_uuid(ACCOUNT_ID, "exporter-tls")]


def test_cli_gateway_with_token_from_environment_and_tls(receiver, tls_files):
    env = {**_env(), "TEST_GW_KEY_X": SDK_KEY, "TEST_GW_TOKEN": TOKEN, f"VWO_SDK_KEY_{ACCOUNT_ID}": SDK_KEY}
    proc = subprocess.Popen(
        [sys.executable, "-m", "vwo_otel", "gateway", "--account", str(ACCOUNT_ID), "--default-account",
         str(ACCOUNT_ID), "--port", "0", "--endpoint", receiver.url, "--auth-token-env", "TEST_GW_TOKEN",
         "--tls-cert", tls_files["cert"], "--tls-key", tls_files["key"], "--request-time-interval", "1"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "listening on https://127.0.0.1:" in line, proc.stderr.read() if proc.poll() is not None else line
        url = line.split("listening on ", 1)[1].split()[0]
        body = json.dumps(traces_json(({}, [goal("cli-tls")])))
        assert requests.post(url + "/v1/traces", data=body, headers=JSON_HEADERS, verify=tls_files["ca"],
                             timeout=10).status_code == 401
        assert requests.post(url + "/v1/traces", data=body, headers=bearer(TOKEN), verify=tls_files["ca"],
                             timeout=10).status_code == 200
        proc.terminate()
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert receiver.event_count() == 1 and TOKEN not in out + err


# -- no silent loss for a batch larger than the backlog ------------------------------------------

def big_batch(prefix: str, n: int) -> dict:
    return traces_json(({}, [goal(f"{prefix}{i}") for i in range(n)]))


def wait_backlog_below(gw: Gateway, n: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while gw.stats()["accounts"][str(ACCOUNT_ID)]["backlog"] >= n:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_a_10000_event_batch_with_max_backlog_5000_is_taken_whole_and_delivered(make_gateway, receiver):
    gw = make_gateway(max_backlog=5000, events_per_request=500)
    r = post(gw, "/v1/traces", big_batch("big", 10_000))
    assert r.status_code == 200 and r.json() == {}  # no partial_success
    assert gw.flush(10)
    seen = Counter(ev["u"] for ev in receiver.events())
    assert len(seen) == 10_000 and max(seen.values()) == 1
    assert gw.stats()["accounts"][str(ACCOUNT_ID)]["dropped"] == {}


def test_a_big_batch_meeting_a_full_backlog_is_refused_retryably_then_taken(make_gateway, receiver):
    gw = make_gateway(max_backlog=1000, events_per_request=500)
    receiver.stall(30)
    assert post(gw, "/v1/traces", big_batch("fill", 1000)).status_code == 200
    big = big_batch("big", 3000)
    r = post(gw, "/v1/traces", big)
    assert r.status_code == 429 and r.headers["Retry-After"] == "1"
    assert gw.stats()["accounts"][str(ACCOUNT_ID)]["backlog"] == 1000  # nothing of the refused request
    receiver.clear_faults()
    assert wait_backlog_below(gw, 1000)
    assert post(gw, "/v1/traces", big).status_code == 200  # the sender's retry
    assert gw.flush(10)
    seen = Counter(ev["u"] for ev in receiver.events())
    assert len(seen) == 4000 and max(seen.values()) == 1


# -- malformed input is 400, never 500 -----------------------------------------------------------

def _with_attribute(key: str, value: dict) -> dict:
    doc = traces_json(({}, [goal("x")]))
    doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["attributes"].append({"key": key, "value": value})
    return doc


def test_deeply_nested_json_is_400_not_500(make_gateway):
    gw = make_gateway()
    deep = ('{"resourceSpans":[{"scopeSpans":[{"spans":[{"attributes":[{"key":"x","value":{"arrayValue":'
            '{"values":[' + "[" * 100_000 + "]" * 100_000 + "]}}}]}]}]}]}")
    r = post(gw, "/v1/traces", deep.encode())
    assert r.status_code == 400 and "deeply" in r.json()["message"]
    value: dict = {"stringValue": "leaf"}
    for _ in range(otlp.MAX_VALUE_DEPTH + 5):  # parses as JSON; a vwo.* value is never walked into
        value = {"arrayValue": {"values": [value]}}
    r = post(gw, "/v1/traces", _with_attribute("vwo.user_id", value))
    assert r.status_code == 200 and r.json()["partialSuccess"]["rejectedSpans"] == "1"
    assert "user_id must be" in r.json()["partialSuccess"]["errorMessage"]
    assert "500" not in gw.stats()["responses"]
    assert post(gw, "/v1/traces", traces_json(({}, [goal("after")]))).status_code == 200


@pytest.mark.parametrize("value", [{"intValue": "9" * 300}, {"intValue": 9 * 10**299}, {"intValue": 2**63},
                                   {"intValue": 1e300}])
def test_a_huge_account_id_is_400_with_a_message(make_gateway, value):
    gw = make_gateway()
    r = post(gw, "/v1/traces", _with_attribute("vwo.account_id", value))
    assert r.status_code == 400 and "intValue" in r.json()["message"] and len(r.json()["message"]) < 200


def test_a_huge_start_time_is_400_not_a_poisoned_vwo_batch(make_gateway, receiver):
    gw = make_gateway()
    doc = traces_json(({}, [goal("late")]))
    doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["startTimeUnixNano"] = "9" * 300
    r = post(gw, "/v1/traces", doc)
    assert r.status_code == 400 and "startTimeUnixNano" in r.json()["message"]
    assert gw.flush(5) and receiver.event_count() == 0 and receiver.requests() == []



@needs_proto
def test_deeply_nested_protobuf_is_400_not_500(make_gateway):
    gw = make_gateway()
    value = ld(1, b"leaf")  # AnyValue.string_value
    for _ in range(10_000):
        value = ld(5, ld(1, value))  # AnyValue.array_value -> ArrayValue.values
    # Span.attributes: KeyValue{key, value}; a VWO span (only those are decoded)
    span = ld(9, ld(1, b"vwo.event.type") + ld(2, ld(1, b"goal"))) + ld(9, ld(1, b"vwo.nested") + ld(2, value))
    body = ld(1, ld(2, ld(2, span)))  # ExportTraceServiceRequest.resource_spans.scope_spans.spans
    r = requests.post(gw.url + "/v1/traces", data=body, headers={"Content-Type": "application/x-protobuf"},
                      timeout=10)
    assert r.status_code == 400
    assert "500" not in gw.stats()["responses"]
