"""``VWOInstrumentor``: the official VWO SDK's events (``vwo-python-sdk`` 1.68.x) through vwo_otel.

``VWOInstrumentor().instrument(tracer_provider=...)`` (or ``logger_provider=...``; neither: the
global tracer provider) patches the SDK's ``EventDispatcher.dispatch``: the impression each
``activate`` / ``is_feature_enabled`` / ``track`` / ``push`` builds becomes one span (or log
record) carrying VWO's attributes, the visitor id ``u`` and ``account_id`` the SDK computed
(``vwo.visitor.uuid``, ``vwo.account_id``) and its ``sId`` as the record's time. The provider's
VWO processors batch and deliver it; the SDK sends nothing itself, real-time or with its own
``batch_events`` (whose settings then no longer apply: the processor's do). API return values
are the SDK's. ``client.flush_events(mode)`` and ``client.set_opt_out()`` also flush the VWO
processors of the client's account (``mode="async"`` starts the flush and returns).

An event goes through vwo_otel only where it can arrive: the provider has a VWO processor for
its account (or cannot be inspected, or ``to_gateway=True`` says its own exporters carry events
to a ``vwo-otel gateway``), the record is recorded and the impression decodes. Otherwise the SDK
dispatches it as before, on the calling thread (logged once per reason, naming the SDK's account
and the accounts the provider delivers), so no event is lost or sent twice; the provider's VWO
processors count such events in ``stats()["events"]["handed_to_sdk"]``.

``instrument(strict=True)`` refuses such a set-up instead (``ConfigError`` naming both
accounts): at ``instrument()`` when the provider has no VWO processor, or none for
``account_id=`` (the settings file's account, when the app knows it there); and at
``vwo.launch()`` for a settings file whose account no VWO processor on the provider delivers.

Accounts whose settings file enables VWO's event architecture (``isEventArchEnabled``) and that
run without ``batch_events`` send their events to ``/events/t`` through the SDK's
``dispatch_events``, in a format vwo_otel does not carry: those are left to the SDK, untouched.
"""

from __future__ import annotations

import importlib
import json
import logging
import threading
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any

import wrapt  # type: ignore[import-untyped]
from opentelemetry import trace
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from opentelemetry.instrumentation.utils import unwrap

from . import attributes as A
from . import checks
from ._version import __version__
from .api import Route, VWOSampler, delivers_to_vwo, exporter_of
from .errors import ConfigError
from .event import MalformedEvent, from_attributes
from .processor import VWOLogRecordProcessor, VWOProcessor, VWOSpanProcessor

logger = logging.getLogger("vwo_otel")

#: The SDK versions whose dispatcher this instrumentor knows (its impression keys, its API flow).
SUPPORTED = "vwo-python-sdk >= 1.68, < 1.69"
#: The SDK's real-time endpoint (last path segment of an impression's ``url``) -> VWO event type.
_KINDS = {"track-user": A.VISITOR, "track-goal": A.GOAL, "push": A.CUSTOM_DIMENSION}
_NS = 1_000_000_000


@dataclass(frozen=True)
class Receivers:
    """Who on the provider delivers VWO events: the VWO processors by account, and whether
    events of any account arrive somewhere (a provider we cannot inspect, or a gateway)."""

    by_account: dict[int, tuple[VWOProcessor, ...]]
    any_account: bool = False


class VWOInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Routes the official VWO SDK's events through vwo_otel's processors (see the module doc)."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return (SUPPORTED,)

    def _instrument(self, **kwargs: Any) -> None:
        tracer_provider = kwargs.get("tracer_provider")
        logger_provider = kwargs.get("logger_provider")
        if tracer_provider is not None and logger_provider is not None:
            raise ValueError("pass tracer_provider or logger_provider, not both: events go one way")
        try:
            for module in ("vwo.event.event_dispatcher", "vwo.vwo"):
                importlib.import_module(module)
        except ImportError:  # opentelemetry-instrument loads every instrumentor; this app has no VWO SDK
            logger.debug("vwo-python-sdk is not importable; VWOInstrumentor does nothing")
            return
        bridge = _Bridge(tracer_provider, logger_provider, bool(kwargs.get("to_gateway", False)))
        strict = bool(kwargs.get("strict", False))
        if strict:  # refuse before anything is patched
            account_id = kwargs.get("account_id")
            bridge.refuse_unless_delivered(None if account_id is None else checks.account_id(account_id))
        wrapt.wrap_function_wrapper("vwo.event.event_dispatcher", "EventDispatcher.dispatch", bridge.dispatch)
        wrapt.wrap_function_wrapper("vwo.vwo", "VWO.flush_events", bridge.flush_events)
        wrapt.wrap_function_wrapper("vwo.vwo", "VWO.set_opt_out", bridge.set_opt_out)
        if strict:
            wrapt.wrap_function_wrapper("vwo.vwo", "VWO.__init__", bridge.launch)

    def _uninstrument(self, **kwargs: Any) -> None:
        unwrap("vwo.event.event_dispatcher.EventDispatcher", "dispatch")
        unwrap("vwo.vwo.VWO", "flush_events")
        unwrap("vwo.vwo.VWO", "set_opt_out")
        unwrap("vwo.vwo.VWO", "__init__")  # wrapped only with strict=True (a no-op otherwise)


