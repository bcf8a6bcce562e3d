"""HTTP/1.1 framing for the servers, by h11 (a spec-checked HTTP/1.1 state machine, no I/O):
request heads and bodies in, responses out. ``servers/httpd.py`` owns the sockets, deadlines and
threads; it feeds each connection's ``Framer`` the bytes it receives and writes the bytes the
``Framer`` returns. Apps see a parsed ``Request`` (method, target, path, query, ``headers.get``,
body, client address) and return a ``Response``.

What is refused, and how: a head h11 rejects (a bad request line, a space before a header's colon,
two different Content-Lengths, two Transfer-Encodings or one other than ``chunked``,
no ``Host`` in HTTP/1.1) or one with both ``Transfer-Encoding`` and ``Content-Length`` (RFC 9112
6.3: a request-smuggling vector) is ``BadRequest`` (400; 431 for a head over ``MAX_HEAD_BYTES``),
answered by the server, after which the connection closes. Problems with a body once its head was
taken are given to the app as ``Request.problem`` (see ``Problem``)."""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Literal
from urllib.parse import urlsplit

import h11

#: A request line and headers larger than this are refused with 431.
MAX_HEAD_BYTES = 64 * 1024
#: A refused body (over the app's limit) up to this size is read and dropped so the connection
#: stays usable for the next request; past it, the connection closes after the answer.
DRAIN_LIMIT = 64 * 1024 * 1024
TEXT = "text/plain; charset=utf-8"

#: Why a request body is unusable: ``no-length`` (a POST/PUT/PATCH with neither Content-Length nor
#: chunked; the body is then empty), ``bad-chunked`` (malformed chunked framing), ``too-large``
#: (over the app's limit: dropped), ``incomplete`` (the stream ended before the body did).
Problem = Literal["no-length", "bad-chunked", "too-large", "incomplete"]
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# after these the rest of the stream cannot be framed: the connection closes after the answer
_CLOSING: frozenset[Problem | None] = frozenset({"no-length", "bad-chunked", "incomplete"})

NEED, HEAD, DONE = "need", "head", "done"


