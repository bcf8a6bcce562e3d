"""The HTTP server under the loopback receiver and the gateway: threaded, keep-alive friendly
and quick on loopback (``TCP_NODELAY``: no 40 ms Nagle / delayed-ACK stall per response)."""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
from collections.abc import Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

logger = logging.getLogger("vwo_otel")


class LoopbackHTTPServer(ThreadingHTTPServer):
    """``ThreadingHTTPServer`` with TCP_NODELAY on every connection, no reverse DNS, handler
    errors to the debug log, and open connections tracked so ``close_connections`` can end them."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._conns: set[socket.socket] = set()
        self._conns_cond = threading.Condition()
        super().__init__(address, handler)

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse-DNS lookup of the host (slow on some machines)."""
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept a connection, disable Nagle on it and track it."""
        sock, addr = super().get_request()
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # pragma: no cover - not a TCP socket
            pass
        with self._conns_cond:
            self._conns.add(sock)
        return sock, addr

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
