"""The batching engine: a bounded queue, VWO's count/age triggers, a few delivery threads.

A batch is cut when ``events_per_request`` events are queued (on the emitting thread,
O(1)) or when the oldest queued event is ``request_time_interval`` old (on the delivery
thread's timer). The timer starts with the first event into an empty queue and is
cleared when the queue is cut. Emitting never blocks on the network and never raises.

Up to ``max_concurrent_requests`` batches are in flight at once, so a server far away
(tens of ms per answer) does not cap throughput at one batch per round trip; batches
may then arrive, and their callbacks run, in another order than they were cut.

When the backlog (``max_queue_size``) is full, an incoming event takes the place of the
newest queued event of a strictly lower ``event.DROP_PRIORITY``, or is dropped itself.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import checks
from ..config import BatchEvents
from ..errors import Outcome, VWODeliveryError
from ..event import DROP_PRIORITY, VWOEvent
from ..export.exporter import VWOExporter
from . import lifecycle
from .settle import FlushTicket, Notifier
from .spool import Orphan, Spool

logger = logging.getLogger("vwo_otel")

DEFAULT_MAX_QUEUE_SIZE = 5000
DEFAULT_SHUTDOWN_TIMEOUT = 10.0
DEFAULT_MAX_CONCURRENT_REQUESTS = 4
#: An ``EventsDropped`` report lists up to max(max_queue_size, this) events; beyond, it counts.
DROP_LIST_MIN = 10_000


def _rank(etype: int) -> float:
    """The drop priority of an event type; a type the table does not know (only read from a
    damaged spool file) ranks below all."""
    return DROP_PRIORITY.get(etype, -math.inf)


@dataclass(slots=True)
class Batch:
    """Events cut to go out together; ``seq`` numbers batches in the order they were cut
    (flush tickets and the notifier count by it)."""

    seq: int
    events: list[VWOEvent]


@dataclass(frozen=True, slots=True)
class ShutdownState:
    """What ``begin_shutdown`` hands to ``finish_shutdown``."""

    deadline: float  # time.monotonic() by which the shutdown ends
    ticket: FlushTicket  # done when everything cut before the shutdown has settled
    threaded: bool  # False: no delivery thread could start (at exit), so deliver inline


@dataclass(frozen=True)
class QueueSnapshot:
    """What a batcher holds at one moment, read under its lock (``Batcher.snapshot``): for
    tests, tools and debugging, never on the hot path."""

    pending: tuple[VWOEvent, ...]  # queued, not cut yet: waiting for the count or the age trigger
    deadline: float  # when the pending events are due, on the batcher's clock; inf: no timer runs
    ready: int  # batches cut, waiting for a delivery thread
    in_flight: int  # batches being sent
    held: int  # events held: pending + ready + in flight (``queue_size()``)
    results_waiting: int  # settled events whose results still wait for flush_callback


class Batcher:
    """Queue + timer + delivery threads, shared by the span and log-record processors (and one
    per account in the gateway). ``clock`` is the monotonic clock of the age trigger."""

    def __init__(self, exporter: VWOExporter, config: BatchEvents | None, *,
                 max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE,
                 shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT, spool: Spool | None = None,
                 max_concurrent_requests: int = DEFAULT_MAX_CONCURRENT_REQUESTS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_queue_size = checks.MAX_QUEUE_SIZE.check("max_queue_size", max_queue_size)
        self.shutdown_timeout = checks.SHUTDOWN_TIMEOUT.check("shutdown_timeout", shutdown_timeout)
        self.max_concurrent_requests = checks.MAX_CONCURRENT_REQUESTS.check(
            "max_concurrent_requests", max_concurrent_requests)
        self.exporter = exporter
        self.config = config
        self.realtime = config is None
        self.events_per_request = 1 if config is None else config.events_per_request
        self.interval = 0.0 if config is None else config.request_time_interval
        #: The spool that keeps queued events on disk until delivered (None: memory only).
        self.spool = spool
        self._clock = clock
        self._notifier = Notifier(config.flush_callback if config else None, exporter.encode,
                                  max(max_queue_size, DROP_LIST_MIN))
        self._reset()
        lifecycle.track(self)
        if spool is not None:
            self._replay(spool)

    def _reset(self) -> None:
        self._lock = threading.Lock()  # ``put`` takes it directly: cheaper than entering the Condition
        self._cond = threading.Condition(self._lock)
        self._pending: list[VWOEvent] = []
        self._deadline = math.inf  # when the oldest pending event is due
        self._ready: deque[Batch] = deque()
        self._size = 0  # events held: pending + ready + in flight
        # events in pending + ready (what a full queue may evict) by event type
        self._queued: defaultdict[int, int] = defaultdict(int)
        self._seq = 0  # sequence number of the last cut batch
        self._inflight: dict[int, Batch] = {}  # batches taken for delivery, not yet settled, by seq
        self._closed = False
        self._workers: list[threading.Thread] = []
        self.counts: dict[str, int] = {"delivered": 0, "failed": 0}
        self.dropped: dict[str, int] = {}

    def after_fork(self) -> None:
        """In a forked child: empty queue and fresh threads; the parent delivers its own events.
        A batcher shut down before the fork stays shut down."""
        closed = self._closed
        self._reset()
        self._closed = closed
        self._notifier.after_fork()
        self.exporter.after_fork()
        if self.spool is not None:
            self.spool.after_fork()
            # A worker that died (kill -9, OOM) left its file: this child may be its replacement.
            threading.Thread(target=self._replay, args=(self.spool,), name="vwo_otel-replay", daemon=True).start()

    def queue_size(self) -> int:
        """Events held now: queued, batched and in flight (read without the lock, for metrics)."""
        return self._size

    def snapshot(self) -> QueueSnapshot:
        """What the queue holds now, consistently (under the lock)."""
        with self._lock:
            return QueueSnapshot(tuple(self._pending), self._deadline, len(self._ready), len(self._inflight),
                                 self._size, self._notifier.results_waiting)

    # -- the emitting thread's side (hot path) ---------------------------------------
    def put(self, event: VWOEvent, queued_at: float | None = None) -> None:
        """Queue one event; cuts a batch when ``events_per_request`` is reached.
        ``queued_at`` (replay only) keeps a replayed event's original time in the spool."""
        with self._lock:
            if self._size < self.max_queue_size and not self._closed:
                self._append(event, queued_at)
                return
            reason = "already_shutdown" if self._closed else "queue_full"
            self.dropped[reason] = self.dropped.get(reason, 0) + 1
            victim = None if self._closed else self._evict_below(event)
            if victim is None:
                victim = event
            else:
                self._append(event, queued_at)
        if self.spool is not None and victim is not event:  # the refused event never reached the spool
            self.spool.ack([victim])
        self._notifier.dropped(reason, [victim])  # outside the lock: may run the callback inline

    def _append(self, event: VWOEvent, queued_at: float | None = None) -> None:
        pending = self._pending
        pending.append(event)
        if self.spool is not None:
            self.spool.add(event, queued_at)
        self._size += 1
        self._queued[event.etype] += 1
        if len(pending) >= self.events_per_request:
            self._cut()
        elif len(pending) == 1:
            self._deadline = self._clock() + self.interval
        else:
            return
        self._start_worker()  # once per batch, not per event; restarts threads that died
        self._cond.notify()

    def _cut(self) -> None:
        self._seq += 1
        self._ready.append(Batch(self._seq, self._pending))
        self._pending = []
        self._deadline = math.inf

    def _evict_below(self, event: VWOEvent) -> VWOEvent | None:
        """Backlog full (lock held): take out the newest queued event, not in flight, of a
        strictly lower drop priority than ``event``; None if there is none."""
        rank = _rank(event.etype)
        lower = {etype for etype, n in self._queued.items() if n and _rank(etype) < rank}
        if not lower:
            return None
        for batch in (self._pending, *(b.events for b in reversed(self._ready))):
            for i in range(len(batch) - 1, -1, -1):
                if batch[i].etype in lower:
                    victim = batch.pop(i)
                    self._size -= 1
                    self._queued[victim.etype] -= 1
                    if not self._pending:
                        self._deadline = math.inf
                    return victim
        raise AssertionError("queued counts out of step with the queue")  # pragma: no cover

    def _replay(self, spool: Spool) -> None:
        """Queue the events of dead processes' spool files, oldest first; events already
        ``request_time_interval`` old go out at once, younger ones when they come due."""
        orphans: list[Orphan] = spool.adopt()
        events = sorted((item for o in orphans for item in o.events), key=lambda item: item.queued_at)
        for item in events:
            self.put(item.event, item.queued_at)
        if events:
            with self._cond:
                if self._pending:
                    waiting = {id(ev) for ev in self._pending}
                    age = time.time() - min(item.queued_at for item in events if id(item.event) in waiting)
                    self._deadline = self._clock() + max(0.0, self.interval - age)
                    self._cond.notify()
            logger.info("vwo_otel: replaying %d event(s) from %d spool file(s) in %s",
                        len(events), len(orphans), spool.directory)
        if not spool.commit():  # our copies must be durable before the old files go
            for orphan in orphans:
                orphan.unlock()  # left for a later start
            return
        for orphan in orphans:
            orphan.release()

    # -- flushing ----------------------------------------------------------------------
    def flush(self, timeout: float | None) -> bool:
        """Cut what is queued now and wait (up to ``timeout`` s) until it and everything
        before it has been settled; True if all of it was delivered."""
        with self._cond:
            ticket, threaded = self._cut_all()
        if not threaded:
            self._drain_inline(time.monotonic() + (math.inf if timeout is None else timeout))
        return ticket.wait(timeout)

    def _cut_all(self) -> tuple[FlushTicket, bool]:
        """Lock held: cut what is pending, take a ticket for everything cut so far and wake
        the delivery threads; False as second value if none can run (deliver inline)."""
        if self._pending:
            self._cut()
        ticket = self._notifier.ticket(self._seq)
        threaded = not self._ready or self._start_worker()
        self._cond.notify_all()
        return ticket, threaded

    def shutdown(self, timeout: float | None = None) -> bool:
        """Refuse new events, deliver the queue within ``timeout`` (default
        ``shutdown_timeout``) and report what could not be delivered; idempotent.

        Bounded: retry waits are cut short at the deadline (a ``Retry-After`` longer than
        what is left ends the batch at once). At the deadline, queued events are reported
        as ``EventsDropped("shutdown_timeout")`` and a request still unanswered as
        ``EventsDropped("shutdown_in_flight")`` (VWO may or may not have it); a late answer
        to that request is then only logged, never reported twice."""
        state = self.begin_shutdown(timeout)
        return True if state is None else self.finish_shutdown(state)

    def begin_shutdown(self, timeout: float | None = None) -> ShutdownState | None:
        """First half of ``shutdown`` (never blocks): refuse new events, cut the queue, wake
        the delivery thread and cap retry waits at the deadline. None if already shut down.
        ``lifecycle`` begins every batcher's shutdown before finishing any, so at exit they
        all drain in parallel within one ``shutdown_timeout``."""
        with self._cond:
            if self._closed:
                return None
            self._closed = True
            ticket, threaded = self._cut_all()
        timeout = self.shutdown_timeout if timeout is None else max(0.0, timeout)
        deadline = time.monotonic() + timeout
        # Delivery stops a little early so the report of what is left reaches flush_callback in time.
        self.exporter.hurry(deadline - min(0.25, timeout / 10))
        return ShutdownState(deadline, ticket, threaded)

    def finish_shutdown(self, state: ShutdownState) -> bool:
        """Second half of ``shutdown``: wait for delivery until the deadline, report what
        is left, close the callback thread and the HTTP session."""
        deadline = state.deadline
        report_at = deadline - min(0.25, max(0.0, deadline - time.monotonic()) / 10)
        if not state.threaded:  # at exit the interpreter may refuse new threads: deliver here
            self._drain_inline(report_at)
        ok = state.ticket.wait(max(0.0, report_at - time.monotonic()))
        with self._cond:
            seqs = [b.seq for b in self._ready] + list(self._inflight)
            left = [ev for b in self._ready for ev in b.events] + self._pending
            inflight = [ev for _, b in sorted(self._inflight.items()) for ev in b.events]
            self._ready.clear()
            self._pending = []
            self._inflight.clear()
            self._size -= len(left) + len(inflight)
            self._queued.clear()
            last = self._seq
            if self.spool is None:
                for reason, n in (("shutdown_timeout", len(left)), ("shutdown_in_flight", len(inflight))):
                    if n:
                        self.dropped[reason] = self.dropped.get(reason, 0) + n
            self._cond.notify_all()
            workers = list(self._workers)
        if (left or inflight) and self.spool is not None:
            logger.warning("vwo_otel: %d undelivered event(s) stay in the spool %s for the next start",
                           len(left) + len(inflight), self.spool.path)
        else:
            if inflight:
                self._notifier.dropped("shutdown_in_flight", inflight,
                                       "request unanswered at the shutdown deadline; VWO may or may not have it")
            if left:
                self._notifier.dropped("shutdown_timeout", left, "not sent within shutdown_timeout")
        if seqs:
            self._notifier.abandon(min(seqs), last)
        for worker in workers:
            if worker is not threading.current_thread():
                worker.join(max(0.0, report_at - time.monotonic()))
        self._notifier.close(max(0.0, deadline - time.monotonic()))
        if self.spool is not None:
            self.spool.close()
        self.exporter.shutdown()
        return ok and not left and not inflight

    # -- the delivery thread -----------------------------------------------------------
    def _start_worker(self) -> bool:
        """Bring the delivery threads up to ``max_concurrent_requests`` (called with the lock
        held); False if the interpreter refuses new threads (at exit) and none is running,
        so the caller delivers inline."""
        workers = self._workers
        if len(workers) == self.max_concurrent_requests and all(w.is_alive() for w in workers):
            return True
        workers[:] = [w for w in workers if w.is_alive()]
        while len(workers) < self.max_concurrent_requests:
            try:
                worker = threading.Thread(target=self._run, name="vwo_otel-delivery", daemon=True)
                worker.start()
            except RuntimeError:
                break
            workers.append(worker)
        return bool(workers)

    def _next_batch(self, block: bool) -> Batch | None:
        """Wait for a batch that is due (full, old enough, flushed or closing) and take it."""
        with self._cond:
            while not self._ready:
                if self._pending and (self._closed or self._clock() >= self._deadline):
                    self._cut()
                    break
                if not block or (self._closed and not self._pending):
                    return None
                self._cond.wait(None if self._deadline == math.inf
                                else min(self._deadline - self._clock(), threading.TIMEOUT_MAX))
            batch = self._ready.popleft()
            queued = self._queued
            for ev in batch.events:
                queued[ev.etype] -= 1
            self._inflight[batch.seq] = batch
            return batch

    def _run(self) -> None:
        while True:
            try:
                batch = self._next_batch(block=True)
                if batch is None:
                    return
                self._deliver(batch)
            except Exception:  # pragma: no cover - _deliver guards itself; never let the thread die
                self._notifier.log.warn("delivery_thread", 0, "vwo_otel delivery thread error; it keeps running",
                                        exc_info=True)
                time.sleep(0.05)

    def _drain_inline(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            batch = self._next_batch(block=False)
            if batch is None:
                return
            self._deliver(batch)

    def _deliver(self, batch: Batch) -> None:
        events = batch.events
        try:
            outcomes = self._send(events)
        except Exception as exc:  # a bug or odd input must not kill the delivery thread
            outcomes = self._salvage(events, exc)
        delivered = sum(len(o.events) for o in outcomes if o.ok)
        with self._cond:
            mine = self._inflight.pop(batch.seq, None) is not None
            if mine:
                self._size -= len(events)
                self.counts["delivered"] += delivered
                self.counts["failed"] += len(events) - delivered
        if not mine:  # already reported as shutdown_in_flight when shutdown's deadline passed
            logger.info("vwo_otel: a request unanswered at the shutdown deadline finished late: "
                        "%d of %d event(s) delivered", delivered, len(events))
            return
        if self.spool is not None:
            self.spool.ack(events)
        self._notifier.settled(batch.seq, outcomes)

    def _send(self, batch: list[VWOEvent]) -> list[Outcome]:
        if self.realtime:
            return [self.exporter.send_event(ev) for ev in batch]
        return self.exporter.send_batch(batch)

    def _salvage(self, batch: list[VWOEvent], exc: Exception) -> list[Outcome]:
        """An unexpected error while sending (a bug, or an event the encoder cannot take):
        events that cannot be encoded fail on their own, the others are sent once more."""
        self._notifier.log.warn(("unexpected", type(exc).__name__), len(batch),
                                "vwo_otel delivery failed unexpectedly: %r", exc, exc_info=True)
        good: list[VWOEvent] = []
        outcomes: list[Outcome] = []
        for ev in batch:
            try:
                self.exporter.encode([ev])
            except Exception as bad:
                fields = ev.fields()
                outcomes.append(Outcome(VWODeliveryError(f"event cannot be encoded: {type(bad).__name__}: {bad}"),
                                        [fields]))
            else:
                good.append(ev)
        if not good:
            return outcomes
        if outcomes:  # the bad ones were the problem: send the rest
            try:
                return outcomes + self._send(good)
            except Exception as again:
                exc = again
        error = VWODeliveryError(f"unexpected {type(exc).__name__}: {exc}")
        return outcomes + [Outcome(error, self.exporter.encode(good))]

    def malformed(self, record: Any, why: str) -> None:
        """A record that claims to be a VWO event but cannot become one: counted, logged
        (rate-limited) and reported as ``EventsDropped("malformed")`` with its attributes."""
        with self._cond:
            self.dropped["malformed"] = self.dropped.get("malformed", 0) + 1
        self._notifier.dropped("malformed", [dict(record)], why)
