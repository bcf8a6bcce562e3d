"""Configuration from the environment (``VWO_*`` variables); explicit arguments always win.

    exporter = vwo_otel.exporter_from_env()                 # VWO_ACCOUNT_ID, VWO_SDK_KEY, ...
    processor = vwo_otel.span_processor_from_env()          # exporter + batching from the env
    processor = vwo_otel.log_processor_from_env(batch_events={"flush_callback": cb})

A variable that is unset or empty counts as not given. A bad value raises ``ConfigError`` (a
``ValueError``) naming the variable and the allowed range. Each variable's text is converted
here; the range itself is checked by ``checks``, as for the matching keyword argument.

A ``VWO_*`` name this module does not read never disables anything: apps have their own
(``VWO_ENV``, ``VWO_DEBUG``, ...). The names are logged once, in one warning, with "did you
mean" only for a close misspelling of a variable that is read (``MISSPELLING``).
"""

from __future__ import annotations

import difflib
import enum
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from . import checks
from .config import _UNSET, BatchEvents, BatchEventsLike, batch_events_argument, parse_batch_events
from .errors import ConfigError as ConfigError  # also importable from here, as before
from .export.exporter import VWOExporter
from .export.retry import RetryPolicy
from .processor import VWOLogRecordProcessor, VWOProcessor, VWOSpanProcessor

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider

    from ._engine.spool import Spool

logger = logging.getLogger("vwo_otel")
P = TypeVar("P", bound=VWOProcessor)


@dataclass(frozen=True)
class Variable:
    """One ``VWO_*`` variable: the keyword argument it stands for, how its text becomes that
    argument (``parse(name, text)`` raises ``ValueError``/``TypeError`` when it cannot), and
    the allowed values in words, as errors and the README show them."""

    key: str
    parse: Callable[[str, str], Any]
    allowed: str
    secret: bool = False  # its value is never shown in an error


def _number(key: str, allowed: checks.Range) -> Variable:
    convert: Callable[[str], float] = int if allowed.integer else float
    return Variable(key, lambda name, text: allowed.check(name, convert(text)), str(allowed))


#: Every variable read (the README's table states the same facts).
VARIABLES: dict[str, Variable] = {
    "VWO_ACCOUNT_ID": Variable("account_id", lambda name, text: checks.account_id(text, name),
                               "a positive int (your VWO account id)"),
    "VWO_SDK_KEY": Variable("sdk_key", lambda name, text: checks.sdk_key(text, name),
                            "non-empty printable ASCII text (your VWO SDK key; it is sent as a header)",
                            secret=True),
    "VWO_ENDPOINT": Variable("endpoint", lambda name, text: checks.endpoint(text, name),
                             "an http(s) URL of VWO's host, optionally with a path prefix, without a query, "
                             f"a fragment or VWO's /server-side/ path (default {checks.DEFAULT_ENDPOINT})"),
    "VWO_EVENTS_PER_REQUEST": _number("events_per_request", checks.EVENTS_PER_REQUEST),
    "VWO_REQUEST_TIME_INTERVAL": _number("request_time_interval", checks.REQUEST_TIME_INTERVAL),
    "VWO_MAX_QUEUE_SIZE": _number("max_queue_size", checks.MAX_QUEUE_SIZE),
    "VWO_MAX_CONCURRENT_REQUESTS": _number("max_concurrent_requests", checks.MAX_CONCURRENT_REQUESTS),
    "VWO_SHUTDOWN_TIMEOUT": _number("shutdown_timeout", checks.SHUTDOWN_TIMEOUT),
    "VWO_RETRY_BUDGET": _number("retry_budget", checks.RETRY_BUDGET),
    "VWO_MAX_PAYLOAD_BYTES": _number("max_payload_bytes", checks.MAX_PAYLOAD_BYTES),
    "VWO_TIMEOUT": _number("timeout", checks.TIMEOUT),
    "VWO_METRICS": Variable("metrics", checks.flag, checks.FLAG_WORDS),
    "VWO_DISABLED": Variable("disabled", checks.flag, checks.FLAG_WORDS + "; true: development mode (events are "
                             "checked and counted, nothing is sent)"),
    # read by the engine itself (vwo_otel._engine.signals), listed here so it is known
    "VWO_SIGNALS": Variable("signals", checks.flag, checks.FLAG_WORDS + "; default true: deliver before "
                            "SIGTERM / SIGINT's default action ends the process"),
    "VWO_SPOOL": Variable("spool", lambda name, text: text, "a directory path (turns the on-disk spool on)"),
}

