"""The event model: ``VWOEvent`` (the compact record the queue holds; ``FMEEvent`` for FME's named
events), the one decoder from a span / log record (``from_record``, ``from_attributes``) reading
the event-type table (``event_types``), and the one rule for an event's time."""

from __future__ import annotations

import logging
import math
import random
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from . import attributes as A
from . import checks
from .checks import ID_LIMIT as _ID_LIMIT
from .event_types import DROP_PRIORITY, TYPES, EventType, Kind, describe_types, row_for

logger = logging.getLogger("vwo_otel")

#: The slotted object and its int / float fields, in bytes (``VWOEvent.nbytes`` adds the text).
_OBJECT_BYTES = 240
_FME_OBJECT_BYTES = 320


class MalformedEvent(ValueError):
    """A span or log record claims to be a VWO event but its attributes are unusable."""


class VWOEvent:
    """One queued VWO event: only the fields the wire needs (the queue never holds spans).
    ``etype`` is its row's key in ``event_types.TYPES``; ``time`` is unix seconds."""

    __slots__ = (
        "etype", "user_id", "time", "campaign_id", "variation_id", "goal_id",
        "revenue", "key", "value", "visitor_ua", "visitor_ip", "account_id", "visitor_uuid",
    )

    def __init__(
        self,
        etype: int | str,
        user_id: str,
        time: int,
        campaign_id: int | None = None,
        variation_id: int | None = None,
        goal_id: int | None = None,
        revenue: float | None = None,
        key: str | None = None,
        value: str | None = None,
        visitor_ua: str = "",
        visitor_ip: str = "",
        account_id: int | None = None,
        visitor_uuid: str | None = None,
    ) -> None:
        self.etype = etype
        self.user_id = user_id
        self.time = time
        self.campaign_id = campaign_id
        self.variation_id = variation_id
        self.goal_id = goal_id
        self.revenue = revenue
        self.key = key
        self.value = value
        self.visitor_ua = visitor_ua
        self.visitor_ip = visitor_ip
        #: VWO's visitor id computed upstream (``vwo.visitor.uuid``), sent instead of hashing
        #: ``user_id`` (then ""); ``account_id`` is the account it was computed for. Both None otherwise.
        self.account_id = account_id
        self.visitor_uuid = visitor_uuid

    @property
    def row(self) -> EventType:
        """Its row of the event-type table."""
        return TYPES[self.etype]

    def nbytes(self) -> int:
        """About the memory the event holds (the object, its numbers and its text): what a
        backlog bounded in bytes counts."""
        return _OBJECT_BYTES + sum(sys.getsizeof(v) for v in (
            self.user_id, self.key, self.value, self.visitor_ua, self.visitor_ip, self.visitor_uuid) if v)

    def fields(self) -> dict[str, Any]:
        """The record as a plain dict (the spool's row, a report about an event that cannot be encoded)."""
        return {k: getattr(self, k) for k in self._all_slots()}

    @classmethod
    def _all_slots(cls) -> tuple[str, ...]:
        return VWOEvent.__slots__

    @staticmethod
    def from_fields(fields: Mapping[str, Any]) -> VWOEvent:
        """The inverse of ``fields``; keys it does not know are ignored, missing optional ones default."""
        cls = FMEEvent if isinstance(fields.get("etype"), str) else VWOEvent
        return cls(**{k: fields[k] for k in cls._all_slots() if k in fields})

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._all_slots() if getattr(self, k) not in (None, ""))
        return f"{type(self).__name__}({shown})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, VWOEvent):
            return NotImplemented
        return type(self) is type(other) and all(getattr(self, k) == getattr(other, k) for k in self._all_slots())

    __hash__ = None  # type: ignore[assignment]


