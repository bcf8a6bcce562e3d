"""The gateway's bounds and durability, as a separate process meets them: decompression and
item-count bombs (peak RSS measured), a backlog bounded in bytes, VWO outages longer than the
retry budget and ``kill -9`` with ``--spool``, and shutdown beside a slow client."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import ACCOUNT_ID, SDK_KEY
from helpers import ld
from test_gateway import JSON_HEADERS, goal, traces_json

from vwo_otel import visitor_uuid
from vwo_otel.servers import otlp
from vwo_otel.testing import hostile_bodies

ROOT = Path(__file__).resolve().parents[2]
PB_HEADERS = {"Content-Type": "application/x-protobuf"}
needs_proto = pytest.mark.skipif(not otlp.protobuf_available(), reason="opentelemetry-proto is not installed")


class GatewayProcess:
    """``python -m vwo_otel gateway`` in its own process (so its peak RSS is its own)."""

    def __init__(self, tmp: Path, endpoint: str, **config: Any) -> None:
        self.tmp, self.endpoint, self.config = tmp, endpoint, config
        self.proc: subprocess.Popen[str] | None = None
        self.url = self.out = ""

    def start(self, port: int = 0) -> GatewayProcess:
        cfg = {"accounts": {str(ACCOUNT_ID): {"sdk_key_env": "TEST_GW_KEY"}}, "default_account": ACCOUNT_ID,
               "endpoint": self.endpoint, "port": port, "retry_after": 1, "shutdown_timeout": 5, **self.config}
        path = self.tmp / "gateway.json"
        path.write_text(json.dumps(cfg))
        env = {**os.environ, "TEST_GW_KEY": SDK_KEY, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen([sys.executable, "-m", "vwo_otel", "gateway", "--config", str(path)],
                                     cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                     stderr=open(self.tmp / "gateway.err", "a"), text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        assert "listening on " in line, (self.tmp / "gateway.err").read_text()
        self.url = line.split("listening on ", 1)[1].split()[0]
        return self

    def peak_rss_mb(self) -> float:
        """The process's peak resident memory so far (VmHWM), in MB."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmHWM")

    def stats(self) -> dict:
        return requests.get(self.url + "/stats", timeout=5).json()

    def post(self, path: str, body: bytes, headers: dict, timeout: float = 30) -> requests.Response:
        return requests.post(self.url + path, data=body, headers=headers, timeout=timeout)

    def kill(self, sig: int = signal.SIGKILL) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(15)
        finally:
            if self.proc.stdout:
                self.out = self.proc.stdout.read()
                self.proc.stdout.close()

    def final_stats(self) -> dict:
        """The counters the CLI prints as its last line when it stops."""
        return json.loads(self.out.strip().splitlines()[-1])


@pytest.fixture
def gateway_process(tmp_path, receiver):
    made: list[GatewayProcess] = []

    def make(**config: Any) -> GatewayProcess:
        gw = GatewayProcess(tmp_path, receiver.url, **config)
        made.append(gw)
        return gw.start()

    yield make
    for gw in made:
        if gw.proc is not None and gw.proc.poll() is None:
            gw.kill()



