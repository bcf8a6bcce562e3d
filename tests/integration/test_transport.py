"""The exporter's HTTP transport: direct keep-alive connections (plain and TLS), requests when a
proxy applies, and failures as the transport's own ``TransportError`` on both paths."""

from __future__ import annotations

import http.client
import logging
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from conftest import ACCOUNT_ID, SDK_KEY

from vwo_otel import VWOExporter
from vwo_otel.event import VWOEvent
from vwo_otel.export import http as transport
from vwo_otel.export.http import Transport

PROXY_VARS = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy",
              "NO_PROXY", "no_proxy", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


@pytest.fixture(autouse=True)
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)


class _Plain(ThreadingHTTPServer):
    """The standard library's server, without its reverse-DNS lookup of the host at bind."""

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])


def respond(h: BaseHTTPRequestHandler, status: int, body: bytes, content_type: str) -> None:
    """Status line, headers and body in one write."""
    head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}"] + (["Connection: close"] if h.close_connection else [])
    h.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)


class _Server(_Plain):
    """Records each request (request line, headers, body, client port); ``closed`` is set each
    time the server has closed a connection."""

    def __init__(self, close_after_reply: bool = False, tls: ssl.SSLContext | None = None) -> None:
        self.seen: list[tuple[str, dict[str, str], bytes, int]] = []
        self.close_after_reply = close_after_reply
        self.closed = threading.Semaphore(0)
        super().__init__(("127.0.0.1", 0), _Handler)
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True)

    def shutdown_request(self, request: Any) -> None:
        super().shutdown_request(request)
        self.closed.release()

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.server_port}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def _serve(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n)
        self.server.seen.append((self.requestline, {k.lower(): v for k, v in self.headers.items()}, body,
                                 self.client_address[1]))
        respond(self, 200, b'{"status":"ok"}', "application/json")
        if self.server.close_after_reply:
            self.close_connection = True  # closed without announcing it: the client finds out on reuse

    do_GET = do_POST = _serve

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[_Server]:
    s = _Server()
    threading.Thread(target=s.serve_forever, daemon=True).start()
    yield s
    s.shutdown()
    s.server_close()


def test_direct_post_is_one_keep_alive_connection(server: _Server) -> None:
    t = Transport()
    url = f"http://{server.url}/server-side/batch-events?a=1&env=k"
    headers = {"Authorization": "k", "User-Agent": "vwo-otel-python", "Content-Type": "application/json"}
    for body in (b'{"ev":[1]}', b'{"ev":[1,2,3]}', b'{"ev":[4]}'):
        reply = t.request("POST", url, body, headers, 5)
        assert (reply.status_code, reply.text, reply.headers.get("content-type")) == \
            (200, '{"status":"ok"}', "application/json")
    lines = [s[0] for s in server.seen]
    assert lines == ["POST /server-side/batch-events?a=1&env=k HTTP/1.1"] * 3
    first = server.seen[0][1]
    assert {k: first[k] for k in ("host", "authorization", "user-agent", "content-type", "content-length")} == {
        "host": server.url, "authorization": "k", "user-agent": "vwo-otel-python",
        "content-type": "application/json", "content-length": "10"}
    assert [s[2] for s in server.seen] == [b'{"ev":[1]}', b'{"ev":[1,2,3]}', b'{"ev":[4]}']
    assert len({s[3] for s in server.seen}) == 1  # one connection, kept alive
    t.close()


def test_a_connection_the_server_closed_is_not_reused() -> None:
    s = _Server(close_after_reply=True)
    threading.Thread(target=s.serve_forever, daemon=True).start()
    try:
        t = Transport()
        for i in range(3):
            assert t.request("GET", f"http://{s.url}/x?i={i}", None, {}, 5).status_code == 200
            assert s.closed.acquire(timeout=5)  # the server has closed that connection
        assert len({x[3] for x in s.seen}) == 3  # each request found the idle one closed and reconnected
    finally:
        s.shutdown()
        s.server_close()


def test_failures_are_transport_errors() -> None:
    t = Transport()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there once closed
    with pytest.raises(transport.ConnectionError) as refused:
        t.request("POST", f"http://127.0.0.1:{port}/x", b"{}", {}, 2)
    assert refused.value.retryable and "ConnectionRefusedError" in str(refused.value)
    silent = socket.create_server(("127.0.0.1", 0))  # accepts (backlog) but never answers
    try:
        with pytest.raises(transport.ReadTimeout):
            t.request("POST", f"http://127.0.0.1:{silent.getsockname()[1]}/x", b"{}", {}, 0.2)
    finally:
        silent.close()
    with pytest.raises(transport.InvalidURL) as bad_url:
        t.request("GET", "http://127.0.0.1:99999/x", None, {}, 1)
    with pytest.raises(transport.InvalidHeader) as bad_header:  # not retried: no attempt could send it
        t.request("GET", f"http://127.0.0.1:{port}/x", None, {"X-Device-User-Agent": "Ключ"}, 1)
    assert not bad_url.value.retryable and not bad_header.value.retryable


