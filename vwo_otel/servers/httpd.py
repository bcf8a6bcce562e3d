"""The HTTP server under the loopback receiver and the gateway, with bounded resources whatever
clients do, and the request-body reader and one-write response they share.

One selector thread accepts connections, parks idle keep-alive ones (no thread per connection)
and receives request heads; a connection whose head is complete goes to a bounded pool of worker
threads, which serves that ONE request with ``BaseHTTPRequestHandler.handle_one_request`` (so
handlers, ``read_body`` and ``respond`` are plain http.server code) and hands the connection
back. Whole deadlines, not per-read timeouts: ``idle_timeout`` (a keep-alive connection with no
request), ``header_timeout`` (request line and headers, from their first byte), ``body_timeout``
(the body, started by ``read_body``; also each answer's write); a timed-out request is answered
408 when nothing was answered yet, closed and logged at DEBUG. At most ``max_connections`` are
open, never more than the process's file limit allows; when full the longest-idle one is closed
to admit a new one. Optionally TLS: the handshake runs on workers, step by step, bounded by
``TLS_HANDSHAKE_TIMEOUT``, never on the selector thread. ``TCP_NODELAY`` on every connection (no
Nagle / delayed-ACK stall per response)."""

from __future__ import annotations

import errno
import heapq
import io
import itertools
import logging
import math
import os
import select
import selectors
import socket
import socketserver
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, Literal, NamedTuple, TypeVar, cast

from ..export.http import chunk_size

try:
    import resource
except ImportError:  # pragma: no cover - not POSIX
    resource = None  # type: ignore[assignment]

logger = logging.getLogger("vwo_otel")
_T = TypeVar("_T")

_CHUNK = 64 * 1024  # bodies are drained, and connections read, in pieces of this size
#: Seconds a TLS client may take to finish its handshake, from its connection, before it is closed.
TLS_HANDSHAKE_TIMEOUT = 10.0
#: Seconds a keep-alive connection may stay without a request before the server closes it.
DEFAULT_IDLE_TIMEOUT = 30.0
#: Seconds a request line and its headers may take, from their first byte.
DEFAULT_HEADER_TIMEOUT = 10.0
#: Seconds a request body may take once the handler starts reading it (``read_body``); also the
#: bound on writing each answer (a client that never reads).
DEFAULT_BODY_TIMEOUT = 30.0
#: Connections open at once (lowered to what the process's file limit allows, see ``FD_RESERVE``).
DEFAULT_MAX_CONNECTIONS = 1024
#: Worker threads of a server exposed to other processes (the gateway): handlers that do not wait.
DEFAULT_MAX_WORKERS = min(32, 2 * (os.cpu_count() or 1) + 8)
#: Worker threads of ``LoopbackHTTPServer`` unless told otherwise: the loopback receiver's handlers
#: sleep through injected answer delays, so it needs a worker per concurrent request.
LOOPBACK_MAX_WORKERS = 128
#: Files kept free for everything else (outgoing connections, spool files): at least this many
#: and a quarter of the soft RLIMIT_NOFILE.
FD_RESERVE = 64
#: A request line and headers larger than this are answered 431 and the connection closed.
MAX_HEAD_BYTES = 64 * 1024

_DIRECT = 8 * 1024  # a read missing more than this receives into its result directly
_LINGER = 0.002  # seconds a worker waits for a connection's next request when no other work waits
_STREAK = 32  # requests of one connection a worker serves in a row before it goes back in line
_ACCEPT_BATCH = 16  # connections accepted per wake-up of the selector
_ACCEPT_PAUSE = 0.1  # seconds accepting pauses when the process is out of files and nothing is idle
_OUT_OF_FILES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_IDLE, _HEAD, _HANDSHAKE, _BUSY = "idle", "head", "handshake", "busy"
_LISTENER, _WAKE = object(), object()
_408 = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
_431 = b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
_503 = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"

#: Why a request body could not be used (see ``read_body``).
Problem = Literal["bad-transfer-encoding", "no-length", "bad-length", "bad-chunked", "too-large", "incomplete"]


class Body(NamedTuple):
    """A request body as read: ``data`` (None when unusable), its size in bytes (as announced
    or as far as it was read) and the ``problem`` that made it unusable, if any."""

    data: bytes | None
    nbytes: int
    problem: Problem | None = None


