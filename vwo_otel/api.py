"""Emitting VWO events: ``VWOEvents`` turns VWO's API calls into spans or log records, and
``VWOSampler`` keeps them recorded (and out of the app's own exporters) under any sampler."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, SimpleLogRecordProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
)

from . import attributes as A
from . import checks
from ._version import __version__
from .event import VWOEvent
from .event_types import MAX_EVENT_ATTRIBUTES, TYPES, row_for
from .export.exporter import VWOExporter
from .handoff import HANDED, event_of
from .processor import VWOLogRecordProcessor, VWOSpanProcessor

logger = logging.getLogger("vwo_otel")


class VWOSampler(Sampler):
    """Wraps the app's sampler: VWO event spans are always recorded (so VWO processors get
    them) but never sampled (so the app's exporters, which only see sampled spans, don't);
    every other span is decided by ``delegate`` (default: the SDK default, parent-based always-on)."""

    def __init__(self, delegate: Sampler | None = None) -> None:
        if delegate is not None and not callable(getattr(delegate, "should_sample", None)):
            raise TypeError(f"VWOSampler wraps a Sampler (such as ParentBased(TraceIdRatioBased(0.1))), got "
                            f"{type(delegate).__name__} {delegate!r}")
        self._delegate = delegate or ParentBased(ALWAYS_ON)

    def should_sample(self, parent_context: Any, trace_id: int, name: str, kind: Any = None,
                      attributes: Any = None, links: Sequence[Any] | None = None,
                      trace_state: Any = None) -> SamplingResult:
        if attributes and A.EVENT_TYPE in attributes:
            parent = trace.get_current_span(parent_context).get_span_context()
            return SamplingResult(Decision.RECORD_ONLY, attributes, parent.trace_state if parent.is_valid else None)
        return self._delegate.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"VWOSampler{{{self._delegate.get_description()}}}"


class VWOEvents:
    """VWO's tracking API as OpenTelemetry data: the legacy SDK's calls (activate,
    is_feature_enabled, track, push) and FME's events (variation_shown, track_event,
    set_attribute), each sent in its own VWO wire format.

    Events become spans from ``tracer_provider`` (default: the global one) or, when
    ``logger_provider`` is given, log records. Arguments are checked here, so a bad call
    raises at once, naming the argument, instead of failing later in a batch.

    Events are emitted only where a VWO processor (or a ``VWOExporter``) on the provider
    receives them: elsewhere they would vanish or carry user ids into the app's own
    exporters, so they are dropped with one warning naming the fix. ``to_gateway=True``
    says the provider's own OTLP exporters carry them to a ``vwo-otel gateway`` on purpose.

    With ``to_gateway=True`` every record carries its account as ``vwo.account_id`` (a string
    of digits, which collectors route by): ``account_id=`` if given, else the provider's
    resource attribute ``vwo.account_id`` (e.g. ``OTEL_RESOURCE_ATTRIBUTES=vwo.account_id=123456``).
    Collectors that split a batch can send the records of one resource without its attributes,
    so the gateway reads the record's account first. With neither, records carry no account
    and only a gateway with a single account (and ``default_account``) takes them.
    """

    def __init__(self, *, tracer_provider: Any | None = None, logger_provider: Any | None = None,
                 to_gateway: bool = False, account_id: int | str | None = None) -> None:
        if tracer_provider is not None and logger_provider is not None:
            raise ValueError("pass tracer_provider or logger_provider, not both: events go one way")
        if account_id is not None and not to_gateway:
            raise ValueError("account_id= is for to_gateway=True (the records' account for the gateway); a VWO "
                             "processor delivers to its own exporter's account")
        #: the account each record names for the gateway (str: collectors route string attributes)
        self._account: str | None = None if account_id is None else str(checks.account_id(account_id, "account_id"))
        self._warned: set[str] = set()  # the warnings given (each once: a route taken again may warn anew)
        self._provider = logger_provider or tracer_provider  # None: the global tracer provider, read when used
        self._max_length: int | None = None  # the provider's attribute value length limit, if any
        self._routed = False  # the provider was checked: a VWO processor receives the events
        self._taken = Route(None)  # the route last taken: looked at again once a processor is added
        self._plain = False  # routed, with no length limit to check and no account to add: emit as given
        #: routed where a legacy event goes straight to the VWO processors (``Route.handoff``), no
        #: record made: their queues' ``put`` (``Route.takers``; empty: emit a record); a span's
        #: only while its tracer's scope is on
        self._takers: tuple[Callable[[VWOEvent], Any], ...] = ()
        self._tracer_on: Callable[[], bool] = _always
        self._to_gateway = bool(to_gateway)  # the provider's own OTLP exporters carry them to a gateway
        for mine, given, method, kind in (("tracer_provider", tracer_provider, "get_tracer", "TracerProvider"),
                                          ("logger_provider", logger_provider, "get_logger", "LoggerProvider")):
            if given is not None and not callable(getattr(given, method, None)):  # e.g. the other signal's
                raise TypeError(f"{mine}= must be an OpenTelemetry {kind}, got {type(given).__name__} (a "
                                "TracerProvider goes as tracer_provider=, a LoggerProvider as logger_provider=)")
        if logger_provider is not None:
            self._logger = logger_provider.get_logger(A.SCOPE, __version__)
            #: whether the provider's logger configurator lets vwo_otel's records through (an SDK
            #: logger's emit drops them silently otherwise; looked at per record: it may change)
            self._logger_on: Callable[[], bool] = getattr(self._logger, "_is_enabled", None) or _always
            self._emit = self._emit_log
        else:
            provider = tracer_provider or trace.get_tracer_provider()
            self._tracer = provider.get_tracer(A.SCOPE, __version__)
            self._emit = self._emit_span

    def activate(self, campaign_id: int, variation_id: int, user_id: str, *,
                 visitor_ua: str | None = None, visitor_ip: str | None = None) -> None:
        """A visitor saw ``variation_id`` of ``campaign_id`` (VWO event type 1)."""
        self._emit(A.VISITOR, {
            A.EVENT_TYPE: A.VISITOR, A.USER_ID: checks.user_id(user_id),
            A.CAMPAIGN_ID: checks.event_id("campaign_id", campaign_id),
            A.VARIATION_ID: checks.event_id("variation_id", variation_id),
        }, visitor_ua, visitor_ip)

    def is_feature_enabled(self, campaign_id: int, variation_id: int, user_id: str, *,
                           visitor_ua: str | None = None, visitor_ip: str | None = None) -> None:
        """A visitor was bucketed into a Feature Test: tracked like ``activate`` (type 1)."""
        self.activate(campaign_id, variation_id, user_id, visitor_ua=visitor_ua, visitor_ip=visitor_ip)

    def track(self, campaign_id: int, variation_id: int, goal_id: int, user_id: str, *,
              revenue: float | None = None, visitor_ua: str | None = None,
              visitor_ip: str | None = None) -> None:
        """A conversion of ``goal_id`` (VWO event type 2), with optional finite ``revenue``."""
        attrs = {
            A.EVENT_TYPE: A.GOAL, A.USER_ID: checks.user_id(user_id),
            A.CAMPAIGN_ID: checks.event_id("campaign_id", campaign_id),
            A.VARIATION_ID: checks.event_id("variation_id", variation_id),
            A.GOAL_ID: checks.event_id("goal_id", goal_id),
        }
        if revenue is not None:
            attrs[A.REVENUE] = checks.revenue(revenue)
        self._emit(A.GOAL, attrs, visitor_ua, visitor_ip)

    def push(self, user_id: str, custom_dimensions: Mapping[str, str], *,
             visitor_ua: str | None = None, visitor_ip: str | None = None) -> None:
        """Custom dimensions for post-segmentation (type 3): one event per key."""
        user = checks.user_id(user_id)
        if not isinstance(custom_dimensions, Mapping) or not custom_dimensions:
            raise TypeError(f"custom_dimensions must be a non-empty dict of str -> str, got {custom_dimensions!r}")
        for key in custom_dimensions:
            if not isinstance(key, str) or not key:
                raise TypeError(f"custom_dimensions keys must be non-empty str, got {key!r}")
        values = {key: checks.dimension_value(f"custom_dimensions[{key!r}]", value)
                  for key, value in custom_dimensions.items()}
        for key, value in values.items():
            self._emit(A.CUSTOM_DIMENSION, {
                A.EVENT_TYPE: A.CUSTOM_DIMENSION, A.USER_ID: user,
                A.DIMENSION_KEY: key, A.DIMENSION_VALUE: value,
            }, visitor_ua, visitor_ip)

    # -- FME events (vwo-fme-python-sdk's format) ------------------------------------------
    def variation_shown(self, campaign_id: int, variation_id: int, user_id: str, *, feature_id: int | None = None,
                        visitor_properties: Mapping[str, Any] | None = None, session_id: int | None = None,
                        visitor_ua: str | None = None, visitor_ip: str | None = None) -> None:
        """FME's impression (``vwo_variationShown``, what ``get_flag`` sends): a visitor saw
        ``variation_id`` of ``campaign_id`` (a holdout: ``feature_id`` names its feature)."""
        attrs: dict[str, Any] = {
            A.EVENT_TYPE: A.VARIATION_SHOWN, A.USER_ID: checks.user_id(user_id),
            A.CAMPAIGN_ID: checks.event_id("campaign_id", campaign_id),
            A.VARIATION_ID: checks.event_id("variation_id", variation_id),
        }
        if feature_id is not None:
            attrs[A.FEATURE_ID] = checks.event_id("feature_id", feature_id)
        if visitor_properties is not None:
            attrs[A.VISITOR_PROPERTIES] = _json_object("visitor_properties", visitor_properties)
        self._emit_fme(attrs, session_id, visitor_ua, visitor_ip)

    def track_event(self, event_name: str, user_id: str, properties: Mapping[str, Any] | None = None, *,
                    session_id: int | None = None, visitor_ua: str | None = None,
                    visitor_ip: str | None = None) -> None:
        """An FME custom event (``track_event``: a conversion such as ``purchase``), with its
        ``properties`` (JSON values; a metric such as revenue is configured in VWO by name)."""
        name = checks.fme_event_name("event_name", event_name)
        if name.startswith("vwo_"):
            raise ValueError(f"event_name {name!r}: names starting with 'vwo_' are VWO's own events")
        attrs: dict[str, Any] = {A.EVENT_TYPE: name, A.USER_ID: checks.user_id(user_id)}
        if properties is not None:
            attrs[A.EVENT_PROPERTIES] = _json_object("properties", properties)
        self._emit_fme(attrs, session_id, visitor_ua, visitor_ip)

    def set_attribute(self, attributes: Mapping[str, Any], user_id: str, *, session_id: int | None = None,
                      visitor_ua: str | None = None, visitor_ip: str | None = None) -> None:
        """FME's visitor attributes (``vwo_syncVisitorProp``, what ``set_attribute`` sends), for
        segmenting reports."""
        if not isinstance(attributes, Mapping) or not attributes:
            raise TypeError(f"attributes must be a non-empty dict of str -> JSON value, got {attributes!r}")
        self._emit_fme({A.EVENT_TYPE: A.SYNC_VISITOR_PROP, A.USER_ID: checks.user_id(user_id),
                        A.VISITOR_PROPERTIES: _json_object("attributes", attributes)},
                       session_id, visitor_ua, visitor_ip)

    def _emit_fme(self, attrs: dict[str, Any], session_id: int | None, ua: str | None, ip: str | None) -> None:
        if session_id is not None:
            attrs[A.SESSION_ID] = checks.event_id("session_id", session_id)
        self._emit(attrs[A.EVENT_TYPE], attrs, ua, ip)

    def _emit_span(self, etype: int | str, attrs: dict[str, Any], ua: str | None, ip: str | None) -> None:
        if (ua is not None or ip is not None or not self._plain or self._taken.changed()) \
                and not self._ready(attrs, ua, ip):
            return
        if self._takers and (event := event_of(attrs, time.time_ns())) is not None:
            if self._tracer_on():  # the configurator may disable the scope after the route was taken
                self._take(event)
            else:
                self._unrecorded()
            return
        span = self._tracer.start_span(_SPAN_NAMES.get(etype) or _span_name(etype), attributes=attrs)
        if self._to_gateway:
            if not span.get_span_context().trace_flags.sampled:  # the provider's exporters see sampled spans only
                self._warn("a VWO event span for the gateway was not sampled, so the provider's OTLP exporter "
                           "never sends it: emit VWO events to a gateway as log records "
                           "(VWOEvents(logger_provider=..., to_gateway=True)), or give this TracerProvider a "
                           "sampler that samples every span (not VWOSampler, not a ratio)")
        elif (start := getattr(span, "_start_time", None)) is not None:  # an SDK span, recording
            self._handing(event_of(attrs, start), getattr(span, "_context", None), span.end)
            return
        elif not span.is_recording():
            self._unrecorded()
        span.end()

    def _unrecorded(self) -> None:
        off = self._scope_off(log=False)  # the configurator changed since the route was taken
        self._warn(f"a VWO event span was not recorded, so it cannot reach VWO: {off}" if off else
                   "a VWO event span was not recorded, so it cannot reach VWO: use an SDK "
                   "TracerProvider with sampler=vwo_otel.VWOSampler(<your sampler>)")

    def _scope_off(self, log: bool) -> str | None:
        """Why the provider's records of vwo_otel's scope reach no processor, if its (experimental,
        SDK 1.39+) tracer / logger configurator disables that scope; else None."""
        if log:
            scope_on = self._logger_on
        else:
            scope_on = _tracer_on(self._tracer)
        if not scope_on():
            return (f"the provider's {'logger' if log else 'tracer'} configurator disables the instrumentation "
                    f"scope {A.SCOPE!r}, so its records reach no processor: enable that scope")
        return None

    def _warn(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            logger.warning(message)

    def _emit_log(self, etype: int | str, attrs: dict[str, Any], ua: str | None, ip: str | None) -> None:
        if (ua is not None or ip is not None or not self._plain or self._taken.changed()) \
                and not self._ready(attrs, ua, ip):
            return
        if not self._logger_on():  # the configurator changed since the route was taken: a record reaches nothing
            self._warn(f"VWO events are not emitted: {self._scope_off(log=True)}.")
            return
        timestamp = time.time_ns()
        name = _SPAN_NAMES.get(etype) or _span_name(etype)
        if self._to_gateway:
            self._logger.emit(event_name=name, attributes=attrs, timestamp=timestamp)
            return
        event = event_of(attrs, timestamp)
        if self._takers and event is not None:
            self._take(event)
            return
        self._handing(event, timestamp, self._logger.emit, event_name=name, attributes=attrs, timestamp=timestamp)

    def _take(self, event: VWOEvent) -> None:
        """``event`` to each VWO processor of the route, as their ``on_end`` / ``on_emit`` would
        put it (``Route.handoff``: nothing else on the provider would read its record, so none
        is made)."""
        for take in self._takers:
            take(event)

    @staticmethod
    def _handing(event: VWOEvent | None, key: object, emit: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """``emit(*args, **kwargs)`` with ``event`` handed to the processors on this thread for the
        record keyed ``key`` (``handoff``); an event emitted inside it (an inline ``flush_callback``)
        hands its own and then gives this one back, for the processors after it."""
        handed = HANDED
        before = handed.event, handed.key
        handed.event, handed.key = event, key
        try:
            emit(*args, **kwargs)
        finally:
            handed.event, handed.key = before

    def _ready(self, attrs: dict[str, Any], ua: str | None, ip: str | None) -> bool:
        """Complete ``attrs`` and say whether the event may be emitted: only where a VWO processor
        receives it (elsewhere it would vanish or, worse, carry a user id into the app's own
        exporters), and only if the provider's attribute limits cannot alter it."""
        if ua is not None:
            attrs[A.VISITOR_UA] = checks.text("visitor_ua", ua)
        if ip is not None:
            attrs[A.VISITOR_IP] = checks.text("visitor_ip", ip)
        if (not self._routed or self._taken.changed()) and not self._route():
            return False
        if self._account is not None:
            attrs[A.ACCOUNT_ID] = self._account
        limit = self._max_length
        if limit is not None:
            for key, value in attrs.items():
                if type(value) is str and len(value) > limit:
                    raise ValueError(f"{key} is {len(value)} characters, over the provider's attribute value "
                                     f"length limit of {limit} (OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT or the "
                                     "signal's own limit): it would be cut and reach VWO as another value")
        return True

    def _route(self) -> bool:
        """Look at the provider (until it can take VWO events) and read its limits."""
        log = self._emit == self._emit_log
        provider = self._provider or trace.get_tracer_provider()
        route = self._taken = Route.of(provider, log)
        self._routed = self._plain = False
        self._takers = ()
        if (self._to_gateway and not log and not route.found
                and isinstance(getattr(provider, "sampler", None), VWOSampler)):
            return self._refuse("to_gateway=True needs the provider's OTLP exporter to see VWO spans, but "
                                "VWOSampler keeps them unsampled so exporters never do: emit them as log records "
                                "(VWOEvents(logger_provider=..., to_gateway=True)), or use a TracerProvider without "
                                "VWOSampler")
        if getattr(provider, "_disabled", False) is True:  # the SDK's: its tracers and loggers are no-ops
            return self._refuse("the provider is disabled (OTEL_SDK_DISABLED=true), so it records nothing: unset "
                                "that variable to deliver them")
        if off := self._scope_off(log):
            return self._refuse(off)
        if route.found is False and not self._to_gateway:
            kind = "VWOLogRecordProcessor on this LoggerProvider" if log else "VWOSpanProcessor on this TracerProvider"
            stock = ("; a VWOExporter behind OpenTelemetry's own BatchSpanProcessor does not count under "
                     "VWOSampler, whose VWO spans are record-only: no stock processor sees them"
                     if not log and isinstance(getattr(provider, "sampler", None), VWOSampler) else "")
            return self._refuse(f"there is no vwo_otel.{kind}, so they would be lost or reach the app's own "
                                "exporters with user ids. Add one (or, under opentelemetry-instrument, set "
                                "VWO_ACCOUNT_ID and VWO_SDK_KEY, with every VWO_* value valid: an error at start "
                                "names a bad one; or, if this provider's OTLP exporter sends them to "
                                f"a vwo-otel gateway on purpose, pass to_gateway=True){stock}")
        if route.leaks and not self._to_gateway:
            fix = ("use a LoggerProvider of its own for VWO" if log
                   else "create the TracerProvider with sampler=vwo_otel.VWOSampler(<your sampler>) (where "
                        "opentelemetry-instrument creates it: OTEL_TRACES_SAMPLER=vwo, or vwo_<your sampler's "
                        "name> such as vwo_parentbased_traceidratio)")
            return self._refuse("the provider's other processors would export them, user ids included: " + fix)
        if route.count is not None and route.count < MAX_EVENT_ATTRIBUTES:
            raise ValueError(f"the provider keeps at most {route.count} attributes per "
                             f"{'log record' if log else 'span'} (OTEL_ATTRIBUTE_COUNT_LIMIT or the signal's own "
                             f"limit): a VWO event needs up to {MAX_EVENT_ATTRIBUTES}, or it would lose fields; "
                             "raise the limit")
        self._max_length = route.length
        if self._to_gateway and self._account is None:
            self._account = _resource_account(provider)
        if len(route.accounts) > 1 and not self._to_gateway:
            self._warn(f"VWO events reach VWO processors of accounts {', '.join(map(str, sorted(route.accounts)))} "
                       "on one provider: each event is delivered to every one of them (VWOEvents' events carry "
                       "no account); give each account a provider of its own")
        self._routed = True
        self._takers = () if self._to_gateway else route.takers
        if not log:
            self._tracer_on = _tracer_on(self._tracer)
        self._plain = self._max_length is None and self._account is None  # nothing for _ready to add or check
        return True

    def _refuse(self, why: str) -> bool:
        self._warn(f"VWO events are not emitted: {why}.")
        return False


