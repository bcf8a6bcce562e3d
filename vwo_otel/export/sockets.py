"""Below HTTP, for ``export/http.py``: what a request without an answer raises
(``TransportError``, with ``retryable``), what an answer is (``Reply``), the whole-request
deadline every socket call obeys, and a connection opened within it (the name lookup on a
helper thread, each address in turn, the TLS handshake verified as requests verifies)."""

from __future__ import annotations

import ipaddress
import math
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple, Protocol

from requests.utils import DEFAULT_CA_BUNDLE_PATH, extract_zipped_paths

#: A socket's timeout is left as it is while it differs from the time its request has left by at
#: most this many seconds (see ``_Deadline``): a request may end this much after its deadline.
TIMEOUT_SLACK = 0.01
#: The most bytes of an answer's status line and headers read (longer: a ``ConnectionError``).
MAX_HEAD_BYTES = 64 * 1024
#: The most of an answer's body read: VWO answers a few bytes; a longer body is cut here (its
#: rest discarded with the connection), so a hostile or broken server cannot fill memory.
MAX_ANSWER_BYTES = 64 * 1024
#: Name lookups one transport runs at once (one per host and port; requests for a host already
#: being looked up wait for that lookup). A resolver that never answers holds at most this many
#: threads; each request waits for its lookup only until its deadline.
MAX_RESOLVING = 4


class TransportError(Exception):
    """A request that got no HTTP answer. ``retryable``: whether sending the same request again
    could succeed (False for a certificate the CA bundle does not vouch for, a host name the
    certificate does not name, a TLS version the server does not speak, a bad URL or header).
    The subclasses keep the names requests gives these failures, as the ``error.type`` of the
    request metrics and the start of a ``NetworkError`` message show them."""

    retryable = True

    def __init__(self, *args: Any, retryable: bool | None = None) -> None:
        super().__init__(*args)
        if retryable is not None:
            self.retryable = retryable


class ConnectionError(TransportError):  # noqa: A001 (requests' name, see TransportError)
    """No connection, or it broke: refused, reset, closed early, DNS, a proxy failing."""


class ConnectTimeout(TransportError):
    """No connection within the timeout (the name lookup included)."""


class ReadTimeout(TransportError):
    """Connected, but no complete answer within the timeout."""


class SSLError(TransportError):
    """The TLS handshake failed (e.g. a certificate the CA bundle does not vouch for: not retryable)."""


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


#: TLS failures no resend fixes: the server speaks no TLS version we do (or no TLS at all: a
#: plain-HTTP port), or refuses the handshake outright. Certificate failures are
#: ``ssl.SSLCertVerificationError`` (unknown CA, expired, a host name it does not name).
FINAL_TLS_REASONS = frozenset({
    "WRONG_VERSION_NUMBER", "UNSUPPORTED_PROTOCOL", "TLSV1_ALERT_PROTOCOL_VERSION", "NO_PROTOCOLS_AVAILABLE",
    "VERSION_TOO_LOW", "SSLV3_ALERT_HANDSHAKE_FAILURE", "PACKET_LENGTH_TOO_LONG", "CERTIFICATE_VERIFY_FAILED",
})


def final(exc: BaseException) -> bool:
    """Whether ``exc`` (from a socket, ssl, or a CA bundle being loaded) fails every resend too."""
    if isinstance(exc, (ssl.SSLCertVerificationError, ssl.CertificateError)):
        return True
    if isinstance(exc, ssl.SSLError):
        return getattr(exc, "reason", None) in FINAL_TLS_REASONS
    return False


def failure(exc: BaseException, connecting: bool) -> TransportError:
    """A socket, TLS or certificate failure as the ``TransportError`` requests would name."""
    if isinstance(exc, TransportError):
        return exc
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, TimeoutError):
        return ConnectTimeout(text) if connecting else ReadTimeout(text)
    if isinstance(exc, (ssl.SSLError, ssl.CertificateError)):  # (not "SSLError: SSLError: ..." when shown)
        return SSLError(str(exc) if type(exc) is ssl.SSLError else text, retryable=not final(exc))
    return ConnectionError(text)


# -- the whole-request deadline ------------------------------------------------------------
_request = threading.local()  # ``deadline``: when the request this thread is making must end


@contextmanager
def deadline(timeout: float) -> Iterator[None]:
    """Every socket call of this thread's request (``_Deadline`` sockets) ends ``timeout``
    seconds from now."""
    _request.deadline = time.monotonic() + timeout
    try:
        yield
    finally:
        _request.deadline = math.inf


