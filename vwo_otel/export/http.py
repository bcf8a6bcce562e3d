"""HTTP for the exporter. Straight to the server (the usual case): a small HTTP/1.1 client of
its own over kept-alive sockets (TLS verified against requests' CA bundle), cheap per request
because delivery shares the interpreter lock with the app; through the proxy the environment
names (read as requests reads it): urllib3's proxy managers. Either way a request without an
answer raises this module's ``TransportError``, ``timeout`` is a deadline for the whole request
(connect, send, answer), at most ``MAX_ANSWER_BYTES`` of an answer's body are read, and a
connection unused for ``IDLE_TIMEOUT`` seconds is closed."""

from __future__ import annotations

import errno
import functools
import logging
import math
import os
import re
import select
import socket
import ssl
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol
from urllib.parse import urlsplit

import urllib3
from requests.utils import (
    DEFAULT_CA_BUNDLE_PATH,
    extract_zipped_paths,
    get_auth_from_url,
    get_environ_proxies,
    prepend_scheme_if_needed,
    requote_uri,
    select_proxy,
)
from urllib3 import exceptions as u3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from ..checks import redact


class _HideKeyInURLs(logging.Filter):
    """urllib3 logs each request line at DEBUG, and VWO's protocol puts the sdk key in the
    URL (``env=``): redact it so turning on DEBUG never leaks the key."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(a, str) and "env=" in a for a in record.args):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        return True


for _name in ("urllib3.connectionpool", "urllib3.connection"):
    logging.getLogger(_name).addFilter(_HideKeyInURLs())


logger = logging.getLogger("vwo_otel")

#: Connections kept per host (more than the delivery threads ever use at once).
MAX_IDLE = 64
#: Seconds a kept-alive connection may stay unused before it is closed. Servers and load
#: balancers drop idle connections after a minute or so, and a request sent on one they are
#: dropping fails; a burst's extra connections are closed this long after it ends.
IDLE_TIMEOUT = 5.0
#: A socket's timeout is left as it is while it differs from the time its request has left by at
#: most this many seconds (see ``_Deadline``): a request may end this much after its deadline.
TIMEOUT_SLACK = 0.01
#: The most bytes of an answer's status line and headers read (longer: a ``ConnectionError``).
MAX_HEAD_BYTES = 64 * 1024
#: The most of an answer's body read: VWO answers a few bytes; a longer body is cut here (its
#: rest discarded with the connection), so a hostile or broken server cannot fill memory.
MAX_ANSWER_BYTES = 64 * 1024
#: How long the proxy / CA-bundle environment read for a host is reused (requests reads all of
#: ``os.environ`` on every request); a changed variable is picked up within this many seconds.
ENV_TTL = 1.0


class TransportError(Exception):
    """A request that got no HTTP answer. ``retryable``: whether sending the same request again
    could succeed. The subclasses keep the names requests gives these failures, as the
    ``error.type`` of the request metrics and the start of a ``NetworkError`` message show them."""

    retryable = True


class ConnectionError(TransportError):  # noqa: A001 (requests' name, see TransportError)
    """No connection, or it broke: refused, reset, closed early, DNS, a proxy failing."""


class ConnectTimeout(TransportError):
    """No connection within the timeout."""


class ReadTimeout(TransportError):
    """Connected, but no complete answer within the timeout."""


class SSLError(TransportError):
    """The TLS handshake failed (e.g. a certificate the CA bundle does not vouch for)."""


class InvalidRequest(TransportError):
    """No attempt can send this request, so it is never retried."""

    retryable = False


class InvalidURL(InvalidRequest):
    """The URL cannot be requested (e.g. a port out of range)."""


class InvalidHeader(InvalidRequest):
    """A header value cannot be sent (e.g. non-Latin-1 text)."""


class Headers(Protocol):
    """Response headers: ``get`` is case-insensitive."""

    def get(self, name: str, /) -> str | None: ...


class Reply(NamedTuple):
    """What the exporter needs of an HTTP answer."""

    status_code: int
    text: str
    headers: Headers


# -- the whole-request deadline ------------------------------------------------------------
_request = threading.local()  # ``deadline``: when the request this thread is making must end


class _Deadline:
    """A socket whose every blocking call ends by the deadline of the request its thread is
    making: the timeout shrinks to the time left before each read, write and TLS handshake step,
    so a server trickling bytes cannot stretch a request.

    Setting a socket's timeout is a system call that lets other threads take the interpreter
    lock (a thread switch while the app's threads are busy), so it is set only when it is off by
    more than ``TIMEOUT_SLACK``: a request's usual calls (one send, one receive) set none."""

    def _shrink(self) -> None:
        deadline = getattr(_request, "deadline", math.inf)
        if deadline != math.inf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("timed out (the request's deadline passed)")
            now = self.gettimeout()  # type: ignore[attr-defined]
            if now is None or abs(now - left) > TIMEOUT_SLACK:
                super().settimeout(left)  # type: ignore[misc]

    def settimeout(self, value: float | None) -> None:
        """urllib3 sets its connect / read timeout before sending and reading: while a request's
        deadline is in force, ``_shrink`` sets the timeout instead."""
        if getattr(_request, "deadline", math.inf) == math.inf:
            super().settimeout(value)  # type: ignore[misc]

    def recv_into(self, *args: Any) -> int:
        self._shrink()
        return super().recv_into(*args)  # type: ignore[misc, no-any-return]

    def recv(self, *args: Any) -> bytes:
        self._shrink()
        return super().recv(*args)  # type: ignore[misc, no-any-return]

    def send(self, *args: Any) -> int:
        self._shrink()
        return super().send(*args)  # type: ignore[misc, no-any-return]

    def sendall(self, data: Any, *args: Any) -> None:
        view = memoryview(data).cast("B")
        while view:  # one send per step: each step gets only the time left
            view = view[self.send(view, *args):]


class _DeadlineSocket(_Deadline, socket.socket):
    pass


class _DeadlineSSLSocket(_Deadline, ssl.SSLSocket):
    def do_handshake(self, block: bool = False) -> None:
        self._shrink()
        super().do_handshake(block)


class _DeadlineConnection:
    """urllib3's connection, over a ``_DeadlineSocket`` (TLS wraps it in a ``_DeadlineSSLSocket``
    through the pool's SSL context, see ``_tls_context``)."""

    def _new_conn(self) -> socket.socket:
        plain: socket.socket = super()._new_conn()  # type: ignore[misc]
        return _DeadlineSocket(plain.family, plain.type, plain.proto, fileno=plain.detach())


class _HTTPConnection(_DeadlineConnection, HTTPConnection):
    pass


class _HTTPSConnection(_DeadlineConnection, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_POOLS = {"http": _HTTPPool, "https": _HTTPSPool}
#: One try, no redirects: the exporter decides what is retried.
_ONE_TRY = urllib3.Retry(total=False, redirect=False)


def _tls_context(verify: bool | str) -> ssl.SSLContext:
    """The TLS settings requests would use for ``verify`` (True: its CA bundle; a path: that
    file or directory; False: no verification), over deadline sockets."""
    if verify is False:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif verify is True:
        context = ssl.create_default_context(cafile=extract_zipped_paths(DEFAULT_CA_BUNDLE_PATH))  # type: ignore[no-untyped-call]
    elif os.path.isdir(verify):
        context = ssl.create_default_context(capath=verify)
    else:
        context = ssl.create_default_context(cafile=verify)
    context.sslsocket_class = _DeadlineSSLSocket
    return context


# -- where a request goes --------------------------------------------------------------------
@dataclass(frozen=True)
class _Route:
    """What the environment says about requests to one scheme://host: the proxy (None: direct)
    and, for https, the TLS verification (requests' rule: ``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE``,
    its bundle); None for plain http, which never loads a CA bundle."""

    proxy: str | None
    verify: bool | str | None


@dataclass(frozen=True)
class _CachedRoute:
    route: _Route
    expires: float


def _route_from_env(url: str) -> _Route:
    """``url``'s route, read from the environment as requests reads it (HTTP(S)_PROXY, ALL_PROXY,
    NO_PROXY, the CA bundle variables)."""
    proxy = select_proxy(url, get_environ_proxies(url))  # type: ignore[no-untyped-call]
    verify = (os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
              if url[:6].lower() == "https:" else None)
    return _Route(prepend_scheme_if_needed(proxy, "http") if proxy else None, verify)  # type: ignore[no-untyped-call]


def _proxy_manager(route: _Route) -> urllib3.PoolManager:
    """urllib3's manager for a route through a proxy: pools of up to ``MAX_IDLE`` kept-alive
    connections per host, TCP_NODELAY (no Nagle stall on the body), no retries or redirects of
    its own (the exporter decides)."""
    assert route.proxy is not None
    settings: dict[str, Any] = {"maxsize": MAX_IDLE, "retries": _ONE_TRY,
                                "socket_options": [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]}
    if route.verify is not None:
        settings["ssl_context"] = _tls_context(route.verify)
        settings["cert_reqs"] = ssl.CERT_NONE if route.verify is False else ssl.CERT_REQUIRED
    if route.proxy.lower().startswith("socks"):
        try:  # as requests: SOCKS needs PySocks
            from urllib3.contrib.socks import SOCKSProxyManager
        except ImportError:
            raise InvalidURL("Missing dependencies for SOCKS support (pip install PySocks)") from None
        return SOCKSProxyManager(route.proxy, **settings)
    user, password = get_auth_from_url(route.proxy)  # type: ignore[no-untyped-call]
    auth = urllib3.make_headers(proxy_basic_auth=f"{user}:{password}") if user else None
    manager = urllib3.ProxyManager(route.proxy, proxy_headers=auth, **settings)
    manager.pool_classes_by_scheme = _POOLS  # type: ignore[assignment]
    return manager


# -- urllib3's failures as TransportErrors -----------------------------------------------------
def _cause(exc: BaseException) -> BaseException | None:
    """The error urllib3 wrapped in ``exc`` (a socket error under a NewConnectionError,
    ProtocolError or ProxyError), if any."""
    if isinstance(exc, u3.ProxyError):
        return exc.original_error
    if isinstance(exc, u3.ProtocolError) and len(exc.args) > 1 and isinstance(exc.args[1], BaseException):
        return exc.args[1]
    if isinstance(exc, u3.NewConnectionError):
        return exc.__cause__
    return None


def _kind(exc: BaseException) -> type[TransportError] | None:
    """Which ``TransportError`` ``exc`` (raised by urllib3, ssl, a socket) is; None for anything else."""
    cause = _cause(exc)
    if isinstance(exc, u3.ProxyError):
        slow = isinstance(cause, u3.ConnectTimeoutError) and not isinstance(cause, u3.NewConnectionError)
        return ConnectTimeout if slow else ConnectionError
    if isinstance(exc, u3.NewConnectionError):  # before ConnectTimeoutError, its base class
        return ConnectionError
    if isinstance(exc, u3.ConnectTimeoutError):
        return ConnectTimeout
    if isinstance(exc, u3.ReadTimeoutError) or isinstance(cause, TimeoutError):  # a send past the deadline
        return ReadTimeout
    if isinstance(exc, (u3.SSLError, ssl.SSLError)):
        return SSLError
    if isinstance(exc, u3.LocationValueError):  # a bad port, no host, an unknown scheme
        return InvalidURL
    if isinstance(exc, (u3.HTTPError, OSError)):  # ProtocolError (reset, closed early), DecodeError, ...
        return ConnectionError
    if isinstance(exc, ValueError):  # a header value http.client cannot send (UnicodeEncodeError too)
        return InvalidHeader
    return None


def _transport_error(exc: Exception) -> TransportError | None:
    """``exc`` as a ``TransportError`` named after what failed (the socket error under urllib3's
    wrapper); None for anything else (a bug: it propagates as it is)."""
    kind = _kind(exc)
    if kind is None:
        return None
    cause = _cause(exc)
    shown = f"{type(cause).__name__}: {cause}" if cause is not None else None
    if isinstance(exc, u3.ProxyError):
        text = f"ProxyError: {shown or exc}"
    elif shown is not None:
        text = shown
    else:
        name = type(exc).__name__
        text = str(exc) if name == kind.__name__ else f"{name}: {exc}"
    return kind(text)


def _read_answer(response: urllib3.BaseHTTPResponse) -> bytes:
    """At most ``MAX_ANSWER_BYTES`` of the body. Once a 2xx status has arrived the request has
    succeeded: a body cut short after it (a reset, a bad length) must not turn it into a failure
    that is retried and delivered twice."""
    try:
        return response.read(MAX_ANSWER_BYTES)
    except (urllib3.exceptions.HTTPError, OSError):
        if 200 <= response.status < 300:
            return b""
        raise


# -- straight to the server: a small HTTP/1.1 client ---------------------------------------------
class _Headers(dict[str, str]):
    """An answer's headers by lower-cased name (the first of repeated ones)."""

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        return dict.get(self, name.lower(), default)


class _Target(NamedTuple):
    """Where a URL's request goes straight to, and its request line's target."""

    scheme: str
    host: str
    port: int
    host_header: str
    target: str


@functools.lru_cache(maxsize=256)
def _target(url: str) -> _Target:
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
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return _Target(scheme, host, port or default, shown if port in (None, default) else f"{shown}:{port}", target)


def _head(method: str, where: _Target, headers: dict[str, str], body: bytes | None) -> bytes:
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


def _dropped(sock: socket.socket) -> bool:
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


class _Answer(NamedTuple):
    """An answer as read, and whether its connection can carry the next request."""

    reply: Reply
    reusable: bool  # the whole answer was read and the server keeps the connection open


class _AnswerReader:
    """Reads one HTTP/1.x answer from a socket: its status line and headers (at most
    ``MAX_HEAD_BYTES``), then at most ``MAX_ANSWER_BYTES`` of its body (Content-Length, chunked,
    or up to the connection's end)."""

    def __init__(self, sock: socket.socket) -> None:
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

    def head(self) -> tuple[str, int, _Headers]:
        """The status line and headers, after any 1xx interim answers."""
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
            headers = _Headers()
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if sep and name and name[0] not in " \t":
                    headers.setdefault(name.strip().lower(), value.strip())
            return version, status, headers

    def body(self, method: str, status: int, headers: _Headers) -> tuple[bytes, bool]:
        """At most ``MAX_ANSWER_BYTES`` of the body, and whether all of it was read."""
        if method == "HEAD" or status in (204, 304):
            return b"", True
        if status < 200:  # 101: the connection now speaks another protocol
            return b"", False
        if "chunked" in headers.get("transfer-encoding", "").lower():
            if headers.get("content-length") is not None:  # RFC 9112 6.3: framing in doubt
                data, _ = self.body(method, status, _Headers((k, v) for k, v in headers.items()
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
        return self._take(MAX_ANSWER_BYTES), False  # no length: the body ends with the connection

    def read(self, method: str) -> _Answer:
        """The whole answer. Once a 2xx status has arrived the request has succeeded: a body
        cut short after it (a reset, a bad length, the deadline) must not turn it into a failure
        that is retried and delivered twice."""
        version, status, headers = self.head()
        try:
            data, complete = self.body(method, status, headers)
        except (TransportError, OSError):
            if 200 <= status < 300:
                return _Answer(Reply(status, "", headers), False)
            raise
        tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        keep = (version == "HTTP/1.1" and "close" not in tokens) or (version == "HTTP/1.0" and "keep-alive" in tokens)
        return _Answer(Reply(status, data.decode("utf-8", "replace"), headers), complete and keep)


class _Link:
    """A kept-alive connection straight to a server; ``era``: the ``Transport.close`` it belongs to."""

    __slots__ = ("sock", "era", "idle_since")

    def __init__(self, sock: socket.socket, era: int) -> None:
        self.sock = sock
        self.era = era
        self.idle_since = 0.0

    def close(self) -> None:
        """Close the socket (the server sees the connection end)."""
        try:
            self.sock.close()
        except OSError:  # pragma: no cover - closing never matters more than the request
            pass


_SENT_BEFORE_ANSWER = (errno.EPIPE, errno.ECONNRESET, getattr(errno, "EPROTOTYPE", errno.EPIPE))


def _open(host: str, port: int, timeout: float) -> socket.socket:
    """A TCP connection to ``host``, trying its addresses in turn as ``socket.create_connection``
    does, but each attempt gets only what is left of the request's deadline (not the whole
    ``timeout`` again per address)."""
    deadline = min(_request.deadline, time.monotonic() + timeout)
    error: OSError | None = None
    for family, kind, proto, _, address in socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(left)
            sock.connect(address)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise error if error is not None else TimeoutError("timed out (the request's deadline passed while connecting)")


def _failure(exc: BaseException, connecting: bool) -> TransportError:
    """A socket, TLS or certificate failure as the ``TransportError`` requests would name."""
    if isinstance(exc, TransportError):
        return exc
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, TimeoutError):
        return ConnectTimeout(text) if connecting else ReadTimeout(text)
    if isinstance(exc, (ssl.SSLError, ssl.CertificateError)):
        return SSLError(text)
    return ConnectionError(text)


_TRANSPORTS: weakref.WeakSet[Transport] = weakref.WeakSet()
_INHERITED: list[Any] = []  # a forked child's copies of its parent's connections, never closed


def _transports_after_fork() -> None:
    for transport in list(_TRANSPORTS):
        transport._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_transports_after_fork)


class Transport:
    """Sends one request and returns its ``Reply``; a request without an answer raises ``TransportError``.

    Straight to the server, requests go over this module's kept-alive sockets (LIFO per host, so
    connections a burst needed go idle first; each unused for ``IDLE_TIMEOUT`` is closed by a
    thread that runs only while some are idle), TLS verified against requests' CA bundle (or
    ``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE``). Through a proxy they go over urllib3's proxy
    managers (one per proxy, cleared after ``IDLE_TIMEOUT`` unused); through a SOCKS proxy each
    socket operation is bounded by the timeout, not the request as a whole.
    """

    def __init__(self) -> None:
        self._routes: dict[tuple[str, str], _CachedRoute] = {}
        self._managers: dict[_Route, urllib3.PoolManager] = {}
        self._lock = threading.Lock()
        self._idle: dict[tuple[str, str, int, bool | str | None], list[_Link]] = {}  # by scheme, host, port, verify
        self._contexts: dict[bool | str, ssl.SSLContext] = {}
        self._proxied: dict[_Route, list[float]] = {}  # [requests in flight, last used] per proxy manager
        self._era = 0  # bumped by close(): connections of an earlier era close when their request ends
        self._reaper: threading.Thread | None = None
        self._wake = threading.Condition(self._lock)
        _TRANSPORTS.add(self)

    def _after_fork(self) -> None:
        """In a forked child: new lock and no reaper (the parent's threads are gone, a lock they
        held stays held), and none of the parent's idle sockets reused, so the child never writes
        on the parent's connections. They are kept referenced, never closed or collected here
        (as ``VWOExporter.after_fork`` keeps the parent's transport): the child touches no fd
        the parent's side of the fork handed it."""
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._reaper = None
        self._era += 1  # connections in use at the fork (none in the child) are not kept
        _INHERITED.append((self._idle, self._managers))
        self._idle, self._managers, self._proxied = {}, {}, {}

    def request(self, method: str, url: str, body: bytes | None, headers: dict[str, str],
                timeout: float) -> Reply:
        _request.deadline = time.monotonic() + timeout
        try:
            route = self._route_for(url)
            if route.proxy is None:
                return self._direct(method, url, body, headers, timeout, route.verify)
            return self._through_proxy(route, method, url, body, headers, timeout)
        finally:
            _request.deadline = math.inf

    def close(self) -> None:
        """Close the idle connections; those in use close when their request ends."""
        with self._lock:
            self._era += 1
            links = [link for idle in self._idle.values() for link in idle]
            self._idle.clear()
            managers, self._managers = list(self._managers.values()), {}
            self._proxied.clear()
            self._wake.notify_all()
        for link in links:
            link.close()
        for manager in managers:
            manager.clear()

    # -- straight to the server ----------------------------------------------------------------
    def _direct(self, method: str, url: str, body: bytes | None, headers: dict[str, str], timeout: float,
                verify: bool | str | None) -> Reply:
        """One request over a kept-alive connection to the server (a new one if none is idle)."""
        where = _target(url)
        head = _head(method, where, headers, body)
        key = (where.scheme, where.host, where.port, verify)
        link = self._take(key)
        if link is None:
            link = self._connect(where, timeout, verify)
        answer = None
        try:
            answer = self._exchange(link.sock, method, head, body)
            return answer.reply
        finally:
            self._give_back(key, link, answer is not None and answer.reusable)

    def _take(self, key: tuple[str, str, int, bool | str | None]) -> _Link | None:
        """The most recently used idle connection for ``key`` the server has not closed, if any."""
        while True:
            with self._lock:
                idle = self._idle.get(key)
                if not idle:
                    return None
                link = idle.pop()
            if not _dropped(link.sock):
                return link
            link.close()

    def _give_back(self, key: tuple[str, str, int, bool | str | None], link: _Link, reusable: bool) -> None:
        """Keep ``link`` for the next request (its idle time starts now), or close it."""
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if reusable and link.era == self._era and len(idle) < MAX_IDLE and self._watch():
                link.idle_since = time.monotonic()
                idle.append(link)
                return
        link.close()

    def _connect(self, where: _Target, timeout: float, verify: bool | str | None) -> _Link:
        """A new connection (and TLS handshake) within the request's deadline."""
        with self._lock:
            era = self._era
        try:
            context = None if where.scheme == "http" else self._context(True if verify is None else verify)
            plain = _open(where.host, where.port, timeout)
            sock: socket.socket = _DeadlineSocket(plain.family, plain.type, plain.proto, fileno=plain.detach())
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if context is not None:
                    sock = context.wrap_socket(sock, server_hostname=where.host)
            except BaseException:
                sock.close()
                raise
        except Exception as exc:  # refused, unreachable, DNS, the handshake, an unreadable CA bundle
            raise _failure(exc, connecting=True) from None
        return _Link(sock, era)

    def _context(self, verify: bool | str) -> ssl.SSLContext:
        """The TLS context for ``verify``, made once (an unreadable CA bundle raises each time)."""
        context = self._contexts.get(verify)
        if context is None:
            context = self._contexts[verify] = _tls_context(verify)
        return context

    @staticmethod
    def _exchange(sock: socket.socket, method: str, head: bytes, body: bytes | None) -> _Answer:
        """Send the request (head and body in one write) and read its answer. A server may answer
        (413) and close before it read the whole body: that answer is returned."""
        reader = _AnswerReader(sock)
        try:
            try:
                if body is not None and len(body) > 65536:  # a large body is not copied to join it
                    sock.sendall(head)
                    sock.sendall(body)
                else:
                    sock.sendall(head + body if body else head)
            except OSError as exc:
                if exc.errno not in _SENT_BEFORE_ANSWER:
                    raise
                try:
                    return reader.read(method)._replace(reusable=False)
                except Exception:
                    raise exc from None
            return reader.read(method)
        except Exception as exc:
            raise _failure(exc, connecting=False) from None

    # -- through a proxy: urllib3 ----------------------------------------------------------------
    def _through_proxy(self, route: _Route, method: str, url: str, body: bytes | None, headers: dict[str, str],
                       timeout: float) -> Reply:
        response = None
        use = None
        try:
            manager = self._manager_for(route)
            with self._lock:
                use = self._proxied.setdefault(route, [0, 0.0])
                use[0] += 1
            # as requests sends it: characters a URL may not carry (a space, non-ASCII) percent-encoded
            response = manager.urlopen(
                method, requote_uri(url), body=body, headers=headers, retries=_ONE_TRY, redirect=False,
                timeout=urllib3.Timeout(connect=timeout, read=timeout), preload_content=False)
            data = _read_answer(response)
        except Exception as exc:  # also a header http.client cannot encode, an unreadable CA bundle
            error = _transport_error(exc)
            if error is None:
                raise
            raise error from None
        finally:
            if response is not None:
                if not response.closed:  # a body longer than the cap, or a failed read: not reusable
                    response.close()
                response.release_conn()
            if use is not None:
                with self._lock:
                    use[0] -= 1
                    use[1] = time.monotonic()
                    self._watch()
        return Reply(response.status, data.decode("utf-8", "replace"), response.headers)

    def _route_for(self, url: str) -> _Route:
        """``url``'s route; the environment is read at most once per ``ENV_TTL`` per scheme://host."""
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc)
        now = time.monotonic()
        cached = self._routes.get(key)
        if cached is None or now >= cached.expires:
            cached = _CachedRoute(_route_from_env(url), now + ENV_TTL)
            self._routes[key] = cached
        return cached.route

    def _manager_for(self, route: _Route) -> urllib3.PoolManager:
        """The proxy manager for ``route``, made on first use."""
        manager = self._managers.get(route)
        if manager is None:
            with self._lock:
                manager = self._managers.get(route)
                if manager is None:
                    manager = self._managers[route] = _proxy_manager(route)
        return manager

    # -- closing idle connections ------------------------------------------------------------------
    def _watch(self) -> bool:
        """Lock held, something goes idle: make sure the reaper runs. False if no thread can start
        (the interpreter is exiting): the connection is closed rather than kept unwatched."""
        if self._reaper is None or not self._reaper.is_alive():
            reaper = threading.Thread(target=self._reap, name="vwo_otel-idle", daemon=True)
            try:
                reaper.start()
            except RuntimeError:  # "can't create new thread at interpreter shutdown" (3.12+)
                return False
            self._reaper = reaper
        return True

    def _reap(self) -> None:
        """Close each connection unused for ``IDLE_TIMEOUT`` (and each proxy manager's pools),
        sleeping until the next is due; ends when nothing is idle."""
        while True:
            now = time.monotonic()
            expired: list[_Link] = []
            stale: list[urllib3.PoolManager] = []
            due = math.inf
            with self._lock:
                for key, idle in list(self._idle.items()):
                    keep = []
                    for link in idle:
                        if now - link.idle_since >= IDLE_TIMEOUT:
                            expired.append(link)
                        else:
                            keep.append(link)
                            due = min(due, link.idle_since + IDLE_TIMEOUT)
                    if keep:
                        self._idle[key] = keep
                    else:
                        del self._idle[key]
                for route, use in list(self._proxied.items()):
                    if use[0]:
                        continue  # in use: it goes idle (and is watched again) when its requests end
                    if now - use[1] >= IDLE_TIMEOUT:
                        del self._proxied[route]
                        if route in self._managers:
                            stale.append(self._managers[route])
                    else:
                        due = min(due, use[1] + IDLE_TIMEOUT)
                if due == math.inf and not expired and not stale:
                    self._reaper = None
                    return
            for link in expired:
                link.close()
            for manager in stale:
                manager.clear()  # its pools' idle connections close; new ones open on the next request
            if expired or stale:
                logger.debug("vwo_otel: closed %d connection(s) unused for %.0f s", len(expired) + len(stale),
                             IDLE_TIMEOUT)
            if due != math.inf:
                with self._lock:
                    self._wake.wait(max(0.0, due - time.monotonic()))