def _always() -> bool:
    return True


def _tracer_on(tracer: Any) -> Callable[[], bool]:
    """Whether the provider's (experimental, SDK 1.39+) tracer configurator lets the tracer's
    spans be recorded, asked when called (it may change)."""
    if isinstance(tracer, trace.ProxyTracer):  # got before the app set its provider: the provider's now
        tracer = tracer._tracer
    return getattr(tracer, "_is_enabled", None) or _always


def _resource_account(provider: Any) -> str | None:
    """The provider's resource attribute ``vwo.account_id`` (checked), as a string; None without one."""
    resource = getattr(provider, "resource", None)
    value = getattr(resource, "attributes", {}).get(A.ACCOUNT_ID)
    if value is None:
        return None
    return str(checks.account_id(value, f"the provider's resource attribute {A.ACCOUNT_ID}"))


_SPAN_NAMES = {key: row.span_name for key, row in TYPES.items()}


def _span_name(etype: int | str) -> str:
    """The span / log event name of a type (its row's)."""
    name = _SPAN_NAMES.get(etype)
    if name is None:
        row = row_for(etype)
        assert row is not None
        name = row.span_name
    return name


def _json_object(name: str, value: Mapping[str, Any]) -> str:
    """A dict of JSON values as the JSON text an attribute carries (NaN and infinities refused)."""
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise TypeError(f"{name} must be a dict with str keys, got {type(value).__name__} {value!r}")
    try:
        text = json.dumps(dict(value), allow_nan=False, separators=(",", ":"))
    except RecursionError:
        raise ValueError(f"{name} nests deeper than {checks.MAX_JSON_DEPTH} levels") from None
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must hold JSON values (str, finite numbers, bools, None, lists, dicts): "
                         f"{exc}") from None
    return checks.json_object(name, text)