class FMEEvent(VWOEvent):
    """An FME event (``/server-side/batch-events-v2``): ``name`` is its event name (``etype`` its
    row: the name, or ``"*"`` for a custom event, ``"vwo_*"`` for another of the FME SDK's own);
    ``time_ms`` its time in ms; the properties are JSON object text; ``msg_id`` an id the app gave,
    else ``nonce`` makes the wire's ``msgId`` unique (stable across retries and spool replays)."""

    __slots__ = ("name", "time_ms", "session_id", "feature_id", "props", "visitor_props", "usage", "msg_id",
                 "nonce")

    def __init__(self, etype: int | str, user_id: str, time: int, *args: Any, name: str = "", time_ms: int = 0,
                 session_id: int | None = None, feature_id: int | None = None, props: str | None = None,
                 visitor_props: str | None = None, usage: str | None = None, msg_id: str | None = None,
                 nonce: int = 0, **kwargs: Any) -> None:
        super().__init__(etype, user_id, time, *args, **kwargs)
        self.name = name
        self.time_ms = time_ms or time * 1000
        self.session_id = session_id
        self.feature_id = feature_id
        self.props = props
        self.visitor_props = visitor_props
        self.usage = usage
        self.msg_id = msg_id
        self.nonce = nonce or random.getrandbits(32)

    @classmethod
    def _all_slots(cls) -> tuple[str, ...]:
        return FIELDS_FME

    def nbytes(self) -> int:
        return _FME_OBJECT_BYTES + sum(sys.getsizeof(v) for v in (
            self.user_id, self.visitor_ua, self.visitor_ip, self.visitor_uuid, self.name, self.props,
            self.visitor_props, self.usage, self.msg_id) if v)


#: The event's fields, in one place (the spool and reports derive theirs from them).
FIELDS: tuple[str, ...] = VWOEvent.__slots__
FIELDS_FME: tuple[str, ...] = VWOEvent.__slots__ + FMEEvent.__slots__


def log_time(timestamp: int | None, observed: int | None) -> int | None:
    """The time of a log record's event (unix ns): its timestamp, else when it was observed
    (None or 0: now)."""
    return timestamp or observed


def _plain(attrs: Any) -> Any:
    """The plain dict inside the SDK's ``BoundedAttributes`` (only read, never kept), else
    ``attrs`` itself: decoding then costs dict lookups instead of ``Mapping.get`` ->
    ``__getitem__`` Python calls through a ``mappingproxy`` (a third of the processor's time)."""
    inner = getattr(attrs, "_dict", None)
    return inner if type(inner) is dict else attrs


def from_record(record: Any) -> VWOEvent | None:
    """The VWO event a finished span (``ReadableSpan``) or an SDK log record
    (``ReadableLogRecord`` / ``ReadWriteLogRecord`` or its ``log_record``) carries; None when it
    carries no ``vwo.event.type``. Raises ``MalformedEvent`` if it claims to be one but is unusable.
    A span's event time is its start time; a log record's is ``log_time``."""
    attrs = getattr(record, "_attributes", None)  # a ReadableSpan
    if attrs is None:
        inner = getattr(record, "log_record", record)
        attrs = _plain(inner.attributes)
        if attrs and A.EVENT_TYPE in attrs:
            return from_attributes(attrs, log_time(inner.timestamp, inner.observed_timestamp))
        return None
    attrs = _plain(attrs)
    if attrs and A.EVENT_TYPE in attrs:
        return from_attributes(attrs, record.start_time)
    return None


_POSITION = {slot: i for i, slot in enumerate(VWOEvent.__slots__)}


def _fast_plans() -> dict[int, tuple[tuple[tuple[str, int], ...], tuple[tuple[str, int], ...]]]:
    """Rows the inline path decodes (legacy rows of required ids and optional numbers only):
    their id and number attributes, each with its position among ``VWOEvent``'s arguments."""
    return {key: (tuple((f.attr, _POSITION[f.slot]) for f in row.fields if f.kind is Kind.ID),
                  tuple((f.attr, _POSITION[f.slot]) for f in row.fields if f.kind is Kind.NUMBER))
            for key, row in TYPES.items() if isinstance(key, int) and all(
                (f.kind is Kind.ID and f.required) or (f.kind is Kind.NUMBER and not f.required) for f in row.fields)}


_FAST = _fast_plans()


