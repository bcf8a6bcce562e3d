"""The exporter's own HTTP/1.1 client (straight to the server) reading answers the way servers
and load balancers write them: chunked bodies, interim 1xx answers, connections the server
closes, broken status lines. Each server below is a raw loopback socket answering with fixed bytes."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from conftest import ACCOUNT_ID, SDK_KEY

from vwo_otel import VWOExporter
from vwo_otel.event import VWOEvent
from vwo_otel.export import http as transport
from vwo_otel.export.http import Transport

CLOSE = "close"


class Scripted:
    """Accepts connections and answers each request with the next of ``answers`` (raw bytes, or
    ``(bytes, CLOSE)`` to close the connection after them); records each request's client port."""

    def __init__(self, answers: list[bytes | tuple[bytes, str]]) -> None:
        self.answers = list(answers)
        self.ports: list[int] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.base = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.url = f"{self.base}/server-side/batch-events?a=1"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while self.answers:
            try:
                conn, (_, port) = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn, port), daemon=True).start()

    def _serve(self, conn: socket.socket, port: int) -> None:
        with conn:
            data = b""
            while self.answers:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, _, data = data.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                while len(data) < length:
                    data += conn.recv(65536)
                data = data[length:]
                self.ports.append(port)
                answer = self.answers.pop(0)
                close = isinstance(answer, tuple)
                conn.sendall(answer[0] if isinstance(answer, tuple) else answer)
                if close:
                    return

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def scripted() -> Iterator:
    made: list[Scripted] = []

    def make(*answers: bytes | tuple[bytes, str]) -> Scripted:
        made.append(Scripted(list(answers)))
        return made[-1]

    yield make
    for server in made:
        server.close()


def test_chunked_answers_interim_answers_and_header_case_are_read(scripted) -> None:
    server = scripted(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\ncontent-type: application/json\r\n\r\n"
        b"5\r\n{\"ok\"\r\n3;ext=1\r\n:1}\r\n0\r\nX-Trailer: t\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nContent-Length: 0\r\n\r\n")
    t = Transport()
    reply = t.request("POST", server.url, b'{"ev":[]}', {"Content-Type": "application/json"}, 5)
    assert (reply.status_code, reply.text, reply.headers.get("Content-Type")) == (200, '{"ok":1}', "application/json")
    reply = t.request("POST", server.url, b'{"ev":[]}', {}, 5)
    assert (reply.status_code, reply.headers.get("retry-after")) == (429, "7")
    assert len(set(server.ports)) == 1  # both answers complete: one kept-alive connection
    t.close()


@pytest.mark.parametrize("closing", [
    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nok",  # no length: the body ends with the connection
], ids=["connection-close", "http-1.0", "read-to-end"])
def test_an_answer_that_ends_its_connection_is_not_reused(scripted, closing: bytes) -> None:
    server = scripted((closing, CLOSE), b"HTTP/1.1 204 No Content\r\n\r\n")
    t = Transport()
    reply = t.request("POST", server.url, b"{}", {}, 5)
    assert (reply.status_code, reply.text) == (200, "ok")
    assert t.request("POST", server.url, b"{}", {}, 5).status_code == 204
    assert len(set(server.ports)) == 2
    t.close()


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 2OO OK\r\n\r\n", b"SSH-2.0-OpenSSH_9.0\r\n\r\n", b"",
    b"HTTP/1.1 500 Oops\r\nContent-Length: 10\r\n\r\nshort",  # a failure's body cut short
], ids=["bad-status", "not-http", "closed-without-answer", "cut-error-body"])
def test_a_broken_answer_is_a_retryable_connection_error(scripted, answer: bytes) -> None:
    server = scripted((answer, CLOSE))
    with pytest.raises(transport.ConnectionError) as failed:
        Transport().request("POST", server.url, b"{}", {}, 2)
    assert failed.value.retryable


def test_an_answer_framed_twice_is_read_but_its_connection_not_reused(scripted) -> None:
    server = scripted(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 99\r\n\r\n"
                      b"2\r\nok\r\n0\r\n\r\n", b"HTTP/1.1 204 No Content\r\n\r\n")
    t = Transport()
    assert t.request("POST", server.url, b"{}", {}, 5).text == "ok"
    assert t.request("POST", server.url, b"{}", {}, 5).status_code == 204
    assert len(set(server.ports)) == 2  # RFC 9112 6.3: framing in doubt, the connection is not kept
    t.close()


def test_no_idle_thread_at_interpreter_exit_means_the_connection_closes(scripted, monkeypatch) -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    server = scripted(ok, ok)
    start = threading.Thread.start

    def refuse(self: threading.Thread) -> None:
        if self.name == "vwo_otel-idle":
            raise RuntimeError("can't create new thread at interpreter shutdown")  # as Python 3.12 at exit
        start(self)

    monkeypatch.setattr(threading.Thread, "start", refuse)
    t = Transport()
    assert t.request("POST", server.url, b"{}", {}, 5).text == "ok"  # delivered, not a failure
    assert t.request("POST", server.url, b"{}", {}, 5).text == "ok"
    assert len(set(server.ports)) == 2  # not kept without a thread to close it: the second request reconnects


def test_each_address_gets_only_what_is_left_of_the_deadline(monkeypatch) -> None:
    import time

    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)  # accepts nothing: once its queue is full, connection attempts hang
    port = full.getsockname()[1]
    queued = []
    for _ in range(4):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        queued.append(s)
    three = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))] * 3
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: three)
    started = time.monotonic()
    with pytest.raises(transport.ConnectTimeout):
        Transport().request("POST", f"http://vwo.invalid:{port}/x", b"{}", {}, 1.0)
    took = time.monotonic() - started
    for s in queued:
        s.close()
    full.close()
    assert took < 1.6, took  # not 3 x 1 s


def test_an_exporter_used_without_a_processor_forks_onto_connections_of_its_own(scripted) -> None:
    """No engine walks this exporter at fork: its own at-fork hook gives the child a transport
    that never writes on the parent's kept-alive connection (nor closes it)."""
    import os

    server = scripted(*[b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"] * 4)
    exporter = VWOExporter(ACCOUNT_ID, SDK_KEY, endpoint=server.base, timeout=5)
    visit = [VWOEvent(1, "user", 1_700_000_000_000, campaign_id=1, variation_id=1)]
    assert exporter.send_batch(visit)[0].ok  # one idle connection, its closer thread running
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(write, b"ok" if exporter.send_batch(visit)[0].ok else b"failed")
        finally:
            os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    said = os.read(read, 100)
    os.close(read)
    assert status == 0 and said == b"ok"
    assert exporter.send_batch(visit)[0].ok  # the parent's connection still serves it
    assert len(set(server.ports)) == 2  # parent: one connection throughout; child: its own
    exporter.shutdown()
