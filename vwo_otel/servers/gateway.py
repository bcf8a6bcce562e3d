"""``vwo-otel gateway``: an OTLP/HTTP receiver that batches VWO events from many processes.

Apps (or OpenTelemetry Collectors in front of them) export spans / log records with OTLP/HTTP
to ``POST /v1/traces`` and ``POST /v1/logs`` (protobuf or JSON, optionally gzip/deflate).
Items that carry ``vwo.event.type`` become VWO events (the same attributes and decoding as
``VWOSpanProcessor``: span start time / log timestamp -> ``sId``); everything else is accepted
and ignored. Each event goes to the VWO account named by ``vwo.account_id`` (on the item, else
on its resource, else the default account) and through that account's ``Batcher`` (count/age
batching, retries, 413 splitting, bounded backlog, optional spool) to ``VWOExporter``. SDK keys
live only in the gateway's configuration.

OTLP semantics: 200 with an ``Export*ServiceResponse`` in the request's encoding, whose
``partial_success`` counts malformed or unknown-account VWO items; 400 undecodable body;
401 no valid bearer token (when ``auth_tokens`` are set); 403 an item for an account the
token may not write to; 413 too large; 415 unsupported media type or encoding; 429 +
``Retry-After`` when an account's backlog cannot take the whole request and 503 +
``Retry-After`` while shutting down (in every refusal nothing of the request is kept, so the
sender's retry duplicates nothing). A request with more events than ``max_backlog`` is taken
whole once the backlog has room: its size is bounded by bytes (``max_inflated_bytes``).

Binding an address other than loopback needs ``auth_tokens``; ``tls_cert`` / ``tls_key``
serve HTTPS.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import math
import os
import ssl
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from types import TracebackType
from typing import Any, cast
from urllib.parse import urlsplit

from .. import checks
from .._engine import lifecycle
from .._engine.batcher import Batcher
from .._engine.settle import LogLimiter
from .._engine.spool import DEFAULT_MAX_AGE as DEFAULT_SPOOL_MAX_AGE
from .._engine.spool import DEFAULT_MAX_BYTES as DEFAULT_SPOOL_MAX_BYTES
from .._engine.spool import Spool
from ..checks import DEFAULT_ENDPOINT
from ..config import MAX_EVENTS_PER_REQUEST, BatchEvents
from ..errors import EventsDropped
from ..event import MalformedEvent, VWOEvent, from_attributes
from ..export.exporter import VWOExporter
from ..export.retry import RetryPolicy
from . import httpd, otlp
from .httpd import LoopbackHTTPServer, read_body, respond
from .otlp import ACCOUNT_ID

__all__ = ["ACCOUNT_ID", "CONFIG_KEYS", "DEFAULT_MAX_BACKLOG", "DEFAULT_PORT", "Account", "Gateway", "GatewayConfig",
           "config_from_mapping", "parse_account"]

logger = logging.getLogger("vwo_otel")

DEFAULT_PORT = 4318
DEFAULT_MAX_BACKLOG = 50_000
DEFAULT_MAX_BACKLOG_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_INFLATED_BYTES = 32 * 1024 * 1024
#: Request bodies being read or decoded at once, in bytes (the bodies' own size; each request
#: reserves its Content-Length, or ``max_body_bytes`` when chunked): this times a small
#: factor bounds the gateway's memory whatever senders do. Past it new requests wait, then 503.
BODY_BUDGET_FACTOR = 4
#: Requests decoded at once (decoding is CPU-bound: more would only hold more memory).
DECODE_CONCURRENCY = 1
#: Seconds a request waits for room in the body budget, or for its turn to be decoded, before it
#: is answered 503 + Retry-After (well inside an OTLP exporter's 10 s timeout, so the sender
#: hears the answer and no abandoned request is kept).
BODY_WAIT = 5.0
_WWW_AUTHENTICATE = ("WWW-Authenticate", 'Bearer realm="vwo-otel-gateway"')
#: Environment variable holding the sdk key of ``--account ID`` given without ``=KEY``.
SDK_KEY_ENV = "VWO_SDK_KEY_{account_id}"
_ROUTES = {"/v1/traces": otlp.TRACES, "/v1/logs": otlp.LOGS}
_TEXT = "text/plain; charset=utf-8"
_MAX_MESSAGE = 512
_DRAIN_LIMIT = 64 * 1024 * 1024  # a refused body up to this size is read so the connection stays usable
_UNAUTHENTICATED_DRAIN = 1024 * 1024  # the same for a request without a valid token (within 1 s)


# -- configuration -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Account:
    """One VWO account the gateway delivers to; ``endpoint`` overrides the gateway's."""

    account_id: int
    sdk_key: str = field(repr=False)
    endpoint: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "account_id", checks.account_id(self.account_id, "account id"))
        checks.sdk_key(self.sdk_key, f"the sdk key of account {self.account_id}")
        if self.endpoint is not None:
            object.__setattr__(self, "endpoint", checks.endpoint(self.endpoint, f"account {self.account_id}: endpoint"))


