"""HTTP for the exporter: pooled keep-alive connections straight to VWO, requests when a proxy
applies; a request without an answer raises this module's ``TransportError`` on either path."""

from __future__ import annotations

import errno
import http.client
import logging
import os
import select
import socket
import ssl
import threading
import time
from typing import Any, NamedTuple, NoReturn, Protocol
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests.utils import DEFAULT_CA_BUNDLE_PATH, extract_zipped_paths, requote_uri, select_proxy

from ..checks import redact


class _HideKeyInURLs(logging.Filter):
    """urllib3 logs each request line at DEBUG, and VWO's protocol puts the sdk key in the
    URL (``env=``): redact it so turning on DEBUG never leaks the key."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(a, str) and "env=" in a for a in record.args):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        return True


logging.getLogger("urllib3.connectionpool").addFilter(_HideKeyInURLs())


#: Idle connections kept per host (more than the delivery threads ever use at once).
MAX_IDLE = 64


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


class _Session(requests.Session):
    """A ``requests.Session`` that reads the proxy / CA-bundle environment variables at most
    once every ``ENV_TTL`` seconds per host instead of on every request (requests walks all
    of ``os.environ`` twice per call). Same settings; a changed variable is picked up within
    ``ENV_TTL``."""

    ENV_TTL = 1.0

    def __init__(self) -> None:
        super().__init__()
        self._env: dict[tuple[Any, ...], tuple[float, Any]] = {}
        for prefix in ("https://", "http://"):  # a connection per request in flight (up to 64), kept alive
            self.mount(prefix, HTTPAdapter(pool_maxsize=MAX_IDLE))

    def merge_environment_settings(self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any) -> Any:
        if not self.trust_env or proxies or not isinstance(url, str):  # explicit settings: requests' own path
            return super().merge_environment_settings(url, proxies, stream, verify, cert)
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc, stream, verify, cert)
        now = time.monotonic()
        hit = self._env.get(key)
        if hit is None or now >= hit[0]:
            hit = (now + self.ENV_TTL, super().merge_environment_settings(url, {}, stream, verify, cert))
            self._env[key] = hit
        settings = dict(hit[1])
        settings["proxies"] = dict(settings["proxies"])
        return settings


class _HTTPConnection(http.client.HTTPConnection):
    def connect(self) -> None:
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no Nagle stall on the body


class _HTTPSConnection(http.client.HTTPSConnection):
    def connect(self) -> None:
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _transport_error(exc: Exception, connected: bool) -> TransportError | None:
    """``exc``, raised by http.client, ssl, a socket or requests, as a ``TransportError``;
    None for anything else (a bug: it propagates as it is)."""
    kind: type[TransportError]
    if isinstance(exc, requests.exceptions.ConnectTimeout):  # before Timeout and ConnectionError
        kind = ConnectTimeout
    elif isinstance(exc, (TimeoutError, requests.exceptions.Timeout)):
        kind = ReadTimeout if connected else ConnectTimeout
    elif isinstance(exc, (ssl.SSLError, requests.exceptions.SSLError)):
        kind = SSLError
    elif isinstance(exc, (http.client.InvalidURL, requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema,
                          requests.exceptions.MissingSchema)):
        kind = InvalidURL
    elif isinstance(exc, requests.exceptions.InvalidHeader):
        kind = InvalidHeader
    elif isinstance(exc, (OSError, http.client.HTTPException)):  # requests' exceptions are OSErrors too
        kind = ConnectionError
    elif isinstance(exc, ValueError):  # e.g. a header value that cannot be sent (UnicodeEncodeError too)
        kind = InvalidHeader
    else:
        return None
    name = type(exc).__name__
    return kind(str(exc) if name == kind.__name__ else f"{name}: {exc}")


def _raise_transport_error(exc: Exception, connected: bool) -> NoReturn:
    error = _transport_error(exc, connected)
    if error is None:
        raise exc
    raise error from None


def _dropped(conn: http.client.HTTPConnection) -> bool:
    """True if an idle keep-alive connection was closed by the server (or has stray data):
    it must not carry a request (the check urllib3 makes before reusing a connection)."""
    sock = conn.sock
    if sock is None:
        return True
    try:
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            return bool(poller.poll(0))
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


class Transport:
    """Sends one request and returns its ``Reply``; a request without an answer raises ``TransportError``.

    When no proxy applies to the URL and no client certificate is set (read from the
    environment as requests reads it), the request goes over a pooled keep-alive
    ``http.client`` connection, verified against requests' CA bundle (or
    ``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE``): about a third of requests' CPU per batch,
    which the app's threads share. Anything else goes through requests itself.
    """

    def __init__(self) -> None:
        self.session = _Session()
        self._idle: dict[tuple[Any, ...], list[http.client.HTTPConnection]] = {}
        self._contexts: dict[Any, ssl.SSLContext] = {}
        self._lock = threading.Lock()
        self._closed = False

    def request(self, method: str, url: str, body: bytes | None, headers: dict[str, str],
                timeout: float) -> Reply:
        env = self.session.merge_environment_settings(url, {}, None, None, None)
        if env["cert"] is None and select_proxy(url, env["proxies"]) is None:
            return self._direct(method, url, body, headers, timeout, env["verify"])
        try:
            response = self.session.request(method, url, data=body, headers=headers, timeout=timeout,
                                            allow_redirects=False)
        except Exception as exc:  # also a header requests cannot encode, an unreadable CA bundle
            _raise_transport_error(exc, connected=True)
        return Reply(response.status_code, response.text, response.headers)

    def close(self) -> None:
        """Close the idle connections; those in use close when their request ends."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()
        self.session.close()

    # -- the direct path -------------------------------------------------------------
    def _direct(self, method: str, url: str, body: bytes | None, headers: dict[str, str], timeout: float,
                verify: Any) -> Reply:
        parts = urlsplit(url)
        https = parts.scheme == "https"
        try:
            port = parts.port or (443 if https else 80)
        except ValueError as exc:
            raise InvalidURL(f"{type(exc).__name__}: {exc}") from None
        host = parts.hostname or ""
        key = (https, host, port, verify if https else None)
        # as requests sends it: characters a URL may not carry (a space, non-ASCII) percent-encoded
        target = requote_uri(f"{parts.path or '/'}?{parts.query}" if parts.query else (parts.path or "/"))
        conn = self._checkout(key)
        cut_short = False  # the server closed the connection while the request was being sent
        try:
            if conn is None:
                conn = (_HTTPSConnection(host, port, timeout=timeout, context=self._context(verify)) if https
                        else _HTTPConnection(host, port, timeout=timeout))
            else:
                conn.timeout = timeout
                if conn.sock is not None:
                    conn.sock.settimeout(timeout)
            try:
                conn.request(method, target, body=body, headers=headers)
            except OSError as exc:
                # A server may answer early (413 to a body too large) and close before reading
                # it all: read that answer, as urllib3 does, instead of failing the send.
                if conn.sock is None or not (isinstance(exc, BrokenPipeError) or exc.errno == errno.ECONNRESET):
                    raise
                cut_short = True
            response = conn.getresponse()
            data = response.read()
        except BaseException as exc:
            connected = conn is not None and conn.sock is not None
            if conn is not None:
                conn.close()
            if isinstance(exc, Exception):
                _raise_transport_error(exc, connected)
            raise
        if response.will_close or cut_short:
            conn.close()
        else:
            self._checkin(key, conn)
        return Reply(response.status, data.decode("utf-8", "replace"), response.headers)

    def _checkout(self, key: tuple[Any, ...]) -> http.client.HTTPConnection | None:
        while True:
            with self._lock:
                idle = self._idle.get(key)
                conn = idle.pop() if idle else None
            if conn is None or not _dropped(conn):
                return conn
            conn.close()

    def _checkin(self, key: tuple[Any, ...], conn: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if not self._closed and len(idle) < MAX_IDLE:
                idle.append(conn)
                return
        conn.close()

    def _context(self, verify: Any) -> ssl.SSLContext:
        """The TLS settings requests would use for ``verify`` (True: its CA bundle; a path:
        that file or directory; False: no verification)."""
        context = self._contexts.get(verify)
        if context is None:
            if verify is False:
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            elif verify is True:
                bundle = extract_zipped_paths(DEFAULT_CA_BUNDLE_PATH)  # type: ignore[no-untyped-call]
                context = ssl.create_default_context(cafile=bundle)
            elif isinstance(verify, str) and not os.path.isfile(verify):
                context = ssl.create_default_context(capath=verify)
            else:
                context = ssl.create_default_context(cafile=verify)
            self._contexts[verify] = context
        return context
