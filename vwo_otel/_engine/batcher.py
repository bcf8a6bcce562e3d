"""The batching engine: a bounded queue, VWO's count/age triggers, a few delivery threads.

A batch is cut when ``events_per_request`` events are queued (on the emitting thread, O(1)) or
when the oldest queued event is ``request_time_interval`` old (the delivery thread's timer,
started by the first event into an empty queue, cleared by a cut). Emitting never blocks on the
network and never raises. Batches in flight: ``concurrency.Concurrency``'s limit, up to
``max_concurrent_requests``; they may arrive, and their callbacks run, out of order.

When the backlog (``max_queue_size``) is full, an incoming event takes the place of the
newest queued event of a strictly lower ``event.DROP_PRIORITY``, or is dropped itself. With
``block_when_full`` > 0 the emitting thread first waits up to that many seconds for room
(never a delivery or callback thread, never after shutdown).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from .. import checks
from ..config import BatchEvents
from ..event import DROP_PRIORITY, VWOEvent
from ..export.exporter import VWOExporter
from . import lifecycle, signals, summary
from .backlog import Backlog, MemoryBacklog, Taken
from .concurrency import Concurrency, file_bound
from .delivery import Batch, Delivery
from .settle import FlushTicket, Notifier

logger = logging.getLogger("vwo_otel")

#: Sized by memory: a queued event holds about 250 B (tracemalloc, activate/track/push with a
#: 13-character user id), so a full default backlog is about 25 MB and absorbs a burst of
#: 10^5 events emitted faster than they can be sent.
DEFAULT_MAX_QUEUE_SIZE = 100_000
DEFAULT_SHUTDOWN_TIMEOUT = 10.0
#: The most batches in flight (its range: ``checks.MAX_CONCURRENT_REQUESTS``); the adaptive limit
#: starts at 2 and reaches this only while a backlog waits and VWO answers as fast as before. Each
#: batch in flight is a delivery thread, started as the limit grows (they end when quiet: ``delivery.THREAD_IDLE``).
#: Above 64 so a burst with VWO 100 ms away is not left queued behind the limit (#21 item 11:
#: at 64 one of 20,000 events ended with ~110 batches queued, two round trips after the last event).
DEFAULT_MAX_CONCURRENT_REQUESTS = 128
#: Seconds the final reports may still take after ``shutdown_timeout`` (shutdown's only overshoot).
CALLBACK_GRACE = 0.25
#: An ``EventsDropped`` report lists up to max(max_queue_size, this) events; beyond, it counts.
DROP_LIST_MIN = 10_000


def _rank(etype: int | str) -> float:
    """The drop priority of an event type; a type the table does not know (only read from a
    damaged spool file) ranks below all."""
    return DROP_PRIORITY.get(etype, -math.inf)


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
    emitters_waiting: int = 0  # emitting threads waiting for room in a full queue (block_when_full)
    in_flight_limit: int = 0  # batches allowed in flight now (the adaptive limit)
    spilled: int = 0  # events kept only on disk (spool): spilled from a full queue, or adopted
    threads: int = 0  # delivery threads running (started as the limit grows, gone when quiet)

    def __repr__(self) -> str:  # printed while debugging: the queued events (user ids, IPs) only counted
        shown = {f.name: getattr(self, f.name) for f in fields(self)} | {"pending": len(self.pending)}
        return f"QueueSnapshot({', '.join(f'{k}={v!r}' for k, v in shown.items())})"


class Batcher(Delivery):
    """Queue + timer + delivery threads, shared by the span and log-record processors (and one
    per account in the gateway). ``clock`` is the monotonic clock of the age trigger."""

    def __init__(self, exporter: VWOExporter, config: BatchEvents | None, *,
                 max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE,
                 shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT, spool: Backlog | None = None,
                 max_concurrent_requests: int = DEFAULT_MAX_CONCURRENT_REQUESTS,
                 block_when_full: float = 0.0, count_bytes: bool = False, background: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_queue_size = checks.MAX_QUEUE_SIZE.check("max_queue_size", max_queue_size)
        #: Seconds an emitting thread may wait for room in a full backlog (0: drop at once).
        self.block_when_full = checks.BLOCK_WHEN_FULL.check("block_when_full", block_when_full)
        self.shutdown_timeout = checks.SHUTDOWN_TIMEOUT.check("shutdown_timeout", shutdown_timeout)
        self.max_concurrent_requests = checks.MAX_CONCURRENT_REQUESTS.check(
            "max_concurrent_requests", max_concurrent_requests)
        self.exporter = exporter
        self.config = config
        self.realtime = config is None
        self.events_per_request = 1 if config is None else config.events_per_request
        self.interval = 0.0 if config is None else config.request_time_interval
        #: The spool given (None: memory only) and the backlog the engine uses either way.
        self.spool = spool
        self.backlog: Backlog = spool if spool is not None else MemoryBacklog()
        self.backlog.open(exporter)
        #: Keep ``queue_bytes()`` (the gateway bounds its backlog in bytes; the app's hot path skips it).
        self._count_bytes = count_bytes
        self._clock = clock
        #: False: no thread ever starts (serverless): batches wait for a flush or the shutdown,
        #: which deliver them, and run the callbacks, on the calling thread.
        self.background = background
        self._notifier = Notifier(config.flush_callback if config else None, exporter.encode,
                                  max(max_queue_size, DROP_LIST_MIN), inline=not background)
        self._reset()
        add_observer = getattr(exporter, "add_observer", None)  # a stand-in exporter may have none
        if add_observer is not None:
            add_observer(self._observe)
        lifecycle.track(self)
        self._replay()

    def _reset(self) -> None:
        self._lock = threading.Lock()  # ``put`` takes it directly: cheaper than entering the Condition
        self._cond = threading.Condition(self._lock)
        self._room = threading.Condition(self._lock)  # emitting threads waiting for room (block_when_full)
        self._blocked = 0  # how many wait on it
        self._refilling = threading.Lock()  # one read-back from the backlog at a time
        self._record = self.backlog.put if self.backlog.durable else None  # a queued event's row
        self._pending: list[VWOEvent] = []
        self._deadline = math.inf  # when the oldest pending event is due
        self._ready: deque[Batch] = deque()
        self._size = 0  # events held: pending + ready + in flight (+ being read back from the backlog)
        self._bytes = 0  # their ``VWOEvent.nbytes``, with ``count_bytes``
        # events in pending + ready (what a full queue may evict) by event type
        self._queued: defaultdict[int | str, int] = defaultdict(int)
        self._seq = 0  # sequence number of the last cut batch
        self._inflight: dict[int, Batch] = {}  # batches taken for delivery, not yet settled, by seq
        self._closed = False
        self._stop_at = math.inf  # the shutdown deadline (time.monotonic), once shutdown began
        self._released = 0  # the last batch whose flushes a server's long wait released
        self._workers: list[threading.Thread] = []
        most = file_bound(self.max_concurrent_requests)
        if most < self.max_concurrent_requests:
            logger.info("vwo_otel: at most %d requests in flight, not max_concurrent_requests=%d: a quarter of the "
                        "process's file limit (RLIMIT_NOFILE; a request holds a socket)", most,
                        self.max_concurrent_requests)
        self._flow = Concurrency(most, self._clock)
        self._sending: dict[int, int] = {}  # thread ident -> seq of the batch it is sending
        self.counts: dict[str, int] = {"delivered": 0, "failed": 0}
        self._last_failure = ""  # the last answer that was not a success, in words (for the shutdown notice)
        self.dropped: dict[str, int] = {}

    def after_fork(self) -> list[object]:
        """In a forked child: empty queue and fresh threads, exporter (and its transport) and
        backlog; the parent delivers its own events. A batcher shut down before the fork stays
        shut down. Returns what the child must keep referenced and never touch (the parent's
        connections), for ``lifecycle`` to hold."""
        closed = self._closed
        self._notifier.after_fork()
        self.exporter.after_fork()  # and its transport
        kept = self.backlog.after_fork()
        self._reset()
        self._closed = closed
        self._replay()  # a worker that died (kill -9, OOM) left its file: this child may be its replacement
        return kept

    @property
    def closed(self) -> bool:
        """True once shutdown has begun: new events are refused."""
        return self._closed

    def queue_size(self) -> int:
        """Events held now: queued, batched and in flight (read without the lock, for metrics)."""
        return self._size

    def queue_bytes(self) -> int:
        """Memory the held events take (``VWOEvent.nbytes``; 0 unless built with ``count_bytes``)."""
        return self._bytes

    def snapshot(self) -> QueueSnapshot:
        """What the queue holds now, consistently (under the lock)."""
        with self._lock:
            return QueueSnapshot(tuple(self._pending), self._deadline, len(self._ready), len(self._inflight),
                                 self._size, self._notifier.results_waiting, self._blocked, self._flow.limit,
                                 spilled=self.backlog.waiting,
                                 threads=sum(w.is_alive() for w in self._workers))

    def oldest(self) -> float | None:
        """The own time (epoch seconds) of the oldest event held in memory, in flight, cut or
        pending (the first of each, in queue order); None when none is (the gateway's metrics)."""
        with self._lock:
            firsts = [b.events[0] for b in self._inflight.values() if b.events]
            if self._ready and self._ready[0].events:
                firsts.append(self._ready[0].events[0])
            if self._pending:
                firsts.append(self._pending[0])
        return float(min(ev.time for ev in firsts)) if firsts else None

    # -- the emitting thread's side (hot path) ---------------------------------------
    def put(self, event: VWOEvent) -> None:
        """Queue one event; cuts a batch when ``events_per_request`` is reached. A full queue
        (or one with older events waiting in the backlog) hands it to the backlog: with a
        spool it waits on disk; else, or if the spool refuses, the queue's bound decides."""
        with self._lock:
            if self._size < self.max_queue_size and not self._closed and not self.backlog.waiting:
                self._append(event)
                return
            if not self._closed and self.backlog.spill(event):
                if self._pending and self._size >= self.max_queue_size:  # full of events not due yet: send them now
                    self._cut()
                    self._start_worker()
                    self._cond.notify()
                return
            if self._size < self.max_queue_size and not self._closed:  # the backlog refused: memory has room
                self._append(event)
                return
            if self.block_when_full and self._wait_for_room():
                self._append(event)
                return
            reason = "already_shutdown" if self._closed else "queue_full"
            self.dropped[reason] = self.dropped.get(reason, 0) + 1
            victim = None if self._closed else self._evict_below(event)
            if victim is None:
                victim = event
            else:
                self._append(event)
        if victim is not event:  # the refused event never reached the backlog
            self.backlog.settle([victim], None)
        self._notifier.dropped(reason, [victim])  # outside the lock: may run the callback inline
        if reason == "already_shutdown":  # yield the interpreter lock: an app emitting in a loop
            time.sleep(0)  # would starve the delivery its shutdown waits for (test_reliability.py)

    def admit(self, events: list[VWOEvent]) -> None:
        """Queue all of ``events``, past ``max_queue_size`` if need be: the caller (the gateway's
        admission) already decided they fit, and a request is kept whole or not at all."""
        with self._lock:
            if not self._closed:
                for event in events:
                    self._append(event)
                return
        for event in events:  # shut down meanwhile: reported as already_shutdown
            self.put(event)

    def _wait_for_room(self) -> bool:
        """Backlog full (lock held): wait up to ``block_when_full`` seconds for room; True if
        there is room. Not on the engine's own threads (they make the room) nor after shutdown."""
        me = threading.current_thread()
        if self._closed or not self.background or me in self._workers or self._notifier.runs_callbacks(me):
            return False  # (without background threads nothing would make room meanwhile)
        if self._pending:  # nothing may be due yet: send what waits for the count or age trigger now
            self._cut()
            self._start_worker()
            self._cond.notify()
        deadline = time.monotonic() + self.block_when_full
        self._blocked += 1
        try:
            while self._size >= self.max_queue_size and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._room.wait(left)
        finally:
            self._blocked -= 1
        return not self._closed

    def _append(self, event: VWOEvent, record: bool = True) -> None:
        pending = self._pending
        pending.append(event)
        if record and self._record is not None:
            self._record(event)
        self._size += 1
        if self._count_bytes:
            self._bytes += event.nbytes()
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
                    if self._count_bytes:
                        self._bytes -= victim.nbytes()
                    self._queued[victim.etype] -= 1
                    if not self._pending:
                        self._deadline = math.inf
                    return victim
        raise AssertionError("queued counts out of step with the queue")  # pragma: no cover

    # -- events waiting in the backlog -------------------------------------------------
    def _replay(self) -> None:
        """Adopt dead processes' spool files on a thread of its own (construction stays fast),
        then take their events as room allows. A batcher shutting down adopts nothing."""
        self._adopted = threading.Event()  # a flush covers what is adopted at start
        if self.backlog.durable and not self._closed:
            try:
                threading.Thread(target=signals.quiet(self._adopt), args=(self._adopted,), name="vwo_otel-replay",
                                 daemon=True).start()
                return
            except RuntimeError:  # interpreter exiting: left for a later start
                pass
        self._adopted.set()

    def _adopt(self, adopted: threading.Event) -> None:
        try:
            found = self.backlog.adopt()
            adopted.set()
            if found:
                self._refill()
        except Exception:
            logger.exception("vwo_otel: replay of dead processes' spool files failed; the app goes on")
        finally:
            adopted.set()

    def adopt(self) -> int:
        """Take over the spool files of processes that are gone now, and queue their events as
        room allows; how many were found. The replay thread does it once at start; a gateway
        sharing its spool directory with others calls it periodically, so what a peer that died
        left on disk is delivered without a restart."""
        if self._closed:
            return 0
        found = self.backlog.adopt()
        if found:
            self._refill(wait=True)
        return found

    def _refill(self, wait: bool = False) -> None:
        """Events due in the backlog back into the queue, oldest first, as room allows. On a
        delivery thread, the replay thread or a waiting flush, never the emitting thread: the
        disk is read outside the lock (the room is held for them meanwhile). ``wait``: wait for
        a read-back in progress."""
        if not self._refilling.acquire(blocking=wait):
            return
        try:
            while True:
                with self._lock:
                    room = self.max_queue_size - self._size
                    reading = None if self._closed or room <= 0 else self.backlog.take(room, self.events_per_request)
                    if reading is None:
                        return
                    self._size += reading.count  # held while the disk is read
                try:
                    taken = reading.read()
                except BaseException:
                    with self._lock:
                        self._size -= reading.count
                    raise
                with self._cond:
                    self._size -= reading.count
                    if not self._closed:  # closed meanwhile: their rows stay on disk for the next start
                        self._requeue(taken)
                    if taken.expired:
                        self.dropped["queue_full"] = self.dropped.get("queue_full", 0) + len(taken.expired)
                if taken.expired:
                    self._notifier.dropped("queue_full", taken.expired,
                                           "spilled to disk longer than the spool's max_age")
                if taken.events:
                    return  # their settling brings the next ones back
        except Exception:  # pragma: no cover - a delivery thread must not die over the disk
            logger.exception("vwo_otel: could not read events back from the spool; they stay on disk")
        finally:
            self._refilling.release()

    def _requeue(self, taken: Taken) -> None:
        """Lock held: events read back from the backlog into the queue, each keeping its row.
        Spilled and parked ones are overdue (sent now); a dead process's are due
        ``request_time_interval`` after it first queued them."""
        for ev in taken.events:
            self._append(ev, record=False)
        if taken.queued_at is not None and self._pending:
            self._deadline = self._clock() + max(0.0, self.interval - (time.time() - taken.queued_at))
        elif self._pending:
            self._cut()
        if self._ready or self._pending:
            self._start_worker()
            self._cond.notify_all()

    # -- flushing ----------------------------------------------------------------------
    def flush(self, timeout: float | None) -> bool:
        """Cut what is queued now and wait (up to ``timeout`` s) until it and everything
        before it has been settled, events waiting in the backlog before it included (spilled
        or adopted); True if all of it was delivered. Events parked in the spool past the retry
        budget are not waited for (they wait for VWO); while some parked before the flush still
        wait when it ends, it is False."""
        parked = self.backlog.due() < math.inf  # the backlog's parked events wait (for their next try)
        return self._flush(timeout) and not (parked and self.backlog.due() < math.inf)

    def _flush(self, timeout: float | None) -> bool:
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        backlog = self.backlog
        self._adopted.wait(None if timeout is None else min(timeout, threading.TIMEOUT_MAX))
        with self._cond:
            ticket, threaded = self._cut_all()
            mark = backlog.entered if backlog.waiting else 0
            held = self._held_back()
            # a server's wait holds events longer than a flush waits: False, they stay queued
            ok = not (self._held_long() and (self._ready or backlog.due() < math.inf))
        for seq in held:
            self._notifier.abandon(seq, seq)
        while True:
            if not threaded:
                self._drain_inline(deadline)
            if not self.background:  # nothing else delivers: what could go went, its callbacks run here
                self._notifier.drain()
                return ticket.wait(0) and ok
            ok = ticket.wait(None if timeout is None else max(0.0, deadline - time.monotonic())) and ok
            if ok:  # batches a server's wait released count as settled for the ticket: not delivered
                # yet; waited for as the rest (by the flush's deadline, at most the retry budget)
                with self._cond:
                    until: float | None = None
                    while self._released_waiting(ticket.target):
                        if until is None:
                            until = min(deadline, time.monotonic() + self.exporter.retry.budget)
                        left = until - time.monotonic()
                        if left <= 0:
                            ok = False
                            break
                        self._cond.wait(min(left, 0.05))  # (a settled batch wakes no flush: polled)
            if not mark or not ticket.done.is_set():
                return ok
            self._refill(wait=True)  # the settled batches made room
            with self._cond:
                if backlog.left >= mark and not self._refilling.locked():
                    mark = 0  # the last round: what waited before the flush is cut now
                ticket, threaded = self._cut_all()

    def deliver_now(self, timeout: float) -> bool:
        """The end of a serverless invocation: deliver what is queued within ``timeout`` seconds
        (on this thread when no background thread runs) and report what could not go in time as
        ``EventsDropped("invocation_deadline")``, so nothing stays queued for a process that may
        be frozen next; without background threads the callbacks have run when it returns. True
        if everything was delivered."""
        ok = self.flush(timeout)
        with self._cond:
            seqs = [b.seq for b in self._ready]
            left = [ev for b in self._ready for ev in b.events] + self._pending
            self._ready.clear()
            self._pending = []
            self._deadline = math.inf
            self._size -= len(left)
            if self._count_bytes:
                self._bytes -= sum(ev.nbytes() for ev in left)
            for ev in left:
                self._queued[ev.etype] -= 1
            if left:
                self.dropped["invocation_deadline"] = self.dropped.get("invocation_deadline", 0) + len(left)
        for seq in seqs:
            self._notifier.abandon(seq, seq)
        if left:
            self.backlog.settle(left, None)
            self._notifier.dropped("invocation_deadline", left, f"not delivered within the {timeout:g} s deadline")
        if not self.background:
            self._notifier.drain()
        return ok and not left

    def flush_async(self) -> None:
        """Cut what is queued now and wake the delivery threads; returns at once. Nobody hears
        this flush's result, so drops before it still make the next waited-for flush False."""
        with self._cond:
            self._cut_all()

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
        what is left ends the batch at once), and a server's wait that outlasts the deadline
        is not waited for (nothing may be sent before it ends). At the deadline, queued events are reported
        as ``EventsDropped("shutdown_timeout")`` and a request still unanswered as
        ``EventsDropped("shutdown_in_flight")`` (VWO may or may not have it); a late answer
        to that request is then only logged, never reported twice."""
        state = self.begin_shutdown(timeout)
        return True if state is None else self.finish_shutdown(state)

    def last_words(self) -> None:
        """The process ends now (a signal): log what the log rate limit still holds back."""
        self._notifier.log.flush()

    def begin_shutdown(self, timeout: float | None = None) -> ShutdownState | None:
        """First half of ``shutdown`` (never blocks): refuse new events, cut the queue, wake
        the delivery thread and cap retry waits at the deadline. None if already shut down.
        ``lifecycle`` begins every batcher's shutdown before finishing any, so at exit they
        all drain in parallel within one ``shutdown_timeout``."""
        timeout = self.shutdown_timeout if timeout is None else max(0.0, timeout)
        deadline = time.monotonic() + timeout
        with self._cond:
            if self._closed:
                return None
            self._closed = True
            self._stop_at = deadline
            self._room.notify_all()  # emitting threads waiting for room stop waiting: their events are refused
            ticket, threaded = self._cut_all()
            held = self._held_back()
        for seq in held:  # a server's wait outlasts the shutdown: what it holds is reported at the deadline
            self._notifier.abandon(seq, seq)
        # No request or retry wait starts after the report of what is left is made (a little before
        # the deadline, so it reaches flush_callback in time); one already waiting for its answer
        # may until the deadline, and what is still in flight then is reported shutdown_in_flight.
        self.exporter.hurry(deadline - min(0.25, timeout / 10) - 0.05, requests_until=deadline)
        return ShutdownState(deadline, ticket, threaded)

    def finish_shutdown(self, state: ShutdownState) -> bool:
        """Second half of ``shutdown``: wait for delivery until the deadline, report what
        is left, close the callback thread and the HTTP session."""
        deadline = state.deadline
        report_at = deadline - min(0.25, max(0.0, deadline - time.monotonic()) / 10)
        if not state.threaded:  # no background thread, or the interpreter refuses new ones (at exit): deliver here
            self._drain_inline(report_at)
        ok = state.ticket.wait(0 if not self.background else
                               max(0.0, min(report_at, time.monotonic() + summary.NOTICE_AFTER) - time.monotonic()))
        if not state.ticket.done.is_set() and self.background and report_at - time.monotonic() > 0.1:
            summary.notice(self._size, self._last_failure, deadline - time.monotonic())
            ok = state.ticket.wait(max(0.0, report_at - time.monotonic()))
        with self._cond:
            seqs = [b.seq for b in self._ready] + list(self._inflight)
            left = [ev for b in self._ready for ev in b.events] + self._pending
            inflight = [ev for _, b in sorted(self._inflight.items()) for ev in b.events]
            self._ready.clear()
            self._pending = []
            self._inflight.clear()
            self._size -= len(left) + len(inflight)
            self._bytes = 0
            self._queued.clear()
            last = self._seq
            self._cond.notify_all()
            workers = list(self._workers)
        if seqs:
            self._notifier.abandon(min(seqs), last)
        settled = self._close_backlog(left, inflight, report_at)  # what nothing keeps: reported now
        for worker in workers:
            if worker is not threading.current_thread():
                worker.join(max(0.0, report_at - time.monotonic()))
        # The last reports (what could not be delivered) may reach flush_callback up to
        # CALLBACK_GRACE past the deadline; engines shut down together share that one grace.
        self._notifier.close(max(0.0, deadline + CALLBACK_GRACE - time.monotonic()))
        self.exporter.shutdown()
        summary.summary(self.counts, self.dropped, self.backlog.on_disk(), bool(getattr(self.exporter, "disabled", 0)))
        return ok and settled and not left and not inflight

    def _close_backlog(self, left: list[VWOEvent], inflight: list[VWOEvent], deadline: float) -> bool:
        """Close the backlog; report what it could not keep (without a spool: all that is left).
        True if nothing was left undelivered."""
        closed = self.backlog.close(deadline, inflight + left)
        ids = {id(ev) for ev in inflight}
        for reason, group, note in (
                ("shutdown_in_flight", [ev for ev in closed.lost if id(ev) in ids],
                 "request unanswered at the shutdown deadline; VWO may or may not have it"),
                ("shutdown_timeout", [ev for ev in closed.lost if id(ev) not in ids],
                 "not sent within shutdown_timeout")):
            if group:
                with self._lock:
                    self.dropped[reason] = self.dropped.get(reason, 0) + len(group)
                self._notifier.dropped(reason, group, closed.error or note)
        return not closed.kept and not closed.lost

    def malformed(self, record: Any, why: str) -> None:
        """A record that claims to be a VWO event but cannot become one: counted, logged
        (rate-limited) and reported as ``EventsDropped("malformed")`` with its attributes."""
        with self._cond:
            self.dropped["malformed"] = self.dropped.get("malformed", 0) + 1
        self._notifier.dropped("malformed", [dict(record)], why)
