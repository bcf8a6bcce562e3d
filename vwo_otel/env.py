"""Configuration from the environment (``VWO_*`` variables); explicit arguments always win.

    exporter = vwo_otel.exporter_from_env()                 # VWO_ACCOUNT_ID, VWO_SDK_KEY, ...
    processor = vwo_otel.span_processor_from_env()          # exporter + batching from the env
    processor = vwo_otel.log_processor_from_env(batch_events={"flush_callback": cb})

A variable that is unset or empty counts as not given. A bad value raises ``ConfigError``
(a ``ValueError``) naming the variable and the allowed range.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar
from urllib.parse import urlsplit

from .config import MAX_EVENTS_PER_REQUEST, BatchEvents, BatchEventsLike, parse_batch_events
from .export.exporter import DEFAULT_ENDPOINT, MAX_PAYLOAD_BYTES, VWOExporter
from .export.retry import RetryPolicy
from .processor import VWOLogRecordProcessor, VWOSpanProcessor, _VWOProcessor

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider

    from ._engine.spool import Spool

P = TypeVar("P", bound=_VWOProcessor)


class ConfigError(ValueError):
    """A ``VWO_*`` variable is missing or has a bad value; ``variable`` names it."""

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(message)
        self.variable = variable


class _Var(NamedTuple):
    parse: Callable[[str], Any]
    allowed: str  # the allowed range, as shown in errors and docs
    key: str  # the keyword argument it stands for


def _int(lo: int, hi: float = math.inf) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if not lo <= value <= hi:
            raise ValueError
        return value
    return parse


def _seconds(lo: float, *, inclusive: bool = True) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = float(text)
        if not math.isfinite(value) or value < lo or (value == lo and not inclusive):
            raise ValueError
        return value
    return parse


def _account(text: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise ValueError
    return int(text)


def _text(text: str) -> str:
    return text


def _url(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError
    return text


def _flag(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError


#: Every variable read, with the allowed values (the README's table is made from the same facts).
VARIABLES: dict[str, _Var] = {
    "VWO_ACCOUNT_ID": _Var(_account, "a positive int (your VWO account id)", "account_id"),
    "VWO_SDK_KEY": _Var(_text, "a non-empty string (your VWO SDK key)", "sdk_key"),
    "VWO_ENDPOINT": _Var(_url, f"an http(s) URL (default {DEFAULT_ENDPOINT})", "endpoint"),
    "VWO_EVENTS_PER_REQUEST": _Var(_int(1, MAX_EVENTS_PER_REQUEST), f"an int from 1 to {MAX_EVENTS_PER_REQUEST}",
                                   "events_per_request"),
    "VWO_REQUEST_TIME_INTERVAL": _Var(_seconds(1.0), "a number of seconds >= 1", "request_time_interval"),
    "VWO_MAX_QUEUE_SIZE": _Var(_int(1), "an int >= 1", "max_queue_size"),
    "VWO_MAX_CONCURRENT_REQUESTS": _Var(_int(1, 64), "an int from 1 to 64", "max_concurrent_requests"),
    "VWO_SHUTDOWN_TIMEOUT": _Var(_seconds(0.0, inclusive=False), "a number of seconds > 0", "shutdown_timeout"),
    "VWO_RETRY_BUDGET": _Var(_seconds(0.0), "a number of seconds >= 0", "retry_budget"),
    "VWO_MAX_PAYLOAD_BYTES": _Var(_int(1024, MAX_PAYLOAD_BYTES), f"an int from 1024 to {MAX_PAYLOAD_BYTES}",
                                  "max_payload_bytes"),
    "VWO_TIMEOUT": _Var(_seconds(0.0, inclusive=False), "a number of seconds > 0", "timeout"),
    "VWO_METRICS": _Var(_flag, "true or false", "metrics"),
    "VWO_SPOOL": _Var(_text, "a directory path (turns the on-disk spool on)", "spool"),
}


def read_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The ``VWO_*`` variables that are set, parsed and checked, by keyword (``account_id``,
    ``sdk_key``, ``endpoint``, ``events_per_request``, ...). Raises ``ConfigError``."""
    env = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    for name, var in VARIABLES.items():
        raw = env.get(name)
        if raw is None or not raw.strip():
            continue
        text = raw.strip()
        try:
            out[var.key] = var.parse(text)
        except (ValueError, OverflowError):
            shown = "***" if name == "VWO_SDK_KEY" else repr(text)
            raise ConfigError(name, f"{name} must be {var.allowed}, got {shown}") from None
    return out


def _require(settings: Mapping[str, Any], key: str, name: str, what: str) -> Any:
    if settings.get(key) is None:
        raise ConfigError(name, f"{name} is not set: set it to {what}, or pass {key}=")
    return settings[key]


