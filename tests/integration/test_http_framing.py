"""Request framing over real sockets, on both servers (the gateway and the loopback receiver):
heads that could smuggle a second request past a proxy in front are answered one 400 and the
connection closed, so the request hidden behind them is never served."""

from __future__ import annotations

import socket
import time

import pytest
from conftest import ACCOUNT_ID, SDK_KEY

SMUGGLED = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"  # what a proxy in front would not see as a request
EMPTY_CHUNKED = b"0\r\n\r\n"


def _exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data`` and read until the server closes the connection (or ``timeout`` passes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        deadline = time.monotonic() + timeout
        answer = b""
        try:
            while time.monotonic() < deadline:
                chunk = s.recv(65536)
                if not chunk:
                    break
                answer += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return answer


@pytest.fixture(params=["gateway", "receiver"])
def server(request, make_gateway, receiver):
    """(port, POST path, what it has accepted so far) of each server."""
    if request.param == "gateway":
        gw = make_gateway()
        return gw.port, "/v1/traces", lambda: gw.stats()["accepted"] + sum(gw.stats()["requests"].values())
    path = f"/server-side/batch-events?a={ACCOUNT_ID}&env={SDK_KEY}"
    return receiver.port, path, lambda: len(receiver.requests())


@pytest.mark.parametrize("headers, body", [
    pytest.param(b"Content-Length: 5\r\nContent-Length: %d\r\n" % (5 + len(SMUGGLED)), b"hello" + SMUGGLED,
                 id="two different Content-Lengths"),
    pytest.param(b"Transfer-Encoding : chunked\r\nContent-Length: %d\r\n" % len(EMPTY_CHUNKED),
                 EMPTY_CHUNKED + SMUGGLED, id="a space before the colon"),
    pytest.param(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", EMPTY_CHUNKED + SMUGGLED,
                 id="Transfer-Encoding twice"),
    pytest.param(b"Transfer-Encoding: chunked\r\nContent-Length: %d\r\n" % len(EMPTY_CHUNKED),
                 EMPTY_CHUNKED + SMUGGLED, id="Transfer-Encoding and Content-Length"),
])
def test_a_head_that_could_smuggle_a_request_is_one_400_and_the_connection_closes(server, headers, body):
    port, path, seen = server
    head = b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: %s\r\n" % (
        path.encode(), SDK_KEY.encode())
    answer = _exchange(port, head + headers + b"\r\n" + body)
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert answer.count(b"HTTP/1.1 ") == 1, answer  # the request behind it was not served
    assert b"Connection: close" in answer
    assert seen() == 0  # nothing was taken from it


def test_a_head_over_64_kib_is_431(server):
    port, path, seen = server
    answer = _exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * (70 * 1024) + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 431 ") and answer.count(b"HTTP/1.1 ") == 1, answer[:200]


def test_expect_100_continue_gets_continue_then_the_answer(make_gateway):
    gw = make_gateway()
    body = b'{"resourceSpans": []}'
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
        assert s.recv(65536).startswith(b"HTTP/1.1 100 Continue\r\n")  # the body is wanted: send it
        s.sendall(body)
        assert s.recv(65536).startswith(b"HTTP/1.1 200 OK\r\n")
