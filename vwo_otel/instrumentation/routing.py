"""What both SDK bridges share: finding the VWO processors that deliver an account's events on a
provider (by the rules ``VWOEvents`` follows), emitting one event there, flushing them, and
saying once, naming both accounts, why an event stays with the SDK.

An SDK event goes through vwo_otel only where it can arrive: the provider has a VWO processor
of its account that is not shut down (or cannot be inspected, or ``to_gateway=True`` says its own
exporters carry events to a ``vwo-otel gateway``), the record is recorded, and no attribute
limit of the provider would cut it. Otherwise the SDK sends it itself, as it would have: never
lost, never sent twice; the provider's VWO processors count it in
``stats()["events"]["handed_to_sdk"]``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace

from .. import attributes as A
from .._version import __version__
from ..api import Route, VWOSampler, account_of, delivers_to_vwo
from ..errors import ConfigError
from ..event_types import row_for
from ..processor import VWOLogRecordProcessor, VWOProcessor, VWOSpanProcessor

logger = logging.getLogger("vwo_otel")

#: ``emit(vwo.event.type, attributes, time in ns) -> recorded``: one event on the provider.
Emit = Callable[[Any, dict[str, Any], int], bool]


@dataclass(frozen=True)
class Receivers:
    """Who on the provider delivers VWO events: the VWO processors by account, and whether
    events of any account arrive somewhere (a provider we cannot inspect, or a gateway)."""

    by_account: dict[int, tuple[VWOProcessor, ...]]
    any_account: bool = False
    #: the provider's other processors would export VWO spans too (no ``VWOSampler``): none arrive
    leaks: bool = False

    def take(self, account: int) -> bool:
        """Whether events of ``account`` arrive."""
        return self.any_account or (not self.leaks and is_open(self.by_account.get(account)))


def is_open(processors: tuple[VWOProcessor, ...] | None) -> bool:
    """Some of the account's processors still take events (a stock processor: always)."""
    return processors is not None and (not processors or any(not p.batcher.closed for p in processors))


def receivers(provider: Any, log: bool, to_gateway: bool) -> Receivers:
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
    stock = log or not isinstance(getattr(provider, "sampler", None), VWOSampler)
    by_account: dict[int, tuple[VWOProcessor, ...]] = {}
    for processor, account in _vwo_accounts(processors, kind, stock):
        if isinstance(processor, VWOProcessor):
            by_account[account] = by_account.get(account, ()) + (processor,)
        else:
            by_account.setdefault(account, ())
    return Receivers(by_account, to_gateway, route.leaks and not to_gateway)


def _vwo_accounts(processors: Iterable[Any], kind: type, stock: bool) -> Iterable[tuple[Any, int]]:
    """(processor, account) for each VWO processor, or (if ``stock``: the sampler lets it see
    VWO spans) stock processor exporting with a ``VWOExporter``."""
    for processor in processors:
        if delivers_to_vwo(processor, kind, stock):
            yield processor, account_of(processor)


def span_name(etype: Any) -> str:
    """The span / log event name ``VWOEvents`` gives an event of that type (its row's)."""
    row = row_for(etype)
    return row.span_name if row is not None else str(etype)