def exporter_from_env(*, environ: Mapping[str, str] | None = None, account_id: int | str | None = None,
                      sdk_key: str | None = None, endpoint: str | None = None, timeout: float | None = None,
                      retry: RetryPolicy | None = None, max_payload_bytes: int | None = None) -> VWOExporter:
    """A ``VWOExporter`` from ``VWO_ACCOUNT_ID``, ``VWO_SDK_KEY``, ``VWO_ENDPOINT``, ``VWO_TIMEOUT``,
    ``VWO_RETRY_BUDGET`` and ``VWO_MAX_PAYLOAD_BYTES``; arguments that are not None win."""
    settings = read_env(environ)
    given = {"account_id": account_id, "sdk_key": sdk_key, "endpoint": endpoint, "timeout": timeout,
             "max_payload_bytes": max_payload_bytes}
    settings.update((k, v) for k, v in given.items() if v is not None)
    kwargs: dict[str, Any] = {
        "endpoint": settings.get("endpoint", DEFAULT_ENDPOINT),
        "retry": retry if retry is not None else (
            RetryPolicy(budget=settings["retry_budget"]) if "retry_budget" in settings else None),
    }
    for key in ("timeout", "max_payload_bytes"):
        if key in settings:
            kwargs[key] = settings[key]
    return VWOExporter(
        _require(settings, "account_id", "VWO_ACCOUNT_ID", "your VWO account id"),
        _require(settings, "sdk_key", "VWO_SDK_KEY", "your VWO SDK key"),
        **kwargs,
    )


class _FromEnv:
    def __repr__(self) -> str:
        return "FROM_ENV"


#: Default of ``batch_events`` in ``from_env``: batching from ``VWO_EVENTS_PER_REQUEST`` /
#: ``VWO_REQUEST_TIME_INTERVAL`` when either is set, else real-time mode (as VWO's SDKs).
FROM_ENV: Any = _FromEnv()


def batch_events_from_env(batch_events: BatchEventsLike | _FromEnv = FROM_ENV, *,
                          environ: Mapping[str, str] | None = None) -> BatchEvents | None:
    """``batch_events`` with the keys it lacks taken from ``VWO_EVENTS_PER_REQUEST`` and
    ``VWO_REQUEST_TIME_INTERVAL``. ``None`` (real-time) is kept as it is."""
    if batch_events is None:
        return None
    settings = read_env(environ)
    from_env: dict[str, Any] = {k: settings[k] for k in ("events_per_request", "request_time_interval")
                                if k in settings}
    if isinstance(batch_events, _FromEnv):
        return parse_batch_events(from_env) if from_env else None
    if isinstance(batch_events, BatchEvents):
        return batch_events
    if not isinstance(batch_events, Mapping):
        return parse_batch_events(batch_events)  # raises the usual TypeError
    return parse_batch_events({**from_env, **batch_events})


def processor_from_env(cls: type[P], batch_events: BatchEventsLike | _FromEnv = FROM_ENV, *,
                       exporter: VWOExporter | None = None, environ: Mapping[str, str] | None = None,
                       max_queue_size: int | None = None, shutdown_timeout: float | None = None,
                       max_concurrent_requests: int | None = None, meter_provider: MeterProvider | None = None,
                       spool: str | os.PathLike[str] | Spool | None = None, **exporter_args: Any) -> P:
    """``cls`` (``VWOSpanProcessor`` or ``VWOLogRecordProcessor``) configured from the environment;
    ``exporter_args`` (``account_id``, ``sdk_key``, ``endpoint``, ...) go to ``exporter_from_env``.
    ``VWO_METRICS=true`` reports metrics to the global meter provider unless one is passed."""
    settings = read_env(environ)
    if exporter is None:
        exporter = exporter_from_env(environ=environ, **exporter_args)
    elif exporter_args:
        raise TypeError(f"pass exporter= or exporter settings ({', '.join(sorted(exporter_args))}), not both")
    kwargs: dict[str, Any] = {}
    queue = max_queue_size if max_queue_size is not None else settings.get("max_queue_size")
    if queue is not None:
        kwargs["max_queue_size"] = queue
    concurrent = max_concurrent_requests if max_concurrent_requests is not None else \
        settings.get("max_concurrent_requests")
    if concurrent is not None:
        kwargs["max_concurrent_requests"] = concurrent
    timeout = shutdown_timeout if shutdown_timeout is not None else settings.get("shutdown_timeout")
    if timeout is not None:
        kwargs["shutdown_timeout"] = timeout
    spool = spool if spool is not None else settings.get("spool")
    if spool is not None:
        kwargs["spool"] = spool
    if meter_provider is None and settings.get("metrics"):
        from opentelemetry import metrics

        meter_provider = metrics.get_meter_provider()
    if meter_provider is not None:
        kwargs["meter_provider"] = meter_provider
    return cls(exporter, batch_events_from_env(batch_events, environ=environ), **kwargs)


def span_processor_from_env(batch_events: BatchEventsLike | _FromEnv = FROM_ENV, **kwargs: Any) -> VWOSpanProcessor:
    """A ``VWOSpanProcessor`` (and its exporter) from the ``VWO_*`` variables; keyword
    arguments (``account_id``, ``sdk_key``, ``endpoint``, ``max_queue_size``, ...) win."""
    return processor_from_env(VWOSpanProcessor, batch_events, **kwargs)


def log_processor_from_env(batch_events: BatchEventsLike | _FromEnv = FROM_ENV,
                           **kwargs: Any) -> VWOLogRecordProcessor:
    """A ``VWOLogRecordProcessor`` (and its exporter) from the ``VWO_*`` variables; arguments win."""
    return processor_from_env(VWOLogRecordProcessor, batch_events, **kwargs)
