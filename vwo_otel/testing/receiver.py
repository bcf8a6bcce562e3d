"""A local VWO-compatible collection endpoint on loopback, for the demo, tests and benchmarks.

It validates requests the way VWO's collection server is documented to, in both wire formats
(``collection``), stores every request and every accepted event in SQLite, and can inject faults
(``faults``: errors, stalls, dropped connections, "accepted but answered an error") so delivery
guarantees can be tested against something that behaves like a server.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import select
import socket
import sqlite3
import threading
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from .. import checks
from ..servers.framing import Request, Response
from ..servers.httpd import LOOPBACK_MAX_WORKERS, App, Server
from .collection import PAYLOAD_TOO_LARGE, TEXT, Collection, wire_event
from .faults import Faults, RetryAfter

__all__ = ["DEFAULT_MAX_BODY_BYTES", "PAYLOAD_TOO_LARGE", "Receiver"]

logger = logging.getLogger("vwo_otel.testing.receiver")

DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024

_encode = json.JSONEncoder(separators=(",", ":")).encode

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY,
    received_at REAL NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    query TEXT NOT NULL,
    status INTEGER NOT NULL,
    body_bytes INTEGER NOT NULL,
    n_events INTEGER NOT NULL,
    error TEXT,
    accepted INTEGER NOT NULL DEFAULT 0,
    events BLOB
);
"""
_INSERT_REQUEST = (
    "INSERT INTO requests (received_at, method, path, query, status, body_bytes, n_events, error, accepted, events)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_REQUEST_KEYS = ("id", "received_at", "method", "path", "query", "status", "body_bytes", "n_events", "error",
                 "accepted")

def _loopback_host(host: str) -> str:
    """The host as a loopback IP literal; raise ValueError for anything not on loopback."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise ValueError(f"host must be a loopback IP address, got {host!r}") from None
    if not ip.is_loopback:
        raise ValueError(f"the receiver only listens on loopback, got {host!r}")
    return str(ip)


def _client_gone(sock: socket.socket) -> bool:
    """True when the peer has closed its side (checked without consuming data)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        return sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


class _Server(Server):
    """The receiver's server: knows its ``Receiver`` and whether it is stopping."""

    def __init__(self, address: tuple[str, int], receiver: Receiver) -> None:
        self.receiver = receiver
        self.stopping = False
        super().__init__(address, _App(receiver), max_workers=LOOPBACK_MAX_WORKERS, backlog=128)


#: What the validation functions below call ``h``: the request, with ``headers.get(name)``.


class _App(App):
    """Routes GET and POST to the receiver (501 for other methods); the body limit in force and
    the request's faults are decided as its head arrives, before its body is read."""

    server_name = "vwo-otel-receiver"

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver

    def head(self, request: Request) -> int:
        plan = request.context = self.receiver._faults.take()
        return plan.max_body

    def __call__(self, request: Request) -> Response | None:
        if request.method not in ("GET", "POST"):
            return self.receiver._protocol_error(request, 501, f"Unsupported method ({request.method!r})")
        return self.receiver._serve(request)


