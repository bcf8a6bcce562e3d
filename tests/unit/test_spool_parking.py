"""The spool's parked events (``backlog.Parking``): what a probe takes (issue: a probe of fewer
parked events than a batch raised ``IndexError`` and lost them for the process)."""

from __future__ import annotations

import math

from vwo_otel._engine.backlog import Parking
from vwo_otel.event import VWOEvent
from vwo_otel.export.retry import RetryPolicy


def parked(n: int) -> Parking:
    parking = Parking()
    parking.retry = RetryPolicy(initial_backoff=1.0, max_backoff=1.0)
    for i in range(n):
        parking.add(VWOEvent(1, f"u{i}", 1, 1, 1), 10)
    parking.settled(False, n, 0.0, now=0.0)
    return parking


def test_a_probe_of_fewer_parked_events_than_a_batch_takes_them_all():
    parking = parked(3)
    due = parking.due()
    taken = parking.take(100, 10, now=due)  # a probe of up to 10: only 3 wait
    assert [ev.user_id for ev in taken] == ["u0", "u1", "u2"]
    assert len(parking) == 0 and parking.nbytes == 0 and parking.due() == math.inf


def test_all_parked_events_are_due_at_once_when_fewer_than_the_room():
    parking = parked(3)
    parking.settled(True, 0, 0.0, now=0.5)  # VWO accepted a request: everything is due now
    assert len(parking.take(100, 10, now=0.5)) == 3 and len(parking) == 0
    parking = parked(30)
    assert len(parking.take(7, 10, now=parking.due())) == 7  # never more than the queue's room