class _Bridge:
    """The patched SDK methods and what they share: the provider, its VWO processors, warnings."""

    def __init__(self, tracer_provider: Any, logger_provider: Any, to_gateway: bool) -> None:
        self._log = logger_provider is not None
        self._provider = logger_provider or tracer_provider  # None: the global tracer provider, read when used
        self._to_gateway = to_gateway
        self._emitter: Callable[[int, dict[str, Any], int], bool] | None = None
        self._receivers = Receivers({})
        self._lock = threading.Lock()
        self._warned: set[object] = set()

    # -- EventDispatcher.dispatch -------------------------------------------------------
    def dispatch(self, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> Any:
        """The SDK's impression as a VWO span / log record; the SDK's own dispatch when it
        cannot go through vwo_otel (development mode sends nothing either way)."""
        impression = args[0] if args else kwargs.get("impression")
        if getattr(instance, "is_development_mode", False) or not isinstance(impression, dict):
            return wrapped(*args, **kwargs)
        try:
            etype, attrs, time_ns = _attributes(impression)
            from_attributes(attrs, time_ns)  # the processors' own decoder: what it refuses stays with the SDK
        except (MalformedEvent, TypeError, ValueError, KeyError) as exc:
            self._warn(("malformed", type(exc)), "an impression of the VWO SDK cannot become a VWO "
                       "event (%s); the SDK sends it itself", exc)
            return self._hand_back(wrapped, args, kwargs)
        account = attrs[A.ACCOUNT_ID]
        if not self._arrives(account):
            return self._hand_back(wrapped, args, kwargs)
        if not self._emit(etype, attrs, time_ns):
            self._warn("unrecorded", "a VWO event span was not recorded (use an SDK TracerProvider with "
                       "sampler=vwo_otel.VWOSampler(...)); the VWO SDK sends such events itself")
            return self._hand_back(wrapped, args, kwargs)
        return True

    def _hand_back(self, wrapped: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The SDK dispatches the event itself; the provider's VWO processors count it (looked up
        now: a slow path, the SDK is about to send a request on this thread)."""
        for processors in _receivers(self._current_provider(), self._log, self._to_gateway).by_account.values():
            for processor in processors:
                processor.count_handed_to_sdk()
        return wrapped(*args, **kwargs)

    def _arrives(self, account: int) -> bool:
        """Whether events of ``account`` reach a VWO processor (looked up again while they do not:
        processors may be added after ``instrument``)."""
        found = self._receivers
        if found.any_account or _open(found.by_account.get(account)):
            return True
        with self._lock:
            self._receivers = found = _receivers(self._current_provider(), self._log, self._to_gateway)
        if found.any_account or _open(found.by_account.get(account)):
            return True
        self._warn(("account", account), "%s: the SDK sends them itself, on the calling thread (counted in "
                   "processor.stats()['events']['handed_to_sdk']; VWOInstrumentor().instrument(strict=True) "
                   "refuses such a set-up)", self._missing(account, found))
        return False

    def _missing(self, account: int | None, found: Receivers) -> str:
        """Which processor is missing, naming the SDK's account and the ones the provider delivers."""
        kind = "VWOLogRecordProcessor on the LoggerProvider" if self._log else "VWOSpanProcessor on the TracerProvider"
        delivered = sorted(a for a, procs in found.by_account.items() if _open(procs))
        there = ("it delivers " + ", ".join(f"account {a}" for a in delivered)) if delivered else \
            "it has no open VWO processor"
        if account is None:
            return f"no {kind} ({there})"
        return f"the VWO SDK's events of account {account} reach no {kind} ({there})"

    # -- strict=True ---------------------------------------------------------------------------
    def refuse_unless_delivered(self, account: int | None) -> None:
        """``ConfigError`` unless events of ``account`` (None: of any account) reach a VWO processor."""
        found = _receivers(self._current_provider(), self._log, self._to_gateway)
        if found.any_account:
            return
        if account is None and any(_open(procs) for procs in found.by_account.values()):
            return
        if account is not None and _open(found.by_account.get(account)):
            return
        raise ConfigError("strict", f"VWOInstrumentor(strict=True): {self._missing(account, found)}; the VWO SDK "
                                    "would send those events itself, on the calling thread")

    def launch(self, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
               kwargs: dict[str, Any]) -> Any:
        """``VWO.__init__`` under ``strict=True``: a client whose settings file's account no VWO
        processor delivers is refused (``vwo.launch`` raises ``ConfigError``)."""
        result = wrapped(*args, **kwargs)
        account = _account_of(instance)
        if account is not None and not getattr(instance.event_dispatcher, "is_development_mode", False):
            self.refuse_unless_delivered(account)
        return result

    def _emit(self, etype: int, attrs: dict[str, Any], time_ns: int) -> bool:
        emit = self._emitter
        if emit is None:
            emit = self._emitter = self._make_emitter()
        return emit(etype, attrs, time_ns)

    def _make_emitter(self) -> Callable[[int, dict[str, Any], int], bool]:
        """A function that emits one event on the provider; False if its span was not recorded."""
        provider = self._current_provider()
        if self._log:
            emit_log = provider.get_logger("vwo_otel", __version__).emit

            def log(etype: int, attrs: dict[str, Any], time_ns: int) -> bool:
                emit_log(event_name=A.EVENT_NAMES[etype], attributes=attrs, timestamp=time_ns)
                return True
            return log
        start = provider.get_tracer("vwo_otel", __version__).start_span

        def span(etype: int, attrs: dict[str, Any], time_ns: int) -> bool:
            s = start(A.EVENT_NAMES[etype], attributes=attrs, start_time=time_ns)
            recording = s.is_recording()
            s.end()
            return recording
        return span

    def _current_provider(self) -> Any:
        return self._provider if self._provider is not None else trace.get_tracer_provider()

    # -- VWO.flush_events / VWO.set_opt_out -----------------------------------------------
    def flush_events(self, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
                     kwargs: dict[str, Any]) -> Any:
        """The SDK's ``flush_events(mode)``, then the same flush of vwo_otel's processors
        (``"async"`` starts it; any other mode waits, as the SDK's does). The SDK's return value."""
        result = wrapped(*args, **kwargs)
        if result is not False:  # False: opted out, or the call itself failed
            mode = kwargs.get("mode", args[0] if args else None)
            self.flush(instance, "async" if mode == "async" else "sync")
        return result

    def set_opt_out(self, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
        """Before the client stops tracking, deliver what it queued (the SDK flushes its queue too)."""
        if not getattr(instance, "is_opted_out", True):
            self.flush(instance, "sync")
        return wrapped(*args, **kwargs)

    def flush(self, client: Any, mode: str) -> None:
        """Flush the VWO processors of ``client``'s account, or the whole provider when events
        leave through its own exporters (a gateway, or processors we cannot see)."""
        account = _account_of(client)
        found = _receivers(self._current_provider(), self._log, self._to_gateway)
        processors = found.by_account.get(account, ()) if account is not None else ()
        for processor in processors:
            processor.flush_events(mode)
        if processors:
            return
        force_flush = getattr(self._current_provider(), "force_flush", None)
        if force_flush is None:
            return
        if mode == "async":
            threading.Thread(target=force_flush, name="vwo-otel-sdk-flush", daemon=True).start()
        else:
            force_flush()

    def _warn(self, key: object, message: str, *args: Any) -> None:
        """Log ``message`` once per ``key`` (an account, a reason), never per event."""
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message, *args)


def _attributes(impression: dict[str, Any]) -> tuple[int, dict[str, Any], int]:
    """(event type, attributes, time in ns) of an impression built by the SDK's ``impression_util``
    / ``custom_dimensions_util``: the wire values it holds, kept as they are."""
    url = impression["url"]
    etype = _KINDS[url.rsplit("/", 1)[-1]] if isinstance(url, str) else None
    if etype is None:
        raise ValueError(f"unknown VWO endpoint {url!r}")
    sid = impression["sId"]
    if type(sid) is not int:
        raise TypeError(f"sId must be an int, got {sid!r}")
    attrs: dict[str, Any] = {A.EVENT_TYPE: etype, A.ACCOUNT_ID: checks.account_id(impression["account_id"]),
                             A.VISITOR_UUID: impression["u"]}
    ua, ip = impression.get("visitor_ua"), impression.get("visitor_ip")
    if ua:
        attrs[A.VISITOR_UA] = ua
    if ip:
        attrs[A.VISITOR_IP] = ip
    if etype == A.CUSTOM_DIMENSION:
        tags = json.loads(impression["tags"])["u"]
        if not isinstance(tags, dict) or len(tags) != 1:
            raise ValueError(f"tags must hold one custom dimension, got {impression['tags']!r}")
        ((attrs[A.DIMENSION_KEY], attrs[A.DIMENSION_VALUE]),) = tags.items()
        return etype, attrs, sid * _NS
    attrs[A.CAMPAIGN_ID] = impression["experiment_id"]
    attrs[A.VARIATION_ID] = impression["combination"]
    if etype == A.GOAL:
        attrs[A.GOAL_ID] = impression["goal_id"]
        if "r" in impression:
            attrs[A.REVENUE] = _revenue(impression["r"])
    return etype, attrs, sid * _NS


def _revenue(value: Any) -> Any:
    """The SDK takes revenue as a number or its text: text becomes the number it spells."""
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return float(value)
    return value


def _account_of(client: Any) -> int | None:
    settings = getattr(client, "settings_file", None)
    account = settings.get("accountId") if isinstance(settings, dict) else None
    try:
        return int(account) if account is not None else None
    except (TypeError, ValueError):
        return None


def _open(processors: tuple[VWOProcessor, ...] | None) -> bool:
    """Some of the account's processors still take events (a stock processor: always)."""
    return processors is not None and (not processors or any(not p.batcher.closed for p in processors))


def _receivers(provider: Any, log: bool, to_gateway: bool) -> Receivers:
    """The VWO processors on ``provider`` by account (read from the SDK provider's processor
    list, as ``VWOEvents`` does); ``any_account`` when that list cannot be read or ``to_gateway``."""
    if log:
        multi = getattr(provider, "_multi_log_record_processor", None)
        processors = getattr(multi, "_log_record_processors", None)
        kind: type = VWOLogRecordProcessor
    else:
        if isinstance(provider, trace.ProxyTracerProvider):
            return Receivers({}, to_gateway)
        multi = getattr(provider, "_active_span_processor", None)
        processors = getattr(multi, "_span_processors", None)
        kind = VWOSpanProcessor
    if processors is None:
        unknown = not type(provider).__name__.startswith("NoOp")
        return Receivers({}, to_gateway or unknown)
    route = Route.of(provider, log)  # the rules VWOEvents follows: no leak into the app's own exporters
    if route.leaks and not to_gateway:
        return Receivers({})
    stock = log or not isinstance(getattr(provider, "sampler", None), VWOSampler)
    by_account: dict[int, tuple[VWOProcessor, ...]] = {}
    for processor, account in _vwo_accounts(processors, kind, stock):
        if isinstance(processor, VWOProcessor):
            by_account[account] = by_account.get(account, ()) + (processor,)
        else:
            by_account.setdefault(account, ())
    return Receivers(by_account, to_gateway)


def _vwo_accounts(processors: Iterable[Any], kind: type, stock: bool) -> Iterable[tuple[Any, int]]:
    """(processor, account) for each VWO processor, or (if ``stock``: the sampler lets it see
    VWO spans) stock processor exporting with a ``VWOExporter``."""
    for processor in processors:
        if isinstance(processor, VWOProcessor) and isinstance(processor, kind):
            yield processor, processor.batcher.exporter.account_id
        elif delivers_to_vwo(processor, kind, stock):
            yield processor, exporter_of(processor).account_id


from ._fme_bridge import VWOFMEInstrumentor  # noqa: E402,F401 - the FME SDK's instrumentor, re-exported