@dataclass(frozen=True)
class GatewayConfig:
    """Everything the gateway needs; validated when built. SDK keys never appear in its repr."""

    accounts: Mapping[int, Account]
    default_account: int | None = None
    endpoint: str = DEFAULT_ENDPOINT
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    events_per_request: int = 100
    request_time_interval: float = 60.0
    max_backlog: int = DEFAULT_MAX_BACKLOG
    #: Bytes of accepted, undelivered events held per account (``VWOEvent.nbytes``) before 429.
    max_backlog_bytes: int = DEFAULT_MAX_BACKLOG_BYTES
    retry_after: float = 2.0
    shutdown_timeout: float = 10.0
    spool: str | None = None
    timeout: float = 10.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_inflated_bytes: int = DEFAULT_MAX_INFLATED_BYTES
    #: Resources, scopes and spans / log records one request may hold (413 past it; checked
    #: before decoding).
    max_items: int = otlp.MAX_ITEMS
    #: With ``spool``: bytes / seconds events may wait on disk per account while VWO does not
    #: answer (past them the gateway answers 429 / reports the event failed).
    spool_max_bytes: int = DEFAULT_SPOOL_MAX_BYTES
    spool_max_age: float = DEFAULT_SPOOL_MAX_AGE
    #: Bearer tokens senders must present: a list (each may write to every account), or
    #: ``{token: [account ids]}`` (None: every account). Empty: no authentication (loopback only).
    auth_tokens: Mapping[str, frozenset[int] | None] | Sequence[str] = field(default_factory=dict, repr=False)
    tls_cert: str | None = None  #: PEM certificate chain (with the key, unless ``tls_key``): serve HTTPS
    tls_key: str | None = None
    #: Seconds a keep-alive connection may stay without a request; a request line and headers may
    #: take from their first byte; a body (and writing an answer) may take: whole deadlines.
    idle_timeout: float = httpd.DEFAULT_IDLE_TIMEOUT
    header_timeout: float = httpd.DEFAULT_HEADER_TIMEOUT
    body_timeout: float = httpd.DEFAULT_BODY_TIMEOUT
    #: Connections open at once (lowered to what the file limit allows); when full the longest-idle
    #: one is closed to admit a new one.
    max_connections: int = httpd.DEFAULT_MAX_CONNECTIONS

    def __post_init__(self) -> None:
        accounts = self.accounts
        if isinstance(accounts, (list, tuple)):
            accounts = {a.account_id: a for a in accounts}
        if not isinstance(accounts, Mapping) or not accounts:
            raise ValueError("the gateway needs at least one VWO account (account id and sdk key)")
        for key, acct in accounts.items():
            if not isinstance(acct, Account) or checks.account_id(key, "account id") != acct.account_id:
                raise ValueError(f"accounts must map each account id to its Account, got {key!r}")
        object.__setattr__(self, "accounts", dict(accounts))
        if self.default_account is not None:
            default = checks.account_id(self.default_account, "default_account")
            if default not in self.accounts:
                raise ValueError(f"default_account {default} is not one of the configured accounts")
            object.__setattr__(self, "default_account", default)
        checks.number("port", self.port, low=0, high=65535, integer=True)
        checks.number("events_per_request", self.events_per_request, low=1, high=MAX_EVENTS_PER_REQUEST, integer=True)
        checks.seconds("request_time_interval", self.request_time_interval, low=1, high=1e9)
        checks.number("max_backlog", self.max_backlog, low=1, high=10_000_000, integer=True)
        if self.max_backlog < self.events_per_request:
            raise ValueError(f"max_backlog ({self.max_backlog}) must be at least events_per_request "
                             f"({self.events_per_request}): a backlog smaller than one batch answers 429 until "
                             "request_time_interval sends it")
        checks.number("max_backlog_bytes", self.max_backlog_bytes, low=64 * 1024, high=2**40, integer=True)
        checks.number("max_items", self.max_items, low=1, high=10_000_000, integer=True)
        checks.SPOOL_MAX_BYTES.check("spool_max_bytes", self.spool_max_bytes)
        checks.SPOOL_MAX_AGE.check("spool_max_age", self.spool_max_age)
        checks.seconds("retry_after", self.retry_after, high=3600)
        checks.seconds("shutdown_timeout", self.shutdown_timeout, high=3600)
        checks.seconds("timeout", self.timeout, low=0.001, high=3600)
        checks.number("max_body_bytes", self.max_body_bytes, low=1024, high=1024**3, integer=True)
        checks.number("max_inflated_bytes", self.max_inflated_bytes, low=1024, high=1024**3, integer=True)
        if not isinstance(self.retry, RetryPolicy):
            raise ValueError(f"retry must be a vwo_otel.RetryPolicy, got {type(self.retry).__name__}")
        if self.spool is not None:
            if not isinstance(self.spool, (str, os.PathLike)) or not os.fspath(self.spool).strip():
                raise ValueError(f"spool must be a directory path, got {self.spool!r}")
            object.__setattr__(self, "spool", os.path.abspath(os.fspath(self.spool)))
        if not isinstance(self.host, str) or not self.host:
            raise ValueError(f"host must be an address to bind, got {self.host!r}")
        object.__setattr__(self, "endpoint", checks.endpoint(self.endpoint))
        object.__setattr__(self, "auth_tokens", _auth_tokens(self.auth_tokens, self.accounts))
        if not self.auth_tokens and not is_loopback(self.host):
            raise ValueError(f"host {self.host} is not a loopback address: anyone reaching it could write into "
                             "your VWO accounts; set auth_tokens (or --auth-token-env VAR) or bind 127.0.0.1")
        for name in ("tls_cert", "tls_key"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (str, os.PathLike)) or not os.path.isfile(value)):
                raise ValueError(f"{name} must be the path of a PEM file, got {value!r}")
        if self.tls_key is not None and self.tls_cert is None:
            raise ValueError("tls_key needs tls_cert (the certificate chain it belongs to)")
        for name in ("idle_timeout", "header_timeout", "body_timeout"):
            checks.seconds(name, getattr(self, name), low=0.001, high=3600)
        checks.number("max_connections", self.max_connections, low=1, high=1_000_000, integer=True)

    @property
    def scheme(self) -> str:
        """``https`` with ``tls_cert``, else ``http``."""
        return "http" if self.tls_cert is None else "https"

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server's TLS context (None without ``tls_cert``); ValueError if the files do not load."""
        if self.tls_cert is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.tls_cert, self.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"tls_cert / tls_key do not load as a PEM certificate chain and its key: {exc}") from None
        return context


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1): only this machine can connect."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _auth_tokens(value: Any, accounts: Mapping[int, Account]) -> dict[str, frozenset[int] | None]:
    """``auth_tokens`` as {token: accounts it may write to, None for all}, each token checked."""
    if isinstance(value, str) or not isinstance(value, (Mapping, list, tuple)):
        raise ValueError('auth_tokens must be a list of tokens or {"token": [account ids]}, '
                         f"got {type(value).__name__}")
    pairs = value.items() if isinstance(value, Mapping) else ((token, None) for token in value)
    out: dict[str, frozenset[int] | None] = {}
    for i, (token, allowed) in enumerate(pairs):
        name = f"auth_tokens[{i}]"
        checks.auth_token(token, name)
        if allowed is not None:
            if isinstance(allowed, (str, int)) or not isinstance(allowed, (list, tuple, set, frozenset)):
                raise ValueError(f"{name}: the accounts a token may write to must be a list of account ids")
            allowed = frozenset(checks.account_id(a, f"{name} account id") for a in allowed)
            unknown = sorted(allowed - set(accounts))
            if unknown:
                raise ValueError(f"{name} names account(s) {unknown} that are not configured")
        out[token] = allowed
    return out


