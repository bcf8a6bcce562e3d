"""One client connection of the HTTP server (``servers/httpd.py``): its socket I/O within
deadlines (receive what is there, write an answer, a TLS handshake step, a last word that never
waits), its h11 ``Framer`` and the bookkeeping the server keeps on it (where it is, its
deadline, the body bytes it holds in the budget)."""

from __future__ import annotations

import logging
import math
import socket
import ssl
import time
from typing import Any

from .bounds import ready
from .framing import Framer

logger = logging.getLogger("vwo_otel")

# Where a connection is: parked on the selector (idle, in a head, in a body, its body paused for
# the budget, lingering after a last answer, in a TLS handshake) or busy on a worker.
IDLE, HEAD, BODY, PAUSED, LINGER, HANDSHAKE, BUSY = "idle", "head", "body", "paused", "linger", "tls", "busy"


def say(sock: socket.socket, data: bytes) -> None:
    """``data`` if the non-blocking ``sock`` takes it now; never waits, never raises."""
    try:
        sock.send(data)
    except (OSError, ValueError):
        pass


class Conn:
    """One client connection. The selector thread owns it while ``parked``, one worker otherwise."""

    __slots__ = ("sock", "addr", "framer", "state", "deadline", "ticket", "parked", "watched", "handshaken",
                 "started", "body_deadline", "held", "streak", "lingered")

    def __init__(self, sock: socket.socket, addr: Any, handshaken: bool) -> None:
        self.sock = sock
        self.addr = addr
        self.framer = Framer()
        self.state = BUSY
        self.deadline = math.inf  # of what it waits for where it is parked (a handshake's, too)
        self.ticket = 0  # bumped on every park / unpark: older timer entries no longer apply
        self.parked = False  # owned by the selector thread
        self.watched = False  # registered with the selector for reading
        self.handshaken = handshaken
        self.started = 0.0  # when the current request's first byte came
        self.body_deadline = math.inf
        self.held = 0  # body bytes counted in the server's budget
        self.streak = 0  # requests served in a row by one worker
        self.lingered = 0  # bytes dropped by a lingering close

    def recv(self, size: int) -> bytes | None:
        """Up to ``size`` bytes (with what TLS already decrypted, which a poll would not see);
        None: nothing yet; b"": closed or failed."""
        sock = self.sock
        try:
            data = sock.recv(size)
            if data and isinstance(sock, ssl.SSLSocket):
                while sock.pending():
                    more = sock.recv(sock.pending())
                    if not more:
                        break
                    data += more
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return None
        except OSError as exc:
            logger.debug("vwo_otel HTTP server: connection from %s failed: %s", self.addr, exc)
            return b""
        return data

    def say(self, data: bytes) -> None:
        """A short last answer (408, 503, a refusal) if the socket takes it now; never waits, never raises."""
        say(self.sock, data)

    def write(self, data: bytes, timeout: float) -> bool:
        """All of ``data`` within ``timeout`` seconds (a client that never reads does not hold a
        worker); False if it did not all go."""
        sock = self.sock
        view = memoryview(data)
        deadline = time.monotonic() + timeout
        sent = 0
        try:
            while sent < len(view):
                try:
                    sent += sock.send(view[sent:])
                    continue
                except (BlockingIOError, ssl.SSLWantWriteError):
                    for_write = True
                except ssl.SSLWantReadError:
                    for_write = False
                left = deadline - time.monotonic()
                if left <= 0 or not ready(sock, for_write, left):
                    logger.debug("vwo_otel HTTP server: %s did not take its answer within %.3g s", self.addr, timeout)
                    return False
        except OSError as exc:
            logger.debug("vwo_otel HTTP server: writing to %s failed: %s", self.addr, exc)
            return False
        return True

    def handshake(self) -> bool | None:
        """Advance the TLS handshake as far as the bytes received allow, within ``deadline``:
        True done, False more bytes needed (wait for them on the selector), None failed (closed)."""
        sock = self.sock
        assert isinstance(sock, ssl.SSLSocket)
        while True:
            try:
                sock.do_handshake()
                self.handshaken = True
                return True
            except ssl.SSLWantReadError:
                if time.monotonic() < self.deadline:
                    return False
            except ssl.SSLWantWriteError:
                if time.monotonic() < self.deadline and ready(sock, True, self.deadline - time.monotonic()):
                    continue
            except OSError as exc:
                logger.debug("vwo_otel HTTP server: TLS handshake with %s failed: %s", self.addr, exc)
                return None
            logger.debug("vwo_otel HTTP server: TLS handshake with %s not done in time", self.addr)
            return None

    def half_close(self) -> bool:
        """No more writing (the client sees the end of the answers); True if done. The plain call:
        a TLS object stays readable."""
        try:
            socket.socket.shutdown(self.sock, socket.SHUT_WR)
            return True
        except OSError:
            return False

    def close(self) -> None:
        """Shut the writing side and close the socket."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self.sock.close()