class BadRequest(Exception):
    """A request head that is not one HTTP/1.1 request the servers take: ``status`` (400 or 431)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class Headers:
    """A request's headers: ``get(name)`` (case-insensitive; the first of repeated ones) and
    ``items()`` (lower-case names, in order). Values are latin-1 text."""

    __slots__ = ("_first", "_items")

    def __init__(self, items: Sequence[tuple[str, str]]) -> None:
        self._items = list(items)
        first: dict[str, str] = {}
        for name, value in self._items:
            first.setdefault(name, value)
        self._first = first

    def get(self, name: str, default: Any = None) -> Any:
        """The value of header ``name`` (the first one if repeated), else ``default``."""
        return self._first.get(name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._first

    def items(self) -> list[tuple[str, str]]:
        """Every header as (lower-case name, value), in the order received."""
        return list(self._items)

    def __repr__(self) -> str:  # names only: values may be secrets (Authorization)
        return f"Headers({[name for name, _ in self._items]})"


@dataclass(eq=False)
class Request:
    """One request as the server read it. ``body`` is None when unusable (``problem`` says why);
    ``nbytes`` is the body's size (as announced, or as far as it was read). ``context`` is the
    app's own: what its ``head`` decided, for its ``__call__``. ``server`` and ``connection`` (the
    socket) are there for apps that look at them (the loopback receiver's stalls)."""

    method: str
    target: str
    headers: Headers
    http_version: str = "1.1"
    client: Any = None
    server: Any = field(default=None, repr=False)
    connection: Any = field(default=None, repr=False)
    body: bytes | None = None
    nbytes: int = 0
    problem: Problem | None = None
    context: Any = field(default=None, repr=False)
    path: str = field(init=False)
    query: str = field(init=False)

    def __post_init__(self) -> None:
        split = urlsplit(self.target)
        self.path, self.query = split.path, split.query


@dataclass(frozen=True)
class Response:
    """An answer: status, body, its type, more headers; ``close`` ends the connection after it."""

    status: int
    body: bytes = b""
    content_type: str = TEXT
    headers: Sequence[tuple[str, str]] = ()
    close: bool = False


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


_FIELD_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+").fullmatch  # RFC 9110 token
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*").fullmatch  # no CR, LF or other controls


_date = ["", 0]


def http_date() -> str:
    """Now as an HTTP date, computed once a second."""
    now = int(time.time())
    if _date[1] != now:
        _date[0], _date[1] = email.utils.formatdate(now, usegmt=True), now
    return str(_date[0])


class Framer:
    """One connection's requests, parsed by h11: ``feed`` received bytes, ``advance`` to the next
    step (``NEED`` more bytes, ``HEAD``: ``request`` is in and waits for ``accept``, ``DONE``: the
    request is whole), ``respond``, then ``next_cycle`` for the next request on the connection.
    ``kept`` is the size of the body bytes held for the app (the server counts them in its budget)."""

    __slots__ = ("_h11", "request", "kept", "_parts", "_limit", "_received", "_chunked", "_eof", "_accepted")

    def __init__(self) -> None:
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self.request: Request | None = None
        self.kept = 0
        self._parts: list[bytes] = []
        self._limit = 0
        self._received = 0
        self._chunked = False
        self._eof = False
        self._accepted = False

    def feed(self, data: bytes) -> None:
        """Bytes received; ``b""``: the stream ended."""
        if data:
            self._h11.receive_data(data)
        elif not self._eof:
            self._eof = True
            self._h11.receive_data(b"")

    @property
    def pending(self) -> bool:
        """Whether bytes of a next request are received and not yet parsed."""
        return bool(self._h11.trailing_data[0])

    def advance(self, client: Any = None, server: Any = None, connection: Any = None) -> str:
        """Parse what was fed: ``NEED``, ``HEAD`` (a new ``request``; call ``accept``) or ``DONE``
        (``request`` is whole: its body or problem set). ``BadRequest`` for a head not taken."""
        if self.request is None:
            return self._head(client, server, connection)
        if not self._accepted:
            return HEAD
        return self._body()

    def _head(self, client: Any, server: Any, connection: Any) -> str:
        h = self._h11
        try:
            event = h.next_event()
        except h11.RemoteProtocolError as exc:
            raise BadRequest(431 if exc.error_status_hint == 431 else 400, str(exc)[:200]) from None
        if event is h11.NEED_DATA or event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
            return NEED
        assert isinstance(event, h11.Request), event
        items = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in event.headers]
        # h11 bounds what it buffers of an unfinished head; a head that arrived whole is measured here
        if len(event.target) + sum(len(name) + len(value) + 4 for name, value in items) > MAX_HEAD_BYTES:
            raise BadRequest(431, "request head too large")
        headers = Headers(items)
        te, cl = headers.get("transfer-encoding"), headers.get("content-length")
        if te is not None and cl is not None:
            raise BadRequest(400, "Transfer-Encoding and Content-Length together")
        method = event.method.decode("ascii")
        self.request = request = Request(method, event.target.decode("latin-1"), headers,
                                         event.http_version.decode("ascii"), client, server, connection)
        self._chunked = te is not None
        if cl is not None:
            request.nbytes = int(cl)
        elif te is None and method in _BODY_METHODS:
            request.problem = "no-length"
        self._accepted = False
        return HEAD

    def accept(self, limit: int) -> bytes:
        """Read the request's body, keeping up to ``limit`` bytes (past it, the body is dropped as
        it comes, up to ``DRAIN_LIMIT``); returns a ``100 Continue`` to send if the client waits for it."""
        request = self.request
        assert request is not None and not self._accepted
        self._accepted = True
        self._limit = limit
        self._parts, self.kept, self._received = [], 0, 0
        if request.nbytes > limit:
            request.problem = "too-large"
            if request.nbytes > DRAIN_LIMIT:
                return b""  # not read at all: answered, then the connection closes
        if self._h11.they_are_waiting_for_100_continue:
            return self._h11.send(h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue"))
        return b""

    def _body(self) -> str:
        request = self.request
        assert request is not None
        if request.problem == "too-large" and request.nbytes > DRAIN_LIMIT:
            return DONE
        h = self._h11
        while True:
            try:
                event = h.next_event()
            except h11.RemoteProtocolError:
                request.problem = "incomplete" if self._eof else "bad-chunked"
                return self._done()
            if event is h11.NEED_DATA:
                return NEED
            if type(event) is h11.Data:
                data = event.data
                self._received += len(data)
                if request.problem is None and self.kept + len(data) <= self._limit:
                    self._parts.append(data)
                    self.kept += len(data)
                else:
                    if request.problem is None:
                        request.problem = "too-large"
                    if self._parts:
                        self._parts, self.kept = [], 0
                    if self._received > DRAIN_LIMIT:
                        return self._done()
            elif type(event) is h11.EndOfMessage:
                return self._done()
            else:  # pragma: no cover - h11 gives nothing else in a body
                request.problem = "bad-chunked"
                return self._done()

    def _done(self) -> str:
        request = self.request
        assert request is not None
        if self._chunked or request.problem in _CLOSING:
            request.nbytes = self._received
        if request.problem is None:
            request.body = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
        elif request.problem == "no-length":
            request.body = b""
        self._parts = []
        return DONE

    def respond(self, response: Response, server_name: str) -> tuple[bytes, bool]:
        """The bytes of ``response`` to the current request, and whether the connection stays
        open after them (False after ``close``, a body not read to its end, or the client's wish:
        ``Connection: close``, HTTP/1.0). Written here rather than by h11, whose answer path costs
        as much as its parse (about 30 us a request); ``ValueError`` for a header h11 would refuse."""
        h, request, body = self._h11, self.request, response.body
        keep = (h.their_state is h11.DONE and not response.close
                and (request is None or request.problem not in _CLOSING))
        head = [f"HTTP/1.1 {response.status} {_reason(response.status)}\r\nServer: {server_name}\r\n"
                f"Date: {http_date()}\r\nContent-Type: {response.content_type}\r\nContent-Length: {len(body)}\r\n"]
        for name, value in response.headers:
            if not _FIELD_NAME(name) or not _FIELD_VALUE(value):
                raise ValueError(f"not an HTTP header: {name!r}")
            head.append(f"{name}: {value}\r\n")
        head.append("\r\n" if keep else "Connection: close\r\n\r\n")
        out = "".join(head).encode("latin-1")
        return (out + body if body and (request is None or request.method != "HEAD") else out), keep

    def refuse(self, exc: BadRequest, server_name: str) -> bytes:
        """The answer to a head ``advance`` refused (the connection closes after it)."""
        text = f"bad request: {exc.message}\n" if exc.status == 400 else "request head too large\n"
        data, _ = self.respond(Response(exc.status, text.encode("utf-8", "replace"), close=True), server_name)
        return data

    def next_cycle(self) -> None:
        """After a kept-alive answer: ready for the connection's next request (a fresh h11
        state machine, fed what the client sent after this request)."""
        rest, _ = self._h11.trailing_data
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        if rest:
            self._h11.receive_data(rest)
        self.request = None
        self._accepted = False
        self.kept = 0

    @property
    def unread(self) -> bool:
        """Whether the client may still be sending the current request (its body was not read to the end)."""
        return self._h11.their_state is h11.SEND_BODY or self._h11.their_state is h11.ERROR


class App:
    """What a ``Server`` serves. ``head`` runs on the selector thread as soon as a request's head
    is in (it must not wait); ``__call__`` runs on a worker with the whole request."""

    #: The ``Server`` header of every answer.
    server_name = "vwo-otel"

    def head(self, request: Request) -> Response | int | None:
        """A ``Response`` refuses the request before its body is read (the connection then
        closes); an int is the most body bytes to keep (None: the server's ``max_body_bytes``).
        May set ``request.context`` for ``__call__``."""
        return None

    def __call__(self, request: Request) -> Response | None:
        """The answer to a whole request (None: close the connection without one)."""
        raise NotImplementedError

    def overloaded(self, request: Request) -> Response:
        """The answer to a request whose body found no room in the body budget within ``BODY_WAIT``."""
        return Response(503, b"too many request bodies in progress; retry\n", headers=(("Retry-After", "1"),),
                        close=True)