def test_characters_a_url_cannot_carry_are_percent_encoded_as_requests_does(server: _Server) -> None:
    t = Transport()
    for path in ("/pre fix/x?a=1", "/pr\u00e4fix/x?a=1"):
        assert t.request("GET", f"http://{server.url}{path}", None, {}, 5).status_code == 200
        assert requests.get(f"http://{server.url}{path}", timeout=5).status_code == 200
    lines = [x[0] for x in server.seen]
    assert lines[0] == lines[1] == "GET /pre%20fix/x?a=1 HTTP/1.1"
    assert lines[2] == lines[3] == "GET /pr%C3%A4fix/x?a=1 HTTP/1.1"
    t.close()


@pytest.mark.parametrize("how", ["close", "half-close"])
def test_an_answer_sent_before_the_body_was_read_is_returned(how: str) -> None:
    """A server may refuse a body with 413 before reading it and close: the send then fails
    (broken pipe / reset), yet the 413 is what the exporter must see (it splits the batch)."""
    srv = socket.create_server(("127.0.0.1", 0))
    accepted: list[int] = []

    def serve() -> None:
        for answer in (b"413 Payload Too Large\r\nContent-Length: 7\r\n\r\ntoo big",
                       b"200 OK\r\nContent-Length: 2\r\n\r\nok"):
            conn, (_, port) = srv.accept()
            accepted.append(port)
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            conn.sendall(b"HTTP/1.1 " + answer)
            if how == "half-close":
                conn.shutdown(socket.SHUT_WR)
                time.sleep(0.5)
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    t = Transport()
    url = f"http://127.0.0.1:{srv.getsockname()[1]}/server-side/batch-events"
    try:
        reply = t.request("POST", url, b"x" * (16 * 1024 * 1024), {"Content-Type": "application/json"}, 5)
        assert (reply.status_code, reply.text) == (413, "too big")
        reply = t.request("GET", url, None, {}, 5)  # that connection is not reused: a new one carries this
        assert (reply.status_code, reply.text) == (200, "ok") and len(set(accepted)) == 2
    finally:
        srv.close()
        t.close()


def test_real_time_visitor_text_no_header_can_carry_still_arrives(receiver) -> None:
    """VWO takes the visitor's user agent / IP from headers first; a value a header cannot
    carry (non-ASCII, control characters) is sent in the query only, and the event arrives."""
    exporter = VWOExporter(ACCOUNT_ID, SDK_KEY, endpoint=receiver.url)
    agents = ["Mozilla/5.0", "Навигатор/1.0", "evil\r\nX-Injected: 1"]
    for i, ua in enumerate(agents):
        assert exporter.send_event(VWOEvent(1, f"u{i}", 1_700_000_000, 5, 2, visitor_ua=ua,
                                            visitor_ip="203.0.113.9")).ok
    assert [e["visitor_ua"] for e in receiver.events()] == agents
    exporter.shutdown()


@pytest.fixture
def tls_server(tmp_path) -> Iterator[tuple[_Server, str]]:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    s = _Server(tls=ctx)
    threading.Thread(target=s.serve_forever, daemon=True).start()
    yield s, str(ca_file)
    s.shutdown()
    s.server_close()


def test_https_is_verified_against_the_ca_bundle_requests_would_use(tls_server, monkeypatch) -> None:
    server, ca_file = tls_server
    url = f"https://{server.url}/server-side/batch-events"
    with pytest.raises(transport.SSLError):  # requests' default bundle does not know this CA
        Transport().request("POST", url, b"{}", {}, 5)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", ca_file)
    t = Transport()
    for _ in range(2):
        assert t.request("POST", url, b'{"ev":[]}', {"Content-Type": "application/json"}, 5).status_code == 200
    assert [x[2] for x in server.seen] == [b'{"ev":[]}'] * 2
    assert len({x[3] for x in server.seen}) == 1
    t.close()