def left() -> float:
    """Seconds left before this thread's request must end (``math.inf`` outside a request)."""
    return getattr(_request, "deadline", math.inf) - time.monotonic()


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
            if not now or abs(now - left) > TIMEOUT_SLACK:  # None or 0.0 (after ``nonblocking``): set it
                super().settimeout(left)  # type: ignore[misc]

    def settimeout(self, value: float | None) -> None:
        """urllib3 sets its connect / read timeout before sending and reading: while a request's
        deadline is in force, ``_shrink`` sets the timeout instead."""
        if getattr(_request, "deadline", math.inf) == math.inf:
            super().settimeout(value)  # type: ignore[misc]

    def nonblocking(self) -> None:
        """Calls return at once (``_shrink`` sets a timeout again before the next blocking one);
        ``send_now`` / ``recv_now`` then raise ``BlockingIOError`` (TLS: ``ssl.SSLWantReadError``
        or ``SSLWantWriteError``) where they would wait."""
        super().settimeout(0.0)  # type: ignore[misc]

    def send_now(self, data: Any) -> int:
        return super().send(data)  # type: ignore[misc, no-any-return]

    def recv_now(self, size: int) -> bytes:
        return super().recv(size)  # type: ignore[misc, no-any-return]

    def arrived(self, most: int) -> bytes:
        """Up to ``most`` bytes that have arrived, without waiting for more (b"" if none have,
        or the server closed)."""
        got = bytearray()
        self.nonblocking()
        try:
            while len(got) < most:
                data = self.recv_now(most - len(got))
                if not data:
                    break
                got += data
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            pass
        except OSError:
            if not got:
                raise
        return bytes(got)

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


class DeadlineSocket(_Deadline, socket.socket):
    pass


class DeadlineSSLSocket(_Deadline, ssl.SSLSocket):
    def do_handshake(self, block: bool = False) -> None:
        self._shrink()
        super().do_handshake(block)


def tls_context(verify: bool | str) -> ssl.SSLContext:
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
    context.sslsocket_class = DeadlineSSLSocket
    return context


# -- a connection within the deadline ------------------------------------------------------------
class _Lookup:
    __slots__ = ("done", "addresses", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.addresses: list[Any] = []
        self.error: BaseException | None = None


class Resolver:
    """Name lookups (``getaddrinfo``, which takes no timeout) on helper threads, so a resolver
    that never answers costs a request its deadline, not the system resolver's minutes. One
    lookup per host and port at a time (requests for it meanwhile wait for the same one), at
    most ``MAX_RESOLVING`` at once; an address needs no lookup and no thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[tuple[str, int], _Lookup] = {}

    def addresses(self, host: str, port: int) -> list[Any]:
        """``getaddrinfo``'s stream addresses for ``host``, within this thread's request deadline."""
        try:
            ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            return socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
        with self._lock:
            lookup = self._running.get((host, port))
            if lookup is None:
                if len(self._running) >= MAX_RESOLVING:
                    raise ConnectTimeout(f"not resolving {host}: {len(self._running)} name lookups still unanswered")
                lookup = self._running[(host, port)] = _Lookup()
                thread = threading.Thread(target=self._resolve, args=(host, port, lookup),
                                          name="vwo_otel-resolve", daemon=True)
                try:
                    thread.start()
                except RuntimeError:  # "can't create new thread at interpreter shutdown"
                    del self._running[(host, port)]
                    raise ConnectionError(f"not resolving {host}: the interpreter is exiting") from None
        if not lookup.done.wait(max(0.0, min(left(), threading.TIMEOUT_MAX))):
            raise ConnectTimeout(f"TimeoutError: no answer resolving {host} within the request's deadline")
        if lookup.error is not None:  # each waiting request raises an error of its own
            raise ConnectionError(f"{type(lookup.error).__name__}: {lookup.error}")
        return lookup.addresses

    def _resolve(self, host: str, port: int, lookup: _Lookup) -> None:
        try:
            lookup.addresses = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
        except BaseException as exc:  # gaierror, UnicodeError: the waiting request raises it
            lookup.error = exc
        finally:
            with self._lock:
                self._running.pop((host, port), None)
            lookup.done.set()


def connect(resolver: Resolver, host: str, port: int, timeout: float) -> socket.socket:
    """A TCP connection (a ``DeadlineSocket``, TCP_NODELAY) to ``host``, trying its addresses in
    turn as ``socket.create_connection`` does, but the lookup and each attempt get only what is
    left of the request's deadline (not the whole ``timeout`` again per address)."""
    end = time.monotonic() + min(left(), timeout)
    error: OSError | None = None
    for family, kind, proto, _, address in resolver.addresses(host, port):
        remaining = end - time.monotonic()
        if remaining <= 0:
            break
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(remaining)
            sock.connect(address)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        return DeadlineSocket(sock.family, sock.type, sock.proto, fileno=sock.detach())
    raise error if error is not None else TimeoutError("timed out (the request's deadline passed while connecting)")
