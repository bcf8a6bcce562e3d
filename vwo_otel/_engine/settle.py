"""Runs ``flush_callback(err, events)`` on a thread of its own, so a slow or raising
callback never holds up delivery, and settles the waits of ``flush_events``/``force_flush``.

Failures and drops are logged when they happen (on the delivery or emitting thread, not
the callback thread, so a stuck callback cannot hide them), through ``LogLimiter``: at
most one warning per kind every ``LOG_INTERVAL`` seconds, with what was held back summed
into the next one, so a long outage or a full queue cannot flood the log. Drops reach the
callback coalesced, at most one ``EventsDropped`` per reason every ``DROP_REPORT_DELAY``.

No result is ever skipped: when the callback falls behind by ``MAX_HELD_RESULTS`` events,
the delivery threads wait for it (backpressure), the queue fills, and the queue's bound
then drops new events upstream, each drop reported.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..config import FlushCallback
from ..errors import EventsDropped, Outcome
from ..event import VWOEvent
from ..hints import QUEUE_FULL, hint
from .signals import quiet

logger = logging.getLogger("vwo_otel")

#: Seconds between two warnings of the same kind (drops by reason, failures by error).
LOG_INTERVAL = 10.0
#: Drops are gathered this long (from the first) into one ``EventsDropped`` per reason.
DROP_REPORT_DELAY = 0.5
#: Results (events, about 450 B each as wire dicts) that may wait for a callback that is not
#: keeping up; past this, delivery threads wait until the callback catches up (internal; tests
#: lower it). A flush asked for from inside the callback lifts the wait, so it cannot deadlock.
MAX_HELD_RESULTS = 50_000


@dataclass(slots=True)
class _Held:
    """One ``LogLimiter`` key: when it was last logged and what was held back since."""

    logged_at: float
    reports: int = 0
    events: int = 0
    last: tuple[str, tuple[object, ...]] = ("", ())  # the last held-back message and its arguments


class LogLimiter:
    """At most one warning per ``interval`` seconds per key; what it holds back is counted
    and summed into the next warning of that key, or written by ``flush`` (at shutdown)."""

    def __init__(self, interval: float | None = None) -> None:
        self.interval = LOG_INTERVAL if interval is None else interval
        self._lock = threading.Lock()
        self._state: dict[object, _Held] = {}

    def warn(self, key: object, events: int, msg: str, *args: object, exc_info: bool = False) -> bool:
        """Log ``msg % args`` unless ``key`` was logged less than ``interval`` s ago; True if logged."""
        now = time.monotonic()
        with self._lock:
            st = self._state.get(key)
            if st is not None and now - st.logged_at < self.interval:
                st.reports += 1
                st.events += events
                st.last = (msg, args)
                return False
            self._state[key] = _Held(now)
        if st is not None and st.reports:
            msg += " [plus %d similar warning(s) covering %d event(s) in the last %.0f s, not logged one by one]"
            args = (*args, st.reports, st.events, now - st.logged_at)
        logger.warning(msg, *args, exc_info=exc_info)
        return True

    def flush(self) -> None:
        """Log a summary of everything still held back (so a shutdown leaves the full tally)."""
        with self._lock:
            held = [(st.last, st.reports, st.events) for st in self._state.values() if st.reports]
            for st in self._state.values():
                st.reports = st.events = 0
        for (msg, args), reports, events in held:
            logger.warning("vwo_otel: %d more warning(s) covering %d event(s) were held back by log rate "
                           "limiting; the last one: " + msg, reports, events, *args)


class FlushTicket:
    """One waiting flush: done once every batch up to ``target`` has been settled (its
    callbacks ran), or only delivered when the flush was asked for from inside a callback.
    ``ok`` is already False at the start when events were dropped, or batches failed, that no
    earlier flush has answered False for. ``drops`` and ``failures`` count the dropped and the
    failed events it answers for: all of them up to its start, and the failures of the batches
    it covers that settle while it waits."""

    __slots__ = ("start", "target", "ok", "done", "delivery_only", "drops", "failures", "_told")

    def __init__(self, start: int, target: int, drops: int, failures: int,
                 told: Callable[[int, int], None]) -> None:
        self.start, self.target, self.ok = start, target, True
        self.done = threading.Event()
        self.delivery_only = False
        self.drops = drops
        self.failures = failures
        self._told = told

    def covers(self, seq: int) -> bool:
        """Batch ``seq`` is one this flush waits for."""
        return self.start < seq <= self.target

    def wait(self, timeout: float | None) -> bool:
        """True when everything it covered was delivered within ``timeout`` seconds (and
        nothing emitted before it was dropped or failed)."""
        done = self.done.wait(None if timeout is None else min(timeout, threading.TIMEOUT_MAX))
        if done and not self.ok:
            # its caller now knows of these drops and failures: later flushes need not repeat them
            self._told(self.drops, self.failures)
        return done and self.ok


class Watermark:
    """Batch sequence numbers settle out of order (several requests are in flight): ``mark``
    is the highest number up to which every batch has settled; later ones wait in ``above``."""

    __slots__ = ("mark", "above")

    def __init__(self) -> None:
        self.mark = 0
        self.above: dict[int, bool] = {}  # settled past the mark -> ok

    def advance(self, first: int, last: int, ok: bool) -> int:
        """Batches ``first``..``last`` settled (``ok`` or not); returns the new mark."""
        self.above.update(dict.fromkeys(range(max(first, self.mark + 1), last + 1), ok))
        while self.mark + 1 in self.above:
            self.mark += 1
            del self.above[self.mark]
        return self.mark

    def all_ok(self, upto: int) -> bool:
        """No batch settled early (past the mark, up to ``upto``) failed."""
        return all(ok for seq, ok in self.above.items() if seq <= upto)


@dataclass(slots=True)
class _Settled:
    """Batches ``first``..``last`` settled together (``ok`` if all were delivered); their
    callbacks run with ``outcomes`` (none for batches abandoned at shutdown), taken from the
    front as each is handed over."""

    first: int
    last: int
    ok: bool
    outcomes: deque[Outcome]

    def events(self) -> int:
        return sum(len(o.events) for o in self.outcomes)


@dataclass(slots=True)
class _Drops:
    """The drops of one reason gathered for one ``EventsDropped`` report."""

    listed: list[Any] = field(default_factory=list)  # ``VWOEvent``s, or dicts of records that were not one
    unlisted: int = 0  # dropped past the report's list limit: counted only
    note: str | None = None


class Notifier:
    """Delivers results to the user's callback in the order batches settled. ``inline``: no
    thread of its own; results run on the thread that settles them, drops wait for ``drain``
    (a flush, the close) so a full queue does not call back once per dropped event."""

    def __init__(self, callback: FlushCallback | None, encode: Callable[[Sequence[VWOEvent]], list[dict]],
                 drop_report_limit: int, inline: bool = False) -> None:
        self._callback = callback
        self._encode = encode
        self._drop_limit = drop_report_limit
        self._inline = inline
        self.after_fork()

    def after_fork(self) -> None:
        """Fresh state (also used in a forked child: the parent's results are the parent's)."""
        lock = threading.RLock()
        self._cond = threading.Condition(lock)  # the callback thread waits on it
        self._room = threading.Condition(lock)  # delivery threads wait on it while results pile up
        self._items: deque[_Settled] = deque()
        self._held = 0  # events in self._items
        self._drops: dict[str, _Drops] = {}  # by reason
        self._drops_due = math.inf  # when the gathered drops are reported
        self._dropped_total = 0  # events dropped so far (any reason)
        self._dropped_run = 0  # of those, how many were handed to the callback
        self._dropped_told = 0  # of those, how many a finished flush has answered False for
        self._failed_total = 0  # events reported failed so far
        self._failed_told = 0  # of those, how many a finished flush has answered False for
        self._tickets: list[FlushTicket] = []
        self._settled = Watermark()  # batches whose callbacks have run
        self._thread: threading.Thread | None = None
        self._draining = False  # one drainer at a time keeps callbacks ordered and never concurrent
        self._drainer: threading.Thread | None = None  # the thread running callbacks now
        self._delivered = Watermark()  # batches delivered (their callbacks may still be running)
        self._closed = False
        self.log = LogLimiter()

    def runs_callbacks(self, thread: threading.Thread) -> bool:
        """``thread`` runs (or is the thread that runs) ``flush_callback``: it must never wait
        for delivery to make room, since delivery may be waiting for it."""
        return thread is self._thread or thread is self._drainer

    @property
    def results_waiting(self) -> int:
        """Events whose results wait for the callback (read without the lock)."""
        return self._held

    # called by the batcher -------------------------------------------------------
    def settled(self, seq: int, outcomes: list[Outcome], kept: int = 0) -> None:
        """Batch ``seq`` is done; its callbacks run next, then waiting flushes are released.
        ``kept`` events of it wait on disk for a later try: not delivered, so flushes see it
        as not ok. Failures are logged here, on the delivery thread (rate-limited)."""
        failed = 0
        for o in outcomes:
            if o.error is not None:
                failed += len(o.events)
                err = o.error
                fix = hint(err)  # the same words `vwo-otel check` prints
                self.log.warn(("failed", type(err).__name__, getattr(err, "status", None)), len(o.events),
                              "VWO batch of %d event(s) failed: %s%s", len(o.events), err, f"; {fix}" if fix else "")
        ok = not kept and not failed
        with self._cond:
            if failed:  # the next flush answers False for them, unless one waiting now does
                self._failed_total += failed
                for t in self._tickets:
                    if t.covers(seq):
                        t.failures += failed
            item = _Settled(seq, seq, ok, deque(outcomes))
            self._items.append(item)
            self._held += item.events()
            self._release(seq, seq, ok, delivery=True)
            inline = self._wake()
            if not inline:
                self._wait_for_room()
        if inline:
            self._drain()

    def _wait_for_room(self) -> None:
        """Delivery thread, lock held: backpressure. Wait while more than ``MAX_HELD_RESULTS``
        events' results wait for the callback, unless the callback itself is waiting for a
        delivery (a flush from inside it), the notifier is closed, or no callback thread runs."""
        while (self._held > MAX_HELD_RESULTS and not self._closed and self._thread is not None
               and self._thread.is_alive() and threading.current_thread() is not self._drainer
               and not any(t.delivery_only for t in self._tickets)):
            self._room.wait()

    def abandon(self, first: int, last: int) -> None:
        """Batches ``first``..``last`` will never settle (their events were reported as dropped):
        release flushes waiting for them, as failed."""
        with self._cond:
            self._items.append(_Settled(first, last, False, deque()))
            self._release(first, last, False, delivery=True)
            inline = self._wake()
        if inline:
            self._drain()

    def dropped(self, reason: str, events: Sequence[Any], note: str | None = None) -> None:
        """Events dropped before any request: logged now (rate-limited) and reported to the
        callback as ``EventsDropped`` (gathered for ``DROP_REPORT_DELAY``). ``events`` are
        ``VWOEvent``s or, for records that could not become one, plain dicts."""
        n = len(events)
        if reason == "already_shutdown" and self.runs_callbacks(threading.current_thread()):
            # flush_callback itself emitted after shutdown: reporting that to it would call it again, forever
            self.log.warn(("dropped", reason), n, "vwo_otel dropped %d VWO event(s) flush_callback emitted after "
                          "shutdown: %s (counted in stats, not reported to it)", n, reason)
            return
        told = note or (QUEUE_FULL if reason == "queue_full" else None)  # the log's fix hint
        self.log.warn(("dropped", reason), n, "vwo_otel dropped %d VWO event(s): %s%s", n, reason,
                      f" ({told})" if told else "")
        with self._cond:
            self._dropped_total += n  # the next flush answers False
            entry = self._drops.get(reason)
            if entry is None:
                entry = self._drops[reason] = _Drops(note=note)
            room = self._drop_limit - len(entry.listed)
            if room >= n:
                entry.listed.extend(events)
            else:
                room = max(0, room)
                entry.listed.extend(events[:room])
                entry.unlisted += n - room
            if note:
                entry.note = note
            if self._inline and not self._closed:
                inline = False  # reported by the next drain (a flush, the close)
            elif self._drops_due == math.inf:  # first drop since the last report: schedule one
                # (after close too: an app that keeps emitting then gets one report per reason
                # every DROP_REPORT_DELAY, not one callback and a thread start per event)
                self._drops_due = time.monotonic() + DROP_REPORT_DELAY
                inline = self._wake()
            else:
                inline = False
        if inline:
            self._drain()

    def ticket(self, target: int) -> FlushTicket:
        """A wait for every batch up to ``target`` (already settled ones count as done)."""
        with self._cond:
            if self._drops and self._drops_due != math.inf:  # a flush also reports drops gathered so far
                self._drops_due = time.monotonic()
                self._cond.notify()
            # A sync flush from inside flush_callback cannot wait for callbacks (it runs in one):
            # it waits for delivery only.
            inside = self._drainer is threading.current_thread()
            watermark = self._delivered if inside else self._settled
            t = FlushTicket(watermark.mark, target, self._dropped_total, self._failed_total, self._told)
            t.delivery_only = inside
            # batches that settled early (out of order) failed, or events dropped or failed that
            # no flush answered for
            t.ok = (watermark.all_ok(target) and self._dropped_total == self._dropped_told
                    and self._failed_total == self._failed_told)
            if target <= watermark.mark:
                t.done.set()
            else:
                self._tickets.append(t)
                if inside:
                    self._room.notify_all()  # delivery threads must not wait for this callback now
            return t

    def _told(self, drops: int, failures: int) -> None:
        """A flush returned False to its caller covering the first ``drops`` dropped events and
        ``failures`` failed ones (all failures before it and those of its batches: a later flush
        still answers for a failure it did not cover, the count being less than the total)."""
        with self._cond:
            self._dropped_told = max(self._dropped_told, drops)
            self._failed_told = max(self._failed_told, failures)

    def close(self, timeout: float) -> bool:
        """Run what is waiting now (bounded by ``timeout``); the thread ends once nothing is left.
        Drops after this (an app still emitting) are reported as they gather, without the
        close waiting for them: an emitter that never stops would keep it waiting. If the
        callback is still busy after ``timeout``, says in the log how much it was not given."""
        with self._cond:
            self._closed = True
            if self._drops:
                self._drops_due = time.monotonic()  # what was gathered goes now
            self._cond.notify_all()
            self._room.notify_all()
            thread = self._thread
            target = self._dropped_total
            if thread is not None and thread is not threading.current_thread():
                self._cond.wait_for(lambda: self._caught_up(target) or not thread.is_alive(), timeout)
                if not self._caught_up(target) and thread.is_alive():
                    results = sum(item.events() for item in self._items)
                    drops = sum(len(e.listed) + e.unlisted for e in self._drops.values())
                    logger.warning("vwo_otel: flush_callback still busy after shutdown_timeout; results for %d "
                                   "event(s) and %d dropped event(s) not passed to it (failures and drops "
                                   "were logged above)", results, drops)
                    self.log.flush()
                    return False
        self._drain(target)
        self.log.flush()
        return True

    def _caught_up(self, dropped: int) -> bool:
        """Lock held: every result, and the first ``dropped`` drops, were handed to the callback
        (the thread may go on with later drops: an app still emitting keeps it draining)."""
        return not self._items and self._dropped_run >= dropped

    # the thread ---------------------------------------------------------------------
    def _wake(self) -> bool:
        """Start the callback thread if none is running (also after close, or after a callback
        killed it) and wake it (lock held); True when the caller must run callbacks inline
        because the interpreter refuses new threads (at exit)."""
        if self._inline:
            return True
        thread = self._thread
        if thread is None or not thread.is_alive():
            try:
                thread = threading.Thread(target=quiet(self._run), name="vwo_otel-callbacks", daemon=True)
                thread.start()
            except RuntimeError:
                return True
            self._thread = thread
        self._cond.notify()
        return False

    def _due(self) -> bool:
        """Something to run now, or closed with nothing left: the thread ends (lock held)."""
        if self._draining:
            return False
        if self._items:
            return True
        if self._drops:
            return time.monotonic() >= self._drops_due
        return self._closed

    def _run(self) -> None:
        try:
            self._loop()
        finally:  # delivery threads waiting for this thread to make room (or a close) must not wait for a dead one
            with self._cond:
                self._room.notify_all()
                self._cond.notify_all()

    def _loop(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while not self._due():
                    wait = None
                    if self._drops and not self._draining:
                        wait = max(0.0, self._drops_due - time.monotonic())
                    cond.wait(wait)
                if self._closed and not (self._items or self._drops):
                    # gone for ``_wake`` now: a drop from here on starts a thread, even while this one is
                    # still alive (it only found this one alive, woke nothing and was never reported)
                    if self._thread is threading.current_thread():
                        self._thread = None
                    return
            try:
                self._drain()
            except Exception:  # pragma: no cover - _drain guards the callback; this is a last resort
                logger.exception("vwo_otel callback thread error; it keeps running")

    def drain(self) -> None:
        """Run what is waiting (results, drops) on this thread, in order: an ``inline`` notifier's flush."""
        self._drain()

    def _drain(self, upto: int | None = None) -> None:
        """Run what is waiting, in order; one drainer at a time (others return at once). With
        ``upto``: stop once the results and the first ``upto`` drops are handed over (a close,
        while an app may go on emitting drops)."""
        with self._cond:
            if self._draining:
                return  # another thread is draining; it picks up what we queued
            self._draining = True
            self._drainer = threading.current_thread()
        try:
            while self._run_next(upto):
                pass
        except BaseException:  # Ctrl-C in a callback run on the main thread: what is left stays queued
            with self._cond:
                self._stop_draining()
            raise

    def _run_next(self, upto: int | None = None) -> bool:
        """Hand the callback one thing: the drops gathered for one reason, or the next result
        of the oldest settled batch. A batch leaves the queue (releasing its flushes) once all
        its results were handed over, so an interrupted drain loses and repeats nothing.
        False when nothing is left, or with ``upto``, once the results and the first ``upto``
        drops are handed over (draining stops under the same lock)."""
        outcome: Outcome | None = None
        with self._cond:
            if upto is not None and not self._items and self._dropped_run >= upto:
                self._stop_draining()
                return False
            # drops when due (gathered for DROP_REPORT_DELAY, also while results keep coming; a
            # flush or the close makes them due now); an inline notifier's drain reports them all
            if self._drops and (self._inline or time.monotonic() >= self._drops_due):
                reason = next(iter(self._drops))
                entry = self._drops.pop(reason)
                if not self._drops:
                    self._drops_due = math.inf
            elif self._items:
                item = self._items[0]
                if not item.outcomes:
                    self._items.popleft()
                    self._release(item.first, item.last, item.ok, delivery=False)
                    self._cond.notify_all()  # a close waits for the results handed over
                    return True
                outcome = item.outcomes.popleft()
                self._held -= len(outcome.events)
                if self._held <= MAX_HELD_RESULTS:
                    self._room.notify_all()
            else:
                self._stop_draining()
                return False
        if outcome is not None:
            self._call(outcome.error, outcome.events)
            return True
        total = len(entry.listed) + entry.unlisted
        unlisted = f"{entry.unlisted} not listed" if entry.unlisted else None
        detail = "".join(f" ({x})" for x in (entry.note, unlisted) if x)
        self._call(EventsDropped(f"{total} event(s) dropped: {reason}{detail}", reason=reason, count=total),
                   _safe_encode(self._encode, entry.listed))
        with self._cond:
            self._dropped_run += total
            self._cond.notify_all()  # a close waits for the drops there at its start
        return True

    def _stop_draining(self) -> None:
        """Lock held: another drainer may start (and a waiting one, or a close, is woken)."""
        self._draining = False
        self._drainer = None
        self._cond.notify_all()

    def _call(self, err: BaseException | None, events: list[dict]) -> None:
        if self._callback is None:
            return
        try:
            self._callback(err, events)
        except BaseException as exc:  # a user's callback (even one calling sys.exit) must never stop delivery
            if isinstance(exc, KeyboardInterrupt) and threading.current_thread() is threading.main_thread():
                raise  # Ctrl-C while a callback ran inline on the main thread (at exit): let it through
            self.log.warn("callback_raised", len(events), "flush_callback raised; delivery continues", exc_info=True)

    def _release(self, first: int, last: int, ok: bool, *, delivery: bool) -> None:
        """Batches ``first``..``last`` are delivered (``delivery``) or their callbacks ran:
        complete the flush tickets waiting for that (called with the lock held)."""
        level = (self._delivered if delivery else self._settled).advance(first, last, ok)
        keep = []
        for t in self._tickets:
            if t.delivery_only == delivery:
                if not ok and t.start < last and first <= t.target:
                    t.ok = False
                if level >= t.target:
                    t.done.set()
                    continue
            keep.append(t)
        self._tickets = keep


def _safe_encode(encode: Callable[[Sequence[VWOEvent]], list[dict]], items: Sequence[Any]) -> list[dict]:
    """Wire dicts of dropped items; dicts pass through, and an event the encoder cannot
    handle is shown field by field instead of breaking the report."""
    try:
        if not any(isinstance(x, dict) for x in items):
            return encode(items)
    except Exception:
        pass
    out = []
    for x in items:
        if isinstance(x, dict):
            out.append(x)
            continue
        try:
            out.extend(encode([x]))
        except Exception:
            out.append(x.fields() if isinstance(x, VWOEvent) else {"event": repr(x)})
    return out