def _many_in_parallel(calls: list) -> list:
    results: list = [None] * len(calls)

    def run(i: int) -> None:
        results[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


@needs_proto
def test_bombs_are_refused_before_they_cost_memory(gateway_process, receiver):
    gw = gateway_process()
    base = gw.peak_rss_mb()
    bombs = hostile_bodies()
    assert all(len(b.body) < 200_000 for b in bombs)
    started = time.monotonic()
    answers = _many_in_parallel([lambda b=b: gw.post(b.path, b.body, b.headers) for b in bombs for _ in range(2)])
    took = time.monotonic() - started
    assert [r.status_code for r in answers] == [413] * 8, [(r.status_code, r.text[:100]) for r in answers]
    # A VWO item of several MiB: that item is rejected (partial success), its neighbours delivered.
    huge = goal("huge", **{"vwo.visitor.user_agent": "x" * (3 * 1024 * 1024)})
    r = gw.post("/v1/traces", json.dumps(traces_json(({}, [goal("ok1"), huge, goal("ok2")]))).encode(),
                JSON_HEADERS)
    assert r.status_code == 200 and r.json()["partialSuccess"]["rejectedSpans"] == "1"
    peak = gw.peak_rss_mb()
    print(f"\nbombs: {', '.join(b.name for b in bombs)} (64 MiB inflated), two of each at once: "
          f"all 413 in {took:.2f} s; peak RSS {base:.0f} MB at start -> {peak:.0f} MB")
    assert peak - base < 150, (base, peak)
    assert gw.kill(signal.SIGTERM) == 0
    assert uuids(receiver) == Counter({visitor_uuid(ACCOUNT_ID, "ok1"): 1, visitor_uuid(ACCOUNT_ID, "ok2"): 1})


def uuids(receiver) -> Counter:
    """How many times each visitor reached VWO."""
    return Counter(ev["u"] for ev in receiver.events())


def _post_json(gw, users: list[str], **extra: Any) -> requests.Response:
    """Goals of ``users`` happening now (a spool keeps events up to its max_age, a day)."""
    doc = traces_json(({}, [goal(u, **extra) for u in users]))
    now = time.time_ns()
    for span in doc["resourceSpans"][0]["scopeSpans"][0]["spans"]:
        span["startTimeUnixNano"] = span["endTimeUnixNano"] = str(now)
    body = json.dumps(doc).encode()
    return requests.post(gw.url + "/v1/traces", data=body, headers=JSON_HEADERS, timeout=30)


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_backlog_is_bounded_in_bytes_and_answers_429_keeping_nothing(make_gateway, receiver):
    gw = make_gateway(max_backlog_bytes=1024 * 1024, request_time_interval=600, events_per_request=1000)
    big = {"vwo.visitor.user_agent": "u" * 300_000}  # one event of about 300 KB
    answers = [_post_json(gw, [f"big{i}"], **big).status_code for i in range(6)]
    assert answers[:3] == [200, 200, 200] and answers[3:] == [429, 429, 429], answers
    account = gw.stats()["accounts"][str(ACCOUNT_ID)]
    assert account["backlog"] == 3 and 900_000 < account["backlog_bytes"] <= 1024 * 1024
    r = _post_json(gw, ["big-late"], **big)
    assert r.status_code == 429 and "bytes" in r.json()["message"] and r.headers["Retry-After"] == "1"
    assert _post_json(gw, ["small"]).status_code == 200  # what still fits under the bound is taken
    assert gw.flush(10) and receiver.event_count() == 4
    assert _post_json(gw, ["big-after"], **big).status_code == 200  # room again once delivered
    assert gw.flush(10) and receiver.event_count() == 5


def test_spool_keeps_events_through_an_outage_longer_than_the_retry_budget(make_gateway, receiver, tmp_path,
                                                                            caplog):
    from vwo_otel import RetryPolicy
    caplog.set_level(logging.WARNING, logger="vwo_otel")
    receiver.stop()
    retry = RetryPolicy(budget=0.3, initial_backoff=0.1, max_backoff=0.5)
    gw = make_gateway(spool=str(tmp_path / "spool"), retry=retry, events_per_request=50)
    users = [f"out{i}" for i in range(200)]
    for i in range(0, 200, 50):
        assert _post_json(gw, users[i:i + 50]).status_code == 200
    account = lambda: gw.stats()["accounts"][str(ACCOUNT_ID)]  # noqa: E731
    _wait_for(lambda: account()["on_disk"] >= 150, 15, "events parked on disk")
    time.sleep(1.0)  # several retry budgets pass with VWO down: nothing is reported failed
    now = account()  # parked, or back in the queue for a probe
    assert now["failed"] == 0 and now["delivered"] == 0 and now["on_disk"] + now["backlog"] == 200, now
    assert "wait on disk (spool) and are sent again when VWO answers" in caplog.text  # the operator hears of it
    receiver.start()
    _wait_for(lambda: receiver.event_count() >= 200, 30, "delivery after VWO answers again")
    assert gw.stop(5)
    seen = uuids(receiver)
    assert len(seen) == 200 and set(seen.values()) == {1}
    assert account()["delivered"] == 200 and account()["failed"] == 0


def test_kill_9_after_the_answer_loses_nothing(gateway_process, receiver, tmp_path):
    receiver.stop()  # VWO down: everything accepted waits in the gateway
    spool = str(tmp_path / "spool")
    gw = gateway_process(spool=spool, retry_budget=0.5, events_per_request=20)
    users = [f"k9-{i}" for i in range(300)]
    for i in range(0, 300, 30):
        assert _post_json(gw, users[i:i + 30]).status_code == 200
    assert gw.kill(signal.SIGKILL) == -signal.SIGKILL  # at once after the last 200
    receiver.start()
    again = GatewayProcess(tmp_path, receiver.url, spool=spool, events_per_request=20).start()
    try:
        _wait_for(lambda: receiver.event_count() >= 300, 30, "the next gateway delivering the dead one's events")
        assert again.kill(signal.SIGTERM) == 0
    finally:
        if again.proc is not None and again.proc.poll() is None:
            again.kill()
    seen = uuids(receiver)
    assert set(seen) == {visitor_uuid(ACCOUNT_ID, u) for u in users} and set(seen.values()) == {1}


def test_stop_delivers_the_backlog_while_a_slow_client_still_sends(make_gateway, receiver):
    gw = make_gateway(request_time_interval=600, events_per_request=1000, shutdown_timeout=3)
    assert _post_json(gw, [f"s{i}" for i in range(50)]).status_code == 200
    slow = socket.create_connection(("127.0.0.1", gw.port))
    slow.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 100000\r\n\r\n" + b"{" * 10)
    try:
        time.sleep(0.2)  # the request is in progress on the gateway
        started = time.monotonic()
        assert gw.stop()
        took = time.monotonic() - started
    finally:
        slow.close()
    assert receiver.event_count() == 50
    assert took < 3.5, took


def test_the_cli_exits_1_when_events_failed_while_it_ran(gateway_process, receiver):
    receiver.stop()  # VWO down, no spool: the batch fails once its retry budget is spent
    gw = gateway_process(retry_budget=0.2, events_per_request=10, request_time_interval=1)
    assert _post_json(gw, [f"f{i}" for i in range(10)]).status_code == 200
    _wait_for(lambda: gw.stats()["accounts"][str(ACCOUNT_ID)]["failed"] == 10, 15, "the batch to fail")
    receiver.start()
    assert gw.kill(signal.SIGTERM) == 1  # the final drain had nothing left, yet 10 events were lost


def _span_with(attrs: bytes) -> bytes:
    """A VWO goal span (protobuf) with extra raw ``attrs`` (KeyValue fields), stamped now."""
    def kv(key: str, value: bytes) -> bytes:
        return ld(9, ld(1, key.encode()) + ld(2, value))

    now = time.time_ns()
    fields = (b"\x39" + now.to_bytes(8, "little")  # start_time_unix_nano (fixed64, field 7)
              + kv("vwo.event.type", b"\x18\x02") + kv("vwo.user_id", ld(1, b"nested"))
              + kv("vwo.campaign_id", b"\x18\x01") + kv("vwo.variation_id", b"\x18\x01")
              + kv("vwo.goal_id", b"\x18\x07"))
    return ld(2, fields + attrs)  # ScopeSpans.spans


@needs_proto
def test_nested_values_inside_vwo_items_cost_no_memory(gateway_process, receiver):
    gw = gateway_process()
    base = gw.peak_rss_mb()
    empty_kvlists = ld(5, b"\x0a\x02\x32\x00" * 100_000)  # AnyValue.array_value of 100k empty kvlist values
    spans = b"".join(_span_with(ld(9, ld(1, key) + ld(2, empty_kvlists)))
                     for key in (b"vwo.extra", b"http.payload") for _ in range(10))
    body = ld(1, ld(2, spans))  # ExportTraceServiceRequest.resource_spans.scope_spans
    started = time.monotonic()
    answers = _many_in_parallel([lambda: gw.post("/v1/traces", body, PB_HEADERS) for _ in range(3)])
    took = time.monotonic() - started
    assert [r.status_code for r in answers] == [200] * 3
    peak = gw.peak_rss_mb()
    print(f"\nnested values: 3 requests of 20 VWO spans, each with an attribute of 100k empty key-value "
          f"lists ({len(body) // 1024} KiB): {took:.2f} s, peak RSS {base:.0f} -> {peak:.0f} MB")
    assert peak - base < 100 and took < 10, (base, peak, took)
    assert gw.kill(signal.SIGTERM) == 0
    assert receiver.event_count() == 60


def test_malformed_numbers_and_text_are_400_or_rejected_never_500(make_gateway, receiver):
    gw = make_gateway()
    doc = traces_json(({}, [goal("x")]))
    doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["attributes"].append(
        {"key": "vwo.revenue", "value": {"doubleValue": 10**400}})
    r = requests.post(gw.url + "/v1/traces", data=json.dumps(doc), headers=JSON_HEADERS, timeout=10)
    assert r.status_code == 400 and "doubleValue" in r.json()["message"]
    for field in ("vwo.user_id", "vwo.visitor.user_agent", "vwo.visitor.ip"):  # a lone surrogate: no UTF-8 has it
        bad = traces_json(({}, [goal("ok"), goal("s", **{field: "\ud800"})]))
        r = requests.post(gw.url + "/v1/traces", data=json.dumps(bad), headers=JSON_HEADERS, timeout=10)
        assert r.status_code == 200 and r.json()["partialSuccess"]["rejectedSpans"] == "1", (field, r.text)
    assert "500" not in gw.stats()["responses"]
    assert gw.flush(5) and receiver.event_count() == 3


def test_chunked_framing_is_strict(make_gateway):
    gw = make_gateway()
    body = json.dumps(traces_json(({}, [goal("c")]))).encode()

    def raw(head: bytes, payload: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
            s.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + head
                      + b"\r\n" + payload)
            return s.recv(65536)

    good = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    assert raw(b"Transfer-Encoding: chunked\r\n", good).startswith(b"HTTP/1.1 200")
    for head, payload in [
        (b"Transfer-Encoding: chunked\r\n", b"0x%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)),
        (b"Transfer-Encoding: chunked\r\n", b"%x\r\n%sXY\r\n0\r\n\r\n" % (len(body), body)),  # no CRLF after it
        (b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", good),  # both: a smuggling vector
        (b"Content-Length: +%d\r\n" % len(body), body),
    ]:
        answer = raw(head, payload)
        assert answer.startswith(b"HTTP/1.1 400") and b"Connection: close" in answer, (head, answer[:200])


@pytest.fixture
def small_disk(make_tmpfs):
    """A 256 KiB tmpfs (root only): a spool disk that fills up."""
    return make_tmpfs(256)


def test_a_full_spool_disk_is_never_answered_200(gateway_process, receiver, small_disk, tmp_path):
    receiver.stop()  # VWO down: every accepted event must stay on the (small) disk
    gw = gateway_process(spool=str(small_disk), retry_budget=0.3, events_per_request=100)
    acked: list[str] = []
    refused = []
    for i in range(60):
        users = [f"d{i}-{j}" for j in range(100)]
        r = _post_json(gw, users, **{"vwo.visitor.user_agent": "u" * 100})  # 100 rows need 176 KiB free: 196 are
        if r.status_code == 200:
            acked += users
        else:
            refused.append(r.status_code)
            if len(refused) >= 3:
                break
    assert acked and refused and set(refused) <= {429, 503}, refused
    assert gw.kill(signal.SIGKILL) == -signal.SIGKILL
    subprocess.run(["mount", "-o", "remount,size=8m", str(small_disk)], check=True)
    receiver.start()
    again = GatewayProcess(tmp_path, receiver.url, spool=str(small_disk), events_per_request=100).start()
    try:
        _wait_for(lambda: receiver.event_count() >= len(acked), 30, "every acknowledged event delivered")
        assert again.kill(signal.SIGTERM) == 0
    finally:
        if again.proc is not None and again.proc.poll() is None:
            again.kill()
    assert set(uuids(receiver)) >= {visitor_uuid(ACCOUNT_ID, u) for u in acked}  # none of them lost


def test_a_second_sigterm_does_not_cut_the_final_delivery(gateway_process, receiver):
    gw = gateway_process(request_time_interval=600, events_per_request=100)
    users = [f"t{i}" for i in range(200)]
    assert _post_json(gw, users).status_code == 200
    receiver.stall(1.0)  # VWO answers slowly: the delivery at shutdown takes a while
    assert gw.proc is not None
    gw.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    gw.proc.send_signal(signal.SIGTERM)  # an impatient operator, or a supervisor's second signal
    assert gw.kill(signal.SIGINT) == 0
    assert set(uuids(receiver)) == {visitor_uuid(ACCOUNT_ID, u) for u in users}


def test_what_stays_on_disk_at_shutdown_is_in_the_final_counters(gateway_process, receiver, tmp_path):
    receiver.stop()
    gw = gateway_process(spool=str(tmp_path / "spool"), shutdown_timeout=1, events_per_request=25)
    assert _post_json(gw, [f"left{i}" for i in range(50)]).status_code == 200
    assert gw.kill(signal.SIGTERM) == 1  # not everything was delivered
    account = gw.final_stats()["accounts"][str(ACCOUNT_ID)]
    assert account["on_disk"] == 50 and account["delivered"] == 0 and account["failed"] == 0
