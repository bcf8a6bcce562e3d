"""The gateway's configuration: ``GatewayConfig`` (validated when built, every numeric range
from ``checks.py``), its accounts (``Account``), the JSON file's keys (``config_from_mapping``) and
``--account ID[=KEY]`` (``parse_account``). SDK keys and tokens never appear in a repr."""

from __future__ import annotations

import ipaddress
import os
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ... import checks
from ..._engine.spool import DEFAULT_MAX_AGE as DEFAULT_SPOOL_MAX_AGE
from ..._engine.spool import DEFAULT_MAX_BYTES as DEFAULT_SPOOL_MAX_BYTES
from ...checks import DEFAULT_ENDPOINT
from ...export.retry import RetryPolicy
from .. import httpd, otlp

DEFAULT_PORT = 4318
DEFAULT_MAX_BACKLOG = 50_000
DEFAULT_MAX_BACKLOG_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_INFLATED_BYTES = 32 * 1024 * 1024
#: Environment variable holding the sdk key of ``--account ID`` given without ``=KEY``.
SDK_KEY_ENV = "VWO_SDK_KEY_{account_id}"
#: Each numeric setting and its range (``checks.py`` owns them; the SDK's own settings share theirs).
_RANGES: dict[str, checks.Range] = {
    "port": checks.PORT, "events_per_request": checks.EVENTS_PER_REQUEST,
    "request_time_interval": checks.REQUEST_TIME_INTERVAL, "max_backlog": checks.MAX_QUEUE_SIZE,
    "max_backlog_bytes": checks.MAX_BACKLOG_BYTES, "max_items": checks.MAX_ITEMS,
    "spool_max_bytes": checks.SPOOL_MAX_BYTES, "spool_max_age": checks.SPOOL_MAX_AGE,
    "retry_after": checks.RETRY_AFTER, "shutdown_timeout": checks.SHUTDOWN_TIMEOUT, "timeout": checks.TIMEOUT,
    "max_body_bytes": checks.MAX_BODY_BYTES, "max_inflated_bytes": checks.MAX_BODY_BYTES,
    "idle_timeout": checks.SERVER_TIMEOUT, "header_timeout": checks.SERVER_TIMEOUT,
    "body_timeout": checks.SERVER_TIMEOUT, "max_connections": checks.MAX_CONNECTIONS, "workers": checks.WORKERS,
}


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
    #: Processes serving the port (``vwo-otel gateway``; ``workers.py``): each with its own
    #: backlogs and spool files, the connections spread over them; the bounds above are each one's.
    workers: int = 1

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
            if len(self.accounts) > 1:
                raise ValueError(f"default_account {default} with {len(self.accounts)} accounts: an event without "
                                 f"{otlp.ACCOUNT_ID} could belong to any of them (collectors drop a resource's "
                                 "attributes when they split a batch), so a gateway with several accounts has no "
                                 f"default; put {otlp.ACCOUNT_ID} on each record (VWOEvents(to_gateway=True) does) "
                                 "and remove default_account")
            object.__setattr__(self, "default_account", default)
        for name, allowed in _RANGES.items():
            allowed.check(name, getattr(self, name))
        if self.max_backlog < self.events_per_request:
            raise ValueError(f"max_backlog ({self.max_backlog}) must be at least events_per_request "
                             f"({self.events_per_request}): a backlog smaller than one batch answers 429 until "
                             "request_time_interval sends it")
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
               "body_timeout", "max_connections", "workers")


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
        merged["retry"] = RetryPolicy(budget=checks.RETRY_BUDGET.check("retry_budget", budget))
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
