"""The event ``VWOEvents`` emits, handed to the VWO processor on the same thread, so that the
processor need not decode the span or log record it was just given.

``VWOEvents`` checks its arguments with the decoder's own checks (``checks``) before it builds
the record's attributes; decoding them again in the processor (``event.from_record``) was a
tenth of an event's cost on the app's thread. So ``VWOEvents`` builds the event from those
attributes (``event_of``: the table's slots, no check repeated) and leaves it here with the
record's key (the span's context, or the log record's timestamp object) in ``HANDED``, and the
processor takes it if the record it is given carries that key. A record from anywhere else
(the app's own tracer, another thread, a processor running on a thread pool) is decoded as
before. The event is the same either way (``tests/unit/test_fast_paths.py``).

Where only VWO processors whose hooks just queue the event (and, under ``VWOSampler``, stock
ones for the app's exporters, which skip its record-only spans) are on the provider, no record is
made at all: ``VWOEvents`` puts a legacy event straight into those processors' queues
(``api.Route.handoff``, ``Route.takers``): the span's start, sampling and end were most of an
``activate``'s cost."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from . import attributes as A
from .event import VWOEvent
from .event_types import TYPES

__all__ = ["HANDED", "event_of"]

#: ``VWOEvent``'s arguments after (etype, user_id, time) and before (visitor_ua, visitor_ip) ...
_MIDDLE = VWOEvent.__slots__[3:9]
assert VWOEvent.__slots__[:3] == ("etype", "user_id", "time")
assert VWOEvent.__slots__[9:11] == ("visitor_ua", "visitor_ip")
#: ... and, for each legacy row, the attribute that fills each of them (None: the row has none).
_ATTRS = {key: tuple({f.slot: f.attr for f in row.fields}.get(slot) for slot in _MIDDLE)
          for key, row in TYPES.items() if isinstance(key, int)}


class Handed(threading.local):
    """This thread's last handed event and the key of the record that carries it."""

    key: object = None
    event: VWOEvent | None = None


HANDED = Handed()


def event_of(attrs: Mapping[str, Any], time_ns: int) -> VWOEvent | None:
    """The event of attributes ``VWOEvents`` built and checked itself, without checking them
    again: what ``event.from_attributes(attrs, time_ns)`` returns. None for FME rows (decoded)."""
    get: Any = attrs.get  # also read with None (a slot the row has not): None
    etype = get(A.EVENT_TYPE)
    names = _ATTRS.get(etype) if type(etype) is int else None
    if names is None:
        return None
    a, b, c, d, e, f = names  # a missing one is None: get(None) is None
    return VWOEvent(etype, get(A.USER_ID), time_ns // 1_000_000_000, get(a), get(b), get(c), get(d),
                    get(e), get(f), get(A.VISITOR_UA) or "", get(A.VISITOR_IP) or "")
