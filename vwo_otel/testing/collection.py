"""VWO's collection API as the stand-in receiver checks it: the routes of both wire formats
(the legacy ``POST /server-side/batch-events`` and its real-time GETs, FME's ``POST
/server-side/batch-events-v2`` and ``POST /events/t``, each after an optional collection prefix)
and what each request and event must hold (an event type's keys are its row in ``event_types``).
``Collection.process`` turns one request into an ``Outcome``: what to answer and what to store."""

from __future__ import annotations

import hmac
import json
import math
import re
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs

from .. import checks
from ..event_types import TYPES, EventType, FMEWire, Key, Kind, LegacyWire, row_for
from ..export.fme import BATCH_PATH as FME_BATCH_PATH
from ..export.fme import EVENTS_PATH as FME_EVENTS_PATH
from ..servers.framing import Problem, Request
from ..servers.otlp import DecodeError, TooLarge, UnsupportedEncoding, decompress

PAYLOAD_TOO_LARGE = "Payload size too large"
JSON = "application/json"
TEXT = "text/plain; charset=utf-8"

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


class _Invalid(Exception):
    """A request that fails validation; the message is the short text sent back to the client."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass
class Outcome:
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


def reason(status: int) -> str:
    """The standard reason phrase for status, or "" for an unregistered code."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


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


def wire_event(ev: dict[str, Any]) -> dict[str, Any]:
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


class Collection:
    """The checks of one stand-in: its account and sdk key (None: any) must match what clients send."""

    def __init__(self, account_id: int | None, sdk_key: bytes | None) -> None:
        self._account_id = account_id
        self._sdk_key = sdk_key

    def process(self, h: Request, max_body: int) -> Outcome:
        """Route and validate one request (bodies inflate to at most ``max_body`` bytes); never
        raises for client mistakes (they become 4xx outcomes)."""
        return self._process(h, h.method, h.path, h.query, h.body, h.problem, max_body)

    def _process(self, h: Request, method: str, path: str, query: str, body: bytes | None,
                 problem: Problem | None, max_body: int) -> Outcome:
        """Route and validate; never raises for client mistakes (they become 4xx outcomes)."""
        route = _ROUTE.fullmatch(path)
        if route is None:
            return Outcome(404, b"Not Found", TEXT, 0, "unknown path")
        kind, allowed, row = _PATHS[route.group(1)]
        if method != allowed:
            return Outcome(405, b"Method Not Allowed", TEXT, 0, f"{method} not allowed",
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
                return Outcome(200, b'{"status":"ok","events":1}', JSON, 1, None,
                                events=b'{"ev":[%s]}' % _encode(ev).encode())
            assert body is not None
            doc = self._json_body(h, body, max_body)
            if kind == "fme-event":
                return self._fme_event(h, params, doc)
            return self._batch(h, params, doc, body, fme=kind == "fme-batch")
        except _Invalid as exc:
            n = 1 if kind in ("realtime", "fme-event") else 0
            return Outcome(exc.status, exc.message.encode(), TEXT, n, exc.message)

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

    def _json_body(self, h: Request, body: bytes, max_body: int) -> Any:
        """A POST's JSON document: ``application/json``, gzip/deflate undone (bounded as the gateway's)."""
        ctype = h.headers.get("Content-Type", "")
        if ctype.split(";", 1)[0].strip().lower() != JSON:
            raise _Invalid("Content-Type must be application/json")
        try:
            data = decompress(body, h.headers.get("Content-Encoding"), max_body)
        except TooLarge:
            raise _Invalid(PAYLOAD_TOO_LARGE, 413) from None
        except UnsupportedEncoding as exc:
            raise _Invalid(str(exc), 415) from None
        except DecodeError as exc:
            raise _Invalid(str(exc)) from None
        try:
            return checks.parse_json("body", data)
        except ValueError as exc:
            raise _Invalid(str(exc)) from None

    def _batch(self, h: Request, params: dict[str, str], doc: Any, body: bytes, fme: bool) -> Outcome:
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
                return Outcome(400, f"ev[{i}]: {exc.message}".encode(), TEXT, len(evs), f"ev[{i}]: {exc.message}")
        stored = body if h.headers.get("Content-Encoding") in (None, "", "identity") else _encode({"ev": evs}).encode()
        return Outcome(200, b'{"status":"ok","events":%d}' % len(evs), JSON, len(evs), None,
                        events=stored if evs else None)

    def _fme_event(self, h: Request, params: dict[str, str], doc: Any) -> Outcome:
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
        return Outcome(200, b'{"status":"ok","events":1}', JSON, 1, None,
                        events=b'{"ev":[%s]}' % _encode(doc).encode())

    def _realtime(self, h: Request, row: EventType, params: dict[str, str]) -> dict[str, Any]:
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

