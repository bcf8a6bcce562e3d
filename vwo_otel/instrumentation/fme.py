"""``VWOFMEInstrumentor``: the events of VWO's FME SDK (``vwo-fme-python-sdk`` or
``wingify-fme-python-sdk`` 1.65.x; both ship the ``wingify`` core and the ``vwo`` facade, so
``vwo.init`` and ``wingify.init`` are the same client) delivered by vwo_otel.

``VWOFMEInstrumentor().instrument(tracer_provider=...)`` (or ``logger_provider=...``; neither: the
global tracer provider) hooks the SDK where it hands a finished event (its ``{"d": {...}}``
payload) to its network layer, before any thread or request is made:

==========================================================  =================================================
SDK function (module binding)                               carries
==========================================================  =================================================
``BatchEventQueue.enqueue``                                 every event, with ``batch_event_data``
``send_impression_for_variation_shown_batch``               ``get_flag``'s impressions (rollout, testing,
(``api.get_flag_api``, ``utils.holdout_util``)              impact, holdouts) as one list, without it
``send_post_api_request`` (``api.track_api``,               ``track_event``, ``set_attribute``,
``api.set_attribute_api``, ``utils.impression_util``)       ``vwo_feTrackUsage``, gateway-mode impressions
``send_event`` (``utils.event_util``)                       ``vwo_fmeSdkInit``, ``vwo_sdkUsageStats``
==========================================================  =================================================

Each event becomes one span (or log record) with the attributes of ``vwo_otel.attributes``
(``convert``): the event name as ``vwo.event.type``, the SDK's ``visId`` as ``vwo.visitor.uuid``
with the SDK's account, its ``sessionId``, ``event.time`` as the record's time, the impression's
campaign / variation / holdout feature, its ``vwoMeta`` as ``vwo.usage_stats`` and the remaining
properties as JSON. What the encoder writes itself (the SDK name and version, and every copy of the
sdk key: ``vwo_envKey``, ``vwo_fs_environment``, ``vwoMeta.env``, the usage-stats event's
``initConfig.sdk_key``) is left out: the sdk key never becomes an attribute, and an event that would
still carry it stays with the SDK. The SDK's ``msgId`` is not kept (it is not unique); vwo_otel
gives each event its own.

The SDK then sends no event request: its batch queue (``batch_event_data``) starts no timer while
it holds nothing (so no idle ``{"ev": []}`` POSTs and no non-daemon thread at exit), ``get_flag``
without impressions POSTs nothing, and its settings-poll timers are daemon threads (settings are
still fetched and polled by the SDK; an app that simply exits ends at once, vwo_otel delivering
what is queued). ``client.flush_events()`` flushes the VWO processors of the SDK's account and
returns whether everything emitted before it was delivered.

An event goes through vwo_otel only where it can arrive (the rules of ``VWOInstrumentor``: a VWO
processor of the SDK's account that is not shut down, or a provider that cannot be inspected, or
``to_gateway=True``), and only if it converts and the processors' decoder accepts it. Otherwise
the SDK sends it itself, exactly as it would have (its batch queue starts its timer then), with
one warning per reason: never lost, never sent twice. ``vwo_sdkDebug`` and ``vwo_log`` (the SDK's
own sampled diagnostics, always real time, never batched by the SDK) stay with the SDK.
"""

from __future__ import annotations

import importlib
import json
import logging
import threading
import weakref
from collections.abc import Callable, Collection, Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import wrapt  # type: ignore[import-untyped]
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from .. import attributes as A
from .. import checks
from ..event import MalformedEvent, from_attributes
from .routing import Bridge

logger = logging.getLogger("vwo_otel")

