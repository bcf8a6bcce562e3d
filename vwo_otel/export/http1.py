"""One HTTP/1.1 exchange on a kept-alive socket, for ``export/http.py``'s direct requests: the
request head as http.client writes it, the body sent while watching for an early answer, and
the answer read within bounds (``MAX_HEAD_BYTES`` of head, ``MAX_ANSWER_BYTES`` of body), with
whether the connection can carry the next request.

The framing is parsed here rather than by h11 (which the servers use): measured side by side
(``benchmarks/run.py --only http``, ``benchmarks/http_framing.py``), h11 cost 5-9 % more CPU
per delivered event, more than the 5 % it was allowed (numbers in ARCHITECTURE.md)."""

from __future__ import annotations

import errno
import functools
import re
import select
import socket
import ssl
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from requests.utils import requote_uri

from .sockets import (
    MAX_ANSWER_BYTES,
    MAX_HEAD_BYTES,
    ConnectionError,
    InvalidHeader,
    InvalidURL,
    Reply,
    TransportError,
    failure,
    left,
)

#: Bodies longer than this are sent while watching for an answer (a server may refuse a body
#: with 413 before reading it, and then neither read nor close); a shorter body goes out with
#: its head in one write (it fits in the socket's buffer at once).
WATCH_ABOVE = 64 * 1024


class AnswerHeaders(dict[str, str]):
    """An answer's headers by lower-cased name (the first of repeated ones)."""

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        return dict.get(self, name.lower(), default)


class Target(NamedTuple):
    """Where a URL's request goes straight to, and its request line's target."""

    scheme: str
    host: str
    port: int
    host_header: str
    target: str


@functools.lru_cache(maxsize=256)
def target(url: str) -> Target:
    """``url`` parsed for a direct request (the path and query percent-encoded as requests does)."""
    try:
        parts = urlsplit(requote_uri(url))  # type: ignore[no-untyped-call]
        port = parts.port
    except ValueError as exc:  # a port out of range, a malformed IPv6 address
        raise InvalidURL(f"{type(exc).__name__}: {exc}") from None
    scheme, host = parts.scheme.lower(), parts.hostname
    if scheme not in ("http", "https") or not host:
        raise InvalidURL(f"cannot request {url[:100]!r}: an http or https URL with a host is needed")
    default = 443 if scheme == "https" else 80
    shown = f"[{host}]" if ":" in host else host
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(scheme, host, port or default, shown if port in (None, default) else f"{shown}:{port}", path)


def head(method: str, where: Target, headers: dict[str, str], body: bytes | None) -> bytes:
    """The request line and headers, as http.client writes them (``Host`` first, ``Accept-Encoding:
    identity``, ``Content-Length`` with a body); a header it would refuse raises ``InvalidHeader``."""
    lines = [f"{method} {where.target} HTTP/1.1", f"Host: {where.host_header}"]
    if not any(k.lower() == "accept-encoding" for k in headers):
        lines.append("Accept-Encoding: identity")
    for name, value in headers.items():
        if not name or any(c in name for c in ":\r\n \t\0") or any(c in value for c in "\r\n\0"):
            raise InvalidHeader(f"Invalid header {name!r}: {value!r}")
        lines.append(f"{name}: {value}")
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    try:
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    except UnicodeEncodeError as exc:
        raise InvalidHeader(f"UnicodeEncodeError: {exc}") from None


def dropped(sock: socket.socket) -> bool:
    """Whether an idle kept-alive socket was closed by the server (readable: its end, or bytes no
    request asked for), as urllib3 checks before reusing one."""
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True


_HEX = re.compile(rb"[0-9A-Fa-f]{1,15}")


def chunk_size(line: bytes) -> int:
    """The size on a chunked body's size line (extensions after ``;`` ignored); ``ValueError``
    for anything but 1 to 15 hex digits (``int(..., 16)`` would take "0x5", "1_0", "-1")."""
    digits = line.split(b";", 1)[0].strip()
    if not _HEX.fullmatch(digits):
        raise ValueError(f"bad chunk size {digits[:20]!r}")
    return int(digits, 16)


class Answer(NamedTuple):
    """An answer as read, and whether its connection can carry the next request."""

    reply: Reply
    reusable: bool  # the whole answer was read and the server keeps the connection open


