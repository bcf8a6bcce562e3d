"""The event-type table: every kind of VWO event vwo_otel carries, one row each.

A row says what makes a span / log record that kind of event (its ``vwo.event.type`` value and
the attributes it needs, with their checks), how much a full backlog values it, and how its VWO
wire format writes it (batch keys, real-time request). The decoder (``event``), the wire encoders
(``export/legacy.py``, ``export/fme.py``), ``VWOEvents``, the stand-in receiver's checks and the
README test all read it: a new kind of event is a new row here (and a ``VWOEvents`` method).

Two formats: ``legacy`` (``vwo-python-sdk``: int types, ``/server-side/batch-events``) and
``fme`` (``vwo-fme-python-sdk``: named events, ``/server-side/batch-events-v2``). An FME event
whose name has no row of its own is a custom event (``track_event``), or, for a name starting
with ``vwo_``, one of the FME SDK's own events, carried as the SDK made it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from . import attributes as A

LEGACY = "legacy"
FME = "fme"


class Kind(enum.Enum):
    """What a value is: how it is checked as an attribute, written on the wire and checked by the receiver."""

    ID = "id"  # int 0 .. 2**63-1 (campaign, variation, goal, feature)
    ID_TEXT = "id_text"  # an id written as its decimal text (FME's variation, as the Python FME SDK sends it)
    NUMBER = "number"  # a finite int or float (revenue)
    KEY = "key"  # non-empty text (a custom dimension's key)
    VALUE = "value"  # text, or a number sent as its text (a custom dimension's value)
    JSON = "json"  # text holding a JSON object (FME properties)
    TAGS = "tags"  # legacy ``t`` / ``tags``: the JSON text {"u": {key: value}} of a custom dimension


@dataclass(frozen=True)
class Field:
    """An attribute of the event beyond the visitor's: which ``VWOEvent`` slot it fills."""

    attr: str
    slot: str
    kind: Kind
    required: bool = True


@dataclass(frozen=True)
class Key:
    """A key on the wire, from the event's ``slots`` (two for ``TAGS``: key and value)."""

    wire: str
    slots: tuple[str, ...]
    kind: Kind
    optional: bool = False  # left out when the slot is None


@dataclass(frozen=True)
class LegacyWire:
    """How the legacy format writes a row: the batch event's keys (beside ``u``, ``sId``,
    ``eT``, ``visitor_ua``, ``visitor_ip``) and the real-time GET (path, query keys, constants)."""

    batch: tuple[Key, ...]
    path: str
    query: tuple[Key, ...]
    constants: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class FMEWire:
    """How the FME format writes a row's ``event.props``: keys from slots, fixed values, whether the
    event's own properties are merged in last (a custom event's may overwrite the fixed ones, as
    FME's ``track_event`` does), whether ``vwo_fs_environment`` (the sdk key) is among them, and
    which of the base payload's parts the FME SDK sends for the row."""

    props: tuple[Key, ...] = ()
    constants: Mapping[str, Any] = field(default_factory=dict)
    own_props: bool = True
    env_prop: bool = False
    env_key: bool = True  # props.vwo_envKey (the sdk key; not on the SDK's usage statistics)
    visitor: bool = True  # the visitor.props object (not on the SDK's usage statistics)


@dataclass(frozen=True)
class EventType:
    """One row: ``key`` is the ``vwo.event.type`` value (``"*"``: any other FME name, ``"vwo_*"``:
    any other FME name starting with ``vwo_``); ``priority``: when the backlog is full an event may
    take the place of the newest queued one of a lower priority."""

    key: int | str
    format: str
    span_name: str  # the span / log event name ``VWOEvents`` gives it
    fields: tuple[Field, ...]
    priority: int
    wire: LegacyWire | FMEWire

    @property
    def fme(self) -> bool:
        return self.format == FME

    @cached_property
    def all_fields(self) -> tuple[Field, ...]:
        """Its fields, then (FME) the common FME ones it does not have itself: what the decoder reads."""
        if not self.fme:
            return self.fields
        own = {f.slot for f in self.fields}
        return self.fields + tuple(f for f in FME_COMMON if f.slot not in own)


_CAMPAIGN = Field(A.CAMPAIGN_ID, "campaign_id", Kind.ID)
_VARIATION = Field(A.VARIATION_ID, "variation_id", Kind.ID)
_E, _C = Key("e", ("campaign_id",), Kind.ID), Key("c", ("variation_id",), Kind.ID)
_EXPERIMENT = Key("experiment_id", ("campaign_id",), Kind.ID)
_COMBINATION = Key("combination", ("variation_id",), Kind.ID)
#: FME attributes any FME event may carry (after its row's own fields, unless the row has them).
FME_COMMON = (
    Field(A.SESSION_ID, "session_id", Kind.ID, required=False),
    Field(A.VISITOR_PROPERTIES, "visitor_props", Kind.JSON, required=False),
    Field(A.MESSAGE_ID, "msg_id", Kind.KEY, required=False),
)
CUSTOM = "*"
SDK_EVENT = "vwo_*"
SDK_INIT = "vwo_fmeSdkInit"  #: the FME SDK's init event
USAGE_STATS = "vwo_sdkUsageStats"  #: the FME SDK's usage statistics event
_PROPS = Field(A.EVENT_PROPERTIES, "props", Kind.JSON, required=False)