#: The FME SDK versions whose event functions this instrumentor knows, per distribution (both
#: install the same ``wingify`` and ``vwo`` packages).
SUPPORTED = {
    "vwo-fme-python-sdk": "vwo-fme-python-sdk >= 1.65, < 1.66",
    "wingify-fme-python-sdk": "wingify-fme-python-sdk >= 1.65, < 1.66",
}
#: (module, attribute) of every SDK function the instrumentor wraps, and the bridge method it calls.
_HOOKS: tuple[tuple[str, str, str], ...] = (
    ("wingify.services.batch_event_queue", "BatchEventQueue.enqueue", "enqueue"),
    ("wingify.services.batch_event_queue", "BatchEventQueue.create_new_batch_timer", "batch_timer"),
    ("wingify.api.get_flag_api", "send_impression_for_variation_shown_batch", "impressions"),
    ("wingify.utils.holdout_util", "send_impression_for_variation_shown_batch", "impressions"),
    ("wingify.api.track_api", "send_post_api_request", "one_event"),
    ("wingify.api.set_attribute_api", "send_post_api_request", "one_event"),
    ("wingify.utils.impression_util", "send_post_api_request", "one_event"),
    ("wingify.utils.event_util", "send_event", "sdk_event"),
    ("wingify.wingify_client", "WingifyClient.flush_events", "flush_events"),
    ("wingify.services.settings_manager", "SettingsManager.is_settings_valid", "settings_valid"),
)
#: Where the SDK's ``init(options)`` is bound (``wingify.init``, and what ``vwo.init`` calls).
_INITS = (("wingify.wingify", "init"), ("wingify", "init"), ("vwo.vwo", "_wingify_init"))
_BUILDER = "wingify.wingify_builder"  # its settings-poll timers come from its module global ``threading``
_SETTINGS = "wingify.services.settings_manager"
_CLIENT = "wingify.wingify_client"

IMPRESSION = "vwo_variationShown"
USAGE_STATS_EVENT = "vwo_sdkUsageStats"
#: Event properties every FME event carries that the v2 encoder writes itself (SDK name and
#: version, and the sdk key under two names).
ENCODER_PROPS = ("vwo_sdkName", "vwo_sdkVersion", "vwo_envKey", "vwo_fs_environment")
_MS = 1_000_000


