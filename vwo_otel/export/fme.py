"""VWO's FME wire format (``vwo-fme-python-sdk``): ``POST /server-side/batch-events-v2`` with
``{"ev": [{"d": {...}}]}`` and, in real time, ``POST /events/t`` with one bare ``{"d": {...}}``.
What each event name writes into ``event.props`` is its row's ``FMEWire`` in ``event_types``.

Differences from what the FME SDK itself sends, on purpose: ``msgId`` is unique per event (the
SDK's ``<visId>-<ms>`` repeats within one ``get_flag``), stable across retries and spool replays;
the SDK's usage statistics (``vwoMeta``) ride on one impression per request, and only until VWO
has accepted a request carrying them (the SDK clears them after its first real-time 200 but
never when it batches, so every batched impression carried about 150 bytes of them); the sdk key travels
where VWO's format puts it (query, ``Authorization``, ``vwo_envKey``, ``vwo_fs_environment``) and
never in a span or log record.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from typing import Any

from .. import attributes as A
from .._version import SDK_NAME, __version__
from ..event import FMEEvent, VWOEvent
from ..event_types import FME, TYPES, FMEWire, Kind
from .wire import Request, _dumps, visitor_hasher, visitor_headers, visitor_of

BATCH_PATH = "/server-side/batch-events-v2"
EVENTS_PATH = "/events/t"
ENVIRONMENT = "vwo_fs_environment"


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

    def __repr__(self) -> str:
        return f"FMEFormat(account_id={self.account_id})"

    def event_dict(self, event: VWOEvent, usage: bool = True) -> dict[str, Any]:
        """``{"d": {...}}``, the event as it goes into ``{"ev": [...]}`` and into ``/events/t``;
        with its usage statistics if it has them, ``usage`` allows and VWO has not accepted them yet."""
        assert isinstance(event, FMEEvent)
        wire = self._wire[event.etype]
        key = self._sdk_key
        visitor = visitor_of(event, self.account_id, self.visitor)
        props: dict[str, Any] = {"vwo_sdkName": SDK_NAME, "vwo_sdkVersion": __version__}
        if wire.env_key:
            props["vwo_envKey"] = key
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
        if wire.visitor:
            d["visitor"] = {"props": visitor_props}
        return {"d": d}

    def encode(self, events: Sequence[VWOEvent]) -> tuple[list[dict[str, Any]], list[bytes]]:
        """Wire dicts and their compact JSON, one per event; the usage statistics on the first
        event that has them only (one request needs them once)."""
        dicts = []
        usage = not self._usage_sent
        for ev in events:
            dicts.append(self.event_dict(ev, usage))
            if usage and "vwoMeta" in dicts[-1]["d"]["event"]["props"]:
                usage = False
        return dicts, [_dumps(d).encode() for d in dicts]

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
