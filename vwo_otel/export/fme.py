"""VWO's FME wire format (``vwo-fme-python-sdk``): ``POST /server-side/batch-events-v2`` with
``{"ev": [{"d": {...}}]}`` and, in real time, ``POST /events/t`` with one bare ``{"d": {...}}``.
What each event name writes into ``event.props`` is its row's ``FMEWire`` in ``event_types``.

Differences from what the FME SDK itself sends, on purpose: ``msgId`` is unique per event (the
SDK's ``<visId>-<ms>`` repeats within one ``get_flag``), stable across retries and spool replays;
the SDK's usage statistics (``vwoMeta``) ride on one impression per request, and only until VWO
has accepted a request carrying them (the SDK clears them after its first real-time 200 but
never when it batches, so every batched impression carried about 150 bytes of them); the sdk key travels
where VWO's format puts it (query, ``Authorization``, ``vwo_envKey``, ``vwo_fs_environment``,
``vwoMeta.env``) and never in a span or log record. Reports (``flush_callback``'s events) show
``***`` in its place (``masked``): ``encode`` masks each dict once its bytes are made, and every
request, resent halves included, is built from those bytes.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from typing import Any

from .. import attributes as A
from .._version import SDK_NAME, __version__
from ..checks import mask_secret
from ..event import FMEEvent, VWOEvent
from ..event_types import FME, TYPES, FMEWire, Kind
from .wire import Request, _dumps, visitor_hasher, visitor_headers, visitor_of

BATCH_PATH = "/server-side/batch-events-v2"
EVENTS_PATH = "/events/t"
ENVIRONMENT = "vwo_fs_environment"
ENV_KEY = "vwo_envKey"
#: What reports show in place of the sdk key.
MASK = "***"


def masked(event: dict[str, Any], sdk_keys: Iterable[str] = ()) -> dict[str, Any]:
    """A stored event with ``***`` in place of the sdk key, in place: an FME event
    (``{"d": {...}}``) at each place the format writes it (``event.props``' ``vwo_envKey`` and
    ``vwo_fs_environment``, ``vwoMeta.env``, ``visitor.props``' ``vwo_fs_environment``), whatever
    it holds there; any event, legacy ones too, in every other string holding one of
    ``sdk_keys``."""
    props, visitor_props = _props_of(event)
    _mask_places(props, visitor_props, None)
    for key in sdk_keys:
        _mask_everywhere(event, key)
    return event


def sdk_keys_in(events: Iterable[dict[str, Any]]) -> set[str]:
    """The sdk keys FME events carry where the format writes them (``vwo_envKey``)."""
    keys = {_props_of(event)[0].get(ENV_KEY) for event in events}
    return {key for key in keys if isinstance(key, str) and key and key != MASK}


def _props_of(event: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """A stored event's ``event.props`` ({} for none: a legacy event) and ``visitor.props``."""
    d = event.get("d")
    d = d if isinstance(d, dict) else {}
    inner, visitor = d.get("event"), d.get("visitor")
    props = inner.get("props") if isinstance(inner, dict) else None
    visitor_props = visitor.get("props") if isinstance(visitor, dict) else None
    return (props if isinstance(props, dict) else {}), (visitor_props if isinstance(visitor_props, dict) else None)


def _mask_places(props: dict[str, Any], visitor_props: dict[str, Any] | None, sdk_key: str | None) -> int:
    """``***`` at the places the format writes the sdk key, in an event's ``event.props`` and
    ``visitor.props``; how many of them held ``sdk_key``."""
    found = 0
    if ENV_KEY in props:
        found += props[ENV_KEY] == sdk_key
        props[ENV_KEY] = MASK
    if ENVIRONMENT in props:
        found += props[ENVIRONMENT] == sdk_key
        props[ENVIRONMENT] = MASK
    meta = props.get("vwoMeta")
    if meta.__class__ is dict and "env" in meta:
        found += meta["env"] == sdk_key
        meta["env"] = MASK
    if visitor_props is not None and ENVIRONMENT in visitor_props:
        found += visitor_props[ENVIRONMENT] == sdk_key
        visitor_props[ENVIRONMENT] = MASK
    return found


def _mask_everywhere(node: Any, sdk_key: str, own: frozenset[str] | None = None) -> None:
    """Every string value under ``node`` (dicts, lists) with ``***`` in place of ``sdk_key``
    (``checks.mask_secret``: a short test key only where it stands as a token); a
    dict's keys too, but only in the app's properties (``own``: the format's own keys there,
    kept; None: the format's structure, whose keys are never renamed, so a key that is also a
    word such as ``props`` leaves the report's shape intact)."""
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for k, v in list(items):
        if isinstance(v, str):
            if sdk_key in v:
                node[k] = v = mask_secret(v, sdk_key)
        elif isinstance(v, (dict, list)):
            inner = (_OWN_PROPS if k == "props" else None) if own is None else frozenset()
            _mask_everywhere(v, sdk_key, inner)
        if own is not None and isinstance(k, str) and k not in own and sdk_key in k:
            masked = mask_secret(k, sdk_key)
            if masked != k:
                del node[k]
                node[masked] = v


#: The keys the format itself writes into ``props`` (never renamed in reports).
_OWN_PROPS = frozenset({ENV_KEY, ENVIRONMENT, "vwoMeta", "vwo_sdkName", "vwo_sdkVersion"}
                       | {k for row in TYPES.values() if isinstance(row.wire, FMEWire)
                          for k in (*(key.wire for key in row.wire.props), *row.wire.constants)})


class FMEFormat:
    """The FME format for one account and sdk key."""

    name = FME

    def __init__(self, account_id: int, sdk_key: str) -> None:
        self.account_id = account_id
        self._sdk_key = sdk_key
        self.visitor = visitor_hasher(account_id)
        self.batch = Request("POST", BATCH_PATH, {"a": str(account_id), "env": sdk_key, "sn": SDK_NAME,
                                                  "sv": __version__},
                             {"Authorization": sdk_key, "User-Agent": SDK_NAME, "Content-Type": "application/json"})
        self._wire: dict[int | str, FMEWire] = {
            k: row.wire for k, row in TYPES.items() if isinstance(row.wire, FMEWire)}
        self._usage_sent = False  # VWO accepted a request carrying the usage statistics
        self._key_json = _dumps(sdk_key)[1:-1].encode()  # the key as it reads in an event's JSON

    def __repr__(self) -> str:
        return f"FMEFormat(account_id={self.account_id})"

    def event_dict(self, event: VWOEvent, usage: bool = True) -> dict[str, Any]:
        """``{"d": {...}}``, the event as it goes into ``{"ev": [...]}`` and into ``/events/t``
        (the sdk key in it: reports take ``encode``'s dicts); with its usage statistics if it
        has them, ``usage`` allows and VWO has not accepted them yet."""
        return self._build(event, usage)[0]

    def _build(self, event: VWOEvent, usage: bool) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:
        """``event_dict``, with its ``event.props`` and its ``visitor.props`` (None: it has none)."""
        assert isinstance(event, FMEEvent)
        wire = self._wire[event.etype]
        key = self._sdk_key
        visitor = visitor_of(event, self.account_id, self.visitor)
        props: dict[str, Any] = {"vwo_sdkName": SDK_NAME, "vwo_sdkVersion": __version__}
        if wire.env_key:
            props[ENV_KEY] = key
        holdout = event.feature_id is not None  # the SDK writes a holdout's variation (1 or 2) as a number
        for k in wire.props:
            value = getattr(event, k.slots[0])
            if value is not None or not k.optional:
                props[k.wire] = str(value) if k.kind is Kind.ID_TEXT and not holdout else value
        props.update(wire.constants)
        if wire.env_prop:
            props[ENVIRONMENT] = key
        if usage and event.usage and not self._usage_sent:
            meta = json.loads(event.usage)
            meta.setdefault("env", key)  # the sdk key: left out of the span, put back on the wire
            props["vwoMeta"] = meta
        if wire.own_props and event.props:
            props.update(json.loads(event.props))
        visitor_props: dict[str, Any] = {ENVIRONMENT: key}
        if event.visitor_props:
            visitor_props.update(json.loads(event.visitor_props))
        if event.etype == A.VARIATION_SHOWN and event.visitor_ip and not holdout:
            visitor_props["ip"] = event.visitor_ip  # as the FME SDK does for (not holdout) impressions
        d: dict[str, Any] = {
            "msgId": event.msg_id or f"{visitor}-{event.time_ms}-{event.nonce:08x}", "visId": visitor,
            "sessionId": event.time if event.session_id is None else event.session_id,
            "event": {"props": props, "name": event.name, "time": event.time_ms},
        }
        if event.visitor_ua:  # as the FME SDK: only when the visitor's are known
            d["visitor_ua"] = event.visitor_ua
        if event.visitor_ip:
            d["visitor_ip"] = event.visitor_ip
        if not wire.visitor:
            return {"d": d}, props, None
        d["visitor"] = {"props": visitor_props}
        return {"d": d}, props, visitor_props

    def encode(self, events: Sequence[VWOEvent]) -> tuple[list[dict[str, Any]], list[bytes]]:
        """The compact JSON sent, and the dicts reports show (the sdk key as ``***``: each is
        masked once its bytes are made), one per event; the usage statistics on the first event
        that has them only (one request needs them once)."""
        build = self._build
        if self._usage_sent:
            built = [build(ev, False) for ev in events]
        else:
            built = []
            usage = True
            for ev in events:
                built.append(build(ev, usage))
                if usage and "vwoMeta" in built[-1][1]:
                    usage = False
        parts = [_dumps(b[0]).encode() for b in built]
        key, key_json = self._sdk_key, self._key_json
        for (d, props, visitor_props), part in zip(built, parts, strict=True):
            copies = part.count(key_json)  # an app's own string may hold it too: then every value is looked at
            if copies and _mask_places(props, visitor_props, key) < copies:
                _mask_everywhere(d, key)
        return [b[0] for b in built], parts

    def realtime(self, event: VWOEvent) -> Request:
        """FME's single-event ``POST /events/t`` (no Authorization header: the key is in the query)."""
        assert isinstance(event, FMEEvent)
        query = {"en": event.name, "a": str(self.account_id), "eTime": str(event.time_ms),
                 "random": repr(random.random()), "p": "FS", "visitor_ua": event.visitor_ua,
                 "visitor_ip": event.visitor_ip, "sn": SDK_NAME, "sv": __version__, "env": self._sdk_key}
        headers = visitor_headers(event)
        headers["User-Agent"] = SDK_NAME
        headers["Content-Type"] = "application/json"
        return Request("POST", EVENTS_PATH, query, headers, _dumps(self.event_dict(event)).encode())

    def accepted(self, events: Sequence[dict[str, Any]]) -> None:
        """Once VWO has accepted the usage statistics, later impressions go without them."""
        if not self._usage_sent and any("vwoMeta" in d["d"]["event"]["props"] for d in events):
            self._usage_sent = True
