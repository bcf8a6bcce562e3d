"""HTTP for the exporter: ``Transport`` sends one request and returns its ``Reply``.

Straight to the server (the usual case), requests go over kept-alive sockets with the small
HTTP/1.1 client of ``http1.py`` (cheap per request, because delivery shares the interpreter
lock with the app), TLS verified against requests' CA bundle; through the proxy the environment
names (read as requests reads it) they go over urllib3's proxy managers (``proxy.py``). Either
way a request without an answer raises ``TransportError`` (``retryable`` says whether a resend
could help), ``timeout`` is a deadline for the whole request (name lookup, connect, send,
answer: ``sockets.py``), at most ``MAX_ANSWER_BYTES`` of an answer's body are read, and a
connection unused for ``IDLE_TIMEOUT`` seconds is closed.

Answers that bend HTTP: one sent before the body was read (a 413 from a proxy) is returned as
it is and its connection closed; one without a length is complete with what has arrived (its
connection closed, never waited on until the deadline); a ``101 Switching Protocols`` (no
request asks to upgrade) is returned as status 101 and its connection closed: the exporter
reports it failed and never resends it, since the server may have stored the events before
switching (a resend could store them twice; taking it as delivered could lose them unreported).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import urllib3
from requests.utils import get_environ_proxies, prepend_scheme_if_needed, select_proxy

from .. import checks
from . import http1, proxy
from .http1 import Target, chunk_size  # chunk_size: servers/httpd.py reads chunked bodies with it
from .proxy import Route
from .sockets import (
    MAX_ANSWER_BYTES,
    MAX_HEAD_BYTES,
    MAX_RESOLVING,
    ConnectionError,
    ConnectTimeout,
    Headers,
    InvalidHeader,
    InvalidRequest,
    InvalidURL,
    ReadTimeout,
    Reply,
    Resolver,
    SSLError,
    TransportError,
    connect,
    deadline,
    failure,
    tls_context,
)

__all__ = ["Transport", "Reply", "Headers", "TransportError", "ConnectionError", "ConnectTimeout", "ReadTimeout",
           "SSLError", "InvalidRequest", "InvalidURL", "InvalidHeader", "MAX_ANSWER_BYTES", "MAX_HEAD_BYTES",
           "MAX_RESOLVING", "MAX_IDLE", "IDLE_TIMEOUT", "ENV_TTL", "chunk_size"]

logger = logging.getLogger("vwo_otel")

#: Connections kept per host: as many as one processor's delivery threads can use at once, so a
#: burst's connections are all reused until ``IDLE_TIMEOUT`` (a new one costs VWO's round trip).
MAX_IDLE = int(checks.MAX_CONCURRENT_REQUESTS.high)
#: Seconds a kept-alive connection may stay unused before it is closed. Servers and load
#: balancers drop idle connections after a minute or so, and a request sent on one they are
#: dropping fails; a burst's extra connections are closed this long after it ends.
IDLE_TIMEOUT = 5.0
#: How long the proxy / CA-bundle environment read for a host is reused (requests reads all of
#: ``os.environ`` on every request); a changed variable is picked up within this many seconds.
ENV_TTL = 1.0


@dataclass(frozen=True)
class _CachedRoute:
    route: Route
    expires: float


def route_from_env(url: str) -> Route:
    """``url``'s route, read from the environment as requests reads it (HTTP(S)_PROXY, ALL_PROXY,
    NO_PROXY, the CA bundle variables)."""
    through = select_proxy(url, get_environ_proxies(url))  # type: ignore[no-untyped-call]
    verify = (os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
              if url[:6].lower() == "https:" else None)
    return Route(prepend_scheme_if_needed(through, "http") if through else None, verify)  # type: ignore[no-untyped-call]


class _Link:
    """A kept-alive connection straight to a server; ``era``: the ``Transport.close`` it belongs to."""

    __slots__ = ("sock", "era", "idle_since")

    def __init__(self, sock: Any, era: int) -> None:
        self.sock = sock
        self.era = era
        self.idle_since = 0.0

    def close(self) -> None:
        """Close the socket (the server sees the connection end)."""
        try:
            self.sock.close()
        except OSError:  # pragma: no cover - closing never matters more than the request
            pass


_Key = tuple[str, str, int, "bool | str | None"]  # scheme, host, port, verify


class Transport:
    """Sends one request and returns its ``Reply``; a request without an answer raises ``TransportError``.

    Straight to the server, requests go over kept-alive sockets (LIFO per host, so connections
    a burst needed go idle first; each unused for ``IDLE_TIMEOUT`` is closed by a thread that
    runs only while some are idle), TLS verified against requests' CA bundle (or
    ``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE``). Through a proxy they go over urllib3's proxy
    managers (one per proxy, cleared after ``IDLE_TIMEOUT`` unused); through a SOCKS proxy each
    socket operation is bounded by the timeout, not the request as a whole.
    """

    def __init__(self) -> None:
        self._routes: dict[tuple[str, str], _CachedRoute] = {}
        self._managers: dict[Route, urllib3.PoolManager] = {}
        self._lock = threading.Lock()
        self._idle: dict[_Key, list[_Link]] = {}
        self._contexts: dict[bool | str, Any] = {}
        self._proxied: dict[Route, list[float]] = {}  # [requests in flight, last used] per proxy manager
        self._era = 0  # bumped by close(): connections of an earlier era close when their request ends
        self._reaper: threading.Thread | None = None
        #: False: no thread closes idle connections (serverless: nothing may run after the
        #: handler returns); one unused for ``IDLE_TIMEOUT`` is closed when next taken instead.
        self.reap = True
        self._wake = threading.Condition(self._lock)
        self._resolver = Resolver()
        self._inherited: list[Any] = []  # a forked child's copies of its parent's connections

    def after_fork(self) -> None:
        """In a forked child (``VWOExporter.after_fork`` calls it): a new lock, resolver and no
        reaper (the parent's threads are gone, a lock they held stays held), and none of the
        parent's connections reused, so the child never writes on them. The child's copies of
        the parent's idle straight connections are closed (a copy's close sends nothing while
        the parent holds the connection; kept, up to ``MAX_IDLE`` of them stayed open at the
        server for the child's life after the parent closed its own); the proxy managers' are
        kept referenced, never touched."""
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._reaper = None
        self._resolver = Resolver()
        self._era += 1  # connections in use at the fork (none in the child) are not kept
        for idle in self._idle.values():
            for link in idle:
                link.close()
        self._inherited.append(self._managers)
        self._idle, self._managers, self._proxied = {}, {}, {}

    def request(self, method: str, url: str, body: bytes | None, headers: dict[str, str],
                timeout: float) -> Reply:
        with deadline(timeout):
            route = self._route_for(url)
            if route.proxy is None:
                return self._direct(method, url, body, headers, timeout, route.verify)
            return self._through_proxy(route, method, url, body, headers, timeout)

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
        where = http1.target(url)
        request_head = http1.head(method, where, headers, body)
        key = (where.scheme, where.host, where.port, verify)
        link = self._take(key)
        if link is None:
            link = self._connect(where, timeout, verify)
        answer = None
        try:
            answer = http1.exchange(link.sock, method, request_head, body)
            return answer.reply
        finally:
            self._give_back(key, link, answer is not None and answer.reusable)

    def _take(self, key: _Key) -> _Link | None:
        """The most recently used idle connection for ``key`` the server has not closed, if any."""
        while True:
            with self._lock:
                idle = self._idle.get(key)
                if not idle:
                    return None
                link = idle.pop()
            if time.monotonic() - link.idle_since < IDLE_TIMEOUT and not http1.dropped(link.sock):
                return link
            link.close()

    def _give_back(self, key: _Key, link: _Link, reusable: bool) -> None:
        """Keep ``link`` for the next request (its idle time starts now), or close it."""
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if reusable and link.era == self._era and len(idle) < MAX_IDLE and self._watch():
                link.idle_since = time.monotonic()
                idle.append(link)
                return
        link.close()

    def _connect(self, where: Target, timeout: float, verify: bool | str | None) -> _Link:
        """A new connection (and TLS handshake) within the request's deadline."""
        with self._lock:
            era = self._era
        try:
            try:
                context = None if where.scheme == "http" else self._context(True if verify is None else verify)
            except OSError as exc:  # an unreadable CA bundle: no resend can read it
                raise ConnectionError(f"{type(exc).__name__}: {exc}", retryable=False) from None
            sock = connect(self._resolver, where.host, where.port, timeout)
            try:
                if context is not None:
                    sock = context.wrap_socket(sock, server_hostname=where.host)
            except BaseException:
                sock.close()
                raise
        except Exception as exc:  # refused, unreachable, DNS, the handshake
            raise failure(exc, connecting=True) from None
        return _Link(sock, era)

    def _context(self, verify: bool | str) -> Any:
        """The TLS context for ``verify``, made once (an unreadable CA bundle raises each time)."""
        context = self._contexts.get(verify)
        if context is None:
            context = self._contexts[verify] = tls_context(verify)
        return context

    # -- through a proxy: urllib3 ----------------------------------------------------------------
    def _through_proxy(self, route: Route, method: str, url: str, body: bytes | None, headers: dict[str, str],
                       timeout: float) -> Reply:
        try:
            manager = self._manager_for(route)
        except OSError as exc:  # an unreadable CA bundle: no resend can read it
            raise ConnectionError(f"{type(exc).__name__}: {exc}", retryable=False) from None
        with self._lock:
            use = self._proxied.setdefault(route, [0, 0.0])
            use[0] += 1
        try:
            return proxy.send(manager, method, url, body, headers, timeout)
        finally:
            with self._lock:
                use[0] -= 1
                use[1] = time.monotonic()
                self._watch()

    def _route_for(self, url: str) -> Route:
        """``url``'s route; the environment is read at most once per ``ENV_TTL`` per scheme://host."""
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc)
        now = time.monotonic()
        cached = self._routes.get(key)
        if cached is None or now >= cached.expires:
            cached = _CachedRoute(route_from_env(url), now + ENV_TTL)
            self._routes[key] = cached
        return cached.route

    def _manager_for(self, route: Route) -> urllib3.PoolManager:
        """The proxy manager for ``route``, made on first use."""
        manager = self._managers.get(route)
        if manager is None:
            with self._lock:
                manager = self._managers.get(route)
                if manager is None:
                    manager = self._managers[route] = proxy.manager(route, MAX_IDLE)
        return manager

    # -- closing idle connections ------------------------------------------------------------------
    def _watch(self) -> bool:
        """Lock held, something goes idle: make sure the reaper runs. False if no thread can start
        (the interpreter is exiting): the connection is closed rather than kept unwatched."""
        if not self.reap:
            return True
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
