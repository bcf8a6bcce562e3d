"""Servers that bend HTTP (issue #21): a 413 sent before the body is read on a connection kept
open, a 200 without a length on a connection kept open, a resolver that never answers,
certificates a resend cannot fix, and a 101 to a POST. Each server is a real loopback socket."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import ACCOUNT_ID, SDK_KEY

from vwo_otel import RetryPolicy, VWOExporter
from vwo_otel.errors import HTTPStatusError, NetworkError
from vwo_otel.event import VWOEvent
from vwo_otel.export import http as transport
from vwo_otel.export.http import Transport

PROXY_VARS = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy",
              "NO_PROXY", "no_proxy", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


@pytest.fixture(autouse=True)
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)


def visits(n: int, prefix: str = "v", ua: str = "") -> list[VWOEvent]:
    return [VWOEvent(1, f"{prefix}-{i}", 1_700_000_000_000, campaign_id=1, variation_id=1, visitor_ua=ua)
            for i in range(n)]


class Bent:
    """A loopback HTTP/1.1 server, a thread per connection, answering each request with
    ``answer(server, head, conn)``: it returns the answer's bytes, or None to hold the connection
    open without reading any more of it (until the server stops). Bodies it reads are counted
    in ``events`` (the user ids VWO's ``ev`` list carries, once each ``u``)."""

    def __init__(self, answer: Callable[[Bent, dict[str, str], socket.socket], bytes | None],
                 tls: ssl.SSLContext | None = None) -> None:
        self.answer = answer
        self.tls = tls
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.connections = 0
        self.requests = 0
        self.events: list[str] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            with self.lock:
                self.connections += 1
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(10)
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            data = b""
            while not self.stop.is_set():
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                raw, _, data = data.partition(b"\r\n\r\n")
                head = {"": raw.split(b"\r\n")[0].decode("latin-1")}
                for line in raw.split(b"\r\n")[1:]:
                    name, _, value = line.decode("latin-1").partition(":")
                    head[name.strip().lower()] = value.strip()
                with self.lock:
                    self.requests += 1
                answer = self.answer(self, head, conn)
                if answer is None:
                    self.stop.wait()  # the connection stays open; nothing more is read from it
                    return
                length = int(head.get("content-length", 0))
                while len(data) < length:
                    chunk = conn.recv(1 << 20)
                    if not chunk:
                        return
                    data += chunk
                body, data = data[:length], data[length:]
                if body:
                    with self.lock:
                        self.events += [e["u"] for e in json.loads(body)["ev"]]
                conn.sendall(answer)
        except (OSError, ValueError):
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(5)
        self.sock.close()


@pytest.fixture
def bent() -> Iterator[Callable[..., Bent]]:
    made: list[Bent] = []

    def make(answer: Callable[[Bent, dict[str, str], socket.socket], bytes | None], **kw: Any) -> Bent:
        made.append(Bent(answer, **kw))
        return made[-1]

    yield make
    for server in made:
        server.close()


OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{\"status\":\"ok\"}"


def early_413(limit: int) -> Callable[[Bent, dict[str, str], socket.socket], bytes | None]:
    """A server whose body limit is ``limit`` bytes: a larger request gets its 413 right after
    the headers, its body is never read, and the connection is kept open (as some proxies do)."""

    def answer(server: Bent, head: dict[str, str], conn: socket.socket) -> bytes | None:
        if int(head.get("content-length", 0)) > limit:
            conn.sendall(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 7\r\n\r\ntoo big")
            return None
        return OK

    return answer


# == #21 item 2: a 413 before the body is read, on a kept-open connection ======================

def test_an_early_413_splits_an_8_mb_batch_until_every_event_is_delivered(bent) -> None:
    server = bent(early_413(300 * 1024))
    exporter = VWOExporter(ACCOUNT_ID, SDK_KEY, endpoint=server.url, timeout=3,
                           retry=RetryPolicy(budget=20, initial_backoff=0.01, max_backoff=0.05))
    batch = visits(80, ua="x" * 100_000)  # about 8 MB in one request
    start = time.monotonic()
    outcomes = exporter.send_batch(batch)
    took = time.monotonic() - start
    assert [o.error for o in outcomes if not o.ok] == []
    assert sum(len(o.events) for o in outcomes) == 80 and len(set(server.events)) == len(server.events) == 80
    assert took < 3, took  # no request waited out its timeout
    exporter.shutdown()


def test_an_early_413_on_a_kept_open_connection_is_not_reused(bent) -> None:
    server = bent(early_413(64 * 1024))
    t = Transport()
    url = server.url + "/server-side/batch-events"
    reply = t.request("POST", url, b'{"ev":[]}' + b" " * (1024 * 1024), {}, 5)  # fits in the socket buffers
    assert (reply.status_code, reply.text) == (413, "too big")
    start = time.monotonic()
    assert t.request("POST", url, b'{"ev":[]}', {}, 5).status_code == 200
    assert time.monotonic() - start < 1  # not sent on the connection whose body was never read
    assert server.connections == 2
    t.close()


def test_over_tls_a_large_body_is_sent_whole_and_an_early_413_still_returned(bent, ca, monkeypatch) -> None:
    """TLS 1.3 servers send session tickets after the handshake: readable bytes that are no
    answer, so the body keeps going; an early 413 over TLS is returned as over plain TCP."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", ca.path)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    server = bent(early_413(4 * 1024 * 1024), tls=ctx)
    t = Transport()
    url = server.url + "/server-side/batch-events"
    body = json.dumps({"ev": [{"u": f"user-{i}", "pad": "x" * 1000} for i in range(3000)]}).encode()
    assert t.request("POST", url, body, {}, 5).status_code == 200  # 3 MB, read and answered
    assert len(server.events) == 3000
    reply = t.request("POST", url, body * 3, {}, 5)  # 9 MB: refused right after the headers
    assert (reply.status_code, reply.text) == (413, "too big")
    start = time.monotonic()
    assert t.request("POST", url, b'{"ev":[]}', {}, 5).status_code == 200
    assert time.monotonic() - start < 1
    t.close()


def test_a_100_continue_while_the_body_is_sent_does_not_stop_it(bent) -> None:
    """A server may say ``100 Continue`` unasked: the body goes on, the final answer is read."""

    def go_on(server: Bent, head: dict[str, str], conn: socket.socket) -> bytes | None:
        conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        return OK

    server = bent(go_on)
    t = Transport()
    body = json.dumps({"ev": [{"u": f"user-{i}", "pad": "x" * 1000} for i in range(1000)]}).encode()
    reply = t.request("POST", server.url + "/server-side/batch-events", body, {}, 5)
    assert (reply.status_code, len(server.events)) == (200, 1000)
    assert t.request("POST", server.url + "/server-side/batch-events", body, {}, 5).status_code == 200
    assert server.connections == 1  # both answers whole: the connection was kept
    t.close()


def test_batches_a_server_refuses_early_are_all_delivered_through_the_processor(bent, pipeline, callbacks) -> None:
    server = bent(early_413(16 * 1024))
    exporter = VWOExporter(ACCOUNT_ID, SDK_KEY, endpoint=server.url, timeout=3,
                           retry=RetryPolicy(budget=20, initial_backoff=0.01, max_backoff=0.05))
    events, proc, _ = pipeline({"events_per_request": 500, "request_time_interval": 60}, exporter=exporter,
                               max_queue_size=5000)
    start = time.monotonic()
    for i in range(2000):
        events.activate(1, 1, f"user-{i}")
    assert proc.flush_events() is True
    took = time.monotonic() - start
    assert not callbacks.failed and len(callbacks.ok_events) == 2000
    assert len(server.events) == 2000 and len(set(server.events)) == 2000
    assert took < 3, took  # no request waited out its timeout on a connection left with an unread body


# == #21 item 4: a 200 without Content-Length on a kept-open connection =========================

def unframed_200(server: Bent, head: dict[str, str], conn: socket.socket) -> bytes | None:
    """200 with neither Content-Length nor chunked, and the connection kept open."""
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"status\":\"ok\"}"


def test_a_200_without_a_length_is_complete_at_once_and_its_connection_closed(bent) -> None:
    server = bent(unframed_200)
    t = Transport()
    url = server.url + "/server-side/batch-events"
    start = time.monotonic()
    for _ in range(3):
        assert t.request("POST", url, b'{"ev":[]}', {}, 5).status_code == 200
    assert time.monotonic() - start < 1  # none waited for the end of a body that never ends
    assert server.connections == 3  # such an answer leaves its connection unusable: closed
    t.close()


def test_delivery_to_a_server_answering_200_without_a_length_is_not_held_up(bent, pipeline, callbacks) -> None:
    server = bent(unframed_200)
    exporter = VWOExporter(ACCOUNT_ID, SDK_KEY, endpoint=server.url, timeout=5)
    events, proc, _ = pipeline({"events_per_request": 100, "request_time_interval": 60}, exporter=exporter,
                               max_queue_size=5000)
    start = time.monotonic()
    for i in range(5000):
        events.activate(1, 1, f"user-{i}")
    assert proc.flush_events() is True
    took = time.monotonic() - start
    assert len(server.events) == 5000 and not callbacks.failed
    assert took < 5, took  # before: each request held its thread for the whole timeout (5,000 events in 60 s)


# == #21 item 5: name resolution within the request's deadline ==================================

@pytest.fixture
def silent_resolver(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """``socket.getaddrinfo`` for names under ``.invalid`` blocks (a resolver that never answers)
    until the test ends; addresses and other names resolve as usual."""
    release = threading.Event()
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host.endswith(".invalid"):
            release.wait(30)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield release
    release.set()


def resolvers() -> int:
    return sum(t.name.startswith("vwo_otel-resolve") for t in threading.enumerate())


def test_a_silent_resolver_costs_no_more_than_the_request_deadline(silent_resolver) -> None:
    t = Transport()
    start = time.monotonic()
    with pytest.raises(transport.ConnectTimeout) as failed:
        t.request("POST", "http://vwo.invalid/server-side/batch-events", b"{}", {}, 0.5)
    assert time.monotonic() - start < 0.8
    assert failed.value.retryable and "resolv" in str(failed.value)
    for i in range(20):  # each request waits its own deadline; the resolver threads stay few
        with pytest.raises(transport.ConnectTimeout):
            t.request("POST", f"http://vwo-{i % 8}.invalid/server-side/batch-events", b"{}", {}, 0.05)
    assert resolvers() <= transport.MAX_RESOLVING  # one per name, up to the cap; beyond it: refused at once
    t.close()


def test_a_flush_behind_a_silent_resolver_ends_with_its_retry_budget(silent_resolver, pipeline, callbacks) -> None:
    exporter = VWOExporter(ACCOUNT_ID, SDK_KEY, endpoint="https://vwo.invalid", timeout=2,
                           retry=RetryPolicy(budget=1.5, initial_backoff=0.05, max_backoff=0.1))
    events, proc, _ = pipeline({"events_per_request": 10, "request_time_interval": 60}, exporter=exporter)
    for i in range(3):
        events.activate(1, 1, f"user-{i}")
    start = time.monotonic()
    assert proc.flush_events() is False
    assert time.monotonic() - start < 2.5  # the budget (1.5 s) and the last attempt's deadline, not the resolver's
    ((error, failed),) = callbacks.failed
    assert isinstance(error, NetworkError) and "ConnectTimeout" in str(error) and len(failed) == 3


# == #21 item 6: failures a resend cannot fix are final at once =================================

@pytest.fixture
def ca(tmp_path) -> Any:
    trustme = pytest.importorskip("trustme")
    authority = trustme.CA()
    authority.path = str(tmp_path / "ca.pem")
    authority.cert_pem.write_to_path(authority.path)
    return authority


def tls_server(bent: Callable[..., Bent], ca: Any, *names: str) -> Bent:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(ctx)
    return bent(lambda server, head, conn: OK, tls=ctx)


def send_once(url: str) -> tuple[Any, float]:
    exporter = VWOExporter(ACCOUNT_ID, SDK_KEY, endpoint=url, timeout=2,
                           retry=RetryPolicy(budget=5, initial_backoff=0.05, max_backoff=0.1))
    start = time.monotonic()
    (outcome,) = exporter.send_batch(visits(2))
    exporter.shutdown()
    return outcome, time.monotonic() - start


@pytest.mark.parametrize("case", ["unknown-ca", "wrong-host"])
def test_a_certificate_the_bundle_does_not_vouch_for_is_final_at_once(bent, ca, monkeypatch, case: str) -> None:
    server = tls_server(bent, ca, "127.0.0.1" if case == "unknown-ca" else "vwo.example")
    if case == "wrong-host":
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", ca.path)  # the CA is trusted, but the name is not 127.0.0.1
    with pytest.raises(transport.SSLError) as failed:
        Transport().request("POST", server.url + "/x", b"{}", {}, 2)
    assert not failed.value.retryable and "CERTIFICATE_VERIFY_FAILED" in str(failed.value)
    outcome, took = send_once(server.url)
    assert isinstance(outcome.error, NetworkError) and "SSLError" in str(outcome.error)
    assert server.connections == 2 and took < 1  # one handshake per attempt: not retried
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", ca.path)
    if case == "unknown-ca":  # the same server, once the bundle vouches for it
        assert send_once(server.url)[0].ok


def test_tls_to_a_port_that_speaks_plain_http_is_final_at_once() -> None:
    """An https endpoint whose port speaks plain HTTP (it answers the TLS hello with a 400)."""
    sock = socket.create_server(("127.0.0.1", 0))
    accepted = []

    def plain() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            accepted.append(conn)
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            conn.close()

    threading.Thread(target=plain, daemon=True).start()
    try:
        outcome, took = send_once(f"https://127.0.0.1:{sock.getsockname()[1]}")
    finally:
        sock.close()
    assert isinstance(outcome.error, NetworkError) and "SSLError" in str(outcome.error)
    assert len(accepted) == 1 and took < 1


def test_a_handshake_the_server_breaks_off_is_retried(ca) -> None:
    """A reset during the handshake may be transient (a restarting server): it stays retryable."""
    sock = socket.create_server(("127.0.0.1", 0))
    accepted = []

    def reset() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            accepted.append(conn)
            conn.recv(10)
            conn.close()

    threading.Thread(target=reset, daemon=True).start()
    try:
        with pytest.raises(transport.TransportError) as failed:
            Transport().request("POST", f"https://127.0.0.1:{sock.getsockname()[1]}/x", b"{}", {}, 2)
        assert failed.value.retryable
    finally:
        sock.close()


def switching_protocols(server: Bent, head: dict[str, str], conn: socket.socket) -> bytes | None:
    """Reads (stores) the batch, then answers 101 to a request that asked for no upgrade."""
    return b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"


def test_a_101_to_a_post_is_reported_failed_and_not_retried(bent) -> None:
    """The server may have stored the batch before its 101: a resend could store it twice and
    calling it delivered could lose it unreported. It is reported failed, never retried."""
    server = bent(switching_protocols)
    exporter = VWOExporter(ACCOUNT_ID, SDK_KEY, endpoint=server.url, timeout=2,
                           retry=RetryPolicy(budget=5, initial_backoff=0.05, max_backoff=0.1))
    (outcome,) = exporter.send_batch(visits(2))
    assert isinstance(outcome.error, HTTPStatusError) and outcome.error.status == 101
    assert server.requests == 1 and len(server.events) == 2  # stored once, not sent again
    (outcome,) = exporter.send_batch(visits(2, "w"))
    assert outcome.error.status == 101
    assert server.connections == 2  # the connection that switched protocols was not reused
    exporter.shutdown()