#: Keys of the JSON configuration file (and of ``config_from_mapping``).
CONFIG_KEYS = ("accounts", "default_account", "endpoint", "host", "port", "events_per_request",
               "request_time_interval", "max_backlog", "retry_after", "shutdown_timeout", "spool", "timeout",
               "retry_budget", "max_body_bytes", "max_inflated_bytes", "auth_tokens", "tls_cert", "tls_key",
               "max_backlog_bytes", "max_items", "spool_max_bytes", "spool_max_age", "idle_timeout", "header_timeout",
               "body_timeout", "max_connections")


def _account_entry(key: Any, value: Any, environ: Mapping[str, str]) -> Account:
    account_id = checks.account_id(key, "accounts key")
    endpoint = None
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - {"sdk_key", "sdk_key_env", "endpoint"})
        if unknown:
            raise ValueError(f"account {account_id}: unknown key(s) {unknown}; allowed: sdk_key, sdk_key_env, endpoint")
        endpoint = value.get("endpoint")
        if "sdk_key_env" in value:
            var = value["sdk_key_env"]
            if not isinstance(var, str) or not environ.get(var):
                raise ValueError(f"account {account_id}: environment variable {var!r} (sdk_key_env) is not set")
            value = environ[var]
        else:
            value = value.get("sdk_key")
    return Account(account_id, value, endpoint)


def config_from_mapping(values: Mapping[str, Any], *, environ: Mapping[str, str] | None = None,
                        **overrides: Any) -> GatewayConfig:
    """A ``GatewayConfig`` from the JSON file's dict (keys ``CONFIG_KEYS``); ``overrides``
    (not None) replace file values; ``overrides["accounts"]`` adds to the file's accounts and
    ``overrides["auth_tokens"]`` (tokens for every account) to its tokens.
    ``accounts`` maps an account id to its sdk key, or to ``{"sdk_key": ..., "endpoint": ...}``
    / ``{"sdk_key_env": "VARIABLE", ...}``."""
    environ = os.environ if environ is None else environ
    if not isinstance(values, Mapping):
        raise ValueError("the gateway configuration must be a JSON object")
    unknown = sorted(set(values) - set(CONFIG_KEYS))
    if unknown:
        raise ValueError(f"unknown configuration key(s) {unknown}; allowed: {', '.join(CONFIG_KEYS)}")
    merged = dict(values)
    extra_accounts = overrides.pop("accounts", None) or {}
    extra_tokens = list(overrides.pop("auth_tokens", None) or ())
    if extra_tokens:
        tokens = merged.get("auth_tokens") or {}
        if isinstance(tokens, (list, tuple)):
            tokens = dict.fromkeys(tokens)
        if not isinstance(tokens, Mapping):
            raise ValueError('auth_tokens must be a list of tokens or {"token": [account ids]}')
        merged["auth_tokens"] = {**tokens, **dict.fromkeys(extra_tokens)}
    merged.update({k: v for k, v in overrides.items() if v is not None})
    raw_accounts = merged.pop("accounts", None) or {}
    if not isinstance(raw_accounts, Mapping):
        raise ValueError('"accounts" must be an object mapping account ids to sdk keys')
    accounts: dict[int, Account] = {}
    for key, value in list(raw_accounts.items()) + list(extra_accounts.items()):
        acct = value if isinstance(value, Account) else _account_entry(key, value, environ)
        accounts[acct.account_id] = acct
    budget = merged.pop("retry_budget", None)
    if budget is not None:
        merged["retry"] = RetryPolicy(budget=checks.seconds("retry_budget", budget, high=86400))
    return GatewayConfig(accounts=accounts, **merged)


