"""The event model: a compact record per VWO event, decoded from span / log attributes."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from . import attributes as A

logger = logging.getLogger("vwo_otel")

_INT_KEYS = {
    A.VISITOR: (A.CAMPAIGN_ID, A.VARIATION_ID),
    A.GOAL: (A.CAMPAIGN_ID, A.VARIATION_ID, A.GOAL_ID),
}
_TYPES = (A.VISITOR, A.GOAL, A.CUSTOM_DIMENSION)


class MalformedEvent(ValueError):
    """A span or log record claims to be a VWO event but its attributes are unusable."""


class VWOEvent:
    """One queued VWO event: only the fields the wire needs (the queue never holds spans)."""

    __slots__ = (
        "etype", "user_id", "time", "campaign_id", "variation_id", "goal_id",
        "revenue", "key", "value", "visitor_ua", "visitor_ip",
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

    def fields(self) -> dict[str, Any]:
        """The record as a plain dict (for reports about an event that cannot be encoded)."""
        return {k: getattr(self, k) for k in self.__slots__}

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__ if getattr(self, k) not in (None, ""))
        return f"VWOEvent({fields})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, VWOEvent):
            return NotImplemented
        return all(getattr(self, k) == getattr(other, k) for k in self.__slots__)

    __hash__ = None  # type: ignore[assignment]


_ID_LIMIT = 2**63


def check_id(name: str, value: Any) -> int:
    """A VWO id: a non-negative int (bool is not an id)."""
    if type(value) is int and 0 <= value < _ID_LIMIT:  # the common case, without the calls below
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= 0, got {type(value).__name__} {value!r}")
    if not 0 <= value < 2**63:  # larger ids would make VWO refuse the whole batch
        raise ValueError(f"{name} must be an int >= 0 (and < 2**63), got {value}")
    return value


def check_user_id(value: Any) -> str:
    """A user id: a non-empty str (ints are accepted and turned into str, as VWO's SDK does)."""
    if type(value) is str and value:
        return value
    if isinstance(value, str):
        if value:
            return value
        raise ValueError("user_id must be a non-empty string")
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise TypeError(f"user_id must be a non-empty str, got {type(value).__name__} {value!r}")


def check_revenue(value: Any) -> float | None:
    """Revenue: None, or a finite int/float (NaN and infinities are refused)."""
    if value is None or (type(value) is float and -math.inf < value < math.inf):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"revenue must be a finite number or None, got {type(value).__name__} {value!r}")
    if isinstance(value, int) and not -(2**63) <= value < 2**63:  # also avoids OverflowError in isfinite
        raise ValueError(f"revenue must be a finite number (an int within 64 bits), got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"revenue must be a finite number, got {value!r}")
    return value


def check_dimension_value(name: str, value: Any) -> str:
    """A custom dimension value: a str, or an int / finite float sent as its text."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a str or number, got {type(value).__name__} {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name} must be a str or finite number, got {value!r}")
    return str(value)


def check_text(name: str, value: Any) -> str:
    """Optional visitor text (user agent, IP): None becomes ''."""
    if type(value) is str:
        return value
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str or None, got {type(value).__name__}")
    return value


def from_attributes(attrs: Mapping[str, Any], time_ns: int | None) -> VWOEvent:
    """Decode a VWO event from span / log attributes; raises ``MalformedEvent`` if unusable."""
    get: Callable[[str], Any] = attrs.get  # attribute values are checked below
    etype = get(A.EVENT_TYPE)
    seconds = int(time_ns // 1_000_000_000) if time_ns else int(time.time())
    user_id = get(A.USER_ID)
    if type(etype) is int and (etype == 1 or etype == 2) and type(user_id) is str and user_id:
        # Well-formed impressions and conversions (nearly all traffic), checked inline with the
        # same rules as below; anything else, or anything wrong, takes the full path below.
        ua, ip, cid, vid = get(A.VISITOR_UA), get(A.VISITOR_IP), get(A.CAMPAIGN_ID), get(A.VARIATION_ID)
        if ((ua is None or type(ua) is str) and (ip is None or type(ip) is str)
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
        user_id = check_user_id(user_id)
        ua = check_text(A.VISITOR_UA, get(A.VISITOR_UA))
        ip = check_text(A.VISITOR_IP, get(A.VISITOR_IP))
        if etype == A.CUSTOM_DIMENSION:
            key, value = get(A.DIMENSION_KEY), get(A.DIMENSION_VALUE)
            if not isinstance(key, str) or not key:
                raise TypeError(f"{A.DIMENSION_KEY} must be a non-empty str, got {key!r}")
            return VWOEvent(etype, user_id, seconds, key=key, value=check_dimension_value(A.DIMENSION_VALUE, value),
                            visitor_ua=ua, visitor_ip=ip)
        ids = [check_id(k, get(k)) for k in _INT_KEYS[etype]]
        if etype == A.VISITOR:
            return VWOEvent(etype, user_id, seconds, ids[0], ids[1], visitor_ua=ua, visitor_ip=ip)
        revenue = check_revenue(get(A.REVENUE))
        return VWOEvent(etype, user_id, seconds, ids[0], ids[1], ids[2], revenue, visitor_ua=ua, visitor_ip=ip)
    except (TypeError, ValueError) as exc:
        raise MalformedEvent(str(exc)) from None