def convert(payload: Mapping[str, Any], account_id: int, sdk_key: str) -> tuple[str, dict[str, Any], int]:
    """(event name, attributes, time in ns) of one FME event payload ``{"d": {...}}`` made by the SDK
    for ``account_id``. Raises ``KeyError`` / ``TypeError`` / ``ValueError`` for a payload it does
    not understand, and ``ValueError`` if an attribute would still hold ``sdk_key``."""
    d = payload["d"]
    event = d["event"]
    name, time_ms = event["name"], event["time"]
    if type(name) is not str or not name:
        raise TypeError(f"event.name must be a non-empty str, got {name!r}")
    if type(time_ms) is not int:
        raise TypeError(f"event.time must be an int (ms), got {time_ms!r}")
    attrs: dict[str, Any] = {A.EVENT_TYPE: name, A.ACCOUNT_ID: account_id, A.VISITOR_UUID: d["visId"],
                             A.SESSION_ID: d["sessionId"]}
    ua, ip = d.get("visitor_ua"), d.get("visitor_ip")
    if ua:
        attrs[A.VISITOR_UA] = ua
    if ip:
        attrs[A.VISITOR_IP] = ip
    props = dict(event.get("props") or {})
    for key in ENCODER_PROPS:
        props.pop(key, None)
    if name == IMPRESSION:
        attrs[A.CAMPAIGN_ID] = props.pop("id")
        variation = props.pop("variation")
        attrs[A.VARIATION_ID] = int(variation) if type(variation) is str and variation.isdigit() else variation
        if props.get("isFirst") == 1:
            del props["isFirst"]
        if "fId" in props:
            attrs[A.FEATURE_ID] = props.pop("fId")
    meta = props.pop("vwoMeta", None)
    if meta is not None:
        attrs[A.USAGE_STATS] = _json({k: v for k, v in meta.items() if k != "env"})  # env: the sdk key
    if name == USAGE_STATS_EVENT:
        data = props.get("data")
        if isinstance(data, dict) and isinstance(data.get("initConfig"), dict):  # the SDK's init options
            props["data"] = {**data, "initConfig": {k: v for k, v in data["initConfig"].items() if k != "sdk_key"}}
    if props:
        attrs[A.EVENT_PROPERTIES] = _json(props)
    visitor = d.get("visitor")
    vprops = dict(visitor.get("props") or {}) if isinstance(visitor, dict) else {}
    vprops.pop("vwo_fs_environment", None)
    if ip and vprops.get("ip") == ip:  # the SDK copies the visitor's IP here; the encoder does too
        del vprops["ip"]
    if vprops:
        attrs[A.VISITOR_PROPERTIES] = _json(vprops)
    if sdk_key and any(type(v) is str and sdk_key in v for v in attrs.values()):
        raise ValueError("the event carries the sdk key in a property, which must not travel as telemetry")
    return name, attrs, time_ms * _MS


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class VWOFMEInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Routes the VWO FME SDK's events through vwo_otel's processors (see the module doc)."""

    def __init__(self) -> None:
        super().__init__()
        self._bridge: _FMEBridge | None = None

    def instrumentation_dependencies(self) -> Collection[str]:
        for dist, requirement in SUPPORTED.items():
            try:
                version(dist)
            except PackageNotFoundError:
                continue
            return (requirement,)
        return (SUPPORTED["vwo-fme-python-sdk"],)

    def _instrument(self, **kwargs: Any) -> None:
        try:
            modules = {name: importlib.import_module(name)
                       for name in {m for m, _, _ in _HOOKS} | {_BUILDER, _SETTINGS, _CLIENT}}
        except ImportError:  # opentelemetry-instrument loads every instrumentor; this app has no FME SDK
            logger.debug("vwo_otel: the VWO FME SDK is not importable; VWOFMEInstrumentor does nothing")
            return
        bridge = _FMEBridge(kwargs.get("tracer_provider"), kwargs.get("logger_provider"),
                            bool(kwargs.get("to_gateway", False)), modules[_SETTINGS].SettingsManager,
                            modules[_CLIENT].WingifyClient)
        if kwargs.get("strict"):  # refuse before anything is patched
            account_id = kwargs.get("account_id")
            bridge.refuse_unless_delivered(None if account_id is None else checks.account_id(account_id))
        self._bridge = bridge
        for module, name, method in _HOOKS:
            owner, _, attr = f"{module}.{name}".rpartition(".")
            target = _resolve(owner)
            bridge.originals.append((target, attr, vars(target)[attr]))  # as defined: a staticmethod stays one
            wrapt.wrap_function_wrapper(module, name, getattr(bridge, method))
        if kwargs.get("strict"):  # and when a client is made for an account no processor delivers
            for module, name in _INITS:
                try:
                    target = importlib.import_module(module)
                except ImportError:  # wingify-fme-python-sdk has no vwo facade
                    continue
                bridge.originals.append((target, name, vars(target)[name]))
                wrapt.wrap_function_wrapper(module, name, bridge.init)
        builder = modules[_BUILDER]
        bridge.builder_threading = builder.threading
        setattr(builder, "threading", _DaemonTimers())  # noqa: B010 - a module global of the SDK
        bridge.quiet_timer(getattr(modules[_CLIENT].WingifyClient.get_instance(), "batch_event_queue", None))

    def _uninstrument(self, **kwargs: Any) -> None:
        bridge, self._bridge = self._bridge, None
        if bridge is None:  # the SDK was not importable: nothing was patched
            return
        for target, attr, original in reversed(bridge.originals):
            setattr(target, attr, original)
        setattr(importlib.import_module(_BUILDER), "threading", bridge.builder_threading)  # noqa: B010
        bridge.restart_timers()


def _resolve(path: str) -> Any:
    """The module or class at dotted ``path`` (``pkg.module.Class``)."""
    try:
        return importlib.import_module(path)
    except ImportError:
        module, _, cls = path.rpartition(".")
        return getattr(importlib.import_module(module), cls)


class _DaemonTimers:
    """``threading`` as the SDK's builder module sees it while instrumented: its ``Timer`` (the
    settings poll, rescheduled every ``poll_interval``, 600 s by default) is a daemon thread, so
    it no longer keeps a process that is done alive."""

    def __getattr__(self, name: str) -> Any:
        return getattr(threading, name)

    @staticmethod
    def Timer(*args: Any, **kwargs: Any) -> threading.Timer:  # noqa: N802 - threading's name
        timer = threading.Timer(*args, **kwargs)
        timer.daemon = True
        return timer


class _FMEBridge(Bridge):
    """The wrapped SDK functions (the rest is ``routing.Bridge``)."""

    sdk = "the VWO FME SDK"
    who = "VWOFMEInstrumentor"

    def __init__(self, tracer_provider: Any, logger_provider: Any, to_gateway: bool, settings_manager: Any,
                 client_class: Any) -> None:
        super().__init__(tracer_provider, logger_provider, to_gateway)
        self._settings_manager = settings_manager  # the SDK's singleton: its account and sdk key
        self._client_class = client_class  # WingifyClient: get_instance() is the client the SDK's events use
        self._valid_settings: Any = None  # the settings object the SDK last found valid (see settings_valid)
        #: (module or class, name, the attribute as it was defined) of each wrapped function
        self.originals: list[tuple[Any, str, Any]] = []
        self._quiet: weakref.WeakSet[Any] = weakref.WeakSet()  # SDK batch queues without their timer
        self.builder_threading: Any = threading

    # -- where the SDK hands over events ------------------------------------------------------------
    def enqueue(self, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
                kwargs: dict[str, Any]) -> Any:
        """``BatchEventQueue.enqueue(event)``: through vwo_otel, else into the SDK's queue (whose
        timer then runs, as without the instrumentor)."""
        payload = args[0] if args else kwargs.get("event_data")
        if self.deliver(payload):
            self.batching_ignored(self._account(), "batch_event_data")
            return None
        result = wrapped(*args, **kwargs)
        timer = getattr(instance, "timer", None)
        if instance in self._quiet and instance.batch_queue and not (timer is not None and timer.is_alive()):
            self._quiet.discard(instance)
            instance.create_new_batch_timer()
        return result

    def batch_timer(self, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
        """``BatchEventQueue.create_new_batch_timer()``: only while the SDK's queue holds events it
        sends itself (an empty queue's timer would POST ``{"ev": []}`` and keep the process alive)."""
        if getattr(instance, "batch_queue", None):
            self._quiet.discard(instance)
            return wrapped(*args, **kwargs)
        instance.timer = None
        self._quiet.add(instance)
        return None

    def impressions(self, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
        """``send_impression_for_variation_shown_batch(events, account_id, sdk_key)``: one ``get_flag``'s
        impressions. With the SDK's batch queue they go to ``enqueue`` one by one; else each goes
        through vwo_otel, the rest in one SDK request, and none (the SDK would POST ``{"ev": []}``)
        in no request."""
        if self._sdk_queue() is not None:
            return wrapped(*args, **kwargs)
        events = args[0] if args else kwargs.get("batch_payload")
        if not isinstance(events, list):
            return wrapped(*args, **kwargs)
        rest = [payload for payload in events if not self.deliver(payload)]
        if not rest:
            return None
        if args:
            return wrapped(rest, *args[1:], **kwargs)
        return wrapped(*args, **{**kwargs, "batch_payload": rest})

    def one_event(self, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
                  kwargs: dict[str, Any]) -> Any:
        """``send_post_api_request(properties, payload, user_id, ...)``: one real-time event."""
        payload = args[1] if len(args) > 1 else kwargs.get("payload")
        if self.deliver(payload):
            return None
        return wrapped(*args, **kwargs)

    def sdk_event(self, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
                  kwargs: dict[str, Any]) -> Any:
        """``send_event(properties, payload, event_name)`` of ``event_util``: the SDK's init and usage-stats
        events sent in real time (the SDK's batching would queue them)."""
        payload = args[1] if len(args) > 1 else kwargs.get("payload")
        if self.deliver(payload):
            return {"success": True, "message": "Event sent successfully"}  # what send_event answers
        return wrapped(*args, **kwargs)

    def settings_valid(self, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
                       kwargs: dict[str, Any]) -> Any:
        """``SettingsManager.is_settings_valid(settings)``: the SDK checks its whole settings file
        against a JSON schema on every ``get_flag`` / ``track_event`` / ``set_attribute`` (about
        0.8 ms each); the file it last found valid (that same object, the client's) is not checked
        again. A new settings object (a settings update) is checked as before."""
        settings = args[0] if args else kwargs.get("settings")
        if settings is not None and settings is self._valid_settings:
            return True
        valid = wrapped(*args, **kwargs)
        if valid is True and isinstance(settings, dict):
            self._valid_settings = settings
        return valid

    def init(self, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
             kwargs: dict[str, Any]) -> Any:
        """``init(options)`` under ``strict=True``: a client for an account whose events no VWO
        processor delivers is refused (``ConfigError`` naming both accounts), before it is made."""
        options = args[0] if args else kwargs.get("options")
        account = options.get("account_id") if isinstance(options, dict) else None
        if account is not None:
            self.refuse_unless_delivered(checks.account_id(account))
        return wrapped(*args, **kwargs)

    # -- WingifyClient.flush_events -----------------------------------------------------------------
    def flush_events(self, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
                     kwargs: dict[str, Any]) -> bool:
        """Deliver what the VWO processors of the SDK's account hold; True only if every event
        emitted before the call was delivered. Events the SDK queued itself (they could not go
        through vwo_otel) are flushed by the SDK, which cannot tell whether they arrived: False."""
        queue = getattr(instance, "batch_event_queue", None)
        sdk_held = bool(getattr(queue, "batch_queue", None))
        if sdk_held:
            wrapped(*args, **kwargs)
        return self.flush(self._account()) and not sdk_held

    # -- SDK state ----------------------------------------------------------------------------------
    def quiet_timer(self, queue: Any) -> None:
        """Stop the timer of an SDK batch queue made before ``instrument`` that holds nothing."""
        if queue is None or getattr(queue, "batch_queue", None):
            return
        timer = getattr(queue, "timer", None)
        if timer is not None:
            timer.cancel()
        queue.timer = None
        self._quiet.add(queue)

    def restart_timers(self) -> None:
        """``uninstrument``: the SDK's batch queues run their timers again."""
        for queue in list(self._quiet):
            queue.create_new_batch_timer()
        self._quiet.clear()

    def _sdk_queue(self) -> Any:
        return getattr(self._client_class.get_instance(), "batch_event_queue", None)

    def _account(self) -> int | None:
        manager = self._settings_manager.get_instance()
        try:
            return int(manager.get_account_id())
        except (AttributeError, TypeError, ValueError):
            return None

    # -- one event ----------------------------------------------------------------------------------
    def deliver(self, payload: Any) -> bool:
        """Emit one SDK event payload as a VWO span / log record; False (the SDK sends it) when it
        cannot go through vwo_otel."""
        manager = self._settings_manager.get_instance()
        try:
            account = int(manager.get_account_id())
            name, attrs, time_ns = convert(payload, account, manager.get_sdk_key())
            from_attributes(attrs, time_ns)  # the processors' own decoder: what it refuses stays with the SDK
        except (MalformedEvent, AttributeError, KeyError, TypeError, ValueError) as exc:
            self.warn(("malformed", type(exc)), "vwo_otel: an event of the VWO FME SDK cannot become a VWO "
                      "event (%s); the SDK sends it itself", exc)
            self.handed_back()
            return False
        if self.arrives(account) and self.fits(attrs) and self.emit(name, attrs, time_ns):
            return True
        self.handed_back()
        return False