@dataclass(frozen=True)
class Route:
    """What a provider does with a VWO event: ``found`` a VWO processor for it (None: a provider
    we cannot inspect, trusted), ``leaks`` it to other processors too (app exporters), and the
    attribute ``count`` / value ``length`` limits that would cut it."""

    found: bool | None
    leaks: bool = False
    count: int | None = None
    length: int | None = None
    #: only VWO processors (their own hooks) and OpenTelemetry's stock ones for the app's exporters
    #: (which skip VWOSampler's record-only spans), called on the emitting thread: a legacy event
    #: of ``VWOEvents`` goes straight to the VWO processors' queues (``takers``), no record made
    handoff: bool = False
    #: the provider's processor list (the SDK replaces the tuple when one is added), and where it is
    seen: tuple[Any, str, Any] | None = None
    #: the VWO accounts its VWO processors deliver (VWOEvents' events, which carry none, reach each)
    accounts: frozenset[int] = frozenset()
    #: with ``handoff``: what each VWO processor's ``on_end`` / ``on_emit`` puts an event with, in order
    takers: tuple[Callable[[VWOEvent], Any], ...] = ()

    def changed(self) -> bool:
        """A processor was added to the provider since this route was taken."""
        return self.seen is not None and getattr(self.seen[0], self.seen[1], None) is not self.seen[2]

    @classmethod
    def of(cls, provider: Any, log: bool) -> Route:
        if log:
            multi = getattr(provider, "_multi_log_record_processor", None)
            field = "_log_record_processors"
            processors = getattr(multi, field, None)
            limits = getattr(provider, "_log_record_limits", None)
            count = getattr(limits, "max_log_record_attributes", None)
            length = getattr(limits, "max_log_record_attribute_length", None)
            kind: type[VWOLogRecordProcessor | VWOSpanProcessor] = VWOLogRecordProcessor
            private = own_decision = True  # log records are never sampled: any other processor sees them
        else:
            if isinstance(provider, trace.ProxyTracerProvider):
                return cls(False)  # no provider set yet: events would go nowhere
            multi = getattr(provider, "_active_span_processor", None)
            field = "_span_processors"
            processors = getattr(multi, field, None)
            limits = getattr(provider, "_span_limits", None)
            count = getattr(limits, "max_span_attributes", None)
            length = getattr(limits, "max_span_attribute_length", None)
            kind = VWOSpanProcessor
            # VWOSampler keeps VWO spans unsampled: the stock processors of the app's exporters skip them
            sampler = getattr(provider, "sampler", None)
            private = not isinstance(sampler, VWOSampler)
            own_decision = getattr(type(sampler), "should_sample", None) is VWOSampler.should_sample  # not a subclass's
        if processors is None:
            found = None if limits is not None or multi is not None else _unknown(provider)
            return cls(found, False, count, length)
        stock = log or private  # under VWOSampler the stock processors skip VWO spans (never sampled)
        vwo = [delivers_to_vwo(p, kind, stock) for p in processors]
        # straight to the queues: under VWOSampler's own decision (another sampler, or a subclass,
        # may decide by the attributes), beside processors that only put it there or never read
        # VWO's records, on this thread
        handoff = (log or own_decision) and type(multi).__name__.startswith("SynchronousMulti") and all(
            _takes_handed(p, kind) for p in processors)
        accounts = frozenset(account_of(p) for p, is_vwo in zip(processors, vwo, strict=True) if is_vwo)
        takers = tuple(p.batcher.put for p in processors if isinstance(p, kind)) if handoff else ()
        return cls(any(vwo), private and not all(vwo), count, length, handoff, (multi, field, processors),
                   accounts, takers)


