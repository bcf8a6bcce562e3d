"""The HTTP server under the loopback receiver and the gateway: threaded, keep-alive friendly
and quick on loopback (``TCP_NODELAY``: no Nagle / delayed-ACK stall per response); with the
request-body reader and the one-write response they share. Optionally TLS: the handshake
runs on the connection's own thread, never on the accepting one."""

from __future__ import annotations

import io
import logging
import socket
import socketserver
import ssl
import threading
from collections.abc import Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, NamedTuple

logger = logging.getLogger("vwo_otel")

_CHUNK = 64 * 1024  # bodies are drained in reads of this size
#: Seconds a TLS client may take to finish its handshake before the connection is closed.
TLS_HANDSHAKE_TIMEOUT = 10.0

#: Why a request body could not be used (see ``read_body``).
Problem = Literal["bad-transfer-encoding", "no-length", "bad-length", "bad-chunked", "too-large", "incomplete"]


class Body(NamedTuple):
    """A request body as read: ``data`` (None when unusable), its size in bytes (as announced
    or as far as it was read) and the ``problem`` that made it unusable, if any."""

    data: bytes | None
    nbytes: int
    problem: Problem | None = None


class LoopbackHTTPServer(ThreadingHTTPServer):
    """``ThreadingHTTPServer`` with TCP_NODELAY on every connection, no reverse DNS, handler
    errors to the debug log, and open connections tracked so ``close_connections`` can end them.
    With ``ssl_context`` every connection speaks TLS."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.ssl_context = ssl_context
        self._conns: set[socket.socket] = set()
        self._conns_cond = threading.Condition()
        super().__init__(address, handler)

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse-DNS lookup of the host (slow on some machines)."""
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept a connection, disable Nagle on it, wrap it in TLS (handshake later) and track it."""
        sock, addr = super().get_request()
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # pragma: no cover - not a TCP socket
            pass
        if self.ssl_context is not None:
            sock = self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        with self._conns_cond:
            self._conns.add(sock)
        return sock, addr

    def finish_request(self, request: Any, client_address: Any) -> None:
        """On the connection's thread: finish the TLS handshake (bounded in time), then serve."""
        if isinstance(request, ssl.SSLSocket):
            request.settimeout(TLS_HANDSHAKE_TIMEOUT)
            request.do_handshake()
            request.settimeout(None)
        super().finish_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        """Forget the connection once its handler is done, then close it."""
        with self._conns_cond:
            self._conns.discard(request)
            self._conns_cond.notify_all()
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A handler error (usually a client that went away) goes to the debug log, never stderr."""
        logger.debug("error while serving a request from %s", client_address, exc_info=True)

    def close_connections(self, timeout: float) -> None:
        """Shut every open connection so idle keep-alive handlers exit, then wait for them."""
        with self._conns_cond:
            conns = list(self._conns)
        for sock in conns:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        with self._conns_cond:
            self._conns_cond.wait_for(lambda: not self._conns, max(0.0, timeout))


def respond(h: BaseHTTPRequestHandler, status: int, body: bytes, content_type: str,
            headers: Sequence[tuple[str, str]] = ()) -> None:
    """Status line, headers and body in a single write (no Nagle / delayed-ACK stall)."""
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = ""
    head = [f"HTTP/1.1 {status} {reason}", f"Server: {h.server_version}", f"Date: {h.date_time_string()}",
            f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
    head.extend(f"{k}: {v}" for k, v in headers)
    if h.close_connection:
        head.append("Connection: close")
    h.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)


def read_body(h: BaseHTTPRequestHandler, limit: int, drain_limit: int) -> Body:
    """The request body (Content-Length or chunked).

    ``Body.problem`` is one of ``bad-transfer-encoding``, ``no-length`` (a POST without Content-Length;
    the body is then empty), ``bad-length``, ``bad-chunked``, ``too-large`` (over ``limit``: read
    and discarded up to ``drain_limit`` so a keep-alive connection stays usable, beyond that the
    connection is closed) or ``incomplete`` (the client closed before the body ended). The
    connection is marked to close whenever the rest of its stream can no longer be trusted."""
    te = h.headers.get("Transfer-Encoding")
    if te is not None:
        if te.strip().lower() != "chunked":
            h.close_connection = True
            return Body(None, 0, "bad-transfer-encoding")
        return _read_chunked(h, limit, drain_limit)
    cl = h.headers.get("Content-Length")
    if cl is None:
        return Body(b"", 0, "no-length" if h.command == "POST" else None)
    try:
        n = int(cl)
        if n < 0:
            raise ValueError
    except ValueError:
        h.close_connection = True
        return Body(None, 0, "bad-length")
    if n > limit:
        if n > drain_limit:
            h.close_connection = True
            return Body(None, n, "too-large")
        got = _discard(h.rfile, n)
        if got < n:
            h.close_connection = True
            return Body(None, got, "incomplete")
        return Body(None, n, "too-large")
    data = h.rfile.read(n) if n else b""
    if len(data) < n:
        h.close_connection = True
        return Body(None, len(data), "incomplete")
    return Body(data, n)


def _read_chunked(h: BaseHTTPRequestHandler, limit: int, drain_limit: int) -> Body:
    """Decode a chunked body like ``read_body``: keep up to ``limit`` bytes, discard the rest up to ``drain_limit``."""
    parts: list[bytes] = []
    total = 0
    rfile = h.rfile
    try:
        while True:
            line = rfile.readline(1024)
            if not line:
                h.close_connection = True
                return Body(None, total, "incomplete")
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size < 0:
                raise ValueError(f"negative chunk size {size}")
            if size == 0:
                while rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                break
            if total + size > drain_limit:
                h.close_connection = True
                return Body(None, total + size, "too-large")
            if total + size <= limit:
                data = rfile.read(size)
                got = len(data)
                parts.append(data)
            else:
                parts.clear()
                got = _discard(rfile, size)
            rfile.readline(1024)  # the CRLF ending the chunk
            if got < size:
                h.close_connection = True
                return Body(None, total + got, "incomplete")
            total += size
    except ValueError:
        h.close_connection = True
        return Body(None, total, "bad-chunked")
    if total > limit:
        return Body(None, total, "too-large")
    return Body(b"".join(parts), total)


def _discard(rfile: io.BufferedIOBase, n: int) -> int:
    """Read and drop ``n`` bytes in bounded pieces; how many were there before the stream ended."""
    left = n
    while left > 0:
        chunk = rfile.read(min(left, _CHUNK))
        if not chunk:
            break
        left -= len(chunk)
    return n - left
