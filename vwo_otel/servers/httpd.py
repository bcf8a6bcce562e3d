"""The HTTP server under the loopback receiver and the gateway: bounded resources whatever
clients do. HTTP framing is h11's (``servers/framing.py``); connections, deadlines and threads
are this module's.

One selector thread accepts connections, parks idle keep-alive ones (no thread per connection)
and receives whole requests, head and body: an app's ``head`` hook sees each head first and may
refuse it before its body is read (the gateway's 401 without a token); a refused or overlong
body is read and dropped here, never on a worker. Only a whole request goes to the bounded pool
of worker threads, which runs the app on it, writes its ``Response`` and takes the connection's
next request if it is already there. So a client trickling its head or body holds a connection,
never a worker.

Whole deadlines, not per-read timeouts: ``idle_timeout`` (a keep-alive connection with no
request), ``header_timeout`` (request line and headers, from their first byte), ``body_timeout``
(the body, from the end of its head; also each answer's write); a request past its deadline is
answered 408 and closed. At most ``max_connections`` are open, never more than the process's
file limit allows; when full, one is closed to admit a new one: a lingering close first, else the
request still arriving that started longest ago (answered 503), else the longest-idle. Bodies held
at once are bounded by ``body_budget`` bytes (counted as they arrive; a body finding no room
waits unread, and gets the app's ``overloaded`` answer, 503, after ``BODY_WAIT`` s; the oldest
body in progress always goes on, so the budget can be passed by one body at most). An answer that
closes a connection whose client may still be sending is followed by a lingering close (its bytes
read and dropped, up to ``LINGER_BYTES`` within ``LINGER_SECONDS``) so the client reads the
answer rather than a reset. Optionally TLS: the handshake runs on workers, step by step, bounded
by ``TLS_HANDSHAKE_TIMEOUT``, never on the selector thread. ``TCP_NODELAY`` on every connection.

(About 680 lines, over the ~600 aimed at: the selector thread and the workers hand each
connection to each other under one lock, and share its states and the parking bookkeeping; one
connection's socket I/O is in ``connection.py``, the pool / budget / file limit in ``bounds.py``.)"""

from __future__ import annotations

import dataclasses
import errno
import heapq
import itertools
import logging
import math
import os
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

from .. import checks
from .bounds import Budget, Pool, connection_limit, ready
from .connection import BODY, BUSY, HANDSHAKE, HEAD, IDLE, LINGER, PAUSED, Conn, say
from .framing import DONE, App, BadRequest, Request, Response
from .framing import HEAD as HEAD_IN
from .listeners import listen

__all__ = ["App", "Request", "Response", "Server", "connection_limit"]

logger = logging.getLogger("vwo_otel")

#: Seconds a TLS client may take to finish its handshake, from its connection, before it is closed.
TLS_HANDSHAKE_TIMEOUT = 10.0
#: Seconds a keep-alive connection may stay without a request before the server closes it.
DEFAULT_IDLE_TIMEOUT = 30.0
#: Seconds a request line and its headers may take, from their first byte.
DEFAULT_HEADER_TIMEOUT = 10.0
#: Seconds a request body may take, from the end of its head; also the bound on writing each answer.
DEFAULT_BODY_TIMEOUT = 30.0
#: Connections open at once (lowered to what the process's file limit allows, see ``FD_RESERVE``).
DEFAULT_MAX_CONNECTIONS = 1024
#: Worker threads of a server exposed to other processes (the gateway): apps that do not wait.
DEFAULT_MAX_WORKERS = min(32, 2 * (os.cpu_count() or 1) + 8)
#: Worker threads unless told otherwise: the loopback receiver's app sleeps through injected
#: answer delays on a worker, so it needs one per request a processor may have in flight
#: (started as needed): fewer, and a ``--delay`` rehearsal measures the receiver.
LOOPBACK_MAX_WORKERS = int(checks.MAX_CONCURRENT_REQUESTS.high)
#: Body bytes a request may bring when the app's ``head`` names no limit.
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
#: Seconds a body may wait, unread, for room in the body budget before it is answered 503.
BODY_WAIT = 5.0
#: A lingering close reads and drops up to this many bytes within this many seconds.
LINGER_BYTES = 1024 * 1024
LINGER_SECONDS = 1.0