TYPES: dict[int | str, EventType] = {row.key: row for row in (
    EventType(A.VISITOR, LEGACY, "vwo.visitor", (_CAMPAIGN, _VARIATION), 0,
              LegacyWire((_E, _C), "/server-side/track-user", (_EXPERIMENT, _COMBINATION), {"ed": '{"p":"server"}'})),
    EventType(A.GOAL, LEGACY, "vwo.goal",
              (_CAMPAIGN, _VARIATION, Field(A.GOAL_ID, "goal_id", Kind.ID),
               Field(A.REVENUE, "revenue", Kind.NUMBER, required=False)), 1,
              LegacyWire((_E, _C, Key("g", ("goal_id",), Kind.ID), Key("r", ("revenue",), Kind.NUMBER, True)),
                         "/server-side/track-goal",
                         (_EXPERIMENT, _COMBINATION, Key("goal_id", ("goal_id",), Kind.ID),
                          Key("r", ("revenue",), Kind.NUMBER, True)))),
    EventType(A.CUSTOM_DIMENSION, LEGACY, "vwo.custom_dimension",
              (Field(A.DIMENSION_KEY, "key", Kind.KEY), Field(A.DIMENSION_VALUE, "value", Kind.VALUE)), 0,
              LegacyWire((Key("t", ("key", "value"), Kind.TAGS),), "/server-side/push",
                         (Key("tags", ("key", "value"), Kind.TAGS),))),
    EventType(A.VARIATION_SHOWN, FME, "vwo.variation_shown",
              (_CAMPAIGN, _VARIATION, Field(A.FEATURE_ID, "feature_id", Kind.ID, required=False),
               Field(A.USAGE_STATS, "usage", Kind.JSON, required=False)), 0,
              FMEWire((Key("id", ("campaign_id",), Kind.ID), Key("variation", ("variation_id",), Kind.ID_TEXT),
                       Key("fId", ("feature_id",), Kind.ID, True)), {"isFirst": 1}, own_props=False)),
    EventType(A.SYNC_VISITOR_PROP, FME, "vwo.sync_visitor_prop",
              (Field(A.VISITOR_PROPERTIES, "visitor_props", Kind.JSON),), 0,
              FMEWire(constants={"isCustomEvent": True}, own_props=False, env_prop=True)),
    EventType(CUSTOM, FME, "vwo.event", (_PROPS,), 1,
              FMEWire(constants={"isCustomEvent": True, "variation": 1, "id": 1})),
    EventType(SDK_EVENT, FME, "vwo.sdk_event", (_PROPS,), 0, FMEWire()),
    EventType(SDK_INIT, FME, "vwo.sdk_init", (_PROPS,), 0, FMEWire(env_prop=True)),
    EventType(USAGE_STATS, FME, "vwo.sdk_usage_stats", (_PROPS,), 0, FMEWire(env_key=False, visitor=False)),
)}

#: When the backlog is full, an event may take the place of the newest queued event of a lower
#: priority (a conversion is worth more than an impression); equal or higher stay.
DROP_PRIORITY: dict[int | str, int] = {key: row.priority for key, row in TYPES.items()}
#: The legacy format's event types (``eT``), in order.
LEGACY_TYPES: tuple[int, ...] = tuple(k for k, row in TYPES.items() if not row.fme and isinstance(k, int))
#: The attributes of the visitor, which every event may carry.
VISITOR_ATTRIBUTES = (A.USER_ID, A.VISITOR_UUID, A.ACCOUNT_ID, A.VISITOR_UA, A.VISITOR_IP)
#: The most attributes one event carries (its type, the visitor's and its row's): what a
#: provider's attribute count limit must allow.
MAX_EVENT_ATTRIBUTES = 1 + len(VISITOR_ATTRIBUTES) + max(len(row.all_fields) for row in TYPES.values())


def row_for(etype: Any) -> EventType | None:
    """The row of a ``vwo.event.type`` value (int: legacy, str: an FME name); None if there is none.
    A str names its own row, else the custom-event row (the SDK-event row for ``vwo_`` names)."""
    if type(etype) is int:
        return TYPES.get(etype)
    if type(etype) is str and etype:
        row = TYPES.get(etype)
        if row is not None and row.fme:
            return row
        return TYPES[SDK_EVENT] if etype.startswith("vwo_") else TYPES[CUSTOM]
    return None


def describe_types() -> str:
    """The values ``vwo.event.type`` may take, for error messages."""
    ints = ", ".join(map(str, LEGACY_TYPES))
    return f"the int {ints} (legacy VWO events) or a str FME event name"
