"""The servers' HTTP framing (``vwo_otel.servers.framing``, h11 underneath), bytes in and out:
heads refused, bodies kept / dropped / unusable, what is left for the next request, answers."""

from __future__ import annotations

import pytest

from vwo_otel.servers.framing import DONE, DRAIN_LIMIT, HEAD, NEED, BadRequest, Framer, Response


def _chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


def _post(headers: bytes, body: bytes = b"") -> bytes:
    return b"POST /p?q=1 HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n" + body


def _read(raw: bytes, limit: int = 10, eof: bool = False) -> Framer:
    f = Framer()
    f.feed(raw)
    if eof:
        f.feed(b"")
    assert f.advance() == HEAD
    assert f.accept(limit) == b""
    assert f.advance() in (DONE, NEED)
    return f


CL = b"Content-Length: %d\r\n"
TE = b"Transfer-Encoding: chunked\r\n"


@pytest.mark.parametrize("raw, limit, eof, body, nbytes, problem, keeps, rest", [
    (_post(CL % 5, b"hello+next"), 10, False, b"hello", 5, None, True, b"+next"),
    (_post(b""), 10, False, b"", 0, "no-length", False, None),
    (_post(CL % 15, b"a" * 15 + b"+next"), 10, False, None, 15, "too-large", True, b"+next"),
    (_post(CL % 15, b"a" * 12), 10, True, None, 12, "incomplete", False, None),
    (_post(TE, _chunked(b"hel", b"lo") + b"+next"), 10, False, b"hello", 5, None, True, b"+next"),
    (_post(TE, _chunked(b"a" * 8, b"b" * 8) + b"+next"), 10, False, None, 16, "too-large", True, b"+next"),
    (_post(TE, b"5\r\nabc"), 10, True, None, 3, "incomplete", False, None),
    (_post(TE, b"zz\r\nhello\r\n0\r\n\r\n"), 10, False, None, 0, "bad-chunked", False, None),
    (_post(TE, b"-5\r\nhello\r\n0\r\n\r\n"), 10, False, None, 0, "bad-chunked", False, None),
    (_post(TE, b"5\r\nhelloXY0\r\n\r\n"), 10, False, None, 5, "bad-chunked", False, None),  # no CRLF after data
])
def test_bodies(raw: bytes, limit: int, eof: bool, body: bytes | None, nbytes: int, problem: str | None,
                keeps: bool, rest: bytes | None) -> None:
    f = _read(raw, limit, eof)
    request = f.request
    assert request is not None and (request.body, request.nbytes, request.problem) == (body, nbytes, problem)
    assert (request.method, request.path, request.query) == ("POST", "/p", "q=1")
    _, kept_alive = f.respond(Response(200), "t")
    assert kept_alive is keeps
    if rest is not None:  # what is left for the next request on a kept-alive connection
        f.next_cycle()
        assert f.pending is bool(rest)


def test_a_get_without_length_has_an_empty_body_and_headers_read_case_insensitively() -> None:
    f = _read(b"GET /x HTTP/1.1\r\nHost: x\r\nX-Thing: A\r\nx-thing: B\r\n\r\n")
    request = f.request
    assert request is not None and request.body == b"" and request.problem is None
    assert request.headers.get("x-THING") == "A" and "X-Thing" in request.headers and request.headers.get("no") is None
    assert request.headers.items()[1:] == [("x-thing", "A"), ("x-thing", "B")]
    assert "A" not in repr(request.headers)  # values may be secrets


@pytest.mark.parametrize("headers, words", [
    (CL % 5 + CL % 6, "conflicting Content-Length"),
    (b"Transfer-Encoding : chunked\r\n" + CL % 5, "illegal header line"),
    (TE + TE, "multiple Transfer-Encoding"),
    (TE + CL % 5, "Transfer-Encoding and Content-Length together"),
    (b"Transfer-Encoding: gzip\r\n", "Only Transfer-Encoding: chunked"),
    (b"Content-Length: +5\r\n", "bad Content-Length"),
])
def test_heads_that_could_smuggle_a_request_are_refused_with_400_and_close(headers: bytes, words: str) -> None:
    f = Framer()
    f.feed(_post(headers, b"hello"))
    with pytest.raises(BadRequest) as info:
        f.advance()
    assert info.value.status == 400 and words in info.value.message
    answer = f.refuse(info.value, "t")
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n") and b"Connection: close\r\n" in answer
    assert f.unread  # the client's stream is not read further: the server closes (after a lingering read)


def test_a_head_over_the_limit_is_431() -> None:
    f = Framer()
    f.feed(b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * (70 * 1024))
    with pytest.raises(BadRequest) as info:
        f.advance()
    assert info.value.status == 431


def test_expect_100_continue_is_answered_when_the_body_is_accepted() -> None:
    f = Framer()
    f.feed(_post(b"Expect: 100-continue\r\n" + CL % 2))
    assert f.advance() == HEAD
    assert f.accept(10).startswith(b"HTTP/1.1 100 ")
    f.feed(b"ok")
    assert f.advance() == DONE and f.request is not None and f.request.body == b"ok"


def test_a_body_over_the_drain_limit_is_not_read_and_the_answer_closes() -> None:
    f = Framer()
    f.feed(_post(CL % (DRAIN_LIMIT + 1), b"abc"))
    assert f.advance() == HEAD
    f.accept(10)
    assert f.advance() == DONE
    assert f.request is not None and f.request.problem == "too-large" and f.request.nbytes == DRAIN_LIMIT + 1
    data, kept_alive = f.respond(Response(413, b"too big"), "t")
    assert not kept_alive and b"Connection: close" in data and f.unread


def test_answers_carry_length_type_server_date_and_extra_headers() -> None:
    f = _read(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    data, kept_alive = f.respond(Response(429, b"slow down", "text/plain", (("Retry-After", "2"),)), "srv")
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 429 Too Many Requests" and body == b"slow down" and kept_alive
    assert {b"Server: srv", b"Content-Type: text/plain", b"Content-Length: 9", b"Retry-After: 2"} <= set(lines)
    assert any(line.startswith(b"Date: ") for line in lines)
    f.next_cycle()
    f.feed(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert f.advance() == HEAD
    f.accept(0)
    assert f.advance() == DONE
    data, _ = f.respond(Response(200, b"not sent to a HEAD"), "srv")
    assert data.endswith(b"\r\n\r\n") and b"Content-Length: 18" in data


def test_an_http_1_0_client_gets_its_answer_then_the_connection_closes() -> None:
    f = _read(b"GET / HTTP/1.0\r\n\r\n")
    data, kept_alive = f.respond(Response(200, b"ok"), "t")
    assert data.startswith(b"HTTP/1.1 200 OK") and not kept_alive