def parse_account(text: str, environ: Mapping[str, str] | None = None) -> Account:
    """``ID=SDK_KEY``, or ``ID`` alone with the key in the environment variable ``VWO_SDK_KEY_<ID>``."""
    environ = os.environ if environ is None else environ
    ident, sep, key = text.partition("=")
    account_id = checks.account_id(ident.strip(), "--account")
    if not sep:
        var = SDK_KEY_ENV.format(account_id=account_id)
        key = environ.get(var, "")
        if not key:
            raise ValueError(f"--account {account_id}: give ID=SDK_KEY or set the environment variable {var}")
    return Account(account_id, key)


# -- the HTTP server -----------------------------------------------------------------------------

class _Server(LoopbackHTTPServer):
    """The gateway's server: knows its ``Gateway`` and counts requests in progress for stop()."""

    def __init__(self, address: tuple[str, int], gateway: Gateway, ssl_context: ssl.SSLContext | None) -> None:
        self.gateway = gateway
        self._busy = 0
        c = gateway.config
        super().__init__(address, _Handler, ssl_context, max_workers=httpd.DEFAULT_MAX_WORKERS,
                         max_connections=c.max_connections, idle_timeout=c.idle_timeout,
                         header_timeout=c.header_timeout, body_timeout=c.body_timeout)

    def busy(self, delta: int) -> None:
        """Count requests being processed (stop() waits for them)."""
        with self._conns_cond:
            self._busy += delta
            self._conns_cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is being processed; False on timeout."""
        with self._conns_cond:
            return self._conns_cond.wait_for(lambda: self._busy == 0, max(0.0, timeout))


class _Handler(BaseHTTPRequestHandler):
    """Routes requests to the gateway; keep-alive, one write per response, quiet."""

    protocol_version = "HTTP/1.1"
    server_version = "vwo-otel-gateway"
    sys_version = ""
    server: _Server

    def do_POST(self) -> None:
        """OTLP export requests."""
        self.server.busy(1)
        try:
            self.server.gateway._serve_post(self)
        finally:
            self.server.busy(-1)

    def do_GET(self) -> None:
        """``/healthz`` and ``/stats``."""
        self.server.gateway._serve_get(self)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Protocol-level errors (bad request line, unsupported method) in one write."""
        self.close_connection = True
        try:
            respond(self, int(code), (message or "error").encode("utf-8", "replace"), _TEXT)
        except OSError:
            logger.debug("vwo_otel gateway: could not send %d", code, exc_info=True)

    def log_message(self, format: str, *args: Any) -> None:
        """http.server's own messages go to the debug log, never stderr."""
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("vwo_otel gateway: " + format, *args)


@dataclass(frozen=True)
class _Token:
    """A configured bearer token, kept as its SHA-256 (compared in constant time), and the
    accounts it may write to (None: all)."""

    digest: bytes
    accounts: frozenset[int] | None


def _digest(token: str | bytes) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape") if isinstance(token, str) else token).digest()


@dataclass
class _Rejected:
    """The VWO items of one request rejected for one reason: how many, and the first one's detail."""

    first: str
    count: int = 0


