"""A local VWO-compatible collection endpoint on loopback, for the demo, tests and benchmarks.

It validates requests the way VWO's collection server is documented to, in both wire
formats: the legacy ``POST /server-side/batch-events`` and its real-time GETs, and FME's
``POST /server-side/batch-events-v2`` and ``POST /events/t`` (an optional collection prefix
before each); the keys each event type must carry are its row in ``event_types``. It stores
every request and every accepted event in SQLite, and can inject faults (errors, stalls,
dropped connections, "accepted but answered an error") so delivery guarantees can be tested
against something that behaves like a server. Bodies may be gzip or deflate encoded.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import math
import random
import re
import select
import socket
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs

from .. import checks
from ..event_types import TYPES, EventType, FMEWire, Key, Kind, LegacyWire, row_for
from ..export.fme import BATCH_PATH as FME_BATCH_PATH
from ..export.fme import EVENTS_PATH as FME_EVENTS_PATH
from ..servers.framing import Problem, Request, Response
from ..servers.httpd import LOOPBACK_MAX_WORKERS, App, Server
from ..servers.otlp import DecodeError, TooLarge, UnsupportedEncoding, decompress

__all__ = ["DEFAULT_MAX_BODY_BYTES", "PAYLOAD_TOO_LARGE", "Receiver"]

logger = logging.getLogger("vwo_otel.testing.receiver")

DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024
PAYLOAD_TOO_LARGE = "Payload size too large"

LEGACY_BATCH_PATH = "/server-side/batch-events"
#: What each path is: (route kind, its method, the row of a legacy real-time path).
_PATHS: dict[str, tuple[str, str, EventType | None]] = {
    LEGACY_BATCH_PATH: ("batch", "POST", None), FME_BATCH_PATH: ("fme-batch", "POST", None),
    FME_EVENTS_PATH: ("fme-event", "POST", None),
    **{row.wire.path: ("realtime", "GET", row) for row in TYPES.values() if isinstance(row.wire, LegacyWire)},
}
_ROUTE = re.compile(r"(?:/[^/]+)?(" + "|".join(re.escape(p) for p in sorted(_PATHS, key=len, reverse=True)) + ")")
_U_MATCH = re.compile(r"[0-9A-F]{32}").fullmatch
_VISID_MATCH = re.compile(r"[DJ]?[0-9A-F]{32}").fullmatch  # FME: an SDK's uuid, or a web visitor's
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_encode = json.JSONEncoder(separators=(",", ":")).encode
_JSON = "application/json"
_TEXT = "text/plain; charset=utf-8"

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

RetryAfter = int | str | None


class _Invalid(Exception):
    """A request that fails validation; the message is the short text sent back to the client."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass
class _Fault:
    """One scheduled fault: kind is "fail", "drop" or "accept_fail"; remaining counts requests left."""

    kind: str
    remaining: int
    status: int = 503
    retry_after: str | None = None
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"


@dataclass
class _Stall:
    """A response delay applied to the next ``remaining`` requests (None: until cleared)."""

    seconds: float
    remaining: int | None


@dataclass(frozen=True)
class _Plan:
    """How to treat one request, decided as it arrives: its fault (if any), how long to stall
    it (``release`` ends the stall early) and the body size limit in force."""

    fault: _Fault | None
    stall_seconds: float
    release: threading.Event
    max_body: int


@dataclass
class _Outcome:
    """What to answer and store for one request after validation."""

    status: int
    body: bytes
    content_type: str
    n_events: int
    error: str | None
    headers: tuple[tuple[str, str], ...] = ()
    #: The accepted events, stored with the request as ``{"ev": [...]}`` JSON: a batch's body as
    #: received (no per-event work), a real-time event normalised to the batch shape.
    events: bytes | None = None


def _reason(status: int) -> str:
    """The standard reason phrase for status, or "" for an unregistered code."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


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


def _reject_constant(name: str) -> Any:
    """Refuse NaN and Infinity, which are not JSON."""
    raise ValueError(f"{name} is not valid JSON")


def _is_int(value: Any) -> bool:
    """True for a JSON integer that fits SQLite's 64-bit column (bool excluded)."""
    return type(value) is int and _INT64_MIN <= value <= _INT64_MAX