_CHUNK = 64 * 1024  # bytes received per read
_SMALL_READ = 4 * 1024  # ... a head's, while the body budget has less room than _CHUNK
_NEXT_WAIT = 0.002  # seconds a worker waits for a connection's next request when no other work waits
_STREAK = 32  # requests of one connection a worker serves in a row before it goes back in line
_ACCEPT_BATCH = 16  # connections accepted per wake-up of the selector
_ACCEPT_PAUSE = 0.1  # seconds accepting pauses when the process is out of files and nothing can be closed
_OUT_OF_FILES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_READY, _GONE = "ready", "gone"  # what parsing a connection's bytes led to, besides a state to wait in
_LISTENER, _WAKE = object(), object()
_408 = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
_503 = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"


class Server:
    """An HTTP/1.1 server for ``app`` on ``address`` (IPv6 when the host has a ``:``), bound and
    listening once built (``OSError`` naming the address if it cannot be), or on ``listener``, a
    socket already listening (``listeners.listen_many``). ``serve_forever`` runs
    the selector loop; ``shutdown()`` / ``server_close()`` / ``close_connections()`` end it all; a
    server is not restarted. See the module's docstring for the bounds."""

    def __init__(self, address: tuple[str, int], app: App, ssl_context: ssl.SSLContext | None = None, *,
                 max_workers: int = LOOPBACK_MAX_WORKERS, max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 idle_timeout: float = DEFAULT_IDLE_TIMEOUT, header_timeout: float = DEFAULT_HEADER_TIMEOUT,
                 body_timeout: float = DEFAULT_BODY_TIMEOUT, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 body_budget: int | None = None, backlog: int = 256, listener: socket.socket | None = None) -> None:
        self.app = app
        self.ssl_context = ssl_context
        self.max_workers = max(1, int(max_workers))
        self.max_connections = connection_limit(max(1, int(max_connections)))
        if self.max_connections < max_connections:
            logger.debug("max_connections %d lowered to %d: the process may open only so many files (RLIMIT_NOFILE)",
                         max_connections, self.max_connections)
        self.idle_timeout = float(idle_timeout)
        self.header_timeout = float(header_timeout)
        self.body_timeout = float(body_timeout)
        self.max_body_bytes = int(max_body_bytes)
        self._budget = None if body_budget is None else Budget(int(body_budget), self._room_freed)
        self._conns: dict[socket.socket, Conn] = {}  # every open connection, by socket
        self._conns_cond = threading.Condition()  # guards the state below
        self._returned: list[Conn] = []  # handed back by workers, for the selector to park
        self._wake_pending = False
        self._stop = False  # shutdown() asked the loop to end
        self._loop_thread: threading.Thread | None = None
        self._loop_done = threading.Event()
        self._loop_closed = False  # nothing is parked any more: workers close what they finish
        self._closed = False
        # selector-thread state: parked connections by kind, each in the order it got there
        self._idle: dict[Conn, None] = {}  # without a request, longest idle first
        self._waiting: dict[Conn, None] = {}  # in a head, a body or a handshake, oldest request first
        self._lingering: dict[Conn, None] = {}  # answered, closing
        self._bodies: dict[Conn, None] = {}  # receiving a body (or paused), oldest body first
        self._paused: dict[Conn, None] = {}  # bodies waiting for room in the budget, unread
        self._timers: list[tuple[float, int, Conn, int]] = []  # (deadline, seq, conn, ticket) heap
        self._seq = itertools.count()
        self._sel: selectors.BaseSelector | None = None
        self._accept_paused_until = 0.0
        if listener is None:
            listener = listen(address[0], int(address[1]), backlog)
        else:  # already listening (a worker process's share of the port)
            listener.setblocking(False)
        self.socket = listener
        self.server_address = listener.getsockname()
        self.server_port = int(self.server_address[1])
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._pool = Pool(self.max_workers, self._work, f"vwo_otel-httpd:{self.server_port}")

    # -- the selector thread -----------------------------------------------------------------------
    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Run the selector loop until ``shutdown()``: accept, park idle connections, receive
        requests, hand whole ones to the workers, close what overstays its deadline. Events wake
        it, so ``poll_interval`` (socketserver's signature) is not needed."""
        with self._conns_cond:
            if self._stop or self._loop_thread is not None:
                return
            self._loop_thread = threading.current_thread()
        sel = self._sel = selectors.DefaultSelector()
        try:
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
                self._resume()
                self._expire(time.monotonic())
        except Exception:  # a bug here must not leave clients hanging: log it and close everything
            logger.error("vwo_otel HTTP server: the connection loop failed", exc_info=True)
        finally:
            self._end_loop(sel)

    def _next_timeout(self) -> float | None:
        """Seconds until the next deadline (or the end of an accept pause); None: none."""
        until = self._timers[0][0] if self._timers else math.inf
        if self._accept_paused_until:
            until = min(until, self._accept_paused_until)
        return None if until == math.inf else max(0.0, until - time.monotonic())

    def _accept(self) -> None:
        """Accept what is waiting (a few at a time), admitting each within ``max_connections``."""
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, addr = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_FILES:
                    if not self._evict("the process is out of files"):
                        logger.debug("vwo_otel HTTP server: out of files and nothing to close; accepting pauses for "
                                     "%.1f s", _ACCEPT_PAUSE)
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
        """Set up an accepted connection and park it, closing another one when full."""
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # pragma: no cover - not a TCP socket, or already reset
            pass
        with self._conns_cond:
            full = len(self._conns) >= self.max_connections
        if full and not self._evict(f"max_connections ({self.max_connections}) reached"):
            logger.debug("vwo_otel HTTP server: max_connections (%d) reached: refused %s", self.max_connections, addr)
            if self.ssl_context is None:
                say(sock, _503)
            sock.close()
            return
        if self.ssl_context is not None:
            try:
                sock = self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
                sock.setblocking(False)
            except (OSError, ValueError) as exc:
                logger.debug("vwo_otel HTTP server: TLS set-up for %s failed: %s", addr, exc)
                sock.close()
                return
        conn = Conn(sock, addr, self.ssl_context is None)
        with self._conns_cond:
            self._conns[sock] = conn
        now = time.monotonic()
        if self.ssl_context is None:
            self._park(conn, IDLE, now + self.idle_timeout)
        else:
            self._park(conn, HANDSHAKE, now + TLS_HANDSHAKE_TIMEOUT)

    def _evict(self, why: str) -> bool:
        """Close one parked connection: a lingering one, else the request still arriving that
        started longest ago (answered 503: a whole request arrives in one read, so one still
        arriving is slow, or large), else the longest-idle (its client reconnects)."""
        for parked in (self._lingering, self._waiting, self._idle):
            for conn in parked:
                logger.debug("vwo_otel HTTP server: %s: closing the %s connection from %s", why, conn.state, conn.addr)
                if conn.state in (HEAD, BODY, PAUSED):
                    conn.say(_503)
                self._drop(conn)
                return True
        return False

    def _park(self, conn: Conn, state: str, deadline: float) -> None:
        """The selector keeps ``conn`` in ``state`` until ``deadline`` (read unless paused)."""
        assert self._sel is not None
        if conn.parked and conn.state == state and conn.deadline == deadline:
            return
        self._idle.pop(conn, None)
        self._lingering.pop(conn, None)
        if state == IDLE or state == LINGER:
            self._waiting.pop(conn, None)
            self._bodies.pop(conn, None)
            (self._idle if state == IDLE else self._lingering)[conn] = None
        elif conn not in self._waiting:
            self._waiting[conn] = None
        if (state == BODY or state == PAUSED) and conn not in self._bodies:
            self._bodies[conn] = None
        if state != PAUSED:
            self._paused.pop(conn, None)
        conn.state, conn.deadline, conn.parked = state, deadline, True
        conn.ticket += 1
        heapq.heappush(self._timers, (deadline, next(self._seq), conn, conn.ticket))
        self._watch(conn, state != PAUSED)

    def _watch(self, conn: Conn, on: bool) -> None:
        assert self._sel is not None
        if on and not conn.watched:
            self._sel.register(conn.sock, selectors.EVENT_READ, conn)
        elif conn.watched and not on:
            self._sel.unregister(conn.sock)
        conn.watched = on

    def _unpark(self, conn: Conn) -> None:
        """The selector lets go of ``conn``: a worker or a close takes it."""
        for parked in (self._idle, self._waiting, self._lingering, self._bodies, self._paused):
            parked.pop(conn, None)
        conn.ticket += 1
        conn.state, conn.parked = BUSY, False
        self._watch(conn, False)

    def _drop(self, conn: Conn) -> None:
        """Stop watching and close a parked connection."""
        self._unpark(conn)
        self._close(conn)

    def _readable(self, conn: Conn) -> None:
        """A parked connection has something: a handshake step goes to a worker, a lingering close
        drops what came, anything else is received and parsed here."""
        if not conn.parked:  # closed earlier in this round (evicted)
            return
        state = conn.state
        if state == HANDSHAKE:
            self._unpark(conn)
            self._dispatch(conn)
            return
        size = _CHUNK
        if self._budget is not None:
            room = self._budget.room()
            if state != BODY:  # a head's read may bring body bytes too: a small one while the budget is short
                size = _CHUNK if room >= _CHUNK else _SMALL_READ
            elif room <= 0 and next(iter(self._bodies), None) is not conn:  # the oldest body always goes on
                self._paused[conn] = None
                self._park(conn, PAUSED, min(conn.body_deadline, time.monotonic() + BODY_WAIT))
                return
            elif room > 0:
                size = min(_CHUNK, room)
        data = conn.recv(size)
        if data is None:
            return
        if not data:
            if state != IDLE and state != LINGER:
                logger.debug("vwo_otel HTTP server: %s closed its connection in a request's %s", conn.addr, state)
            self._drop(conn)
            return
        if state == LINGER:
            conn.lingered += len(data)
            if conn.lingered > LINGER_BYTES:
                self._drop(conn)
            return
        now = time.monotonic()
        if state == IDLE:
            conn.started = now  # the first byte of a request starts the head's deadline
        conn.framer.feed(data)
        step = self._advance(conn)
        if step == _READY:
            self._unpark(conn)
            self._dispatch(conn)
        elif step != _GONE:
            self._park(conn, step, self._deadline(conn, step, now))

    def _deadline(self, conn: Conn, state: str, now: float) -> float:
        if state == HEAD:
            return conn.started + self.header_timeout
        if state == BODY:
            return conn.body_deadline
        if state == LINGER:
            return now + LINGER_SECONDS
        if state == IDLE:
            return now + self.idle_timeout
        return conn.deadline  # a handshake's

    def _dispatch(self, conn: Conn) -> None:
        """Queue ``conn`` for a worker; closed if the workers are gone."""
        if not self._pool.submit(conn):
            self._close(conn)

    def _resume(self) -> None:
        """Read paused bodies again once the budget has room (the oldest body whatever the budget)."""
        if not self._paused:
            return
        assert self._budget is not None
        if self._budget.room() > 0:
            todo = list(self._paused)
        else:
            oldest = next(iter(self._bodies), None)
            todo = [oldest] if oldest in self._paused else []
        for conn in todo:
            self._park(conn, BODY, conn.body_deadline)

    def _room_freed(self) -> None:
        """From any thread: body bytes were given back; wake the selector if bodies wait for them."""
        if self._paused:
            with self._conns_cond:
                self._wake()

    def _expire(self, now: float) -> None:
        """Close parked connections past their deadline; resume a paused accept; drop stale timers."""
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, conn, ticket = heapq.heappop(timers)
            if conn.ticket != ticket or not conn.parked:
                continue
            state = conn.state
            if state == PAUSED and now < conn.body_deadline:
                logger.debug("vwo_otel HTTP server: no room for the body from %s within %.3g s", conn.addr, BODY_WAIT)
                request = conn.framer.request
                assert request is not None
                if self._refuse(conn, self._app_call(self.app.overloaded, request)) == LINGER:
                    self._park(conn, LINGER, now + LINGER_SECONDS)
                continue
            if state in (HEAD, BODY, PAUSED):
                logger.debug("vwo_otel HTTP server: closing the connection from %s: the request's %s did not arrive "
                             "within %.3g s", conn.addr, "head" if state == HEAD else "body",
                             self.header_timeout if state == HEAD else self.body_timeout)
                conn.say(_408)
            else:
                logger.debug("vwo_otel HTTP server: closing the %s connection from %s: its deadline passed", state,
                             conn.addr)
            self._drop(conn)
        if self._accept_paused_until and now >= self._accept_paused_until and self._sel is not None:
            self._accept_paused_until = 0.0
            self._sel.register(self.socket, selectors.EVENT_READ, _LISTENER)
        parked = len(self._idle) + len(self._waiting) + len(self._lingering)
        if len(timers) > 2 * parked + 256:
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
        """Park the connections workers handed back."""
        with self._conns_cond:
            returned, self._returned = self._returned, []
        now = time.monotonic()
        for conn in returned:
            self._park(conn, conn.state, self._deadline(conn, conn.state, now))

    def _end_loop(self, sel: selectors.BaseSelector) -> None:
        """The loop ends: close every parked connection (nothing is in progress on them)."""
        with self._conns_cond:
            self._loop_closed = True
            returned, self._returned = self._returned, []
        for conn in list(self._idle) + list(self._waiting) + list(self._lingering):
            self._drop(conn)
        for conn in returned:
            self._close(conn)
        self._timers.clear()
        sel.close()
        self._sel = None
        self._loop_done.set()

    # -- either thread -------------------------------------------------------------------------------
    def _advance(self, conn: Conn) -> str:
        """Parse what ``conn`` received: ``_READY`` (a whole request), the state to wait in
        (``HEAD``, ``BODY``), ``LINGER`` (refused: answered, closing) or ``_GONE`` (closed)."""
        f = conn.framer
        try:
            step = f.advance(conn.addr, self, conn.sock)
            while step == HEAD_IN:
                request = f.request
                assert request is not None
                answer = self._app_call(self.app.head, request)
                if isinstance(answer, Response):
                    return self._refuse(conn, answer)
                cont = f.accept(self.max_body_bytes if answer is None else answer)
                if cont:
                    conn.say(cont)
                conn.body_deadline = time.monotonic() + self.body_timeout
                step = f.advance()
        except BadRequest as exc:
            logger.debug("vwo_otel HTTP server: bad request from %s: %s", conn.addr, exc.message)
            conn.say(f.refuse(exc, self.app.server_name))
            return self._closing(conn)
        if self._budget is not None and f.kept != conn.held:
            self._budget.change(f.kept - conn.held)
            conn.held = f.kept
        if step == DONE:
            return _READY
        return HEAD if f.request is None else BODY

    def _app_call(self, hook: Callable[[Request], Any], request: Request) -> Any:
        """``hook(request)``; an app's error becomes a 500 that closes the connection."""
        try:
            return hook(request)
        except Exception:
            self.handle_error(request, request.client)
            return Response(500, b"internal error\n", close=True)

    def _refuse(self, conn: Conn, response: Response) -> str:
        """Answer ``response`` now (it fits the socket's buffer) and close: ``LINGER`` / ``_GONE``."""
        try:
            data, _ = conn.framer.respond(dataclasses.replace(response, close=True), self.app.server_name)
        except ValueError:
            logger.debug("vwo_otel HTTP server: cannot answer %s", conn.addr, exc_info=True)
            data = _503
        conn.say(data)
        return self._closing(conn)

    def _closing(self, conn: Conn) -> str:
        """After a last answer: ``LINGER`` if the client may still be sending, else closed (``_GONE``)."""
        self._release(conn)
        if conn.framer.unread:
            if conn.half_close():
                return LINGER
        if conn.parked:
            self._drop(conn)
        else:
            self._close(conn)
        return _GONE

    def _release(self, conn: Conn) -> None:
        """Give back the body bytes ``conn`` holds in the budget."""
        if conn.held and self._budget is not None:
            held, conn.held = conn.held, 0
            self._budget.change(-held)

    def _close(self, conn: Conn) -> None:
        """Close a connection no selector watches, and forget it."""
        self._release(conn)
        conn.close()
        with self._conns_cond:
            self._conns.pop(conn.sock, None)
            self._conns_cond.notify_all()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """An app's error goes to the debug log, never stderr."""
        logger.debug("error while serving a request from %s", client_address, exc_info=True)

    # -- workers ------------------------------------------------------------------------------------
    def _work(self, conn: Conn) -> None:
        """On a worker: the next step of ``conn`` (a TLS handshake step, or its whole request)."""
        try:
            if self._loop_closed:
                self._close(conn)
            elif conn.handshaken or self._handshake(conn):
                while self._serve_one(conn):
                    pass
        except Exception:
            self.handle_error(None, conn.addr)
            self._close(conn)

    def _handshake(self, conn: Conn) -> bool:
        """A TLS handshake step (back to the selector to wait for more bytes); True when it is
        done and a whole request is here to serve."""
        done = conn.handshake()
        if done:
            return self._next(conn, first=True)
        if done is None:
            self._close(conn)
        else:
            conn.state = HANDSHAKE
            self._hand_back(conn)
        return False

    def _serve_one(self, conn: Conn) -> bool:
        """Run the app on the connection's whole request and write its answer; True: serve its
        next request here too (already received, and no other connection waits for a worker)."""
        f = conn.framer
        request = f.request
        assert request is not None
        try:
            response = self._app_call(self.app, request)
        finally:
            self._release(conn)  # the app is done with the body
        if response is None:
            self._close(conn)
            return False
        try:
            data, keep = f.respond(response, self.app.server_name)
        except ValueError:
            logger.debug("vwo_otel HTTP server: the app's answer to %s is not HTTP", conn.addr, exc_info=True)
            self._close(conn)
            return False
        if not conn.write(data, self.body_timeout):
            self._close(conn)
            return False
        if not keep:
            if self._closing(conn) == LINGER:
                conn.state = LINGER
                self._hand_back(conn)
            return False
        return self._next(conn)

    def _next(self, conn: Conn, first: bool = False) -> bool:
        """After an answer (or a handshake, ``first``), with the connection kept: True to serve its
        next request on this worker (whole, and no other connection waits for a worker), else
        hand it on: to the worker queue (whole), or back to the selector (idle, in part). Alone,
        the worker waits up to ``_NEXT_WAIT`` for it: a keep-alive client often sends its next
        request as soon as it has the answer."""
        f = conn.framer
        if not first:
            f.next_cycle()
        alone = conn.streak < _STREAK and not self._pool.queued()
        step = IDLE
        now = time.monotonic()
        if f.pending:
            conn.started = now
            step = self._advance(conn)
        sock, until = conn.sock, now + _NEXT_WAIT
        while step in (IDLE, HEAD, BODY):
            if isinstance(sock, ssl.SSLSocket) and sock.pending():  # decrypted already: a poll would not see it
                data = conn.recv(_CHUNK)
            elif alone and ready(sock, False, until - time.monotonic()):
                data = conn.recv(_CHUNK)
            else:
                break
            if data == b"":
                self._close(conn)
                return False
            if data:
                if step == IDLE:
                    conn.started = time.monotonic()
                f.feed(data)
                step = self._advance(conn)
            if time.monotonic() >= until:
                break
        if step == _READY:
            if alone:
                conn.streak += 1
                return True
            conn.streak = 0
            self._dispatch(conn)
            return False
        conn.streak = 0
        if step != _GONE:
            conn.state = step
            self._hand_back(conn)
        return False

    def _hand_back(self, conn: Conn) -> None:
        """From a worker: give ``conn`` to the selector to park (its loop may not be touched from here)."""
        with self._conns_cond:
            if not self._loop_closed:
                self._returned.append(conn)
                self._wake()
                return
        self._close(conn)

    # -- stopping ------------------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Stop the loop (it closes parked connections; requests in progress finish) and wait for it."""
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
        self.socket.close()
        self._pool.close()
        with self._conns_cond:
            self._wake_pending = True  # nothing writes to the wake-up pair any more
            self._wake_r.close()
            self._wake_w.close()

    def open_sockets(self) -> list[socket.socket]:
        """The sockets of the connections open now (for tests and tools: their options, their count)."""
        with self._conns_cond:
            return list(self._conns)

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