class _Refused(Exception):
    """A request answered with an error status (``status``, ``code``, ``message``)."""

    def __init__(self, status: int, code: int, message: str, headers: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, tuple(headers)


def _forbidden(allowed: frozenset[int], where: int | str, raw: Any) -> _Refused:
    """403 for an item going to an account outside the token's ``allowed`` ones."""
    target = where if isinstance(where, int) else "no account" if raw is None else otlp.shorten(raw)
    return _Refused(403, otlp.PERMISSION_DENIED, f"this token may write to account(s) "
                    f"{', '.join(map(str, sorted(allowed)))} only; an item goes to {target}; nothing was kept")


class _Budget:
    """Bytes shared by the requests in progress: ``take`` waits for room, ``give`` returns it."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._used = 0
        self._cond = threading.Condition()

    def take(self, n: int, timeout: float) -> bool:
        """Reserve ``n`` bytes (at most the whole budget) within ``timeout`` seconds; False if there was no room."""
        n = min(n, self.total)
        with self._cond:
            if not self._cond.wait_for(lambda: self._used + n <= self.total, timeout):
                return False
            self._used += n
            return True

    def give(self, n: int) -> None:
        """Return what ``take`` reserved."""
        with self._cond:
            self._used -= min(n, self.total)
            self._cond.notify_all()


# -- the gateway ----------------------------------------------------------------------------------

class Gateway:
    """OTLP/HTTP in, VWO batches out: one ``Batcher`` + ``VWOExporter`` per configured account."""

    def __init__(self, config: GatewayConfig) -> None:
        if not isinstance(config, GatewayConfig):
            raise TypeError(f"config must be a GatewayConfig, got {type(config).__name__}")
        self.config = config
        self._stats_lock = threading.Lock()
        self._requests: dict[str, int] = {otlp.TRACES: 0, otlp.LOGS: 0}
        self._responses: dict[int, int] = {}
        self._counts: dict[str, int] = {"items": 0, "vwo_items": 0, "accepted": 0, "throttled_events": 0}
        self._rejected: dict[str, int] = {"malformed": 0, "unknown_account": 0}
        tokens = cast(Mapping[str, "frozenset[int] | None"], config.auth_tokens)  # normalised by GatewayConfig
        self._tokens = [_Token(_digest(t), accounts) for t, accounts in tokens.items()]
        self._ssl = config.ssl_context()
        self._per_account: dict[int, dict[str, int]] = {}
        self._log = LogLimiter()
        self._admit = threading.Lock()
        self._decoding = threading.BoundedSemaphore(DECODE_CONCURRENCY)
        self._bodies = _Budget(BODY_BUDGET_FACTOR * config.max_body_bytes)
        self._stopping = False
        self._stopped: bool | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._port = config.port
        self._batchers: dict[int, Batcher] = {}
        try:
            for acct in config.accounts.values():
                self._batchers[acct.account_id] = self._make_batcher(acct)
        except BaseException:
            for batcher in self._batchers.values():
                batcher.shutdown(0)
            raise

    def _make_batcher(self, acct: Account) -> Batcher:
        c = self.config
        exporter = VWOExporter(acct.account_id, acct.sdk_key, endpoint=acct.endpoint or c.endpoint,
                               timeout=c.timeout, retry=c.retry)
        counts = self._per_account.setdefault(
            acct.account_id, {"accepted": 0, "requests_ok": 0, "requests_failed": 0})

        def settled(err: BaseException | None, events: list[Any]) -> None:
            if isinstance(err, EventsDropped):
                return  # drops: counted by the batcher itself
            with self._stats_lock:
                counts["requests_ok" if err is None else "requests_failed"] += 1

        batch = BatchEvents(c.events_per_request, float(c.request_time_interval), settled)
        spool = None
        if c.spool is not None:
            spool = Spool(os.path.join(os.fspath(c.spool), str(acct.account_id)), max_bytes=c.spool_max_bytes,
                          max_age=c.spool_max_age)
        return Batcher(exporter, batch, max_queue_size=c.max_backlog, shutdown_timeout=max(c.shutdown_timeout, 0.001),
                       spool=spool, count_bytes=True)

    def __repr__(self) -> str:
        return f"Gateway({self.url}, accounts={sorted(self._batchers)}, default={self.config.default_account})"

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        """The bound port (the configured one before start)."""
        return self._port

    @property
    def url(self) -> str:
        """Base URL for OTLP/HTTP senders, e.g. ``http://127.0.0.1:4318``."""
        host, scheme = self.config.host, self.config.scheme
        return f"{scheme}://[{host}]:{self._port}" if ":" in host else f"{scheme}://{host}:{self._port}"

    def start(self) -> Gateway:
        """Bind and serve in a daemon thread; raises ``OSError`` if the address is taken."""
        if self._stopping:
            raise RuntimeError("a stopped gateway cannot be started again")
        if self._server is not None:
            return self
        server = _Server((self.config.host, self.config.port), self, self._ssl)
        self._port = int(server.server_address[1])
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                  name=f"vwo_otel-gateway:{self._port}", daemon=True)
        thread.start()
        self._server, self._thread = server, thread
        logger.info("vwo_otel gateway listening on %s for accounts %s (default %s)", self.url,
                    ", ".join(str(a) for a in sorted(self._batchers)), self.config.default_account)
        return self

    def stop_accepting(self) -> None:
        """From now on, export requests are answered 503 + ``Retry-After`` (nothing is kept)."""
        with self._admit:
            self._stopping = True

    def stop(self, timeout: float | None = None) -> bool:
        """Stop accepting, close the listener and connections, then deliver every backlog
        within ``timeout`` (default ``shutdown_timeout``) in parallel; True if all was
        delivered. Idempotent."""
        if self._stopped is not None:
            return self._stopped
        budget = self.config.shutdown_timeout if timeout is None else max(0.0, float(timeout))
        deadline = time.monotonic() + budget
        self.stop_accepting()
        server, thread = self._server, self._thread
        closing = None
        if server is not None and thread is not None:
            # Requests still in progress can no longer queue anything (stop_accepting): close them
            # while the backlogs are delivered, not before (a slow client must not eat the budget).
            def close() -> None:
                server.shutdown()
                server.server_close()
                server.wait_idle(min(deadline - time.monotonic(), 5.0))
                server.close_connections(min(max(deadline - time.monotonic(), 0.0), 1.0))
                thread.join(1.0)
            closing = threading.Thread(target=close, name=f"vwo_otel-gateway-close:{self._port}", daemon=True)
            closing.start()
        ok = lifecycle.shutdown_all(max(0.0, deadline - time.monotonic()), self._batchers.values())
        if closing is not None:
            closing.join(max(0.0, deadline - time.monotonic()) + 1.0)
        self._log.flush()
        stats = self.stats()
        logger.info("vwo_otel gateway stopped: %d event(s) accepted, delivered %d, failed %d, dropped %s",
                    stats["accepted"], sum(a["delivered"] for a in stats["accounts"].values()),
                    sum(a["failed"] for a in stats["accounts"].values()),
                    {k: v for a in stats["accounts"].values() for k, v in a["dropped"].items()} or 0)
        self._stopped = ok
        return ok

    def flush(self, timeout: float | None = None) -> bool:
        """Send every account's queued events now; True if all of it was delivered in time."""
        deadline = None if timeout is None else time.monotonic() + timeout
        ok = True
        for batcher in self._batchers.values():
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ok = batcher.flush(left) and ok
        return ok

    def __enter__(self) -> Gateway:
        return self.start()

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def stats(self) -> dict[str, Any]:
        """Counters: requests by signal, responses by status, items seen, VWO events accepted /
        rejected by reason, and per account what was accepted, delivered, failed, dropped, queued
        (events and bytes) and waiting on disk."""
        with self._stats_lock:
            out: dict[str, Any] = {
                "requests": dict(self._requests),
                "responses": {str(k): v for k, v in sorted(self._responses.items())},
                **self._counts,
                "ignored_items": self._counts["items"] - self._counts["vwo_items"],
                "rejected": dict(self._rejected),
            }
            per = {k: dict(v) for k, v in self._per_account.items()}
        accounts = {}
        for account_id, batcher in sorted(self._batchers.items()):
            accounts[str(account_id)] = {
                **per.get(account_id, {}), **batcher.counts, "dropped": dict(batcher.dropped),
                "backlog": batcher.queue_size(), "max_backlog": self.config.max_backlog,
                "backlog_bytes": batcher.queue_bytes(), "max_backlog_bytes": self.config.max_backlog_bytes,
                # waiting on disk (spool) for VWO to answer again; after stop, all left there for the next start
                "on_disk": batcher.backlog.on_disk(),
            }
        out["accounts"] = accounts
        return out

    # -- serving -----------------------------------------------------------------------------------
    def _serve_get(self, h: _Handler) -> None:
        path = urlsplit(h.path).path
        if path == "/stats":
            try:
                if self._authenticate(h) is not None:
                    raise _Refused(403, otlp.PERMISSION_DENIED, "/stats needs a token for every account\n")
            except _Refused as refused:
                self._count_response(refused.status)
                respond(h, refused.status, refused.message.encode(), _TEXT, refused.headers)
                return
        if path == "/healthz":
            if self._stopping:
                respond(h, 503, b"stopping\n", _TEXT, (("Retry-After", self._retry_after()),))
            else:
                respond(h, 200, b"ok\n", _TEXT)
        elif path == "/stats":
            respond(h, 200, json.dumps(self.stats(), separators=(",", ":")).encode(), otlp.JSON)
        elif path in _ROUTES:
            respond(h, 405, b"use POST\n", _TEXT, (("Allow", "POST"),))
        else:
            respond(h, 404, b"not found: POST /v1/traces or /v1/logs; GET /healthz or /stats\n", _TEXT)

    def _serve_post(self, h: _Handler) -> None:
        signal_ = _ROUTES.get(urlsplit(h.path).path)
        ctype = h.headers.get("Content-Type") or ""
        media = otlp.MEDIA_TYPES.get(ctype.split(";", 1)[0].strip().lower())
        reserved = 0
        try:
            allowed = self._authenticate_post(h)
            reserved = self._reserve_body(h)
            body = self._read_body(h)
            if signal_ is None:
                raise _Refused(404, otlp.UNIMPLEMENTED, "unknown path: POST /v1/traces or /v1/logs")
            with self._stats_lock:
                self._requests[signal_] += 1
            if media is None:
                raise _Refused(415, otlp.INVALID_ARGUMENT, f"unsupported Content-Type {ctype!r}: use "
                               f"{otlp.PROTOBUF} or {otlp.JSON}")
            if media == otlp.PROTOBUF and not otlp.protobuf_available():
                raise _Refused(415, otlp.UNIMPLEMENTED, "this gateway cannot decode protobuf (install "
                               "'vwo-otel[gateway]' for opentelemetry-proto); send OTLP/JSON or install it")
            if not self._decoding.acquire(timeout=BODY_WAIT):  # at most DECODE_CONCURRENCY inflated at once
                raise _Refused(503, otlp.UNAVAILABLE, "too many requests being decoded; retry",
                               (("Retry-After", self._retry_after()),))
            try:
                try:
                    data = otlp.decompress(body, h.headers.get("Content-Encoding"), self.config.max_inflated_bytes)
                    del body
                    decoded = otlp.decode(signal_, media, data, self.config.max_items)
                    del data
                finally:
                    self._decoding.release()
            except otlp.UnsupportedEncoding as exc:
                raise _Refused(415, otlp.INVALID_ARGUMENT, str(exc)) from None
            except otlp.TooLarge as exc:
                raise _Refused(413, otlp.INVALID_ARGUMENT, str(exc)) from None
            except otlp.DecodeError as exc:
                raise _Refused(400, otlp.INVALID_ARGUMENT, str(exc)[:_MAX_MESSAGE]) from None
            rejected, message = self._accept(signal_, decoded, allowed)
        except _Refused as refused:
            self._count_response(refused.status)
            reply, reply_type = otlp.encode_status(media, refused.code, refused.message)
            respond(h, refused.status, reply, reply_type, refused.headers)
            return
        except Exception:  # a bug must never take the gateway down: answer 500, keep serving
            self._log.warn("internal_error", 0, "vwo_otel gateway: unexpected error handling a request",
                           exc_info=True)
            self._count_response(500)
            reply, reply_type = otlp.encode_status(media, otlp.INTERNAL, "internal error")
            h.close_connection = True
            respond(h, 500, reply, reply_type)
            return
        finally:
            self._bodies.give(reserved)
        self._count_response(200)
        respond(h, 200, otlp.encode_response(signal_, media, rejected, message), media)

    def _count_response(self, status: int) -> None:
        with self._stats_lock:
            self._responses[status] = self._responses.get(status, 0) + 1

    def _authenticate(self, h: _Handler) -> frozenset[int] | None:
        """The accounts the request's bearer token may write to (None: all, also when no tokens
        are configured); ``_Refused`` 401 without a valid token. Every token is compared, in
        constant time, so the answer's timing tells nothing about which one nearly matched."""
        if not self._tokens:
            return None
        scheme, _, given = (h.headers.get("Authorization") or "").strip().partition(" ")
        digest = _digest(given.strip().encode("latin-1", "replace")) if scheme.lower() == "bearer" else b""
        found: _Token | None = None
        for token in self._tokens:
            if hmac.compare_digest(token.digest, digest):
                found = token
        if found is None:
            raise _Refused(401, otlp.UNAUTHENTICATED, "missing or wrong bearer token: send Authorization: "
                           "Bearer <token> (one of the gateway's auth_tokens)", (_WWW_AUTHENTICATE,))
        return found.accounts

    def _authenticate_post(self, h: _Handler) -> frozenset[int] | None:
        """``_authenticate``; a refused request's body is dropped unparsed: up to
        ``_UNAUTHENTICATED_DRAIN`` bytes within a second are read (so a sender sees its 401 on a
        usable connection), a larger or slower one is not and the connection closes (an
        anonymous client must not hold a worker for a whole slow body)."""
        try:
            return self._authenticate(h)
        except _Refused:
            read_body(h, 0, _UNAUTHENTICATED_DRAIN, timeout=1.0)  # closes the connection past that size or time
            raise

    def _reserve_body(self, h: _Handler) -> int:
        """Reserve the body's bytes in the shared budget before reading it (its Content-Length,
        ``max_body_bytes`` when chunked; none for one that will be refused as too large);
        ``_Refused`` 503 when no room frees within ``BODY_WAIT``. Returns the bytes to give back."""
        limit = self.config.max_body_bytes
        if h.headers.get("Transfer-Encoding"):
            n = limit
        else:
            try:
                n = int(h.headers.get("Content-Length") or 0)
            except ValueError:
                n = 0
            n = n if 0 < n <= limit else 0
        if n and not self._bodies.take(n, BODY_WAIT):
            h.close_connection = True  # the body stays unread
            raise _Refused(503, otlp.UNAVAILABLE, "too many request bodies in progress; retry",
                           (("Retry-After", self._retry_after()),))
        return n

    def _read_body(self, h: _Handler) -> bytes:
        """The request body (Content-Length or chunked), at most ``max_body_bytes``; else ``_Refused``."""
        limit = self.config.max_body_bytes
        body = read_body(h, limit, _DRAIN_LIMIT)
        problem = body.problem
        if problem is None and body.data is not None:
            return body.data
        if problem == "too-large":
            size = "" if h.headers.get("Transfer-Encoding") else f" of {body.nbytes} bytes"
            raise _Refused(413, otlp.INVALID_ARGUMENT, f"body{size} is larger than {limit} bytes")
        h.close_connection = True
        if problem == "no-length":
            raise _Refused(411, otlp.INVALID_ARGUMENT, "Content-Length required")
        if problem == "bad-transfer-encoding":
            te = h.headers.get("Transfer-Encoding")
            raise _Refused(400, otlp.INVALID_ARGUMENT, f"unsupported Transfer-Encoding {te!r}")
        if problem == "bad-length":
            raise _Refused(400, otlp.INVALID_ARGUMENT, "bad Content-Length")
        if problem == "bad-chunked":
            raise _Refused(400, otlp.INVALID_ARGUMENT, "malformed chunked body")
        raise _Refused(400, otlp.INVALID_ARGUMENT, f"body ended after {body.nbytes} bytes, before its announced end")

    def _retry_after(self) -> str:
        return str(max(0, math.ceil(self.config.retry_after)))

    # -- routing and admission ------------------------------------------------------------------
    def _full(self, account_id: int, n: int, nbytes: int) -> str | None:
        """Why account ``account_id`` cannot take ``n`` more events of ``nbytes``, or None. The
        backlog takes up to ``max_backlog`` events and ``max_backlog_bytes`` (a request larger
        than either is taken once the backlog is below it: it could never fit otherwise, and
        ``max_inflated_bytes`` bounds it); with a spool, the disk must have room for the whole
        backlog should VWO stop answering."""
        c, batcher = self.config, self._batchers[account_id]
        held, held_bytes = batcher.queue_size(), batcher.queue_bytes()
        if not (held + n <= c.max_backlog or (n > c.max_backlog and held < c.max_backlog)):
            return "backlog full (events)"
        if not (held_bytes + nbytes <= c.max_backlog_bytes or (nbytes > c.max_backlog_bytes and held_bytes == 0)):
            return "backlog full (bytes)"
        return batcher.backlog.refuse(held_bytes, nbytes)

    def _resolve(self, raw: Any) -> int | str:
        """The configured account an item goes to, or why it cannot go anywhere."""
        if raw is None:
            if self.config.default_account is None:
                return "unknown_account"
            return self.config.default_account
        try:
            account_id = checks.account_id(raw, ACCOUNT_ID)
        except ValueError:
            return "malformed_account"
        return account_id if account_id in self._batchers else "unknown_account"

    def _accept(self, signal_: str, decoded: otlp.Decoded, allowed: frozenset[int] | None) -> tuple[int, str]:
        """Turn the request's VWO items into events and queue them all, or refuse the whole
        request (403 an item for an account outside ``allowed``, 429/503); returns
        (rejected items, partial-success message)."""
        by_account: dict[int, list[VWOEvent]] = {}
        sizes: dict[int, int] = {}  # their VWOEvent.nbytes
        problems: dict[str, _Rejected] = {}

        def reject(reason: str, detail: str, count: int = 1) -> None:
            problems.setdefault(reason, _Rejected(detail)).count += count

        if decoded.oversized:
            reject("malformed", f"larger than {otlp.MAX_ITEM_BYTES} bytes", decoded.oversized)

        for group in decoded.groups:
            for item in group.items:
                attrs = item.attributes
                raw = attrs.get(ACCOUNT_ID, group.account)
                where = self._resolve(raw)
                if allowed is not None and where not in allowed:
                    raise _forbidden(allowed, where, raw)
                if isinstance(where, str):
                    if where == "unknown_account":
                        reject("unknown_account", f"{ACCOUNT_ID} {raw} is not configured on this gateway"
                               if raw is not None else f"no {ACCOUNT_ID} and no default account")
                    else:
                        reject("malformed", f"{ACCOUNT_ID} must be a positive integer, got {otlp.shorten(raw)}")
                    continue
                try:
                    event = from_attributes(attrs, item.time_ns)
                except MalformedEvent as exc:
                    reject("malformed", str(exc))
                    continue
                nbytes = event.nbytes()
                if nbytes > otlp.MAX_ITEM_BYTES:
                    reject("malformed", f"larger than {otlp.MAX_ITEM_BYTES} bytes")
                    continue
                by_account.setdefault(where, []).append(event)
                sizes[where] = sizes.get(where, 0) + nbytes
        with self._admit:
            if self._stopping:
                raise _Refused(503, otlp.UNAVAILABLE, "gateway is shutting down; retry (elsewhere)",
                               (("Retry-After", self._retry_after()),))
            full = {a: why for a, events in by_account.items()
                    if (why := self._full(a, len(events), sizes[a])) is not None}
            if full:
                throttled = sum(len(by_account[a]) for a in full)
                with self._stats_lock:
                    self._counts["throttled_events"] += decoded.vwo_items
                what = "; ".join(f"account {a}: {why}" for a, why in full.items())
                self._log.warn(("backlog_full", tuple(full.items())), throttled,
                               "vwo_otel gateway: %s; answering 429 (sender retries)", what)
                raise _Refused(429, otlp.RESOURCE_EXHAUSTED, f"{what}; retry later",
                               (("Retry-After", self._retry_after()),))
            for account_id, events in by_account.items():
                self._batchers[account_id].admit(events)
        # counted once queued (before the disk): accepted never trails delivered
        rejected = sum(p.count for p in problems.values())
        with self._stats_lock:
            self._counts["items"] += decoded.items
            self._counts["vwo_items"] += decoded.vwo_items
            self._counts["accepted"] += decoded.vwo_items - rejected
            for reason, p in problems.items():
                self._rejected[reason] += p.count
            for account_id, events in by_account.items():
                self._per_account[account_id]["accepted"] += len(events)
        for account_id in by_account:  # durable before the sender hears 200 (kill -9 loses nothing)
            if not self._batchers[account_id].backlog.commit():
                # Queued in memory but not on disk: the sender must keep its copy. If this gateway
                # delivers its own, the sender's retry makes a duplicate, never a loss.
                raise _Refused(503, otlp.UNAVAILABLE, f"account {account_id}: the spool cannot write to disk; "
                               "retry later", (("Retry-After", self._retry_after()),))
        if not rejected:
            return 0, ""
        parts = [f"{p.count} {reason.replace('_', ' ')} ({p.first})" for reason, p in problems.items()]
        message = f"rejected {rejected} of {decoded.vwo_items} VWO event(s): " + "; ".join(parts)
        for reason, p in problems.items():
            self._log.warn(("rejected", reason), p.count, "vwo_otel gateway: rejected %d VWO %s(s) as %s: %s",
                           p.count, "span" if signal_ == otlp.TRACES else "log record", reason, p.first)
        return rejected, message[:_MAX_MESSAGE]