def delivers_to_vwo(processor: Any, kind: type, stock: bool = True) -> bool:
    """A VWO processor (of ``kind``), or, if ``stock``, a stock OpenTelemetry processor whose
    exporter is a ``VWOExporter`` (it only sees what the sampler samples)."""
    if isinstance(processor, kind):
        return True
    return stock and isinstance(exporter_of(processor), VWOExporter)


def _takes_handed(processor: Any, kind: type) -> bool:
    """A VWO processor whose hooks only put the event in its queue (none overridden: one that
    passes records to another thread, or looks at them starting, needs the record), or one of
    OpenTelemetry's stock processors with an exporter of the app's (which never reads VWO's)."""
    hooks = ("on_emit",) if kind is VWOLogRecordProcessor else ("on_start", "on_end")
    if isinstance(processor, kind):  # its hooks, as called (one set on the instance counts too)
        return all(getattr(getattr(processor, hook, None), "__func__", None) is getattr(kind, hook)
                   for hook in hooks)
    return type(processor) in _STOCK and not isinstance(exporter_of(processor), VWOExporter)


_STOCK = (SimpleSpanProcessor, BatchSpanProcessor, SimpleLogRecordProcessor, BatchLogRecordProcessor)


def account_of(processor: Any) -> int:
    """The account a processor ``delivers_to_vwo`` delivers: a VWO processor's exporter's, or
    that of the ``VWOExporter`` behind a stock processor."""
    if isinstance(processor, (VWOSpanProcessor, VWOLogRecordProcessor)):
        return processor.batcher.exporter.account_id
    account: int = exporter_of(processor).account_id
    return account


def exporter_of(processor: Any) -> Any:
    """The exporter behind a stock Simple/Batch span or log record processor, else None."""
    inner = getattr(processor, "_batch_processor", processor)
    return getattr(processor, "span_exporter", None) or getattr(inner, "_exporter", None)


def _unknown(provider: Any) -> bool | None:
    """A provider we cannot look into: the no-op one sends nothing anywhere; others are trusted."""
    return False if type(provider).__name__.startswith("NoOp") else None