def _is_number(value: Any) -> bool:
    """True for a finite JSON number (bool excluded)."""
    t = type(value)
    if t is int:
        return bool(_INT64_MIN <= value <= _INT64_MAX)
    return t is float and math.isfinite(value)


def _check_tags(text: Any, what: str) -> None:
    """Validate a custom-dimension payload: a JSON string of ``{"u": {key: "value"}}`` with one key."""
    if type(text) is not str:
        raise _Invalid(f"{what} must be a JSON string")
    try:
        doc = json.loads(text, parse_constant=_reject_constant)
    except ValueError:
        raise _Invalid(f"{what} is not valid JSON") from None
    inner = doc.get("u") if type(doc) is dict and len(doc) == 1 else None
    if type(inner) is not dict or len(inner) != 1:
        raise _Invalid(f'{what} must be {{"u": {{key: value}}}} with exactly one key')
    (value,) = inner.values()
    if type(value) is not str:
        raise _Invalid(f"{what}: the custom dimension value must be a string")


def _check_value(key: Key, value: Any, what: str) -> None:
    """A wire value of ``key``'s kind (raises ``_Invalid`` naming it)."""
    kind = key.kind
    if kind is Kind.ID:
        if not _is_int(value) or value < 0:
            raise _Invalid(f"{what} must be an integer")
    elif kind is Kind.ID_TEXT:  # VWO takes FME's variation as a number or as its text
        if not (_is_int(value) and value >= 0) and not (type(value) is str and value.isascii() and value.isdigit()):
            raise _Invalid(f"{what} must be an integer or its text")
    elif kind is Kind.NUMBER:
        if not _is_number(value):
            raise _Invalid(f"{what} must be a number when present")
    elif kind is Kind.TAGS:
        _check_tags(value, what)
    else:  # pragma: no cover - the table's wire keys are of the kinds above
        raise AssertionError(kind)


def _check_event(ev: Any) -> None:
    """Validate one legacy batch event (raises ``_Invalid`` naming the first bad field)."""
    if type(ev) is not dict:
        raise _Invalid("event must be a JSON object")
    et = ev.get("eT")
    row = TYPES.get(et) if type(et) is int else None
    if row is None or not isinstance(row.wire, LegacyWire):
        raise _Invalid(f"eT must be one of {', '.join(str(k) for k, r in TYPES.items() if not r.fme)}")
    u = ev.get("u")
    if type(u) is not str or not _U_MATCH(u):
        raise _Invalid("u must be 32 uppercase hex characters")
    if not _is_int(ev.get("sId")):
        raise _Invalid("sId must be an integer")
    if type(ev.get("visitor_ua")) is not str:
        raise _Invalid("visitor_ua must be a string")
    if type(ev.get("visitor_ip")) is not str:
        raise _Invalid("visitor_ip must be a string")
    for key in row.wire.batch:
        if key.wire in ev or not key.optional:
            _check_value(key, ev.get(key.wire), key.wire)


def _check_fme(item: Any, where: str) -> dict[str, Any]:
    """Validate one FME event ``{"d": {...}}`` (raises ``_Invalid`` naming the first bad field);
    returns its ``d``. Duplicate ``msgId`` s are accepted, as VWO does."""
    d = item.get("d") if type(item) is dict and len(item) == 1 else None
    if type(d) is not dict:
        raise _Invalid(f'{where} must be {{"d": {{...}}}}')
    if type(d.get("msgId")) is not str or not d["msgId"]:
        raise _Invalid(f"{where}.msgId must be a non-empty string")
    if type(d.get("visId")) is not str or not _VISID_MATCH(d["visId"]):
        raise _Invalid(f"{where}.visId must be 32 uppercase hex characters")
    if not _is_int(d.get("sessionId")):
        raise _Invalid(f"{where}.sessionId must be an integer (unix seconds)")
    for name in ("visitor_ua", "visitor_ip"):
        if name in d and type(d[name]) is not str:
            raise _Invalid(f"{where}.{name} must be a string")
    event = d.get("event")
    if type(event) is not dict or type(event.get("name")) is not str or not event["name"]:
        raise _Invalid(f"{where}.event.name must be a non-empty string")
    if not _is_int(event.get("time")):
        raise _Invalid(f"{where}.event.time must be an integer (unix ms)")
    props = event.get("props")
    if type(props) is not dict:
        raise _Invalid(f"{where}.event.props must be an object")
    row = row_for(event["name"])
    assert row is not None and isinstance(row.wire, FMEWire)
    for key in row.wire.props:
        if key.wire in props or not key.optional:
            _check_value(key, props.get(key.wire), f"{where}.event.props.{key.wire}")
    visitor = d.get("visitor")
    if visitor is not None and (type(visitor) is not dict or type(visitor.get("props")) is not dict):
        raise _Invalid(f"{where}.visitor must be {{\"props\": {{...}}}}")
    if any(f.slot == "visitor_props" and f.required for f in row.fields) and (visitor is None
                                                                             or len(visitor["props"]) < 2):
        raise _Invalid(f"{where}.visitor.props must hold the attributes of {event['name']}")
    return d


