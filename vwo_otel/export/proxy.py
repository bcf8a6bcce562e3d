"""Requests through a proxy, for ``export/http.py``: urllib3's proxy managers (HTTP(S) and, with
PySocks, SOCKS proxies) over deadline sockets, one try and no redirects (the exporter decides),
at most ``MAX_ANSWER_BYTES`` of an answer read, urllib3's failures as ``TransportError``s."""

from __future__ import annotations

import logging
import socket
import ssl
from dataclasses import dataclass
from typing import Any

import urllib3
from requests.utils import get_auth_from_url, requote_uri
from urllib3 import exceptions as u3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from ..checks import redact
from .sockets import (
    MAX_ANSWER_BYTES,
    ConnectionError,
    ConnectTimeout,
    DeadlineSocket,
    InvalidHeader,
    InvalidURL,
    ReadTimeout,
    Reply,
    SSLError,
    TransportError,
    final,
    tls_context,
)


class _HideKeyInURLs(logging.Filter):
    """urllib3 logs each request line at DEBUG, and VWO's protocol puts the sdk key in the
    URL (``env=``): redact it so turning on DEBUG never leaks the key."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(a, str) and "env=" in a for a in record.args):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        return True


for _name in ("urllib3.connectionpool", "urllib3.connection"):
    logging.getLogger(_name).addFilter(_HideKeyInURLs())


@dataclass(frozen=True)
class Route:
    """What the environment says about requests to one scheme://host: the proxy (None: direct)
    and, for https, the TLS verification (requests' rule: ``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE``,
    its bundle); None for plain http, which never loads a CA bundle."""

    proxy: str | None
    verify: bool | str | None


class _DeadlineConnection:
    """urllib3's connection, over a ``DeadlineSocket`` (TLS wraps it in a ``DeadlineSSLSocket``
    through the pool's SSL context, see ``tls_context``)."""

    def _new_conn(self) -> socket.socket:
        plain: socket.socket = super()._new_conn()  # type: ignore[misc]
        return DeadlineSocket(plain.family, plain.type, plain.proto, fileno=plain.detach())


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


def manager(route: Route, maxsize: int) -> urllib3.PoolManager:
    """urllib3's manager for a route through a proxy: pools of up to ``maxsize`` kept-alive
    connections per host, TCP_NODELAY (no Nagle stall on the body), no retries or redirects of
    its own (the exporter decides)."""
    assert route.proxy is not None
    settings: dict[str, Any] = {"maxsize": maxsize, "retries": _ONE_TRY,
                                "socket_options": [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]}
    if route.verify is not None:
        settings["ssl_context"] = tls_context(route.verify)
        settings["cert_reqs"] = ssl.CERT_NONE if route.verify is False else ssl.CERT_REQUIRED
    if route.proxy.lower().startswith("socks"):
        try:  # as requests: SOCKS needs PySocks
            from urllib3.contrib.socks import SOCKSProxyManager
        except ImportError:
            raise InvalidURL("Missing dependencies for SOCKS support (pip install PySocks)") from None
        return SOCKSProxyManager(route.proxy, **settings)
    user, password = get_auth_from_url(route.proxy)  # type: ignore[no-untyped-call]
    auth = urllib3.make_headers(proxy_basic_auth=f"{user}:{password}") if user else None
    proxied = urllib3.ProxyManager(route.proxy, proxy_headers=auth, **settings)
    proxied.pool_classes_by_scheme = _POOLS  # type: ignore[assignment]
    return proxied


def send(through: urllib3.PoolManager, method: str, url: str, body: bytes | None, headers: dict[str, str],
         timeout: float) -> Reply:
    """One request through the proxy manager ``through`` (within the caller's request deadline)."""
    response = None
    try:
        # as requests sends it: characters a URL may not carry (a space, non-ASCII) percent-encoded
        response = through.urlopen(
            method, requote_uri(url), body=body, headers=headers, retries=_ONE_TRY, redirect=False,
            timeout=urllib3.Timeout(connect=timeout, read=timeout), preload_content=False)
        data = _read_answer(response)
    except Exception as exc:  # also a header http.client cannot encode, an unreadable CA bundle
        error = transport_error(exc)
        if error is None:
            raise
        raise error from None
    finally:
        if response is not None:
            if not response.closed:  # a body longer than the cap, or a failed read: not reusable
                response.close()
            response.release_conn()
    return Reply(response.status, data.decode("utf-8", "replace"), response.headers)


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


def transport_error(exc: Exception) -> TransportError | None:
    """``exc`` as a ``TransportError`` named after what failed (the socket error under urllib3's
    wrapper); None for anything else (a bug: it propagates as it is). A certificate or TLS
    version failure is not retryable (``sockets.final``), as on the direct path."""
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
    chain = [exc, cause, exc.__cause__, exc.__context__] + ([exc.args[0]] if exc.args else [])
    if kind is SSLError and any(isinstance(e, BaseException) and final(e) for e in chain):
        return kind(text, retryable=False)
    return kind(text)