class _Proxy(_Plain):
    """A forward HTTP proxy on loopback: relays absolute-URI requests and records their lines."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        super().__init__(("127.0.0.1", 0), _ProxyHandler)


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Proxy

    def _relay(self) -> None:
        self.server.lines.append(self.requestline)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        target = urlsplit(self.path)
        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("proxy-connection", "connection")}
        conn.request(self.command, f"{target.path}?{target.query}", body=body or None, headers=headers)
        answer = conn.getresponse()
        data = answer.read()
        conn.close()
        respond(self, answer.status, data, answer.headers.get("Content-Type", "text/plain"))

    do_GET = do_POST = _relay

    def log_message(self, *args: Any) -> None:
        pass


def test_a_proxy_from_the_environment_is_used(receiver, monkeypatch, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    proxy = _Proxy()
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.server_port}")
        exporter = VWOExporter(ACCOUNT_ID, SDK_KEY, endpoint=receiver.url)
        events = [VWOEvent(1, f"user-{i}", 1_700_000_000_000, 5, 2) for i in range(3)]
        assert [o.ok for o in exporter.send_batch(events)] == [True]
        assert exporter.send_event(VWOEvent(2, "user-0", 1_700_000_000_000, 5, 2, 7)).ok
        assert receiver.event_count() == 4
        assert [line.split(" ", 1)[0] for line in proxy.lines] == ["POST", "GET"]
        urllib3_lines = [r.getMessage() for r in caplog.records if r.name.startswith("urllib3")]
        assert any("env=***" in line for line in urllib3_lines)  # requests' DEBUG lines, key masked
        assert not any(SDK_KEY in r.getMessage() for r in caplog.records)
        assert all(line.split(" ")[1].startswith(receiver.url + "/server-side/") for line in proxy.lines)
        with pytest.raises(transport.InvalidHeader):  # the transport's own error on this path too
            Transport().request("GET", receiver.url + "/x", None, {"X-Device-User-Agent": "Ключ"}, 5)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        exporter = VWOExporter(ACCOUNT_ID, SDK_KEY, endpoint=receiver.url)  # env read afresh
        assert exporter.send_batch(events)[0].ok
        assert len(proxy.lines) == 2 and receiver.event_count() == 7  # straight to the receiver
        exporter.shutdown()
    finally:
        proxy.shutdown()
        proxy.server_close()


def test_failures_through_a_proxy_are_transport_errors_too(monkeypatch) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there once closed
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
    with pytest.raises(transport.ConnectionError) as refused:
        Transport().request("POST", "http://127.0.0.1:9/x", b"{}", {}, 2)
    assert refused.value.retryable and str(refused.value).startswith("ProxyError: ")
    silent = socket.create_server(("127.0.0.1", 0))  # accepts (backlog) but never answers
    try:
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{silent.getsockname()[1]}")
        with pytest.raises(transport.ReadTimeout):
            Transport().request("POST", "http://127.0.0.1:9/x", b"{}", {}, 0.2)
    finally:
        silent.close()


@pytest.mark.parametrize("env", [
    {}, {"HTTPS_PROXY": "http://proxy:3128"}, {"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "vwo.com"},
    {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "dev.visualwebsiteoptimizer.com"}, {"ALL_PROXY": "http://all:2"},
    {"REQUESTS_CA_BUNDLE": "/tmp/ca.pem"}, {"CURL_CA_BUNDLE": "/tmp/curl.pem"}])
def test_the_environment_is_read_as_requests_reads_it(env: dict[str, str], monkeypatch) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    url = "https://dev.visualwebsiteoptimizer.com/server-side/batch-events?a=1"
    theirs = requests.Session().merge_environment_settings(url, {}, None, None, None)
    route = transport.route_from_env(url)
    assert (route.proxy, route.verify) == (requests.utils.select_proxy(url, theirs["proxies"]), theirs["verify"])


def test_a_changed_proxy_variable_is_picked_up(server: _Server, monkeypatch) -> None:
    monkeypatch.setattr(transport, "ENV_TTL", 0.0)  # the environment read afresh for each request
    proxy = _Proxy()
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    t = Transport()
    try:
        assert t.request("GET", f"http://{server.url}/direct?x=1", None, {}, 5).status_code == 200
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.server_port}")
        assert t.request("GET", f"http://{server.url}/proxied?x=1", None, {}, 5).status_code == 200
        assert proxy.lines == [f"GET http://{server.url}/proxied?x=1 HTTP/1.1"]
        assert [x[0].split(" ")[1] for x in server.seen] == ["/direct?x=1", "/proxied?x=1"]
    finally:
        t.close()
        proxy.shutdown()
        proxy.server_close()


def test_a_missing_ca_bundle_fails_only_https(server: _Server, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "missing.pem"))
    t = Transport()
    assert t.request("GET", f"http://{server.url}/x", None, {}, 5).status_code == 200  # plain http loads no bundle
    with pytest.raises(transport.ConnectionError, match="FileNotFoundError") as missing:
        t.request("GET", f"https://{server.url}/x", None, {}, 5)
    assert not missing.value.retryable  # no resend can read it
    t.close()