def _wire_event(ev: dict[str, Any]) -> dict[str, Any]:
    """A stored (valid) event as returned by ``Receiver.events``: an FME event as sent
    (``{"d": {...}}``); a legacy one with the fields of its type in a fixed order: eT, u, sId,
    then its row's batch keys (optional ones only if sent), visitor_ua, visitor_ip."""
    if "d" in ev:
        return ev
    row = TYPES[ev["eT"]]
    assert isinstance(row.wire, LegacyWire)
    out: dict[str, Any] = {"eT": ev["eT"], "u": ev["u"], "sId": ev["sId"]}
    for key in row.wire.batch:
        if key.wire in ev:
            out[key.wire] = ev[key.wire]
    out["visitor_ua"] = ev["visitor_ua"]
    out["visitor_ip"] = ev["visitor_ip"]
    return out


def _query_params(query: str) -> dict[str, str]:
    """First value of each query parameter (blank values kept)."""
    return {k: v[0] for k, v in parse_qs(query, keep_blank_values=True).items()}


def _param(params: dict[str, str], name: str) -> str:
    """A required, non-empty query parameter."""
    value = params.get(name)
    if not value:
        raise _Invalid(f"missing query parameter {name}")
    return value


def _int_param(params: dict[str, str], name: str) -> int:
    """A required integer query parameter."""
    value = _param(params, name)
    try:
        number = int(value)
    except ValueError:
        raise _Invalid(f"query parameter {name} must be an integer") from None
    if not _INT64_MIN <= number <= _INT64_MAX:
        raise _Invalid(f"query parameter {name} is out of range")
    return number


def _number_param(value: str, name: str) -> int | float:
    """A finite number from a query string value (int when it is written as one)."""
    try:
        return int(value)
    except ValueError:
        pass
    try:
        number = float(value)
    except ValueError:
        raise _Invalid(f"query parameter {name} must be a number") from None
    if not math.isfinite(number):
        raise _Invalid(f"query parameter {name} must be a finite number")
    return number


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
_Handler = Request