def from_attributes(attrs: Mapping[str, Any], time_ns: int | None) -> VWOEvent:
    """Decode a VWO event from span / log attributes; raises ``MalformedEvent`` if unusable."""
    get: Callable[[str], Any] = attrs.get  # attribute values are checked below
    etype = get(A.EVENT_TYPE)
    user_id = get(A.USER_ID)
    plan = _FAST.get(etype) if type(etype) is int else None
    if plan is not None and type(user_id) is str and user_id and user_id.isascii():
        # Well-formed impressions and conversions (nearly all traffic), checked inline with the
        # same rules as below; anything else, or anything wrong (non-ASCII text may hold a lone
        # surrogate), takes the full path below. ``isascii`` is O(1).
        ua, ip = get(A.VISITOR_UA), get(A.VISITOR_IP)
        if (ua is None or (type(ua) is str and ua.isascii())) and (ip is None or (type(ip) is str and ip.isascii())):
            args: list[Any] = [etype, user_id, int(time_ns // 1_000_000_000) if time_ns else int(time.time()),
                               None, None, None, None, None, None, ua or "", ip or ""]
            ids, numbers = plan
            for attr, at in ids:
                v = get(attr)
                if type(v) is not int or not 0 <= v < _ID_LIMIT:
                    break
                args[at] = v
            else:
                for attr, at in numbers:
                    v = get(attr)
                    if v is not None:
                        if type(v) is not float or not -math.inf < v < math.inf:
                            break
                        args[at] = v
                else:
                    return VWOEvent(*args)
    try:
        return _checked(get, etype, time_ns)
    except (TypeError, ValueError) as exc:
        raise MalformedEvent(str(exc)) from None


#: The check of each kind of attribute value: ``check(attribute name, value) -> value``.
_CHECKS: dict[Kind, Callable[[str, Any], Any]] = {
    Kind.ID: lambda name, v: checks.event_id(name, v),
    Kind.NUMBER: lambda name, v: checks.finite(name, v),
    Kind.KEY: lambda name, v: checks.non_empty_text(name, v),
    Kind.VALUE: lambda name, v: checks.dimension_value(name, v),
    Kind.JSON: lambda name, v: checks.json_object(name, v),
}


def _checked(get: Callable[[str], Any], etype: Any, time_ns: int | None) -> VWOEvent:
    """The full decoder: every attribute checked, every problem named."""
    row = row_for(int(etype) if isinstance(etype, int) and not isinstance(etype, bool) else etype)
    if row is None:
        raise ValueError(f"{A.EVENT_TYPE} must be {describe_types()}, got {etype!r}")  # not 1.0, not True
    if row.fme:
        checks.fme_event_name(A.EVENT_TYPE, etype)
    account, visitor = _precomputed(get, row.fme)
    user_id = checks.user_id(get(A.USER_ID)) if visitor is None else ""
    values: dict[str, Any] = {}
    for f in row.all_fields:
        value = get(f.attr)
        if value is None:
            if f.required:
                raise ValueError(f"{f.attr} is required for a {A.EVENT_TYPE} {etype if row.fme else row.key!r} event")
            continue
        values[f.slot] = _CHECKS[f.kind](f.attr, value)
    ms = time_ns // 1_000_000 if time_ns else time.time_ns() // 1_000_000
    common: dict[str, Any] = {"visitor_ua": checks.text(A.VISITOR_UA, get(A.VISITOR_UA)),
              "visitor_ip": checks.text(A.VISITOR_IP, get(A.VISITOR_IP)),
              "account_id": account, "visitor_uuid": visitor}
    if row.fme:
        return FMEEvent(row.key, user_id, ms // 1000, name=etype, time_ms=ms, **common, **values)
    return VWOEvent(row.key, user_id, ms // 1000, **common, **values)


def _precomputed(get: Callable[[str], Any], fme: bool) -> tuple[int | None, str | None]:
    """(account id, visitor uuid) of an event whose visitor id was computed upstream
    (``vwo.visitor.uuid``, with the ``vwo.account_id`` it belongs to); (None, None) otherwise.
    Such events (an instrumented VWO SDK's) lack ``vwo.user_id``, so they never reach the fast path."""
    visitor = get(A.VISITOR_UUID)
    if visitor is None:
        return None, None
    account = get(A.ACCOUNT_ID)
    if account is None:
        raise ValueError(f"{A.VISITOR_UUID} needs {A.ACCOUNT_ID}, the account it was computed for")
    return checks.account_id(account, A.ACCOUNT_ID), checks.visitor_uuid(visitor, A.VISITOR_UUID, web=fme)


__all__ = ["DROP_PRIORITY", "FIELDS", "FIELDS_FME", "FMEEvent", "MalformedEvent", "VWOEvent", "from_attributes",
           "from_record", "log_time"]
