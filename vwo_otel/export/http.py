"""HTTP for the exporter: urllib3's connection pools (keep-alive, TLS verified against requests'
CA bundle, the proxy the environment names, read as requests reads it). A request without an
answer raises this module's ``TransportError``. ``timeout`` is a deadline for the whole request
(connect, send, answer), and at most ``MAX_ANSWER_BYTES`` of an answer's body are read."""

from __future__ import annotations

import logging
import math
import os
import socket
import ssl
import threading
import time
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


#: Connections kept per host (more than the delivery threads ever use at once).
MAX_IDLE = 64
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
    so a server trickling bytes cannot stretch a request."""

    def _shrink(self) -> None:
        deadline = getattr(_request, "deadline", math.inf)
        if deadline != math.inf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("timed out (the request's deadline passed)")
            self.settimeout(left)  # type: ignore[attr-defined]

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


def _manager(route: _Route) -> urllib3.PoolManager:
    """A pool manager for ``route``: pools of up to ``MAX_IDLE`` kept-alive connections per host,
    TCP_NODELAY (no Nagle stall on the body), no retries or redirects of its own (the exporter decides)."""
    settings: dict[str, Any] = {"maxsize": MAX_IDLE, "retries": _ONE_TRY,
                                "socket_options": [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]}
    if route.verify is not None:
        settings["ssl_context"] = _tls_context(route.verify)
        settings["cert_reqs"] = ssl.CERT_NONE if route.verify is False else ssl.CERT_REQUIRED
    if route.proxy is None:
        manager = urllib3.PoolManager(**settings)
    elif route.proxy.lower().startswith("socks"):
        try:  # as requests: SOCKS needs PySocks
            from urllib3.contrib.socks import SOCKSProxyManager
        except ImportError:
            raise InvalidURL("Missing dependencies for SOCKS support (pip install PySocks)") from None
        return SOCKSProxyManager(route.proxy, **settings)
    else:
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


class Transport:
    """Sends one request and returns its ``Reply``; a request without an answer raises ``TransportError``.

    Requests go over urllib3's pools (one manager per route: direct or through the proxy the
    environment names), verified against requests' CA bundle (or ``REQUESTS_CA_BUNDLE`` /
    ``CURL_CA_BUNDLE``). Through a SOCKS proxy each socket operation is bounded by the timeout,
    not the request as a whole.
    """

    def __init__(self) -> None:
        self._routes: dict[tuple[str, str], _CachedRoute] = {}
        self._managers: dict[_Route, urllib3.PoolManager] = {}
        self._lock = threading.Lock()

    def request(self, method: str, url: str, body: bytes | None, headers: dict[str, str],
                timeout: float) -> Reply:
        _request.deadline = time.monotonic() + timeout
        response = None
        try:
            # as requests sends it: characters a URL may not carry (a space, non-ASCII) percent-encoded
            response = self._manager_for(url).urlopen(
                method, requote_uri(url), body=body, headers=headers, retries=_ONE_TRY, redirect=False,
                timeout=urllib3.Timeout(connect=timeout, read=timeout), preload_content=False)
            data = _read_answer(response)
        except Exception as exc:  # also a header http.client cannot encode, an unreadable CA bundle
            error = _transport_error(exc)
            if error is None:
                raise
            raise error from None
        finally:
            _request.deadline = math.inf
            if response is not None:
                if not response.closed:  # a body longer than the cap, or a failed read: not reusable
                    response.close()
                response.release_conn()
        return Reply(response.status, data.decode("utf-8", "replace"), response.headers)

    def close(self) -> None:
        """Close the idle connections; those in use close when their request ends."""
        with self._lock:
            managers, self._managers = list(self._managers.values()), {}
        for manager in managers:
            manager.clear()

    def _manager_for(self, url: str) -> urllib3.PoolManager:
        """The pool manager for ``url``'s route; the environment is read at most once per
        ``ENV_TTL`` per scheme://host."""
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc)
        now = time.monotonic()
        cached = self._routes.get(key)
        if cached is None or now >= cached.expires:
            cached = _CachedRoute(_route_from_env(url), now + ENV_TTL)
            self._routes[key] = cached
        manager = self._managers.get(cached.route)
        if manager is None:
            with self._lock:
                manager = self._managers.get(cached.route)
                if manager is None:
                    manager = self._managers[cached.route] = _manager(cached.route)
        return manager