class _App(App):
    """Routes GET and POST to the receiver (501 for other methods); the body limit in force and
    the request's faults are decided as its head arrives, before its body is read."""

    server_name = "vwo-otel-receiver"

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver

    def head(self, request: Request) -> int:
        plan = request.context = self.receiver._take_fault()
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
        self._account_id = None if account_id is None else checks.account_id(account_id)
        self._sdk_key = None if sdk_key is None else checks.sdk_key(sdk_key).encode()
        checks.number("max_body_bytes", max_body_bytes, low=1, integer=True)
        self._port = checks.number("port", port, low=0, high=65535, integer=True)
        self._host = _loopback_host(host)
        self._db_path = db_path
        self._default_max_body = max_body_bytes
        self._max_body = max_body_bytes

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

        self._fault_lock = threading.Lock()
        self._faults: deque[_Fault] = deque()
        self._stall: _Stall | None = None
        self._release = threading.Event()
        self._random_rate = 0.0
        self._random_statuses: tuple[int, ...] = ()
        self._random_drop = False
        self._rng = random.Random()

        self._state_lock = threading.Lock()
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
            with self._fault_lock:
                self._release.set()
                self._release = threading.Event()
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
                d = _wire_event(ev)
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

    def fail_next(self, n: int, status: int = 503, retry_after: RetryAfter = None, body: str = "") -> None:
        """Answer the next n requests with status (and Retry-After if given), storing nothing."""
        self._schedule(_Fault("fail", self._count(n), self._status(status), self._retry_after(retry_after),
                              body.encode()))

    def drop_next(self, n: int) -> None:
        """Close the connection without any response for the next n requests (after reading the body)."""
        self._schedule(_Fault("drop", self._count(n)))

    def accept_then_fail_next(self, n: int, status: int = 504, body: str | None = None,
                              content_type: str = _TEXT) -> None:
        """Store the events of the next n valid requests but answer ``status`` with ``body`` (default
        its reason phrase) as ``content_type``: "accepted, client saw failure", or, with a 2xx, an
        answer a client may misread (``200`` with ``application/json`` that is not JSON)."""
        self._schedule(_Fault("accept_fail", self._count(n), self._status(status), None,
                              (_reason(status) if body is None else body).encode(), content_type))

    def set_max_body(self, nbytes: int) -> None:
        """Answer 413 for bodies above nbytes until clear_faults() (simulates a smaller server limit)."""
        checks.number("nbytes", nbytes, low=0, integer=True)
        with self._fault_lock:
            self._max_body = nbytes

    def stall(self, seconds: float, n: int | None = None) -> None:
        """Delay the next n requests (None: all, until cleared) by seconds; stop()/clear_faults() end it."""
        seconds = checks.seconds("seconds", seconds)
        with self._fault_lock:
            self._stall = _Stall(seconds, None if n is None else self._count(n))

    def random_faults(self, rate: float, *, seed: int | None = None,
                      statuses: Sequence[int] = (429, 500, 502, 503, 504), drop: bool = True) -> None:
        """Fail each request with probability rate: a random status from statuses or a dropped connection."""
        checks.number("rate", rate, low=0, high=1)
        codes = tuple(self._status(s) for s in statuses)
        if rate > 0 and not codes and not drop:
            raise ValueError("give statuses or drop=True")
        with self._fault_lock:
            self._random_rate = float(rate)
            self._random_statuses = codes
            self._random_drop = bool(drop)
            self._rng = random.Random(seed)

    def clear_faults(self) -> None:
        """Remove every fault: scheduled failures, stalls (ending current ones), random faults, body limit."""
        with self._fault_lock:
            self._faults.clear()
            self._stall = None
            self._release.set()
            self._release = threading.Event()
            self._random_rate = 0.0
            self._max_body = self._default_max_body

    @staticmethod
    def _count(n: int) -> int:
        """Validate a request count."""
        return int(checks.number("n", n, low=0, integer=True))

    @staticmethod
    def _status(status: int) -> int:
        """Validate an HTTP status code."""
        return int(checks.number("status", status, low=100, high=999, integer=True))

    @staticmethod
    def _retry_after(value: RetryAfter) -> str | None:
        """Retry-After header text: int seconds or an HTTP-date string, passed through."""
        if value is None:
            return None
        text = str(int(value)) if isinstance(value, (int, float)) and not isinstance(value, bool) else value
        if not isinstance(text, str) or not text or "\r" in text or "\n" in text:
            raise ValueError("retry_after must be int seconds or an HTTP-date string")
        return text

    def _schedule(self, fault: _Fault) -> None:
        """Queue a fault behind those already scheduled (they apply in call order)."""
        if fault.remaining:
            with self._fault_lock:
                self._faults.append(fault)

    def _take_fault(self) -> _Plan:
        """Decide how to treat this request: its fault, stall and body limit."""
        with self._fault_lock:
            seconds = 0.0
            stall = self._stall
            if stall is not None:
                seconds = stall.seconds
                if stall.remaining is not None:
                    stall.remaining -= 1
                    if stall.remaining <= 0:
                        self._stall = None
                    if stall.remaining < 0:
                        seconds = 0.0
            fault: _Fault | None = None
            if self._faults:
                fault = self._faults[0]
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.popleft()
            elif self._random_rate and self._rng.random() < self._random_rate:
                rng = self._rng
                n = len(self._random_statuses) + (1 if self._random_drop else 0)
                pick = rng.randrange(n)
                if pick == len(self._random_statuses):
                    fault = _Fault("drop", 1)
                else:
                    status = self._random_statuses[pick]
                    retry = "0" if status in (429, 503) and rng.random() < 0.5 else None
                    fault = _Fault("fail", 1, status, retry, _reason(status).encode())
            return _Plan(fault, seconds, self._release, self._max_body)

    # ----------------------------------------------------------------- serving

    def _serve(self, h: _Handler) -> Response | None:
        """Handle one request (its body read, its plan decided by ``_App.head``): apply faults,
        validate, store, answer (None: close the connection without an answer)."""
        received_at = time.time()
        method = h.method
        path, query = h.path, h.query

        plan = h.context
        fault = plan.fault
        nbytes = h.nbytes

        if plan.stall_seconds > 0:
            plan.release.wait(plan.stall_seconds)
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
            return Response(fault.status, fault.body, _TEXT, headers)

        out = self._process(h, method, path, query, h.body, h.problem)
        accepted = 200 <= out.status < 300
        status, reply, ctype, error = out.status, out.body, out.content_type, out.error
        if accepted and fault is not None and fault.kind == "accept_fail":
            status, reply, ctype = fault.status, fault.body, fault.content_type
            error = f"injected failure after accepting {out.n_events} events"
        self._store(received_at, method, path, query, status, nbytes, out.n_events, error, accepted, out.events)
        return Response(status, reply, ctype, out.headers)

    def _process(self, h: _Handler, method: str, path: str, query: str, body: bytes | None,
                 problem: Problem | None) -> _Outcome:
        """Route and validate; never raises for client mistakes (they become 4xx outcomes)."""
        route = _ROUTE.fullmatch(path)
        if route is None:
            return _Outcome(404, b"Not Found", _TEXT, 0, "unknown path")
        kind, allowed, row = _PATHS[route.group(1)]
        if method != allowed:
            return _Outcome(405, b"Method Not Allowed", _TEXT, 0, f"{method} not allowed",
                            (("Allow", allowed),))
        try:
            if problem == "too-large":
                raise _Invalid(PAYLOAD_TOO_LARGE, 413)
            if problem == "no-length":
                raise _Invalid("Content-Length required", 411)
            if problem is not None:
                raise _Invalid(f"malformed request body ({problem})")
            params = _query_params(query)
            if row is not None:
                ev = self._realtime(h, row, params)
                return _Outcome(200, b'{"status":"ok","events":1}', _JSON, 1, None,
                                events=b'{"ev":[%s]}' % _encode(ev).encode())
            assert body is not None
            doc = self._json_body(h, body)
            if kind == "fme-event":
                return self._fme_event(h, params, doc)
            return self._batch(h, params, doc, body, fme=kind == "fme-batch")
        except _Invalid as exc:
            n = 1 if kind in ("realtime", "fme-event") else 0
            return _Outcome(exc.status, exc.message.encode(), _TEXT, n, exc.message)

    def _check_account(self, value: str, name: str) -> None:
        """The account id must be numeric, and equal to the configured one if any (else 401)."""
        if not value.isascii() or not value.isdigit():
            raise _Invalid(f"query parameter {name} must be numeric")
        if self._account_id is not None and (len(value) > 19 or int(value) != self._account_id):
            raise _Invalid(f"query parameter {name} does not match the account id", 401)

    def _check_key(self, env: str, name: str) -> None:
        """The sdk key in the query must equal the configured one if any (else 401)."""
        if self._sdk_key is not None and not hmac.compare_digest(env.encode(), self._sdk_key):
            raise _Invalid(f"query parameter {name} does not match the sdk key", 401)

    def _json_body(self, h: _Handler, body: bytes) -> Any:
        """A POST's JSON document: ``application/json``, gzip/deflate undone (bounded as the gateway's)."""
        ctype = h.headers.get("Content-Type", "")
        if ctype.split(";", 1)[0].strip().lower() != _JSON:
            raise _Invalid("Content-Type must be application/json")
        try:
            data = decompress(body, h.headers.get("Content-Encoding"), self._max_body)
        except TooLarge:
            raise _Invalid(PAYLOAD_TOO_LARGE, 413) from None
        except UnsupportedEncoding as exc:
            raise _Invalid(str(exc), 415) from None
        except DecodeError as exc:
            raise _Invalid(str(exc)) from None
        try:
            return json.loads(data, parse_constant=_reject_constant)
        except ValueError:
            raise _Invalid("body is not valid JSON") from None

    def _batch(self, h: _Handler, params: dict[str, str], doc: Any, body: bytes, fme: bool) -> _Outcome:
        """Validate a batch POST (legacy or FME v2); what it stores is ``{"ev": [...]}``. An FME
        batch may be empty (the FME SDK's idle ticks send ``{"ev": []}``): accepted, nothing stored."""
        self._check_account(_param(params, "a"), "a")
        env = _param(params, "env")
        self._check_key(env, "env")
        auth = h.headers.get("Authorization")
        if auth is None:
            raise _Invalid("missing Authorization header", 401)
        if not hmac.compare_digest(auth.encode("utf-8", "surrogateescape"), env.encode()):
            raise _Invalid("Authorization header does not match env", 401)
        evs = doc.get("ev") if type(doc) is dict else None
        if type(evs) is not list or not (evs or fme):
            raise _Invalid('body must be {"ev": [...]} with at least one event')
        for i, ev in enumerate(evs):
            try:
                _check_fme(ev, "d") if fme else _check_event(ev)
            except _Invalid as exc:
                return _Outcome(400, f"ev[{i}]: {exc.message}".encode(), _TEXT, len(evs), f"ev[{i}]: {exc.message}")
        stored = body if h.headers.get("Content-Encoding") in (None, "", "identity") else _encode({"ev": evs}).encode()
        return _Outcome(200, b'{"status":"ok","events":%d}' % len(evs), _JSON, len(evs), None,
                        events=stored if evs else None)

    def _fme_event(self, h: _Handler, params: dict[str, str], doc: Any) -> _Outcome:
        """Validate FME's real-time ``POST /events/t``: the key in the query (no Authorization
        header), one bare ``{"d": {...}}`` whose event name is the query's ``en``."""
        self._check_account(_param(params, "a"), "a")
        self._check_key(_param(params, "env"), "env")
        for name in ("eTime", "random"):
            _number_param(_param(params, name), name)
        if params.get("p") != "FS":
            raise _Invalid("query parameter p must be FS")
        d = _check_fme(doc, "body")
        if _param(params, "en") != d["event"]["name"]:
            raise _Invalid("query parameter en does not match the event's name")
        return _Outcome(200, b'{"status":"ok","events":1}', _JSON, 1, None,
                        events=b'{"ev":[%s]}' % _encode(doc).encode())

    def _realtime(self, h: _Handler, row: EventType, params: dict[str, str]) -> dict[str, Any]:
        """Validate a legacy real-time GET and normalise it to a batch-shaped event."""
        wire = row.wire
        assert isinstance(wire, LegacyWire)
        self._check_account(_param(params, "account_id"), "account_id")
        self._check_key(_param(params, "env"), "env")
        u = _param(params, "u")
        if not _U_MATCH(u):
            raise _Invalid("u must be 32 uppercase hex characters")
        ev: dict[str, Any] = {"eT": row.key, "u": u, "sId": _int_param(params, "sId")}
        values: dict[tuple[str, ...], Any] = {}
        for key in wire.query:
            if key.optional and key.wire not in params:
                continue
            text = _param(params, key.wire)
            if key.kind is Kind.TAGS:
                _check_tags(text, key.wire)
                values[key.slots] = text
            elif key.kind is Kind.NUMBER:
                values[key.slots] = _number_param(text, key.wire)
            else:
                values[key.slots] = _int_param(params, key.wire)
        for name, expected in wire.constants.items():
            try:
                same = json.loads(_param(params, name)) == json.loads(expected)
            except ValueError:
                raise _Invalid(f"query parameter {name} is not valid JSON") from None
            if not same and type(json.loads(params[name])) is not dict:
                raise _Invalid(f"query parameter {name} must be a JSON object")
        for key in wire.batch:  # the batch event's keys, from the query keys of the same fields
            if key.slots in values:
                ev[key.wire] = values[key.slots]
        ua = h.headers.get("X-Device-User-Agent")
        ip = h.headers.get("VWO-X-Forwarded-For")
        ev["visitor_ua"] = params.get("visitor_ua", "") if ua is None else ua
        ev["visitor_ip"] = params.get("visitor_ip", "") if ip is None else ip
        return ev

    def _protocol_error(self, h: _Handler, code: int, text: str) -> Response:
        """Record and answer a request the receiver does not serve at all (an unsupported method)."""
        self._store(time.time(), h.method, h.path, h.query, code, 0, 0, checks.redact(text), False)
        return Response(code, text.encode("utf-8", "replace"), _TEXT, close=True)

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
