"""The delivery threads of a ``Batcher`` (its ``Delivery`` part): started up to the adaptive
in-flight limit (``concurrency.Concurrency``), each waits for a batch that is due (full, old
enough, flushed or closing) and for room under the limit, sends it (``sending``), settles it
with the backlog and hands the outcome to the notifier. When parked events in the backlog
come due (``Backlog.due``), a waiting thread reads them back.

A server's wait that outlasted a request's retries (``VWODeliveryError.retry_after``: a 429 or
503 whose ``Retry-After`` was longer than the retry budget) holds every batch back that long
(``Concurrency.hold``); the batch that got it goes back to the front of the queue (no spool:
``Settled.back``) or parks in the spool, and nothing is reported. Flushes and shutdown do not
wait for a hold longer than they may (the retry budget; the shutdown deadline): the batches it
holds stay queued, their flushes are released as not delivered. The queue's state they share
is the batcher's, under its lock; the names below are what this part reads and writes.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass

from ..event import VWOEvent
from ..export.exporter import VWOExporter
from . import summary
from .backlog import Backlog, server_wait
from .concurrency import INITIAL_LIMIT, Concurrency, Signal, signal_of
from .sending import in_send_order, salvage, send
from .settle import Notifier
from .signals import quiet

logger = logging.getLogger("vwo_otel")


@dataclass(slots=True)
class Batch:
    """Events cut to go out together; ``seq`` numbers batches in the order they were cut
    (flush tickets and the notifier count by it)."""

    seq: int
    events: list[VWOEvent]
    taken: float = 0.0  # when a delivery thread took it (the batcher's clock)


#: Seconds a delivery thread waits with nothing to do before it ends, if more threads run than
#: the limit a quiet engine starts a burst with (``Concurrency.rest``): a burst's threads go,
#: the next burst starts them again (a thread costs about 0.1 ms to start).
THREAD_IDLE = 5.0

#: What ``_next_batch`` returns when events waiting in the backlog came due (parked ones' retry).
_REFILL = Batch(0, [])


class Delivery:
    """The delivery side of ``batcher.Batcher`` (a mixin: the queue's state is the batcher's)."""

    exporter: VWOExporter
    backlog: Backlog
    realtime: bool
    background: bool
    max_queue_size: int
    counts: dict[str, int]
    _cond: threading.Condition
    _room: threading.Condition
    _clock: Callable[[], float]
    _notifier: Notifier
    _flow: Concurrency
    _workers: list[threading.Thread]
    _sending: dict[int, int]
    _pending: list[VWOEvent]
    _ready: deque[Batch]
    _inflight: dict[int, Batch]
    _queued: defaultdict[int | str, int]
    _deadline: float
    _closed: bool
    _last_failure: str
    _stop_at: float
    _released: int
    _size: int
    _bytes: int
    _count_bytes: bool
    _blocked: int

    def _cut(self) -> None: ...

    def _refill(self, wait: bool = False) -> None: ...

    def _start_worker(self) -> bool:
        """Bring the delivery threads up to the current in-flight limit (called with the lock
        held; threads are started as the limit grows and end when quiet: ``THREAD_IDLE``); False
        if the interpreter refuses new threads (at exit) and none is running, so the caller
        delivers inline. O(1) when enough run (the emitting thread calls it once per batch): a
        thread that ends takes itself out of ``_workers``, so no thread is looked at here.
        Batches waiting with the limit full may first take slow start's jump (``Concurrency.waiting``)."""
        if not self.background:
            return False
        workers = self._workers
        if self._ready and self._inflight:
            self._flow.waiting(len(self._inflight), len(self._ready), next(iter(self._inflight.values())).taken)
        target = self._flow.limit
        if len(workers) >= target:
            return True
        while len(workers) < target:
            try:
                worker = threading.Thread(target=quiet(self._run), name="vwo_otel-delivery", daemon=True)
                worker.start()
            except RuntimeError:
                break
            workers.append(worker)
        return bool(workers)

    def _next_batch(self, block: bool) -> Batch | None:
        """Wait for a batch that is due (full, old enough, flushed or closing) and for room
        under the in-flight limit, and take it; ``_REFILL`` when events in the backlog came due
        and the queue has room. ``block=False`` (inline, at exit) ignores the limit."""
        backlog = self.backlog
        idle_since = None  # since when this thread has had nothing to do
        with self._cond:
            while True:
                if self._pending and (self._closed or self._clock() >= self._deadline):
                    self._cut()
                flow = self._flow
                if self._ready and (flow.may_start(len(self._inflight)) if block else flow.resumes() == -math.inf):
                    break
                if not block or (self._closed and not self._pending and not self._ready):
                    return None
                due = backlog.due() - time.monotonic()
                if due <= 0 and self._size < self.max_queue_size and not self._closed:
                    return _REFILL
                wait = min(due, self._deadline - self._clock())
                if self._ready and flow.resumes() != -math.inf:  # a server's wait: until it is over
                    wait = min(wait, flow.resumes() - self._clock())
                if not self._ready and len(self._workers) > min(flow.limit, INITIAL_LIMIT):
                    now = time.monotonic()  # a thread more than a quiet engine starts with may end
                    # (events waiting for the age trigger need one thread: the ones that stay wait for it)
                    if idle_since is None:
                        idle_since = now
                    elif now - idle_since >= THREAD_IDLE:
                        if len(self._workers) > flow.rest(len(self._inflight)):
                            me = threading.current_thread()
                            self._workers[:] = [w for w in self._workers if w is not me]
                            # a thread that stays may sleep with no timer: the parked retry or age
                            # trigger this one waited for (it may have taken their wake-up) is its now
                            self._cond.notify()
                            return None
                        idle_since = now
                    wait = min(wait, idle_since + THREAD_IDLE - now)
                else:
                    idle_since = None
                self._cond.wait(None if wait == math.inf else max(0.0, min(wait, threading.TIMEOUT_MAX)))
            batch = self._ready.popleft()
            queued = self._queued
            for ev in batch.events:
                queued[ev.etype] -= 1
            batch.taken = self._clock()
            self._inflight[batch.seq] = batch  # in the order taken: the first is out longest
            self._sending[threading.get_ident()] = batch.seq
            if self._ready and block:  # more wait with the limit full: the jump may come now, with its threads
                self._start_worker()
            return batch

    def _observe(self, method: str, events: int, nbytes: int, status: int | None,
                 error: BaseException | None, seconds: float) -> None:
        """The exporter's observer: one HTTP answer to one of this batcher's threads feeds the
        in-flight limit; a grown limit starts a thread and wakes one waiting."""
        who = threading.get_ident()
        signal = signal_of(status, bool(getattr(error, "retryable", False)), self.exporter.retry)
        with self._cond:
            if who not in self._sending:  # not a request of ours (the exporter used directly)
                return
            if signal is not Signal.HEALTHY:
                self._last_failure = summary.failure(status, error)
            was_paused = self._flow.paused
            # room to grow only if the limit is what holds batches back: all its slots in use
            limited = len(self._ready) if len(self._sending) >= self._flow.limit else 0
            grew = self._flow.answered(who, self._clock() - seconds, seconds, signal, limited)
            if grew or (was_paused and not self._flow.paused):
                self._wake_senders()

    def _held_long(self) -> bool:
        """Lock held: a server's wait holds batches back longer than a flush may wait (the retry
        budget, or until the shutdown deadline)."""
        left = self._flow.resumes() - self._clock()
        return left > 0 and left > min(self.exporter.retry.budget, self._stop_at - time.monotonic())

    def _held_back(self) -> list[int]:
        """Lock held: while ``_held_long``, the ready batches whose flushes are not yet released
        (they are released as not delivered; the batches stay queued)."""
        if not self._ready or not self._held_long():
            return []
        seqs = [b.seq for b in self._ready if b.seq > self._released]
        if seqs:
            self._released = seqs[-1]
        return seqs

    def _released_waiting(self, upto: int) -> bool:
        """Lock held: a batch up to ``upto`` whose flushes a server's wait released (``_held_back``)
        is still queued or in flight: a flush made since saw it as settled, yet it is not delivered."""
        last = min(upto, self._released)
        return any(b.seq <= last for b in self._ready) or any(seq <= last for seq in self._inflight)

    def _wake_senders(self) -> None:
        """Lock held: threads for the room under the limit, and wake as many waiting ones."""
        room = self._flow.limit - len(self._inflight)
        if self._ready and room > 0 and not self._flow.paused:
            self._start_worker()
            self._cond.notify(min(room, len(self._ready)))

    def _run(self) -> None:
        workers = self._workers  # this thread's list (a forked child starts a new one)
        try:
            while True:
                try:
                    batch = self._next_batch(block=True)
                    if batch is None:
                        return
                    if batch is _REFILL:
                        self._refill(wait=True)
                        continue
                    self._deliver(batch)
                except Exception:  # pragma: no cover - _deliver guards itself; never let the thread die
                    self._notifier.log.warn("delivery_thread", 0, "vwo_otel delivery thread error; it keeps running",
                                            exc_info=True)
                    time.sleep(0.05)
        finally:  # ended (shutdown) or died: ``_start_worker`` starts another when one is needed
            with self._cond:
                if threading.current_thread() in workers:
                    workers.remove(threading.current_thread())

    def _drain_inline(self, deadline: float) -> None:
        """Deliver due batches on this thread, one at a time, by ``deadline`` (no request or
        retry past it); a server's wait that ends before it is waited out."""
        while time.monotonic() < deadline:
            batch = self._next_batch(block=False)
            if batch is not None:
                self._deliver(batch, None if deadline == math.inf else deadline)
                continue
            with self._cond:
                left = self._flow.resumes() - self._clock()
                if not self._ready or left <= 0 or time.monotonic() + left > deadline:
                    return
                self._cond.wait(left)

    def _deliver(self, batch: Batch, deadline: float | None = None) -> None:
        events = batch.events
        wait = 0.0
        cpu = time.thread_time()
        try:
            events = in_send_order(self.exporter, self.realtime, events)
            outcomes = send(self.exporter, self.realtime, events, deadline)
        except Exception as exc:  # a bug or odd input must not kill the delivery thread
            settled = self.backlog.settle(events, None)
            settled.report = salvage(self.exporter, self.realtime, events, exc, self._notifier.log)
        else:
            wait = server_wait(outcomes)
            settled = self.backlog.settle(events, outcomes)
        outcomes, kept = settled.report, settled.kept
        delivered = sum(len(o.events) for o in outcomes if o.ok)
        cpu = time.thread_time() - cpu
        with self._cond:
            self._flow.spent(cpu)
            mine = self._inflight.pop(batch.seq, None) is not None
            who = threading.get_ident()
            self._sending.pop(who, None)
            self._flow.done(who)
            if wait:
                self._flow.hold(self._clock() + wait)
            back = settled.back if mine else []
            if back:  # a server's wait holds them and no backlog keeps them: first in the queue again
                self._ready.appendleft(Batch(batch.seq, back))
                for ev in back:
                    self._queued[ev.etype] += 1
            held = self._held_back()
            self._wake_senders()
            if mine:
                self._size -= len(events) - len(back)
                if self._count_bytes:
                    self._bytes -= sum(ev.nbytes() for ev in events) - sum(ev.nbytes() for ev in back)
                self.counts["delivered"] += delivered
                self.counts["failed"] += len(events) - delivered - kept
                if self._blocked:
                    self._room.notify_all()
        if not mine:  # already reported as shutdown_in_flight when shutdown's deadline passed
            logger.info("vwo_otel: a request unanswered at the shutdown deadline finished late: "
                        "%d of %d event(s) delivered", delivered, len(events))
            return
        if wait:
            self._notifier.log.warn("server_wait", kept, "vwo_otel: VWO asked for a pause of %.0f s (Retry-After, "
                                    "capped at RetryPolicy.max_retry_after); no request goes out until then and "
                                    "the events wait (%d of this batch)", wait, kept)
        for seq in held:
            self._notifier.abandon(seq, seq)
        if settled.refill:
            self._refill()  # room freed: before the flushes waiting on this batch are released
        if kept and not outcomes:
            self._notifier.abandon(batch.seq, batch.seq)  # nothing to report; waiting flushes see it undelivered
        else:
            self._notifier.settled(batch.seq, outcomes, kept)
