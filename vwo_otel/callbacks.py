"""Runs ``flush_callback(err, events)`` on a thread of its own, so a slow or raising
callback never holds up delivery, and settles the waits of ``flush_events``/``force_flush``."""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Sequence
from typing import Callable

from .config import FlushCallback
from .events import VWOEvent
from .results import EventsDropped, Outcome

logger = logging.getLogger("vwo_otel")


class FlushTicket:
    """One waiting flush: done once every batch up to ``target`` has been settled."""

    __slots__ = ("start", "target", "ok", "done")

    def __init__(self, start: int, target: int) -> None:
        self.start, self.target, self.ok = start, target, True
        self.done = threading.Event()

    def wait(self, timeout: float | None) -> bool:
        """True when everything it covered was delivered within ``timeout`` seconds."""
        return self.done.wait(timeout) and self.ok


class Notifier:
    """Delivers results to the user's callback in the order batches settled."""

    def __init__(self, callback: FlushCallback | None, encode: Callable[[Sequence[VWOEvent]], list[dict]],
                 drop_report_limit: int) -> None:
        self._callback = callback
        self._encode = encode
        self._drop_limit = drop_report_limit
        self.after_fork()

    def after_fork(self) -> None:
        """Fresh state (also used in a forked child: the parent's results are the parent's)."""
        self._cond = threading.Condition()
        self._items: deque[tuple[int, bool, list[Outcome]]] = deque()
        self._drops: dict = {}  # reason -> (listed records, count not listed)
        self._tickets: list[FlushTicket] = []
        self._settled = 0  # highest batch sequence whose callbacks have run
        self._thread: threading.Thread | None = None
        self._closed = False

    # called by the batcher -------------------------------------------------------
    def settled(self, seq: int, outcomes: list[Outcome]) -> None:
        """Batch ``seq`` is done; its callbacks run next, then waiting flushes are released."""
        with self._cond:
            self._items.append((seq, all(o.ok for o in outcomes), outcomes))
            inline = self._wake()
        if inline:
            self._drain()

    def dropped(self, reason: str, events: Sequence[VWOEvent]) -> None:
        """Events dropped before any request; reported to the callback as ``EventsDropped``."""
        with self._cond:
            listed, unlisted = self._drops.get(reason, ([], 0))
            room = max(0, self._drop_limit - len(listed))
            listed.extend(events[:room])
            self._drops[reason] = (listed, unlisted + max(0, len(events) - room))
            inline = self._wake()
        if inline:
            self._drain()

    def ticket(self, target: int) -> FlushTicket:
        """A wait for every batch up to ``target`` (already settled ones count as done)."""
        with self._cond:
            t = FlushTicket(self._settled, target)
            if target <= self._settled:
                t.done.set()
            else:
                self._tickets.append(t)
            return t

    def close(self, timeout: float) -> bool:
        """Run what is still waiting (bounded by ``timeout``) and stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            return not thread.is_alive()
        self._drain()
        return True

    # the thread ---------------------------------------------------------------------
    def _wake(self) -> bool:
        """Start or wake the thread; True when the caller must run callbacks inline
        (after close, or when the interpreter refuses new threads at exit)."""
        if self._closed:
            return True
        if self._thread is None:
            try:
                thread = threading.Thread(target=self._run, name="vwo_otel-callbacks", daemon=True)
                thread.start()
            except RuntimeError:
                return True
            self._thread = thread
        self._cond.notify()
        return False

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._items or self._drops or self._closed):
                    self._cond.wait()
                if self._closed and not (self._items or self._drops):
                    return
            self._drain()

    def _drain(self) -> None:
        while True:
            with self._cond:
                drops, self._drops = self._drops, {}
                item = self._items.popleft() if self._items else None
            if not drops and item is None:
                return
            for reason, (listed, unlisted) in drops.items():
                total = len(listed) + unlisted
                note = f" ({unlisted} not listed)" if unlisted else ""
                logger.warning("vwo_otel dropped %d VWO event(s): %s%s", total, reason, note)
                self._call(EventsDropped(f"{total} event(s) dropped: {reason}{note}", reason=reason),
                           self._encode(listed))
            if item is not None:
                seq, ok, outcomes = item
                for outcome in outcomes:
                    if outcome.error is not None:
                        logger.warning("VWO batch of %d event(s) failed: %s", len(outcome.events), outcome.error)
                    self._call(outcome.error, outcome.events)
                self._settle(seq, ok)

    def _call(self, err: BaseException | None, events: list[dict]) -> None:
        if self._callback is None:
            return
        try:
            self._callback(err, events)
        except Exception:  # a user's callback must never stop delivery
            logger.exception("flush_callback raised; delivery continues")

    def _settle(self, seq: int, ok: bool) -> None:
        with self._cond:
            self._settled = max(self._settled, seq)
            keep = []
            for t in self._tickets:
                if t.start < seq <= t.target and not ok:
                    t.ok = False
                if self._settled >= t.target:
                    t.done.set()
                else:
                    keep.append(t)
            self._tickets = keep
