"""``VWOInstrumentor``: the legacy VWO SDK's events (``vwo-python-sdk`` 1.68.x) through vwo_otel.

``VWOInstrumentor().instrument(tracer_provider=...)`` (or ``logger_provider=...``; neither: the
global tracer provider) patches the SDK's ``EventDispatcher.dispatch``: the impression each
``activate`` / ``is_feature_enabled`` / ``track`` / ``push`` builds becomes one span (or log
record) carrying VWO's attributes, the visitor id ``u`` and ``account_id`` the SDK computed
(``vwo.visitor.uuid``, ``vwo.account_id``) and its ``sId`` as the record's time. The provider's
VWO processors batch and deliver it; the SDK sends nothing itself, real-time or with its own
``batch_events`` (whose settings then no longer apply: the processor's do). API return values
are the SDK's. ``client.flush_events(mode)`` and ``client.set_opt_out()`` also flush the VWO
processors of the client's account (``mode="async"`` starts the flush and returns).

Accounts whose settings file enables VWO's event architecture (``isEventArchEnabled``) send, in
real time, one ``POST /events/t`` per call on the calling thread; with ``batch_events`` the SDK
sends them in the legacy batch format instead. Instrumented, such a client takes that batch
path (while its account's events reach a VWO processor), so its events go through vwo_otel as
legacy batch events, as the SDK's own batching sends them.

Where an event cannot arrive (``routing``), the SDK dispatches it as before, on the calling
thread; ``instrument(strict=True)`` refuses such a set-up instead (``ConfigError`` naming both
accounts): at ``instrument()`` when the provider has no VWO processor, or none for
``account_id=`` (the settings file's account, when the app knows it there); and at
``vwo.launch()`` for a settings file whose account no VWO processor on the provider delivers.
"""

from __future__ import annotations

import importlib
import json
import logging
import weakref
from collections.abc import Callable, Collection
from importlib import metadata
from typing import Any

import wrapt  # type: ignore[import-untyped]
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from opentelemetry.instrumentation.utils import unwrap

from .. import attributes as A
from .. import checks
from ..event import MalformedEvent, from_attributes
from .fme import SUPPORTED as FME_SUPPORTED
from .routing import Bridge

logger = logging.getLogger("vwo_otel")

#: The SDK versions whose dispatcher this instrumentor knows (its impression keys, its API flow).
SUPPORTED = "vwo-python-sdk >= 1.68, < 1.69"
#: The SDK's real-time endpoint (last path segment of an impression's ``url``) -> VWO event type.
_KINDS = {"track-user": A.VISITOR, "track-goal": A.GOAL, "push": A.CUSTOM_DIMENSION}
_NS = 1_000_000_000


class VWOInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Routes the legacy VWO SDK's events through vwo_otel's processors (see the module doc)."""

    def __init__(self) -> None:
        super().__init__()
        self._bridge: _Bridge | None = None

    def instrumentation_dependencies(self) -> Collection[str]:
        return (SUPPORTED,)

    def instrument(self, **kwargs: Any) -> Any:
        """As ``BaseInstrumentor.instrument``; in an app that runs VWO's FME SDK instead, says to
        use ``VWOFMEInstrumentor`` (both SDKs install a ``vwo`` package; this one finds no legacy SDK)."""
        if not _installed("vwo-python-sdk") and any(map(_installed, FME_SUPPORTED)):
            # opentelemetry-instrument loads every instrumentor (skip_dep_check): vwo_fme does this app's
            level = logging.DEBUG if kwargs.get("skip_dep_check") else logging.ERROR
            logger.log(level, "vwo_otel: VWOInstrumentor instruments the deprecated vwo-python-sdk, but this app "
                       "runs VWO's FME SDK: use vwo_otel.instrumentation.VWOFMEInstrumentor().instrument(...)")
            return None
        return super().instrument(**kwargs)

    def _instrument(self, **kwargs: Any) -> None:
        try:
            for module in ("vwo.event.event_dispatcher", "vwo.vwo"):
                importlib.import_module(module)
        except ImportError:  # opentelemetry-instrument loads every instrumentor; this app has no VWO SDK
            logger.debug("vwo_otel: vwo-python-sdk is not importable; VWOInstrumentor does nothing")
            return
        bridge = _Bridge(kwargs.get("tracer_provider"), kwargs.get("logger_provider"),
                         bool(kwargs.get("to_gateway", False)), bool(kwargs.get("strict", False)))
        if bridge.strict:  # refuse before anything is patched
            account_id = kwargs.get("account_id")
            bridge.refuse_unless_delivered(None if account_id is None else checks.account_id(account_id))
        self._bridge = bridge
        wrapt.wrap_function_wrapper("vwo.event.event_dispatcher", "EventDispatcher.dispatch", bridge.dispatch)
        wrapt.wrap_function_wrapper("vwo.vwo", "VWO.flush_events", bridge.flush_events)
        wrapt.wrap_function_wrapper("vwo.vwo", "VWO.set_opt_out", bridge.set_opt_out)
        wrapt.wrap_function_wrapper("vwo.vwo", "VWO.__init__", bridge.launch)

    def _uninstrument(self, **kwargs: Any) -> None:
        unwrap("vwo.event.event_dispatcher.EventDispatcher", "dispatch")
        unwrap("vwo.vwo.VWO", "flush_events")
        unwrap("vwo.vwo.VWO", "set_opt_out")
        unwrap("vwo.vwo.VWO", "__init__")
        bridge, self._bridge = self._bridge, None
        if bridge is not None:
            bridge.restore_event_arch()


class _Bridge(Bridge):
    """The patched SDK methods (the rest is ``routing.Bridge``)."""

    def __init__(self, tracer_provider: Any, logger_provider: Any, to_gateway: bool, strict: bool) -> None:
        super().__init__(tracer_provider, logger_provider, to_gateway)
        self.strict = strict
        self._batched: weakref.WeakSet[Any] = weakref.WeakSet()  # event-arch clients set to the batch path

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
            self.warn(("malformed", type(exc)), "vwo_otel: an impression of the VWO SDK cannot become a VWO "
                      "event (%s); the SDK sends it itself", exc)
            return self._hand_back(wrapped, args, kwargs)
        if not self.arrives(attrs[A.ACCOUNT_ID]) or not self.fits(attrs) or not self.emit(etype, attrs, time_ns):
            return self._hand_back(wrapped, args, kwargs)
        if getattr(instance, "event_batching", False):  # the SDK was launched with batch_events
            self.batching_ignored(attrs[A.ACCOUNT_ID], "batch_events")
        return True

    def _hand_back(self, wrapped: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        self.handed_back()
        return wrapped(*args, **kwargs)

    # -- VWO.__init__ ------------------------------------------------------------------------------
    def launch(self, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
               kwargs: dict[str, Any]) -> Any:
        """``VWO.__init__``: an event-architecture client whose account a VWO processor delivers
        takes the SDK's batch path (its events then come to ``dispatch``); under ``strict=True`` a
        client whose settings file's account no VWO processor delivers is refused."""
        result = wrapped(*args, **kwargs)
        account = _account_of(instance)
        development = getattr(getattr(instance, "event_dispatcher", None), "is_development_mode", False)
        if account is None or development:
            return result
        if self.strict:
            self.refuse_unless_delivered(account)
        if (getattr(instance, "is_event_arch_enabled", False) and not instance.is_event_batching_enabled
                and self.arrives(account)):
            # What the SDK's APIs read to choose the legacy dispatch (the batch format) over /events/t;
            # its dispatcher's own batching stays off, so a hand-back sends as in real time.
            instance.is_event_batching_enabled = True
            self._batched.add(instance)
            logger.info("vwo_otel: VWO account %d uses the event architecture: its events go as legacy batch "
                        "events, as the SDK's own batching sends them", account)
        return result

    def restore_event_arch(self) -> None:
        """``uninstrument``: event-architecture clients send in real time again, as the SDK does."""
        for client in list(self._batched):
            client.is_event_batching_enabled = False
        self._batched.clear()

    # -- VWO.flush_events / VWO.set_opt_out -----------------------------------------------
    def flush_events(self, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
                     kwargs: dict[str, Any]) -> Any:
        """The SDK's ``flush_events(mode)``, then the same flush of vwo_otel's processors
        (``"async"`` starts it; any other mode waits, as the SDK's does). The SDK's return value."""
        result = wrapped(*args, **kwargs)
        if result is not False:  # False: opted out, or the call itself failed
            mode = kwargs.get("mode", args[0] if args else None)
            self.flush(_account_of(instance), "async" if mode == "async" else "sync")
        return result

    def set_opt_out(self, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
        """Before the client stops tracking, deliver what it queued (the SDK flushes its queue too)."""
        if not getattr(instance, "is_opted_out", True):
            self.flush(_account_of(instance), "sync")
        return wrapped(*args, **kwargs)


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


def _installed(distribution: str) -> bool:
    try:
        metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True


def _account_of(client: Any) -> int | None:
    settings = getattr(client, "settings_file", None)
    account = settings.get("accountId") if isinstance(settings, dict) else None
    try:
        return int(account) if account is not None else None
    except (TypeError, ValueError):
        return None