class AnswerReader:
    """Reads one HTTP/1.x answer from a socket: its status line and headers (at most
    ``MAX_HEAD_BYTES``), then at most ``MAX_ANSWER_BYTES`` of its body (Content-Length, chunked,
    or what has arrived of a body that ends with the connection)."""

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.buf = bytearray()

    def _more(self) -> bool:
        """Receive what has arrived into the buffer; False at the end of the stream."""
        data = self.sock.recv(65536)
        self.buf += data
        return bool(data)

    def _line(self) -> bytes:
        """One CRLF-ended line of a chunked body (without the CRLF)."""
        while True:
            end = self.buf.find(b"\r\n")
            if end >= 0:
                line = bytes(self.buf[:end])
                del self.buf[:end + 2]
                return line
            if len(self.buf) > MAX_HEAD_BYTES:
                raise ConnectionError("InvalidChunkLength: chunk size line too long")
            if not self._more():
                raise ConnectionError("IncompleteRead: the connection ended inside a chunked body")

    def _take(self, n: int) -> bytes:
        """Up to ``n`` bytes: fewer only if the connection ends."""
        while len(self.buf) < n and self._more():
            pass
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def head(self) -> tuple[str, int, AnswerHeaders]:
        """The status line and headers, after any 1xx interim answers (101 is final)."""
        while True:
            end, start = -1, 0
            while (end := self.buf.find(b"\r\n\r\n", start)) < 0:
                if len(self.buf) > MAX_HEAD_BYTES:
                    raise ConnectionError(f"LineTooLong: answer headers longer than {MAX_HEAD_BYTES} bytes")
                start = max(0, len(self.buf) - 3)
                if not self._more():
                    raise ConnectionError("RemoteDisconnected: Remote end closed connection without response"
                                          if not self.buf else "IncompleteRead: the connection ended inside the "
                                          "answer's headers")
            lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
            del self.buf[:end + 4]
            version, _, rest = lines[0].partition(" ")
            code = rest[:3]
            if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit() or rest[3:4] not in ("", " "):
                raise ConnectionError(f"BadStatusLine: {lines[0][:100]!r}")
            status = int(code)
            if 100 <= status < 200 and status != 101:
                continue  # an interim answer (100 Continue, 103 Early Hints): the real one follows
            headers = AnswerHeaders()
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if sep and name and name[0] not in " \t":
                    headers.setdefault(name.strip().lower(), value.strip())
            return version, status, headers

    def body(self, method: str, status: int, headers: AnswerHeaders) -> tuple[bytes, bool]:
        """At most ``MAX_ANSWER_BYTES`` of the body, and whether all of it was read."""
        if method == "HEAD" or status in (204, 304):
            return b"", True
        if status < 200:  # 101: the server says the connection now speaks another protocol
            return b"", False
        if "chunked" in headers.get("transfer-encoding", "").lower():
            if headers.get("content-length") is not None:  # RFC 9112 6.3: framing in doubt
                data, _ = self.body(method, status, AnswerHeaders((k, v) for k, v in headers.items()
                                                                  if k != "content-length"))
                return data, False
            parts: list[bytes] = []
            size = 0
            while True:
                try:
                    n = chunk_size(self._line())
                except ValueError as exc:
                    raise ConnectionError(f"InvalidChunkLength: {exc}") from None
                if n == 0:
                    while self._line():  # trailers, up to the empty line
                        pass
                    return b"".join(parts), True
                if size + n > MAX_ANSWER_BYTES:
                    parts.append(self._take(MAX_ANSWER_BYTES - size))
                    return b"".join(parts), False
                chunk = self._take(n)
                parts.append(chunk)
                size += len(chunk)
                if len(chunk) < n or self._line():
                    raise ConnectionError("IncompleteRead: the connection ended inside a chunked body")
        length = headers.get("content-length")
        if length is not None:
            try:
                n = int(length)
                if n < 0:
                    raise ValueError
            except ValueError:
                raise ConnectionError(f"InvalidHeader: Content-Length {length[:20]!r}") from None
            data = self._take(min(n, MAX_ANSWER_BYTES))
            if len(data) < min(n, MAX_ANSWER_BYTES):
                raise ConnectionError(f"IncompleteRead: {len(data)} bytes read, {n} expected")
            return data, n <= MAX_ANSWER_BYTES and not self.buf
        # No length, not chunked: the body ends with the connection. What has arrived is read
        # without waiting for that end (a server may keep the connection open and the request
        # would wait out its deadline); the connection is not reused.
        data = bytes(self.buf[:MAX_ANSWER_BYTES])
        return data + self.sock.arrived(MAX_ANSWER_BYTES - len(data)), False

    def read(self, method: str) -> Answer:
        """The whole answer. Once a 2xx status has arrived the request has succeeded: a body
        cut short after it (a reset, a bad length, the deadline) must not turn it into a failure
        that is retried and delivered twice."""
        version, status, headers = self.head()
        try:
            data, complete = self.body(method, status, headers)
        except (TransportError, OSError):
            if 200 <= status < 300:
                return Answer(Reply(status, "", headers), False)
            raise
        tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        keep = (version == "HTTP/1.1" and "close" not in tokens) or (version == "HTTP/1.0" and "keep-alive" in tokens)
        return Answer(Reply(status, data.decode("utf-8", "replace"), headers), complete and keep)