#: The gateway's per-account sdk keys (``vwo-otel gateway --account ID``): not settings of this module.
SDK_KEY_ENV = "VWO_SDK_KEY_{account_id}"
#: How alike (difflib's ratio) an unknown name must be to a variable that is read to be called a
#: misspelling of it: ``VWO_EVNETS_PER_REQUEST`` (0.95) is one; an app's own ``VWO_TIMEOUT_MS``
#: or ``VWO_ACCOUNT`` (0.88) is not.
MISSPELLING = 0.9
_warned: set[str] = set()  # unknown names already warned about


def given(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The text of variable ``name`` without surrounding spaces; None when it is unset or
    empty (both count as not given)."""
    raw = (os.environ if environ is None else environ).get(name)
    text = raw.strip() if raw is not None else ""
    return text or None


def unknown_names(environ: Mapping[str, str] | None = None) -> list[tuple[str, str | None]]:
    """The set ``VWO_*`` variables that vwo_otel does not read (the gateway's ``VWO_SDK_KEY_<ID>``
    keys are read), each with the variable it is a close misspelling of, or None."""
    env = os.environ if environ is None else environ
    gateway_prefix = SDK_KEY_ENV.format(account_id="")
    out: list[tuple[str, str | None]] = []
    for name in sorted(env):
        if not name.startswith("VWO_") or name in VARIABLES or not given(name, env):
            continue
        suffix = name[len(gateway_prefix):]
        if name.startswith(gateway_prefix) and suffix.isascii() and suffix.isdigit():
            continue
        close = difflib.get_close_matches(name, VARIABLES, n=1, cutoff=MISSPELLING)
        out.append((name, close[0] if close else None))
    return out


def describe_unknown(names: list[tuple[str, str | None]]) -> str:
    """``names`` (from ``unknown_names``) in words, as the warning and ``vwo-otel check`` say them."""
    listed = ", ".join(f"{name} (did you mean {close}?)" if close else name for name, close in names)
    what = "not a vwo_otel variable" if len(names) == 1 else "not vwo_otel variables"
    return f"ignoring {listed}: {what} (vwo_otel reads {', '.join(VARIABLES)})"


def _warn_unknown(env: Mapping[str, str]) -> None:
    """One warning for the unknown names not warned about yet; they change nothing."""
    names = [(name, close) for name, close in unknown_names(env) if name not in _warned]
    if names:
        _warned.update(name for name, _ in names)
        logger.warning("%s", describe_unknown(names))


def read_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The ``VWO_*`` variables that are set, parsed and checked, by keyword (``account_id``,
    ``sdk_key``, ``endpoint``, ``events_per_request``, ...). Raises ``ConfigError``."""
    env = os.environ if environ is None else environ
    _warn_unknown(env)
    out: dict[str, Any] = {}
    for name, var in VARIABLES.items():
        text = given(name, env)
        if text is None:
            continue
        try:
            out[var.key] = var.parse(name, text)
        except (ValueError, TypeError, OverflowError):
            shown = "***" if var.secret else repr(text)
            raise ConfigError(name, f"{name} must be {var.allowed}, got {shown}") from None
    return out


def _require(settings: Mapping[str, Any], key: str, name: str, what: str) -> Any:
    if settings.get(key) is None:
        raise ConfigError(name, f"{name} is not set: set it to {what}, or pass {key}=")
    return settings[key]


def exporter_from_env(*, environ: Mapping[str, str] | None = None, account_id: int | str | None = None,
                      sdk_key: str | None = None, endpoint: str | None = None, timeout: float | None = None,
                      retry: RetryPolicy | None = None, max_payload_bytes: int | None = None,
                      disabled: bool | None = None) -> VWOExporter:
    """A ``VWOExporter`` from ``VWO_ACCOUNT_ID``, ``VWO_SDK_KEY``, ``VWO_ENDPOINT``, ``VWO_TIMEOUT``,
    ``VWO_RETRY_BUDGET``, ``VWO_MAX_PAYLOAD_BYTES`` and ``VWO_DISABLED``; arguments that are not None win."""
    settings = read_env(environ)
    given_args = {"account_id": account_id, "sdk_key": sdk_key, "endpoint": endpoint, "timeout": timeout,
                  "max_payload_bytes": max_payload_bytes, "disabled": disabled}
    settings.update((k, v) for k, v in given_args.items() if v is not None)
    if retry is None and "retry_budget" in settings:
        retry = RetryPolicy(budget=settings["retry_budget"])
    kwargs: dict[str, Any] = {key: settings[key] for key in ("endpoint", "timeout", "max_payload_bytes", "disabled")
                              if key in settings}
    return VWOExporter(
        _require(settings, "account_id", "VWO_ACCOUNT_ID", "your VWO account id"),
        _require(settings, "sdk_key", "VWO_SDK_KEY", "your VWO SDK key"),
        retry=retry,
        **kwargs,
    )


class _FromEnv(enum.Enum):
    FROM_ENV = "FROM_ENV"

    def __repr__(self) -> str:
        return "FROM_ENV"


#: Default of ``batch_events`` in ``*_from_env``: batching from ``VWO_EVENTS_PER_REQUEST`` /
#: ``VWO_REQUEST_TIME_INTERVAL`` when either is set, else real-time mode (as VWO's SDKs).
FROM_ENV: Literal[_FromEnv.FROM_ENV] = _FromEnv.FROM_ENV
BatchEventsFromEnv = BatchEventsLike | Literal[_FromEnv.FROM_ENV]


def batch_events_from_env(batch_events: BatchEventsFromEnv = FROM_ENV, *,
                          environ: Mapping[str, str] | None = None) -> BatchEvents | None:
    """``batch_events`` with the keys it lacks taken from ``VWO_EVENTS_PER_REQUEST`` and
    ``VWO_REQUEST_TIME_INTERVAL``. ``None`` (real-time) is kept as it is."""
    if batch_events is None:
        return None
    settings = read_env(environ)
    from_env: dict[str, Any] = {k: settings[k] for k in ("events_per_request", "request_time_interval")
                                if k in settings}
    if batch_events is FROM_ENV:
        return parse_batch_events(from_env) if from_env else None
    if isinstance(batch_events, Mapping):
        return parse_batch_events({**from_env, **batch_events})
    return parse_batch_events(batch_events)  # a BatchEvents as it is; anything else raises the usual TypeError


def processor_from_env(cls: type[P], batch_events: BatchEventsFromEnv = FROM_ENV, *,
                       batch_event_data: BatchEventsFromEnv = _UNSET, exporter: VWOExporter | None = None,
                       environ: Mapping[str, str] | None = None,
                       max_queue_size: int | None = None, shutdown_timeout: float | None = None,
                       max_concurrent_requests: int | None = None, meter_provider: MeterProvider | None = None,
                       spool: str | os.PathLike[str] | Spool | None = None, block_when_full: float | None = None,
                       background: bool | None = None, **exporter_args: Any) -> P:
    """``cls`` (``VWOSpanProcessor`` or ``VWOLogRecordProcessor``) configured from the environment;
    ``exporter_args`` (``account_id``, ``sdk_key``, ``endpoint``, ...) go to ``exporter_from_env``.
    ``VWO_METRICS=true`` reports metrics to the global meter provider unless one is passed.
    ``block_when_full`` and ``background`` have no variable: given, they go to ``cls`` as they are."""
    settings = read_env(environ)
    if exporter is None:
        exporter = exporter_from_env(environ=environ, **exporter_args)
    elif exporter_args:
        raise TypeError(f"pass exporter= or exporter settings ({', '.join(sorted(exporter_args))}), not both")
    given_args = {"max_queue_size": max_queue_size, "max_concurrent_requests": max_concurrent_requests,
                  "shutdown_timeout": shutdown_timeout, "spool": spool}
    kwargs: dict[str, Any] = {}
    for key, value in given_args.items():
        value = value if value is not None else settings.get(key)
        if value is not None:
            kwargs[key] = value
    if meter_provider is None and settings.get("metrics"):
        from opentelemetry import metrics

        meter_provider = metrics.get_meter_provider()
    if meter_provider is not None:
        kwargs["meter_provider"] = meter_provider
    for key, value in (("block_when_full", block_when_full), ("background", background)):
        if value is not None:
            kwargs[key] = value
    batch_events = batch_events_argument(batch_events, batch_event_data, default=FROM_ENV)
    return cls(exporter, batch_events_from_env(batch_events, environ=environ), **kwargs)


def span_processor_from_env(batch_events: BatchEventsFromEnv = FROM_ENV, **kwargs: Any) -> VWOSpanProcessor:
    """A ``VWOSpanProcessor`` (and its exporter) from the ``VWO_*`` variables; keyword
    arguments (``account_id``, ``sdk_key``, ``endpoint``, ``max_queue_size``, ...) win, but every
    variable set is still checked: a bad one raises ``ConfigError`` even where an argument wins."""
    return processor_from_env(VWOSpanProcessor, batch_events, **kwargs)


def log_processor_from_env(batch_events: BatchEventsFromEnv = FROM_ENV, **kwargs: Any) -> VWOLogRecordProcessor:
    """A ``VWOLogRecordProcessor`` (and its exporter) from the ``VWO_*`` variables; arguments win
    (every variable set is still checked, as for ``span_processor_from_env``)."""
    return processor_from_env(VWOLogRecordProcessor, batch_events, **kwargs)