class _Conn:
    """One client connection: its socket, bytes received and not yet consumed (``buf``, shared by
    the selector and the handler's ``rfile``), its handler (kept across requests), where it is
    (``state``) and the deadline of what it is waiting for."""

    __slots__ = ("sock", "addr", "buf", "handler", "state", "deadline", "ticket", "parked", "handshaken",
                 "timed_out", "answered", "body_timeout", "streak")

    def __init__(self, sock: socket.socket, addr: Any, handshaken: bool, body_timeout: float) -> None:
        self.sock = sock
        self.addr = addr
        self.buf = bytearray()
        self.handler: BaseHTTPRequestHandler | None = None
        self.state = _IDLE
        self.deadline = math.inf
        self.ticket = 0  # bumped on every park / unpark: older timer entries no longer apply
        self.parked = False
        self.handshaken = handshaken
        self.timed_out = False
        self.answered = False
        self.body_timeout = body_timeout
        self.streak = 0  # requests served in a row by one worker

    def wait(self, for_write: bool, deadline: float) -> None:
        """Block until the socket is readable (writable) or ``deadline`` passes: then the request
        is marked timed out and ``TimeoutError`` raised."""
        left = deadline - time.monotonic()
        if left <= 0 or not _ready(self.sock, for_write, left):
            self.timed_out = True
            raise TimeoutError("the client did not send (or take) its data in time")

    def recv_into(self, view: memoryview) -> int:
        """On a worker: receive into ``view`` before ``deadline``; 0 at the end of the stream."""
        return self._receive(lambda: self.sock.recv_into(view))

    def fill(self) -> bool:
        """Receive more bytes into ``buf`` likewise; False at the end of the stream."""
        data = self._receive(lambda: self.sock.recv(_CHUNK))
        self.buf += data
        return bool(data)

    def _receive(self, op: Callable[[], _T]) -> _T:
        """``op`` (a receive on the non-blocking socket), waiting for data until ``deadline``."""
        while True:
            if time.monotonic() >= self.deadline:  # whole deadline: checked even while bytes keep coming
                self.timed_out = True
                raise TimeoutError("the client did not send its data in time")
            try:
                return op()
            except (BlockingIOError, ssl.SSLWantReadError):
                self.wait(False, self.deadline)
            except ssl.SSLWantWriteError:
                self.wait(True, self.deadline)

    def pull_pending(self) -> None:
        """Move bytes TLS has already decrypted (``pending()``, invisible to the selector) into ``buf``."""
        sock = self.sock
        if isinstance(sock, ssl.SSLSocket):
            try:
                while sock.pending():
                    data = sock.recv(sock.pending())
                    if not data:
                        break
                    self.buf += data
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                pass


class _RFile(io.BufferedIOBase):
    """A handler's ``rfile``: the connection's received bytes first, then the socket, within the
    connection's deadline (whole-request, not per read). One per connection, so bytes of a
    pipelined next request are never lost."""

    def __init__(self, conn: _Conn) -> None:
        super().__init__()
        self.conn = conn

    def readable(self) -> bool:
        return True

    def readline(self, size: int | None = -1) -> bytes:
        """A line (with its ``\\n``), at most ``size`` bytes; shorter at the end of the stream."""
        c = self.conn
        buf = c.buf
        limit = -1 if size is None else size
        start = 0
        while True:
            i = buf.find(b"\n", start, len(buf) if limit < 0 else min(len(buf), limit))
            if i >= 0:
                n = i + 1
                break
            if 0 <= limit <= len(buf):
                n = limit
                break
            start = len(buf)
            if not c.fill():
                n = len(buf)
                break
        line = bytes(buf[:n])
        del buf[:n]
        return line

    def read(self, size: int | None = -1) -> bytes:
        """``size`` bytes (all until the end of the stream when negative); fewer at its end."""
        c = self.conn
        buf = c.buf
        if size is None or size < 0:
            while c.fill():
                pass
            size = len(buf)
        elif size - len(buf) > _DIRECT:  # most of a body still to come: straight into the result
            out = bytearray(size)
            have = len(buf)
            out[:have] = buf
            buf.clear()
            with memoryview(out) as view:
                while have < size:
                    n = c.recv_into(view[have:])
                    if not n:
                        break
                    have += n
            del out[have:]
            return bytes(out)
        while len(buf) < size and c.fill():
            pass
        return self._take(size)

    def read1(self, size: int = -1) -> bytes:
        """What is received already, else one receive."""
        if not self.conn.buf:
            self.conn.fill()
        return self._take(len(self.conn.buf) if size < 0 else size)

    def _take(self, n: int) -> bytes:
        """The first ``n`` received bytes (fewer if there are not so many), consumed."""
        buf = self.conn.buf
        with memoryview(buf) as view:
            data = bytes(view[:n])
        del buf[:n]
        return data