_SENT_BEFORE_ANSWER = (errno.EPIPE, errno.ECONNRESET, getattr(errno, "EPROTOTYPE", errno.EPIPE))
_WOULD_WAIT = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


def _answered(buf: bytearray) -> bool:
    """Whether ``buf`` holds the head of a final answer, not only interim ones (``100 Continue``:
    the server wants the body) or part of a head."""
    start = 0
    while (end := buf.find(b"\r\n\r\n", start)) >= 0:
        code = bytes(buf[start + 9:start + 12])  # "HTTP/1.1 100 ..."
        if code[:1] != b"1" or code == b"101":
            return True  # a final answer (or not HTTP: the reader says so)
        start = end + 4
    return len(buf) - start > MAX_HEAD_BYTES  # a head too long: the reader says so


def send_watching(sock: Any, parts: tuple[bytes, ...], answer: bytearray) -> bool:
    """Send ``parts`` on ``sock`` (a deadline socket) while watching for the server's answer:
    True once all of it is sent; False if the server answered (or closed) first, its bytes
    appended to ``answer``. RFC 9112 9.5: a client sending a body watches for an error answer."""
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLOUT)
    for part in parts:
        view = memoryview(part).cast("B")
        while view:
            remaining = left()
            if remaining <= 0:
                raise TimeoutError("timed out (the request's deadline passed while sending)")
            sock.nonblocking()
            ready = 0
            for _, flags in poller.poll(min(remaining, 3600.0) * 1000):
                ready |= flags
            if ready & (select.POLLIN | select.POLLERR | select.POLLHUP):
                try:
                    data = sock.recv_now(65536)
                except _WOULD_WAIT:  # no answer yet (TLS: a record that carried no data, e.g. a ticket)
                    pass
                else:
                    answer += data
                    if not data or _answered(answer):
                        return False
            if ready & select.POLLOUT:
                try:
                    view = view[sock.send_now(view[:1 << 20]):]
                except _WOULD_WAIT:
                    pass
    return True


def exchange(sock: Any, method: str, request_head: bytes, body: bytes | None) -> Answer:
    """Send the request and read its answer. A server may answer before it read the whole body
    (a 413, then keeping the connection open, or closing it): that answer is returned and the
    connection is not reused; nor is one whose answer is a 413 (its body may lie unread)."""
    reader = AnswerReader(sock)
    try:
        try:
            if body is not None and len(body) > WATCH_ABOVE:
                whole = send_watching(sock, (request_head, body), reader.buf)
            else:
                sock.sendall(request_head + body if body else request_head)
                whole = True
        except OSError as exc:
            if exc.errno not in _SENT_BEFORE_ANSWER:
                raise
            try:
                return reader.read(method)._replace(reusable=False)
            except Exception:
                raise exc from None
        answer = reader.read(method)
        if not whole or answer.reply.status_code == 413:
            return answer._replace(reusable=False)
        return answer
    except Exception as exc:
        raise failure(exc, connecting=False) from None
