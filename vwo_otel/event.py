"""The event model: ``VWOEvent`` (the compact record the queue holds), the one decoder from a
span / log record (``from_record``, ``from_attributes``), the one rule for an event's time and
the drop priority of each event type."""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from . import attributes as A
from . import checks
from .checks import ID_LIMIT as _ID_LIMIT

logger = logging.getLogger("vwo_otel")

#: The id attributes each event type needs (custom dimensions carry a key and value instead).
_INT_KEYS = {
    A.VISITOR: (A.CAMPAIGN_ID, A.VARIATION_ID),
    A.GOAL: (A.CAMPAIGN_ID, A.VARIATION_ID, A.GOAL_ID),
}
#: When the backlog is full, an event may take the place of the newest queued event of a lower
#: priority (a conversion with revenue is worth more than an impression); equal or higher stay.
DROP_PRIORITY: dict[int, int] = {A.VISITOR: 0, A.CUSTOM_DIMENSION: 0, A.GOAL: 1}
_TYPES = tuple(DROP_PRIORITY)
#: The slotted object and its int / float fields, in bytes (``VWOEvent.nbytes`` adds the text).
_OBJECT_BYTES = 240


class MalformedEvent(ValueError):
    """A span or log record claims to be a VWO event but its attributes are unusable."""


class VWOEvent:
    """One queued VWO event: only the fields the wire needs (the queue never holds spans)."""

    __slots__ = (
        "etype", "user_id", "time", "campaign_id", "variation_id", "goal_id",
        "revenue", "key", "value", "visitor_ua", "visitor_ip", "account_id", "visitor_uuid",
    )

    def __init__(
        self,
        etype: int,
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

    def nbytes(self) -> int:
        """About the memory the event holds (the object, its numbers and its text): what a
        backlog bounded in bytes counts."""
        return _OBJECT_BYTES + sum(sys.getsizeof(v) for v in (
            self.user_id, self.key, self.value, self.visitor_ua, self.visitor_ip, self.visitor_uuid) if v)

    def fields(self) -> dict[str, Any]:
        """The record as a plain dict (the spool's row, a report about an event that cannot be encoded)."""
        return {k: getattr(self, k) for k in self.__slots__}

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> VWOEvent:
        """The inverse of ``fields``; keys it does not know are ignored, missing optional ones default."""
        return cls(**{k: fields[k] for k in FIELDS if k in fields})

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__ if getattr(self, k) not in (None, ""))
        return f"VWOEvent({fields})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, VWOEvent):
            return NotImplemented
        return all(getattr(self, k) == getattr(other, k) for k in self.__slots__)

    __hash__ = None  # type: ignore[assignment]


#: The event's fields, in one place (the spool and reports derive theirs from it).
FIELDS: tuple[str, ...] = VWOEvent.__slots__


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
        record = getattr(record, "log_record", record)
        attrs = _plain(record.attributes)
        if attrs and A.EVENT_TYPE in attrs:
            return from_attributes(attrs, log_time(record.timestamp, record.observed_timestamp))
        return None
    attrs = _plain(attrs)
    if attrs and A.EVENT_TYPE in attrs:
        return from_attributes(attrs, record.start_time)
    return None


def from_attributes(attrs: Mapping[str, Any], time_ns: int | None) -> VWOEvent:
    """Decode a VWO event from span / log attributes; raises ``MalformedEvent`` if unusable."""
    get: Callable[[str], Any] = attrs.get  # attribute values are checked below
    etype = get(A.EVENT_TYPE)
    seconds = int(time_ns // 1_000_000_000) if time_ns else int(time.time())
    user_id = get(A.USER_ID)
    if type(etype) is int and (etype == 1 or etype == 2) and type(user_id) is str and user_id and user_id.isascii():
        # Well-formed impressions and conversions (nearly all traffic), checked inline with the
        # same rules as below; anything else, or anything wrong (non-ASCII text may hold a lone
        # surrogate), takes the full path below. ``isascii`` is O(1).
        ua, ip, cid, vid = get(A.VISITOR_UA), get(A.VISITOR_IP), get(A.CAMPAIGN_ID), get(A.VARIATION_ID)
        if ((ua is None or (type(ua) is str and ua.isascii())) and (ip is None or (type(ip) is str and ip.isascii()))
                and type(cid) is int and 0 <= cid < _ID_LIMIT and type(vid) is int and 0 <= vid < _ID_LIMIT):
            if etype == 1:
                return VWOEvent(1, user_id, seconds, cid, vid, None, None, None, None, ua or "", ip or "")
            gid, revenue = get(A.GOAL_ID), get(A.REVENUE)
            if type(gid) is int and 0 <= gid < _ID_LIMIT and (
                    revenue is None or (type(revenue) is float and -math.inf < revenue < math.inf)):
                return VWOEvent(2, user_id, seconds, cid, vid, gid, revenue, None, None, ua or "", ip or "")
    try:
        if isinstance(etype, bool) or not isinstance(etype, int) or etype not in _TYPES:
            raise ValueError(f"{A.EVENT_TYPE} must be the int 1, 2 or 3, got {etype!r}")  # not 1.0, not True
        etype = int(etype)
        account, visitor = _precomputed(get)
        user_id = checks.user_id(user_id) if visitor is None else ""
        ua = checks.text(A.VISITOR_UA, get(A.VISITOR_UA))
        ip = checks.text(A.VISITOR_IP, get(A.VISITOR_IP))
        if etype == A.CUSTOM_DIMENSION:
            key, value = get(A.DIMENSION_KEY), get(A.DIMENSION_VALUE)
            if not isinstance(key, str) or not key:
                raise TypeError(f"{A.DIMENSION_KEY} must be a non-empty str, got {key!r}")
            return VWOEvent(etype, user_id, seconds, key=checks.text(A.DIMENSION_KEY, key),
                            value=checks.dimension_value(A.DIMENSION_VALUE, value),
                            visitor_ua=ua, visitor_ip=ip, account_id=account, visitor_uuid=visitor)
        ids = [checks.event_id(k, get(k)) for k in _INT_KEYS[etype]]
        if etype == A.VISITOR:
            return VWOEvent(etype, user_id, seconds, ids[0], ids[1], visitor_ua=ua, visitor_ip=ip,
                            account_id=account, visitor_uuid=visitor)
        revenue = checks.revenue(get(A.REVENUE))
        return VWOEvent(etype, user_id, seconds, ids[0], ids[1], ids[2], revenue, visitor_ua=ua, visitor_ip=ip,
                        account_id=account, visitor_uuid=visitor)
    except (TypeError, ValueError) as exc:
        raise MalformedEvent(str(exc)) from None


def _precomputed(get: Callable[[str], Any]) -> tuple[int | None, str | None]:
    """(account id, visitor uuid) of an event whose visitor id was computed upstream
    (``vwo.visitor.uuid``, with the ``vwo.account_id`` it belongs to); (None, None) otherwise.
    Such events (an instrumented VWO SDK's) lack ``vwo.user_id``, so they never reach the fast path."""
    visitor = get(A.VISITOR_UUID)
    if visitor is None:
        return None, None
    account = get(A.ACCOUNT_ID)
    if account is None:
        raise ValueError(f"{A.VISITOR_UUID} needs {A.ACCOUNT_ID}, the account it was computed for")
    return checks.account_id(account, A.ACCOUNT_ID), checks.visitor_uuid(visitor, A.VISITOR_UUID)