class Receiver:
    """A local VWO collection endpoint on loopback that validates, stores and can misbehave on purpose."""

    def __init__(
        self,
        account_id: int | str | None = None,
        sdk_key: str | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        db_path: str = ":memory:",
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        """Configure the receiver; account_id/sdk_key, when given, must match what clients send."""
        account = None if account_id is None else checks.account_id(account_id)
        self._collection = Collection(account, None if sdk_key is None else checks.sdk_key(sdk_key).encode())
        checks.number("max_body_bytes", max_body_bytes, low=1, integer=True)
        self._port = checks.number("port", port, low=0, high=65535, integer=True)
        self._host = _loopback_host(host)
        self._db_path = db_path
        self._faults = Faults(max_body_bytes)

        self._db = sqlite3.connect(db_path, check_same_thread=False)
        if db_path != ":memory:" and not db_path.startswith("file:"):
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._db.commit()
        self._lock = threading.Lock()
        self._inserted = threading.Condition(self._lock)
        self._n_events: int = self._db.execute(
            "SELECT COALESCE(SUM(n_events), 0) FROM requests WHERE events IS NOT NULL").fetchone()[0]

        self._state_lock = threading.Lock()
        self._stall_lock = threading.Lock()
        self._stalled = 0  # requests held in an injected stall now
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------- lifecycle

    @property
    def host(self) -> str:
        """The loopback address the receiver binds."""
        return self._host

    @property
    def port(self) -> int:
        """The bound port (the configured one before the first start)."""
        return self._port

    @property
    def url(self) -> str:
        """Base URL to give clients as the collection host, e.g. ``http://127.0.0.1:PORT``."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    @property
    def running(self) -> bool:
        """Whether the receiver is serving."""
        return self._server is not None

    def start(self) -> Receiver:
        """Bind and serve in a daemon thread; no-op if running. A restart reuses the same port."""
        with self._state_lock:
            if self._server is not None:
                return self
            server = _Server((self._host, self._port), self)
            self._port = int(server.server_address[1])
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                      name=f"vwo-otel-receiver:{self._port}", daemon=True)
            thread.start()
            self._server, self._thread = server, thread
        logger.debug("receiver listening on %s", self.url)
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Stop serving, end stalls, close open connections; bounded by about timeout seconds. Idempotent."""
        with self._state_lock:
            server, thread = self._server, self._thread
            if server is None or thread is None:
                return
            self._server = self._thread = None
            server.stopping = True
            self._faults.release()
            if thread.is_alive():
                server.shutdown()
            server.server_close()
            server.close_connections(timeout)
            thread.join(timeout)
            if self._db_path != ":memory:":
                with self._lock:
                    try:
                        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                    except sqlite3.Error:  # pragma: no cover - checkpoint is best effort
                        logger.debug("wal checkpoint failed", exc_info=True)
        logger.debug("receiver on port %d stopped", self._port)

    def close(self) -> None:
        """Stop and close the database (stored data is no longer readable through this object)."""
        self.stop()
        with self._lock:
            self._db.close()

    def __enter__(self) -> Receiver:
        """Start on entry."""
        return self.start()

    def __exit__(self, exc_type: type | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """Stop on exit; stored data stays readable until close()."""
        self.stop()

    # ----------------------------------------------------------------- stored data

    def events(self, *, with_raw: bool = False) -> list[dict[str, Any]]:
        """Accepted events in arrival order, wire-shaped; with_raw adds "raw" JSON text and "request_id"."""
        with self._lock:
            stored = self._db.execute("SELECT id, events FROM requests WHERE events IS NOT NULL"
                                      " ORDER BY id").fetchall()
        out = []
        for rid, body in stored:
            for ev in json.loads(body)["ev"]:
                d = wire_event(ev)
                if with_raw:
                    d["raw"] = _encode(ev)
                    d["request_id"] = rid
                out.append(d)
        return out

    def requests(self, *, after: int = 0) -> list[dict[str, Any]]:
        """Every request received (rejected and faulted ones too), in arrival order; with ``after``,
        only those whose id is greater (to follow new arrivals).

        Keys: id, received_at, method, path, query (env masked as ***), status (0 = no response sent),
        body_bytes (query length for GETs), n_events, error, accepted (events were stored).
        """
        with self._lock:
            rows = self._db.execute(f"SELECT {', '.join(_REQUEST_KEYS)} FROM requests WHERE id > ? ORDER BY id",
                                    (after,)).fetchall()
        out = []
        for row in rows:
            d = dict(zip(_REQUEST_KEYS, row, strict=False))
            d["accepted"] = bool(d["accepted"])
            out.append(d)
        return out

    def event_count(self) -> int:
        """Number of accepted events stored."""
        with self._lock:
            return self._n_events

    def wait_for_events(self, n: int, timeout: float | None = None) -> bool:
        """Block until at least n events are stored (woken on each insert); False on timeout."""
        with self._inserted:
            return self._inserted.wait_for(lambda: self._n_events >= n, timeout)

    def reset(self) -> None:
        """Delete all stored requests and events and clear every fault."""
        with self._lock:
            self._db.execute("DELETE FROM requests")
            self._db.commit()
            self._n_events = 0
        self.clear_faults()

    def summary(self) -> dict[str, Any]:
        """Totals and ratios: requests, accepted_requests, events, bytes, bytes_per_event, events_per_request.

        bytes is the payload of accepted requests: the body of a POST, the query string of a real-time GET.
        """
        with self._lock:
            n_req, n_acc, n_bytes = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(accepted), 0),"
                " COALESCE(SUM(CASE WHEN accepted THEN body_bytes ELSE 0 END), 0) FROM requests"
            ).fetchone()
            n_ev = self._n_events
        return {
            "requests": n_req,
            "accepted_requests": n_acc,
            "events": n_ev,
            "bytes": n_bytes,
            "bytes_per_event": n_bytes / n_ev if n_ev else 0.0,
            "events_per_request": n_ev / n_acc if n_acc else 0.0,
        }

    # ----------------------------------------------------------------- fault injection

    def stalled(self) -> int:
        """Requests held in an injected stall now (``stall``)."""
        with self._stall_lock:
            return self._stalled

    def open_sockets(self) -> list[socket.socket]:
        """The server-side sockets of the connections open now (for tests: their options)."""
        server = self._server
        return [] if server is None else server.open_sockets()

    # ----------------------------------------------------------------- fault injection (``faults.Faults``)

    def fail_next(self, n: int, status: int = 503, retry_after: RetryAfter = None, body: str = "") -> None:
        """Answer the next n requests with status (and Retry-After if given), storing nothing."""
        self._faults.fail_next(n, status, retry_after, body)

    def drop_next(self, n: int) -> None:
        """Close the connection without any response for the next n requests (after reading the body)."""
        self._faults.drop_next(n)

    def accept_then_fail_next(self, n: int, status: int = 504, body: str | None = None,
                              content_type: str = TEXT) -> None:
        """Store the events of the next n valid requests but answer ``status`` with ``body`` (default
        its reason phrase) as ``content_type``: "accepted, client saw failure", or, with a 2xx, an
        answer a client may misread (``200`` with ``application/json`` that is not JSON)."""
        self._faults.accept_then_fail_next(n, status, body, content_type)

    def set_max_body(self, nbytes: int) -> None:
        """Answer 413 for bodies above nbytes until clear_faults() (simulates a smaller server limit)."""
        self._faults.set_max_body(nbytes)

    def stall(self, seconds: float, n: int | None = None, *, per_held: float = 0.0) -> None:
        """Delay the next n requests (None: all, until cleared) by seconds, plus ``per_held`` for
        each request already held in a stall when one arrives (an overloaded server, exactly:
        counted as the request arrives); stop()/clear_faults() end it."""
        self._faults.stall(seconds, n, per_held=per_held)

    def random_faults(self, rate: float, *, seed: int | None = None,
                      statuses: Sequence[int] = (429, 500, 502, 503, 504), drop: bool = True) -> None:
        """Fail each request with probability rate: a random status from statuses or a dropped connection."""
        self._faults.random_faults(rate, seed=seed, statuses=statuses, drop=drop)

    def clear_faults(self) -> None:
        """Remove every fault: scheduled failures, stalls (ending current ones), random faults, body limit."""
        self._faults.clear_faults()

    # ----------------------------------------------------------------- serving

    def _serve(self, h: Request) -> Response | None:
        """Handle one request (its body read, its plan decided by ``_App.head``): apply faults,
        validate, store, answer (None: close the connection without an answer)."""
        received_at = time.time()
        method = h.method
        path, query = h.path, h.query

        plan = h.context
        fault = plan.fault
        nbytes = h.nbytes

        if plan.stall_seconds > 0 or plan.stall_per_held > 0:
            with self._stall_lock:
                wait = plan.stall_seconds + plan.stall_per_held * self._stalled
                self._stalled += 1
            try:
                plan.release.wait(wait)
            finally:
                with self._stall_lock:
                    self._stalled -= 1
            if h.server.stopping or _client_gone(h.connection):
                self._store(received_at, method, path, query, 0, nbytes, 0,
                            "client went away during an injected stall", False)
                return None

        if fault is not None and fault.kind == "drop":
            self._store(received_at, method, path, query, 0, nbytes, 0, "injected dropped connection", False)
            try:
                h.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return None
        if fault is not None and fault.kind == "fail":
            headers = (("Retry-After", fault.retry_after),) if fault.retry_after is not None else ()
            self._store(received_at, method, path, query, fault.status, nbytes, 0, "injected failure", False)
            return Response(fault.status, fault.body, TEXT, headers)

        out = self._collection.process(h, plan.max_body)
        accepted = 200 <= out.status < 300
        status, reply, ctype, error = out.status, out.body, out.content_type, out.error
        if accepted and fault is not None and fault.kind == "accept_fail":
            status, reply, ctype = fault.status, fault.body, fault.content_type
            error = f"injected failure after accepting {out.n_events} events"
        self._store(received_at, method, path, query, status, nbytes, out.n_events, error, accepted, out.events)
        return Response(status, reply, ctype, out.headers)

    def _protocol_error(self, h: Request, code: int, text: str) -> Response:
        """Record and answer a request the receiver does not serve at all (an unsupported method)."""
        self._store(time.time(), h.method, h.path, h.query, code, 0, 0, checks.redact(text), False)
        return Response(code, text.encode("utf-8", "replace"), TEXT, close=True)

    def _store(self, received_at: float, method: str, path: str, query: str, status: int, nbytes: int,
               n_events: int, error: str | None, accepted: bool, events: bytes | None = None) -> None:
        """Record the request, with its events if accepted, in one transaction; wake waiters."""
        safe_query = checks.redact(query)
        if method == "GET" and not nbytes:
            nbytes = len(query)  # real-time GETs carry their payload in the query string
        with self._lock:
            try:
                self._db.execute(_INSERT_REQUEST, (received_at, method, path, safe_query, status, nbytes, n_events,
                                                   error, 1 if accepted else 0, events if accepted else None))
                self._db.commit()
            except sqlite3.ProgrammingError:  # database closed by close() while a request was in flight
                logger.debug("receiver database closed; request not recorded")
                return
            if accepted and events is not None:
                self._n_events += n_events
                self._inserted.notify_all()
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s %s -> %d (%d events%s)", method, path, status, n_events,
                         f", {error}" if error else "")