class Bridge:
    """A bridge from one VWO SDK to the provider's VWO processors; ``sdk`` names the SDK in logs,
    ``who`` its instrumentor."""

    sdk = "the VWO SDK"
    who = "VWOInstrumentor"

    def __init__(self, tracer_provider: Any, logger_provider: Any, to_gateway: bool) -> None:
        if tracer_provider is not None and logger_provider is not None:
            raise ValueError("pass tracer_provider or logger_provider, not both: events go one way")
        self._log = logger_provider is not None
        self._provider = logger_provider or tracer_provider  # None: the global tracer provider, read when used
        self._to_gateway = to_gateway
        self._emitter: Emit | None = None
        self._found = Receivers({})
        self._length: int | None = None  # the provider's attribute value length limit
        self._lock = threading.Lock()
        self._warned: set[object] = set()

    def provider(self) -> Any:
        return self._provider if self._provider is not None else trace.get_tracer_provider()

    def found(self) -> Receivers:
        """The provider's VWO processors by account, looked up now."""
        return receivers(self.provider(), self._log, self._to_gateway)

    def arrives(self, account: int) -> bool:
        """Whether events of ``account`` reach a VWO processor (looked up again while they do not:
        processors may be added after ``instrument``); else one warning naming both accounts."""
        if self._found.take(account):
            return True
        provider = self.provider()
        with self._lock:
            self._found = found = receivers(provider, self._log, self._to_gateway)
            self._length = Route.of(provider, self._log).length
        if found.take(account):
            return True
        self.warn(("account", account), "vwo_otel: %s: the SDK sends them itself, on the calling thread (counted "
                  "in processor.stats()['events']['handed_to_sdk']; %s().instrument(strict=True) refuses such a "
                  "set-up)", self.missing(account, found), self.who)
        return False

    def batching_ignored(self, account: int | None, setting: str) -> None:
        """The SDK was given ``setting`` (its own batch settings) but the processors of ``account``
        send in real time: one warning, since those settings no longer apply."""
        if ("batching", account) in self._warned:
            return
        processors = self._found.by_account.get(account) if account is not None else None
        if processors and all(p.batcher.realtime for p in processors):
            self.warn(("batching", account), "vwo_otel: %s was given %s, but vwo_otel's processor of account %s "
                      "sends each event on its own (real time): the SDK's batch settings no longer apply; give "
                      "the processor batch_events (under opentelemetry-instrument: VWO_EVENTS_PER_REQUEST or "
                      "VWO_REQUEST_TIME_INTERVAL)", self.sdk, setting, account)

    def missing(self, account: int | None, found: Receivers) -> str:
        """Which processor is missing, naming the SDK's account and the ones the provider delivers."""
        kind = "VWOLogRecordProcessor on the LoggerProvider" if self._log else "VWOSpanProcessor on the TracerProvider"
        if found.leaks:
            fix = ("use a LoggerProvider of its own for VWO" if self._log
                   else "create the TracerProvider with sampler=vwo_otel.VWOSampler(<your sampler>)")
            return (f"the provider's other processors would export {self.sdk}'s events too, user ids included "
                    f"({fix})")
        if account is not None and account in found.by_account:
            return f"the {kind} of VWO account {account} is shut down"
        delivered = sorted(a for a, procs in found.by_account.items() if is_open(procs))
        there = ("it delivers " + ", ".join(f"account {a}" for a in delivered)) if delivered else \
            "it has no open VWO processor"
        if account is None:
            return f"no {kind} ({there})"
        return f"{self.sdk}'s events of account {account} reach no {kind} ({there})"

    def refuse_unless_delivered(self, account: int | None) -> None:
        """``strict=True``: ``ConfigError`` unless events of ``account`` (None: of any) reach a VWO processor."""
        found = self.found()
        if found.any_account or (account is None and not found.leaks
                                 and any(is_open(p) for p in found.by_account.values())):
            return
        if account is not None and found.take(account):
            return
        raise ConfigError("strict", f"{self.who}(strict=True): {self.missing(account, found)}; {self.sdk} would "
                                    "send those events itself, on the calling thread")

    def fits(self, attrs: dict[str, Any]) -> bool:
        """No attribute value is longer than the provider's limit (it would reach VWO cut)."""
        limit = self._length
        if limit is None or not any(type(v) is str and len(v) > limit for v in attrs.values()):
            return True
        self.warn("length", "vwo_otel: an event of %s is longer than the provider's attribute value length limit "
                  "(%d); the SDK sends such events itself", self.sdk, limit)
        return False

    def emit(self, etype: Any, attrs: dict[str, Any], time_ns: int) -> bool:
        """Emit one event on the provider; False if its span was not recorded (then one warning)."""
        emit = self._emitter
        if emit is None:
            emit = self._emitter = self._make_emitter()
        if emit(etype, attrs, time_ns):
            return True
        self.warn("unrecorded", "vwo_otel: a VWO event span was not recorded (use an SDK TracerProvider with "
                  "sampler=vwo_otel.VWOSampler(...)); %s sends such events itself", self.sdk)
        return False

    def _make_emitter(self) -> Emit:
        provider = self.provider()
        if self._log:
            emit_log = provider.get_logger(A.SCOPE, __version__).emit

            def log(etype: Any, attrs: dict[str, Any], time_ns: int) -> bool:
                emit_log(event_name=span_name(etype), attributes=attrs, timestamp=time_ns)
                return True
            return log
        start = provider.get_tracer(A.SCOPE, __version__).start_span

        def span(etype: Any, attrs: dict[str, Any], time_ns: int) -> bool:
            s = start(span_name(etype), attributes=attrs, start_time=time_ns)
            recording: bool = s.is_recording()
            s.end()
            return recording
        return span

    def handed_back(self) -> None:
        """An event the SDK sends itself: the provider's VWO processors count it (looked up now: a
        slow path, the SDK is about to send a request on this thread)."""
        for processors in self.found().by_account.values():
            for processor in processors:
                processor.count_handed_to_sdk()

    def flush(self, account: int | None, mode: str = "sync") -> bool:
        """Flush the VWO processors of ``account``, or the whole provider when events leave through
        its own exporters (a gateway, or processors we cannot see); True if all was delivered
        (``"async"`` starts the flush and returns True)."""
        processors = self.found().by_account.get(account, ()) if account is not None else ()
        if processors:
            return all([p.flush_events(mode) is not False for p in processors])
        force_flush = getattr(self.provider(), "force_flush", None)
        if force_flush is None:
            return False
        if mode == "async":
            threading.Thread(target=force_flush, name="vwo_otel-sdk-flush", daemon=True).start()
            return True
        return force_flush() is True

    def warn(self, key: object, message: str, *args: Any) -> None:
        """Log ``message`` once per ``key`` (an account, a reason), never per event."""
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message, *args)
