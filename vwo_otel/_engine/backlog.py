"""The backlog: where events wait that are not in the batcher's memory queue, behind one
interface the batcher uses without knowing where they are kept.

Two kinds: ``MemoryBacklog`` (no spool: nothing waits outside the queue, nothing is durable)
and ``spool.Spool`` (on disk: every queued event has a row; a full queue spills to disk;
batches that ran out of retries park there; dead processes' files are adopted). The batcher
keeps VWO's count and age triggers, the memory bound and the delivery threads; it calls:

- ``put(event)``: a new event entered the memory queue (the spool records its row);
  ``spill(event)``: the memory queue is full (or older events wait here): keep it here only.
- ``take(limit, batch)`` (under the batcher's lock, memory only) and ``Reading.read()``
  (outside it, may read the disk): events due to go back into the queue, oldest first.
- ``settle(events, outcomes)``: a batch's answer. Delivered rows go, transient failures park,
  failed events are reported only once their rows are off the disk; returns what to report and
  whether events are due to be taken now (``Settled.refill``).
- ``due()``: when parked events are next due (the delivery threads wait until then).
- ``adopt()``: a replay thread's call: take over dead processes' files.
- ``close(deadline, held)``: what stays for the next start and what of it (and of ``held``,
  what the queue still holds) is lost, to be reported, within the deadline.
- ``after_fork()``: a fresh backlog in a forked child.

The backlog never calls back into the batcher. The gateway asks it for room (``refuse``) and
for durability before it answers 200 (``commit``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..errors import Outcome
    from ..event import VWOEvent
    from ..export.retry import RetryPolicy


@dataclass(slots=True)
class Taken:
    """Events read back: ``events`` go into the queue again (each keeps its row until settled);
    ``expired`` ones waited on disk past ``max_age`` and left it (to be reported). ``queued_at``:
    only dead processes' events were read, the oldest first queued then (they are due
    ``request_time_interval`` after it); None: they are overdue, send them now."""

    events: list[VWOEvent] = field(default_factory=list)
    expired: list[VWOEvent] = field(default_factory=list)
    queued_at: float | None = None


class Reading(Protocol):
    """Events a backlog set aside for the queue (``count`` of them at most) and reads on ``read()``."""

    count: int

    def read(self) -> Taken: ...


@dataclass(slots=True)
class Settled:
    """What ``settle`` leaves to the batcher: outcomes to report, events of the batch that wait
    in the backlog (not delivered, not reported), and whether events are due to be taken now."""

    report: list[Outcome]
    kept: int = 0
    refill: bool = False


@dataclass(frozen=True)
class Closed:
    """What ``close`` left: ``kept`` undelivered events on disk for the next start, ``lost``
    unsettled events nothing keeps (to be reported), ``error`` why (empty: the usual reasons)."""

    kept: int = 0
    lost: list[VWOEvent] = field(default_factory=list)
    error: str = ""


class Backlog(Protocol):
    """What the batcher needs of a backlog (see the module docstring)."""

    durable: bool  # True: queued events have rows (``put`` must be called for each)
    waiting: int  # events kept only here now; while > 0, new events go here too (order)
    entered: int  # events that entered the wait so far (spilled, adopted) ...
    left: int  # ... and left it (read back, expired): a flush waits for ``left`` to pass a mark

    def open(self, retry: RetryPolicy | None) -> None: ...

    def put(self, event: VWOEvent) -> None: ...

    def spill(self, event: VWOEvent) -> bool: ...

    def take(self, limit: int, batch: int) -> Reading | None: ...

    def settle(self, events: list[VWOEvent], outcomes: list[Outcome] | None) -> Settled: ...

    def due(self) -> float: ...

    def adopt(self) -> int: ...

    def refuse(self, held_bytes: int, nbytes: int) -> str | None: ...

    def commit(self) -> bool: ...

    def on_disk(self) -> int: ...

    def close(self, deadline: float, held: list[VWOEvent]) -> Closed: ...

    def after_fork(self) -> list[object]: ...


class MemoryBacklog:
    """No spool: nothing waits outside the memory queue and nothing is durable; a full queue
    drops (by priority), failures are reported as they happen."""

    durable = False
    waiting = 0
    entered = 0
    left = 0

    def open(self, retry: RetryPolicy | None) -> None:
        pass

    def put(self, event: VWOEvent) -> None:
        pass

    def spill(self, event: VWOEvent) -> bool:
        return False

    def take(self, limit: int, batch: int) -> Reading | None:
        return None

    def settle(self, events: list[VWOEvent], outcomes: list[Outcome] | None) -> Settled:
        return Settled(outcomes or [])

    def due(self) -> float:
        return math.inf

    def adopt(self) -> int:
        return 0

    def refuse(self, held_bytes: int, nbytes: int) -> str | None:
        return None

    def commit(self) -> bool:
        return True

    def on_disk(self) -> int:
        return 0

    def close(self, deadline: float, held: list[VWOEvent]) -> Closed:
        return Closed(lost=held)  # nothing keeps what memory held

    def after_fork(self) -> list[object]:
        return []
