"""VWO's legacy wire format (``vwo-python-sdk``): ``POST /server-side/batch-events`` with flat
events ``{u, sId, visitor_ua, visitor_ip, eT, ...}`` and one real-time GET per event; the
keys of each event type are its row's ``LegacyWire`` in ``event_types``."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import Any

from .._version import SDK_NAME, __version__
from ..event import VWOEvent
from ..event_types import LEGACY, TYPES, Key, Kind, LegacyWire
from .wire import Request, _dumps, _quote, compact, visitor_hasher, visitor_headers, visitor_of


def dimension_tag(key: str, value: str) -> str:
    """The custom-dimension payload ``{"u": {key: value}}`` as a JSON string."""
    return _dumps({"u": {key: value}})


#: A key's value read from an event, and the key (``optional``: left out when None).
_Plan = tuple[tuple[Key, Callable[[VWOEvent], Any]], ...]


def _tags(slots: Callable[[VWOEvent], Any]) -> Callable[[VWOEvent], str]:
    """The reader of a ``TAGS`` key: the dimension tag of the event's key and value slots."""
    return lambda ev: dimension_tag(*(v or "" for v in slots(ev)))


def _plan(keys: tuple[Key, ...]) -> _Plan:
    """Each key with the reader of its value from an event, made once per row (the batch
    encoder runs it for every event)."""
    plan: list[tuple[Key, Callable[[VWOEvent], Any]]] = []
    for key in keys:
        if key.kind is Kind.TAGS:
            plan.append((key, _tags(attrgetter(*key.slots))))
        else:
            plan.append((key, attrgetter(key.slots[0])))
    return tuple(plan)


#: The keys every legacy batch event starts with, in this order (``LegacyFormat.event_dict``).
_HEAD = ("u", "sId", "visitor_ua", "visitor_ip", "eT")


def _writer(etype: int, keys: tuple[Key, ...]) -> Callable[[dict[str, Any]], bytes | None]:
    """The bytes ``compact`` writes for a wire dict of the row ``etype`` whose keys are ids only
    (an impression; a conversion without revenue), from one format string at about a third of
    its cost (the batch encoder runs it for every event); None for any other dict (a revenue, a
    tag, a value that is not a plain int), which ``compact`` then writes."""
    ids = tuple(k for k in keys if not k.optional)
    if any(k.kind is not Kind.ID for k in ids):
        return lambda d: None
    size = len(_HEAD) + len(ids)
    names = _HEAD + tuple(k.wire for k in ids)
    formats = ("%s", "%d", "%s", "%s", str(etype)) + ("%d",) * len(ids)  # u, sId, ua, ip, eT, the ids
    template = "{" + ",".join(f'"{k}":{f}' for k, f in zip(names, formats, strict=True)) + "}"

    def write(d: dict[str, Any]) -> bytes | None:
        if len(d) != size:
            return None
        u, sid, ua, ip, et, *values = d.values()
        # ``type(et) is int``: True and 2.0 find a row too (dict lookup by equality) but are
        # written "true" / "2.0"
        if (type(sid) is not int or type(et) is not int or et != etype or type(u) is not str
                or type(ua) is not str or type(ip) is not str):
            return None
        for v in values:
            if type(v) is not int:
                return None
        return (template % (_quote(u), sid, _quote(ua), _quote(ip), *values)).encode()

    return write


def _text(value: Any) -> str:
    """A value in a real-time query string (floats as Python writes them, like the JSON body)."""
    return repr(value) if type(value) is float else str(value)


class LegacyFormat:
    """The legacy format for one account and sdk key (visitor uuids are cached)."""

    name = LEGACY

    def __init__(self, account_id: int, sdk_key: str) -> None:
        self.account_id = account_id
        self._sdk_key = sdk_key
        self.visitor = visitor_hasher(account_id)
        self.batch = Request(
            "POST", "/server-side/batch-events", {"a": str(account_id), "env": sdk_key, "sdk": SDK_NAME,
                                                  "sdk-v": __version__},
            {"Authorization": sdk_key, "User-Agent": SDK_NAME, "Content-Type": "application/json"})
        self._wire: dict[int | str, LegacyWire] = {
            k: row.wire for k, row in TYPES.items() if isinstance(row.wire, LegacyWire)}
        self._batch = {k: _plan(wire.batch) for k, wire in self._wire.items()}
        self._query = {k: _plan(wire.query) for k, wire in self._wire.items()}
        self._write = {k: _writer(k, wire.batch) for k, wire in self._wire.items() if isinstance(k, int)}

    def __repr__(self) -> str:
        return f"LegacyFormat(account_id={self.account_id})"

    def event_dict(self, event: VWOEvent) -> dict[str, Any]:
        """The event as it goes into ``{"ev": [...]}``."""
        u = visitor_of(event, self.account_id, self.visitor) if event.visitor_uuid else self.visitor(event.user_id)
        d: dict[str, Any] = {"u": u, "sId": event.time, "visitor_ua": event.visitor_ua,
                             "visitor_ip": event.visitor_ip, "eT": event.etype}
        for key, read in self._batch[event.etype]:
            value = read(event)
            if value is not None or not key.optional:
                d[key.wire] = value
        return d

    def encode(self, events: Sequence[VWOEvent]) -> tuple[list[dict[str, Any]], list[bytes]]:
        """Wire dicts and their compact JSON, one per event."""
        dicts = [self.event_dict(ev) for ev in events]
        write = self._write
        return dicts, [write[d["eT"]](d) or compact(d) for d in dicts]

    def realtime(self, event: VWOEvent) -> Request:
        """VWO's single-event GET for ``event``: every field in the query string."""
        wire = self._wire[event.etype]
        query = {
            "random": repr(random.random()), "sdk": SDK_NAME, "sdk-v": __version__, "ap": "server",
            "sId": str(event.time), "u": visitor_of(event, self.account_id, self.visitor),
            "account_id": str(self.account_id), "env": self._sdk_key, "visitor_ua": event.visitor_ua,
            "visitor_ip": event.visitor_ip,
        }
        for key, read in self._query[event.etype]:
            value = read(event)
            if value is not None or not key.optional:
                query[key.wire] = _text(value)
        query.update(wire.constants)
        headers = visitor_headers(event)
        headers["User-Agent"] = SDK_NAME
        return Request("GET", wire.path, query, headers)

    def accepted(self, events: Sequence[dict[str, Any]]) -> None:
        """Nothing in this format depends on what VWO has accepted."""
