"""The backlog: where events wait that are not in the batcher's memory queue, behind one
interface the batcher uses without knowing where they are kept.

Two kinds: ``MemoryBacklog`` (no spool: nothing waits outside the queue, nothing is durable;
batches a server's long wait holds go back to the queue) and ``spool.Spool`` (on disk: every
queued event has a row; a full queue spills to disk; batches that ran out of retries park there,
in a ``Parking``; dead processes' files are adopted). The batcher
keeps VWO's count and age triggers, the memory bound and the delivery threads; it calls:

- ``open(exporter)``: once, with the engine's exporter (the spool reads its retry policy and
  whose events it holds: ``spoolowner``).
- ``put(event)``: a new event entered the memory queue (the spool records its row);
  ``spill(event)``: the memory queue is full (or older events wait here): keep it here only.
- ``take(limit, batch)`` (under the batcher's lock, memory only) and ``Reading.read()``
  (outside it, may read the disk): events due to go back into the queue, oldest first.
- ``settle(events, outcomes)``: a batch's answer. Delivered rows go, transient failures park,
  failed events are reported only once their rows are off the disk; returns what to report and
  whether events are due to be taken now (``Settled.refill``).
- ``due()``: when parked events are next due (the delivery threads wait until then; a server's
  ``Retry-After`` on the failure that parked them puts it off that long).
- ``adopt()``: a replay thread's call: take over dead processes' files.
- ``close(deadline, held)``: what stays for the next start and what of it (and of ``held``,
  what the queue still holds) is lost, to be reported, within the deadline.
- ``after_fork()``: a fresh backlog in a forked child.

The backlog never calls back into the batcher. The gateway asks it for room (``refuse``) and
for durability before it answers 200 (``commit``).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from ..export.retry import RetryPolicy

if TYPE_CHECKING:
    from ..errors import Outcome
    from ..event import VWOEvent


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
    (not delivered, not reported: in the backlog, or ``back`` in the memory queue), and whether
    events are due to be taken now."""

    report: list[Outcome]
    kept: int = 0
    refill: bool = False
    back: list[VWOEvent] = field(default_factory=list)  # kept events that go back in the memory queue


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

    def open(self, exporter: object) -> None: ...

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


class Parking:
    """The spool's parked events: batches that failed in a way a later try may fix, waiting for
    that try. When due, one batch goes back as a probe (the next after another backoff);
    everything once VWO accepted a request again; a server's ``Retry-After`` puts the next probe
    off that long. Items are ``(event, bytes)``; the caller locks around every call."""

    def __init__(self) -> None:
        self.retry = RetryPolicy()
        self.items: deque[tuple[VWOEvent, int]] = deque()  # oldest first
        self.nbytes = 0
        self.rounds = 0  # retry rounds since a request was last accepted
        self.retry_at = math.inf  # monotonic time the parked events are due (0: VWO answers again, now)

    def __len__(self) -> int:
        return len(self.items)

    def add(self, event: VWOEvent, size: int = 0) -> None:
        self.items.append((event, size))
        self.nbytes += size

    def take(self, limit: int, batch: int, now: float) -> list[VWOEvent]:
        """Up to ``limit`` events due now: ``batch`` of them as a probe (fewer if fewer wait), or all
        once VWO answers again."""
        if not self.items or now < self.retry_at:
            return []
        n = min(limit, len(self.items)) if self.retry_at == 0.0 else min(limit, len(self.items), batch)
        taken = []
        for _ in range(n):
            ev, size = self.items.popleft()
            self.nbytes -= size
            taken.append(ev)
        if self.retry_at != 0.0:  # a probe: the next one after another backoff
            self.retry_at = now + self.retry.backoff(self.rounds) if self.items else math.inf
        return taken

    def settled(self, accepted: bool, parked: int, wait: float, now: float) -> None:
        """A batch settled: some of it was ``accepted`` (what is parked is due now), ``parked`` of
        its events were parked, and the server asked for ``wait`` seconds (0: no wait); a wait
        puts the next probe off until it is over."""
        if accepted and self.items:
            self.rounds, self.retry_at = 0, 0.0
        elif parked:
            self.rounds += 1
            if self.retry_at == math.inf:
                self.retry_at = now + self.retry.backoff(self.rounds)
        if wait and self.items:
            later = self.retry_at if 0.0 < self.retry_at < math.inf else 0.0
            self.retry_at = max(later, now + wait)

    def due(self) -> float:
        return self.retry_at if self.items else math.inf


def server_wait(outcomes: list[Outcome]) -> float:
    """The longest wait the server asked for in ``outcomes`` (``VWODeliveryError.retry_after``), 0 if none."""
    return max((o.error.retry_after or 0.0 for o in outcomes if o.error is not None), default=0.0)


class MemoryBacklog:
    """No spool: nothing waits outside the memory queue and nothing is durable; a full queue
    drops (by priority), failures are reported as they happen, except batches a server's long
    wait holds (a 429 / 503 whose ``Retry-After`` outlasted the retry budget): those go back to
    the queue (``Settled.back``) to be sent when the wait is over."""

    durable = False
    waiting = 0
    entered = 0
    left = 0

    def open(self, exporter: object) -> None:
        pass

    def put(self, event: VWOEvent) -> None:
        pass

    def spill(self, event: VWOEvent) -> bool:
        return False

    def take(self, limit: int, batch: int) -> Reading | None:
        return None

    def settle(self, events: list[VWOEvent], outcomes: list[Outcome] | None) -> Settled:
        if not outcomes or not server_wait(outcomes):
            return Settled(outcomes or [])
        report: list[Outcome] = []
        back: list[VWOEvent] = []
        i = 0
        for o in outcomes:
            mine = events[i:i + len(o.events)]
            i += len(o.events)
            if o.error is not None and o.error.retryable and o.error.retry_after and len(mine) == len(o.events):
                back.extend(mine)
            else:
                report.append(o)
        return Settled(report, len(back), back=back)

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