class _WFile(io.BufferedIOBase):
    """A handler's ``wfile``: each write completes within the connection's ``body_timeout`` or
    raises ``TimeoutError`` (a client that never reads its answer does not hold a worker); after a
    timed-out request nothing more is written."""

    def __init__(self, conn: _Conn) -> None:
        super().__init__()
        self.conn = conn

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        """All of ``data``, or ``TimeoutError`` (the connection is then closed)."""
        c = self.conn
        if c.timed_out:
            raise TimeoutError("the request timed out; its answer is not sent")
        view = memoryview(data).cast("B")
        deadline = time.monotonic() + c.body_timeout
        sent, total = 0, len(view)
        while sent < total:
            try:
                sent += c.sock.send(view[sent:])
            except (BlockingIOError, ssl.SSLWantWriteError):
                c.wait(True, deadline)
            except ssl.SSLWantReadError:
                c.wait(False, deadline)
            else:
                c.answered = True
        return total


def _ready(sock: socket.socket, for_write: bool, timeout: float) -> bool:
    """Whether ``sock`` became readable (writable) within ``timeout`` seconds (poll: any fd number)."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, select.POLLOUT if for_write else select.POLLIN)
        return bool(poller.poll(max(1, math.ceil(timeout * 1000))))
    r, w, _ = select.select([] if for_write else [sock], [sock] if for_write else [], [], timeout)  # pragma: no cover
    return bool(r or w)  # pragma: no cover


def _head_complete(buf: bytearray, start: int) -> bool:
    """Whether ``buf`` holds a whole request line and headers (searching from about ``start``)."""
    start = max(0, start - 3)
    return buf.find(b"\n\r\n", start) >= 0 or buf.find(b"\n\n", start) >= 0


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    """A short last word (408, 431, 503) if the socket takes it now; never waits, never raises."""
    try:
        sock.setblocking(False)
        sock.send(data)
    except (OSError, ValueError):
        pass


def connection_limit(requested: int) -> int:
    """``requested``, lowered so that many connections plus ``FD_RESERVE`` (at least a quarter of
    the limit) other files fit the process's soft RLIMIT_NOFILE."""
    if resource is None:  # pragma: no cover - not POSIX
        return requested
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):  # pragma: no cover - no such limit
        return requested
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return requested
    return max(1, min(requested, soft - max(FD_RESERVE, soft // 4)))


class _Pool:
    """At most ``size`` daemon worker threads, started as work arrives and kept until ``close``."""

    def __init__(self, size: int, run: Callable[[_Conn], None], name: str) -> None:
        self._size, self._run, self._name = size, run, name
        self._jobs: deque[_Conn] = deque()
        self._cond = threading.Condition()
        self._idle = 0
        self._threads: list[threading.Thread] = []
        self._closed = False

    def submit(self, job: _Conn) -> bool:
        """Queue ``job`` for a worker (starting one if all are busy and there is room); False once closed."""
        with self._cond:
            if self._closed:
                return False
            self._jobs.append(job)
            if self._idle < len(self._jobs) and len(self._threads) < self._size:
                thread = threading.Thread(target=self._work, name=f"{self._name}-{len(self._threads) + 1}",
                                          daemon=True)
                self._threads.append(thread)
                thread.start()
            else:
                self._cond.notify()
        return True

    def _work(self) -> None:
        """A worker: run queued work, wait while there is none, exit once closed and done."""
        while True:
            with self._cond:
                while not self._jobs:
                    if self._closed:
                        return
                    self._idle += 1
                    try:
                        self._cond.wait()
                    finally:
                        self._idle -= 1
                job = self._jobs.popleft()
            self._run(job)

    def queued(self) -> int:
        """Work waiting for a worker."""
        return len(self._jobs)

    def close(self) -> None:
        """Take no more work; workers exit once the queued work is done."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every worker to exit; True if none is left."""
        deadline = time.monotonic() + timeout
        with self._cond:
            threads = list(self._threads)
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in threads if t is not threading.current_thread())


class LoopbackHTTPServer(HTTPServer):
    """An HTTP/1.1 server whose threads are bounded however many connections are open: a selector
    thread (the one running ``serve_forever``) and at most ``max_workers`` workers (default: the
    class's ``max_workers``, ``LOOPBACK_MAX_WORKERS``). ``idle_timeout``, ``header_timeout`` and
    ``body_timeout`` are whole deadlines (see the module's docstring); ``max_connections`` is
    lowered to what the file limit allows (``connection_limit``). TCP_NODELAY on every connection,
    no reverse DNS, handler errors to the debug log, IPv6 when the host has a ``:``; with
    ``ssl_context`` every connection speaks TLS. Handlers are ``BaseHTTPRequestHandler``
    subclasses; one instance serves every request of its connection (``setup`` / ``finish`` are
    not called). ``shutdown()`` / ``server_close()`` / ``close_connections()`` end it all;
    a server is not restarted."""

    allow_reuse_address = True
    request_queue_size = 256
    max_workers = LOOPBACK_MAX_WORKERS

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 ssl_context: ssl.SSLContext | None = None, *, max_workers: int | None = None,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS, idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
                 header_timeout: float = DEFAULT_HEADER_TIMEOUT, body_timeout: float = DEFAULT_BODY_TIMEOUT) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.ssl_context = ssl_context
        self.max_workers = max(1, int(type(self).max_workers if max_workers is None else max_workers))
        self.max_connections = connection_limit(max(1, int(max_connections)))
        if self.max_connections < max_connections:
            logger.debug("max_connections %d lowered to %d: the process may open only so many files (RLIMIT_NOFILE)",
                         max_connections, self.max_connections)
        self.idle_timeout = float(idle_timeout)
        self.header_timeout = float(header_timeout)
        self.body_timeout = float(body_timeout)
        self._conns: dict[socket.socket, _Conn] = {}  # every open connection, by socket
        self._conns_cond = threading.Condition()  # guards the state below (subclasses may wait on it)
        self._returned: list[_Conn] = []  # handed back by workers, for the selector to park
        self._wake_pending = False
        self._stop = False  # shutdown() asked the loop to end
        self._loop_thread: threading.Thread | None = None
        self._loop_done = threading.Event()
        self._loop_closed = False  # nothing is parked any more: workers close what they finish
        self._closed = False
        # selector-thread state
        self._idle: dict[_Conn, None] = {}  # parked without a request, longest idle first
        self._waiting: dict[_Conn, None] = {}  # parked in a head or a handshake, oldest first
        self._timers: list[tuple[float, int, _Conn, int]] = []  # (deadline, seq, conn, ticket) heap
        self._seq = itertools.count()
        self._sel: selectors.BaseSelector | None = None
        self._accept_paused_until = 0.0
        super().__init__(address, handler)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._pool = _Pool(self.max_workers, self._work, f"vwo_otel-httpd:{self.server_port}")

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse-DNS lookup of the host (slow on some machines)."""
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    # -- the selector thread -----------------------------------------------------------------------
    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Run the selector loop until ``shutdown()``: accept, park idle connections, receive request
        heads, hand complete ones to the workers, close what overstays its deadline. Events wake it,
        so ``poll_interval`` (socketserver's signature) is not needed."""
        with self._conns_cond:
            if self._stop or self._loop_thread is not None:
                return
            self._loop_thread = threading.current_thread()
        sel = self._sel = selectors.DefaultSelector()
        try:
            self.socket.setblocking(False)
            sel.register(self.socket, selectors.EVENT_READ, _LISTENER)
            sel.register(self._wake_r, selectors.EVENT_READ, _WAKE)
            while not self._stop:
                for key, _ in sel.select(self._next_timeout()):
                    if key.data is _LISTENER:
                        self._accept()
                    elif key.data is _WAKE:
                        self._drain_wake()
                    else:
                        self._readable(key.data)
                self._take_returned()
                self._expire(time.monotonic())
        except Exception:  # a bug here must not leave clients hanging: log it and close everything
            logger.error("vwo_otel HTTP server: the connection loop failed", exc_info=True)
        finally:
            self._end_loop(sel)

    def _next_timeout(self) -> float | None:
        """Seconds until the next deadline (or the end of an accept pause); None: none."""
        now = time.monotonic()
        until = self._timers[0][0] if self._timers else math.inf
        if self._accept_paused_until:
            until = min(until, self._accept_paused_until)
        return None if until == math.inf else max(0.0, until - now)

    def _accept(self) -> None:
        """Accept what is waiting (a few at a time), admitting each within ``max_connections``."""
        listener = self.socket
        for _ in range(_ACCEPT_BATCH):
            try:
                # an ssl-wrapped listener would handshake inside accept(): take the plain socket
                sock, addr = socket.socket.accept(listener)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_FILES:
                    if not self._evict("the process is out of files"):
                        logger.debug("vwo_otel HTTP server: out of files and no idle connection; "
                                     "accepting pauses for %.1f s", _ACCEPT_PAUSE)
                        self._pause_accepting()
                    return
                logger.debug("vwo_otel HTTP server: accept failed: %s", exc)
                continue
            self._admit(sock, addr)

    def _pause_accepting(self) -> None:
        """Stop watching the listener for ``_ACCEPT_PAUSE`` seconds (out of files: it would stay readable)."""
        if self._sel is not None and not self._accept_paused_until:
            self._sel.unregister(self.socket)
            self._accept_paused_until = time.monotonic() + _ACCEPT_PAUSE

    def _admit(self, sock: socket.socket, addr: Any) -> None:
        """Set up an accepted connection and park it, closing the longest-idle one when full."""
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # pragma: no cover - not a TCP socket, or already reset
            pass
        context = self.ssl_context
        if context is None and isinstance(self.socket, ssl.SSLSocket):
            context = self.socket.context
        with self._conns_cond:
            full = len(self._conns) >= self.max_connections
        if full and not self._evict(f"max_connections ({self.max_connections}) reached"):
            logger.debug("vwo_otel HTTP server: max_connections (%d) reached and none idle: refused %s",
                         self.max_connections, addr)
            if context is None:
                _send_quietly(sock, _503)
            sock.close()
            return
        if context is not None:
            try:
                sock = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
                sock.setblocking(False)
            except (OSError, ValueError) as exc:
                logger.debug("vwo_otel HTTP server: TLS set-up for %s failed: %s", addr, exc)
                sock.close()
                return
        conn = _Conn(sock, addr, context is None, self.body_timeout)
        with self._conns_cond:
            self._conns[sock] = conn
        now = time.monotonic()
        if context is None:
            self._park(conn, _IDLE, now + self.idle_timeout)
        else:
            self._park(conn, _HANDSHAKE, now + TLS_HANDSHAKE_TIMEOUT)

    def _evict(self, why: str) -> bool:
        """Close the longest-idle parked connection (else the oldest unfinished head or handshake)."""
        for parked in (self._idle, self._waiting):
            for conn in parked:
                logger.debug("vwo_otel HTTP server: %s: closing the %s connection from %s", why, conn.state, conn.addr)
                self._drop(conn)
                return True
        return False

    def _park(self, conn: _Conn, state: str, deadline: float) -> None:
        """Watch ``conn`` for readability in ``state`` until ``deadline`` (selector thread only)."""
        assert self._sel is not None
        self._idle.pop(conn, None)
        self._waiting.pop(conn, None)
        conn.state, conn.deadline = state, deadline
        conn.ticket += 1
        (self._idle if state == _IDLE else self._waiting)[conn] = None
        heapq.heappush(self._timers, (deadline, next(self._seq), conn, conn.ticket))
        if not conn.parked:
            self._sel.register(conn.sock, selectors.EVENT_READ, conn)
            conn.parked = True

    def _unpark(self, conn: _Conn) -> None:
        """Stop watching ``conn`` and cancel its timer: a worker or a close takes it (selector thread only)."""
        assert self._sel is not None
        self._idle.pop(conn, None)
        self._waiting.pop(conn, None)
        conn.ticket += 1
        conn.state = _BUSY
        if conn.parked:
            self._sel.unregister(conn.sock)
            conn.parked = False

    def _drop(self, conn: _Conn) -> None:
        """Stop watching and close a parked connection (selector thread only)."""
        self._unpark(conn)
        self._close(conn)

    def _readable(self, conn: _Conn) -> None:
        """A parked connection has something: its handshake goes on on a worker; a head is
        received here and, once whole, handed to a worker; end of stream closes it."""
        if not conn.parked:  # closed earlier in this round (evicted)
            return
        if conn.state == _HANDSHAKE:
            self._unpark(conn)
            self._dispatch(conn)
            return
        try:
            data = conn.sock.recv(_CHUNK)
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
            return
        except ssl.SSLWantWriteError:  # pragma: no cover - TLS wants to write first: a worker may wait for it
            self._unpark(conn)
            self._dispatch(conn)
            return
        except OSError as exc:
            logger.debug("vwo_otel HTTP server: connection from %s failed: %s", conn.addr, exc)
            self._drop(conn)
            return
        if not data:
            self._drop(conn)
            return
        start = len(conn.buf)
        conn.buf += data
        conn.pull_pending()
        # the first byte of a request starts the head's deadline
        deadline = time.monotonic() + self.header_timeout if conn.state == _IDLE else conn.deadline
        if _head_complete(conn.buf, start):
            conn.deadline = deadline
            self._unpark(conn)
            self._dispatch(conn)
        elif len(conn.buf) > MAX_HEAD_BYTES:
            logger.debug("vwo_otel HTTP server: request head from %s larger than %d bytes: 431", conn.addr,
                         MAX_HEAD_BYTES)
            _send_quietly(conn.sock, _431)
            self._drop(conn)
        elif conn.state == _IDLE:
            self._park(conn, _HEAD, deadline)

    def _dispatch(self, conn: _Conn) -> None:
        """Queue ``conn`` for a worker; closed if the workers are gone."""
        if not self._pool.submit(conn):
            self._close(conn)

    def _expire(self, now: float) -> None:
        """Close parked connections past their deadline; resume a paused accept; drop stale timers."""
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, conn, ticket = heapq.heappop(timers)
            if conn.ticket != ticket or not conn.parked:
                continue
            if conn.state == _IDLE:
                logger.debug("vwo_otel HTTP server: closing the connection from %s: idle for %.3g s", conn.addr,
                             self.idle_timeout)
            elif conn.state == _HEAD:
                logger.debug("vwo_otel HTTP server: closing the connection from %s: request head not received "
                             "within %.3g s", conn.addr, self.header_timeout)
                _send_quietly(conn.sock, _408)
            else:
                logger.debug("vwo_otel HTTP server: closing the connection from %s: TLS handshake not done in time",
                             conn.addr)
            self._drop(conn)
        if self._accept_paused_until and now >= self._accept_paused_until and self._sel is not None:
            self._accept_paused_until = 0.0
            self._sel.register(self.socket, selectors.EVENT_READ, _LISTENER)
        if len(timers) > 2 * (len(self._idle) + len(self._waiting)) + 256:
            self._timers = [t for t in timers if t[2].ticket == t[3] and t[2].parked]
            heapq.heapify(self._timers)

    def _wake(self) -> None:
        """Wake the selector (``_conns_cond`` held)."""
        if not self._wake_pending:
            self._wake_pending = True
            try:
                self._wake_w.send(b"\0")
            except OSError:
                pass

    def _drain_wake(self) -> None:
        """Empty the wake-up pair so the next hand-back wakes the selector again."""
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass
        with self._conns_cond:
            self._wake_pending = False

    def _take_returned(self) -> None:
        """Park the connections workers handed back: idle, in a head, or in a handshake."""
        with self._conns_cond:
            returned, self._returned = self._returned, []
        now = time.monotonic()
        for conn in returned:
            self._park(conn, conn.state, now + self.idle_timeout if conn.state == _IDLE else conn.deadline)

    def _end_loop(self, sel: selectors.BaseSelector) -> None:
        """The loop ends: close every parked connection (nothing is in progress on them)."""
        with self._conns_cond:
            self._loop_closed = True
            returned, self._returned = self._returned, []
        for conn in list(self._idle) + list(self._waiting):
            self._drop(conn)
        for conn in returned:
            self._close(conn)
        self._timers.clear()
        sel.close()
        self._sel = None
        self._loop_done.set()

    # -- workers ------------------------------------------------------------------------------------
    def _work(self, conn: _Conn) -> None:
        """On a worker: the next step of ``conn`` (a TLS handshake step, or one request)."""
        try:
            if self._loop_closed:
                self._close(conn)
            elif conn.handshaken or self._handshake(conn):
                while self._serve_one(conn):
                    pass
        except Exception:
            self.handle_error(conn.sock, conn.addr)
            self._close(conn)

    def _handshake(self, conn: _Conn) -> bool:
        """Advance the TLS handshake as far as the bytes received allow (back to the selector to
        wait for more); True when it is done and a request is here to serve."""
        sock = conn.sock
        assert isinstance(sock, ssl.SSLSocket)
        while True:
            try:
                sock.do_handshake()
                break
            except ssl.SSLWantReadError:
                if time.monotonic() >= conn.deadline:
                    logger.debug("vwo_otel HTTP server: TLS handshake with %s not done in time", conn.addr)
                    self._close(conn)
                else:
                    conn.state = _HANDSHAKE
                    self._hand_back(conn)
                return False
            except ssl.SSLWantWriteError:
                try:
                    conn.wait(True, conn.deadline)
                except TimeoutError:
                    logger.debug("vwo_otel HTTP server: TLS handshake with %s not done in time", conn.addr)
                    self._close(conn)
                    return False
            except OSError as exc:
                logger.debug("vwo_otel HTTP server: TLS handshake with %s failed: %s", conn.addr, exc)
                self._close(conn)
                return False
        conn.handshaken = True
        return self._next(conn)

    def _serve_one(self, conn: _Conn) -> bool:
        """Serve one request with the connection's handler; True: serve its next one here too."""
        h = conn.handler
        if h is None:
            h = conn.handler = self._new_handler(conn)
        conn.timed_out = conn.answered = False
        h.close_connection = True
        try:
            h.handle_one_request()  # a read / write timeout ends in its own ``except TimeoutError``
        except Exception:
            self.handle_error(conn.sock, conn.addr)
            h.close_connection = True
        if conn.timed_out:
            logger.debug("vwo_otel HTTP server: closing the connection from %s: the request timed out", conn.addr)
            if not conn.answered:
                _send_quietly(conn.sock, _408)
            self._close(conn)
        elif h.close_connection:
            self._close(conn)
        else:
            return self._next(conn)
        return False

    def _new_handler(self, conn: _Conn) -> BaseHTTPRequestHandler:
        """The connection's handler, set up as ``StreamRequestHandler.setup`` would, on our files."""
        cls = cast("type[BaseHTTPRequestHandler]", self.RequestHandlerClass)
        h = cls.__new__(cls)
        h.request = h.connection = conn.sock
        h.client_address = conn.addr
        h.server = self
        h.rfile = _RFile(conn)
        h.wfile = _WFile(conn)
        return h

    def _next(self, conn: _Conn) -> bool:
        """After a request or a handshake, with the connection kept: True to serve its next request
        on this worker (already received, and no other connection waits for a worker), else hand
        it on: to the worker queue (a whole head), or back to the selector (idle, part of a head)."""
        conn.pull_pending()
        alone = conn.streak < _STREAK and not self._pool.queued()
        if not conn.buf and alone and _ready(conn.sock, False, _LINGER):
            # a keep-alive client often sends its next request as soon as it has the answer
            try:
                data = conn.sock.recv(_CHUNK)
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                data = b"-"  # nothing for the application yet
            except OSError as exc:
                logger.debug("vwo_otel HTTP server: connection from %s failed: %s", conn.addr, exc)
                data = b""
            if not data:
                self._close(conn)
                return False
            if data != b"-":
                conn.buf += data
                conn.pull_pending()
        if not conn.buf:
            conn.buf = bytearray()  # let a large buffer go while idle
            conn.state = _IDLE
        else:
            conn.deadline = time.monotonic() + self.header_timeout
            if _head_complete(conn.buf, 0):
                if alone:
                    conn.streak += 1
                    return True
                conn.streak = 0
                self._dispatch(conn)
                return False
            conn.state = _HEAD
        conn.streak = 0
        self._hand_back(conn)
        return False

    def _hand_back(self, conn: _Conn) -> None:
        """From a worker: give ``conn`` to the selector to park (its loop may not be touched from here)."""
        with self._conns_cond:
            if not self._loop_closed:
                self._returned.append(conn)
                self._wake()
                return
        self._close(conn)

    # -- either thread -------------------------------------------------------------------------------
    def _close(self, conn: _Conn) -> None:
        """Close a connection no selector watches, and forget it."""
        try:
            self.shutdown_request(conn.sock)
        except OSError:  # pragma: no cover - already closed
            pass
        with self._conns_cond:
            self._conns.pop(conn.sock, None)
            self._conns_cond.notify_all()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A handler error (usually a client that went away) goes to the debug log, never stderr."""
        logger.debug("error while serving a request from %s", client_address, exc_info=True)

    def shutdown(self) -> None:
        """Stop the loop (it closes idle connections; requests in progress finish) and wait for it."""
        with self._conns_cond:
            self._stop = True
            loop = self._loop_thread
            self._wake()
        if loop is not None and loop is not threading.current_thread():
            self._loop_done.wait()

    def server_close(self) -> None:
        """Stop the loop, close the listening socket and let the workers go once their request
        is done. Idempotent."""
        with self._conns_cond:
            if self._closed:
                return
            self._closed = True
        self.shutdown()
        with self._conns_cond:
            self._loop_closed = True
        super().server_close()
        self._pool.close()
        with self._conns_cond:
            self._wake_pending = True  # nothing writes to the wake-up pair any more
            self._wake_r.close()
            self._wake_w.close()

    def close_connections(self, timeout: float) -> None:
        """Shut every open connection so requests in progress end, wait up to ``timeout`` seconds
        for them to be closed and, once the server is closed, for its workers to exit."""
        deadline = time.monotonic() + max(0.0, timeout)
        with self._conns_cond:
            socks = list(self._conns)
        for sock in socks:
            try:
                socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the plain call: a TLS object stays usable
            except OSError:
                pass
        with self._conns_cond:
            self._conns_cond.wait_for(lambda: not self._conns, max(0.0, deadline - time.monotonic()))
        if self._closed:
            self._pool.join(max(0.0, deadline - time.monotonic()))


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


def read_body(h: BaseHTTPRequestHandler, limit: int, drain_limit: int, timeout: float | None = None) -> Body:
    """The request body (Content-Length or chunked), read within the server's ``body_timeout``
    (or the shorter ``timeout``) from this call (a ``LoopbackHTTPServer`` handler).

    ``Body.problem`` is one of ``bad-transfer-encoding``, ``no-length`` (a POST without Content-Length;
    the body is then empty), ``bad-length``, ``bad-chunked``, ``too-large`` (over ``limit``: read
    and discarded up to ``drain_limit`` so a keep-alive connection stays usable, beyond that the
    connection is closed) or ``incomplete`` (the client closed, or did not send it in time, before
    the body ended; after a timeout no answer is written but a 408). The connection is marked to
    close whenever the rest of its stream can no longer be trusted."""
    rfile = getattr(h, "rfile", None)
    if isinstance(rfile, _RFile):
        allowed = rfile.conn.body_timeout if timeout is None else min(timeout, rfile.conn.body_timeout)
        rfile.conn.deadline = time.monotonic() + allowed
    try:
        return _read_body(h, limit, drain_limit)
    except TimeoutError:
        logger.debug("vwo_otel HTTP server: the request body from %s did not arrive in time", h.client_address)
        h.close_connection = True
        return Body(None, 0, "incomplete")


def _read_body(h: BaseHTTPRequestHandler, limit: int, drain_limit: int) -> Body:
    """``read_body`` without its deadline: framing, limits and problems."""
    te = h.headers.get("Transfer-Encoding")
    if te is not None:
        # Only "chunked", never beside a Content-Length (RFC 9112 6.3: a request smuggling vector)
        if te.strip().lower() != "chunked" or h.headers.get("Content-Length") is not None:
            h.close_connection = True
            return Body(None, 0, "bad-transfer-encoding")
        return _read_chunked(h, limit, drain_limit)
    cl = h.headers.get("Content-Length")
    if cl is None:
        return Body(b"", 0, "no-length" if h.command == "POST" else None)
    try:
        if not cl.strip().isdigit() or not cl.strip().isascii():  # int() would take "+5", "1_0", " ５"
            raise ValueError
        n = int(cl)
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
            size = chunk_size(line)
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
            if got < size:
                h.close_connection = True
                return Body(None, total + got, "incomplete")
            if rfile.readline(3) not in (b"\r\n", b"\n"):  # the CRLF ending the chunk, nothing else
                raise ValueError("a chunk does not end where its size says")
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
