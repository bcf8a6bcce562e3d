"""The on-disk backlog (``Spool``, see ``backlog`` for the interface the batcher uses): a
copy of the queue in SQLite (WAL) so a crash or ``kill -9`` loses nothing that was committed.
Events are written when queued, deleted once settled, and dead processes' files are adopted.

Durability policy (``commit_interval``):

- ``> 0`` (default 0.05 s): a background thread commits every ``commit_interval``
  seconds (group commit). ``kill -9`` loses at most the events queued in the last
  interval; the emitting thread only appends to an in-memory list.
- ``0``: every event is committed before the call that emitted it returns.
  ``kill -9`` loses nothing emitted; each event costs a SQLite commit on the app's thread.

Commits use WAL with ``synchronous=NORMAL``: a committed event survives the process
dying at any point; after a power loss or OS crash the last commits before the most
recent WAL checkpoint can be lost.

Delivery is at-least-once across crashes: events of requests that VWO accepted just
before the crash, before their deletion was committed, are sent again by the next process
(at most ``max_concurrent_requests`` requests, plus with group commit the deletions of the
last interval).

Each event ends as exactly one of: delivered, reported failed, or still on disk.

- A batch whose retries ran out on a transient failure (no answer, 408, 429, 5xx) is not
  reported: its events wait on disk ("parked") and go back in the queue after a backoff,
  and at once when a later request is accepted; a process that ends keeps them for the next
  start. An event older than ``max_age`` (by its own time), one that would take the parked
  events' data past ``max_bytes``, and every one while the disk refuses writes (parking
  would only hold it in memory) is reported failed instead, once its row is off the disk.
- With the memory queue full, new events are kept only on disk ("spilled") and are read
  back, oldest first, on a delivery thread as room frees. Spilled and parked events together
  stay within ``max_bytes``; past it, or while the disk refuses writes, a full queue drops as
  without a spool. One spilled longer than ``max_age`` is reported when read back.
- A failed event is reported only once its row is off the disk; if the disk refuses the
  deletion (full, read-only) the event stays on disk, unreported, for the next start.
- The disk refusing a commit (full, read-only) is noticed at once: from the first failed
  commit until one succeeds nothing spills or parks, and ``refuse`` says so to the gateway.
  At shutdown, what the disk never took is reported (``EventsDropped("shutdown_timeout")``)
  without waiting for another commit to fail, everything within the shutdown deadline (a
  commit still running then is interrupted), and the log says how many events stay on disk.
- A disk already full at start costs nothing but the spool: events stay in memory until it
  takes writes again, and dead processes' files are still delivered, in place.

Replay: files of processes that are gone (see ``spoolfile``) are adopted by a background
thread and delivered in place, file by file, each oldest first, read in pages as the queue
has room (never whole into memory); their rows are deleted as their events settle and the
file is removed once all have. Only this process's own are adopted (``spoolowner``: the same
OS user, account, endpoint, sdk key and sending mode); the others are left alone and said.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .. import checks
from ..errors import Outcome, VWODeliveryError
from ..event import VWOEvent
from . import spoolfile, spoolowner
from .backlog import Closed, Parking, Settled, Taken, server_wait
from .settle import LogLimiter
from .signals import quiet
from .spoolfile import DISK_RESERVE, RETRY_INTERVAL, SCHEMA_VERSION, Orphan, OwnFile

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["DEFAULT_MAX_AGE", "DEFAULT_MAX_BYTES", "DISK_RESERVE", "RETRY_INTERVAL", "SCHEMA_VERSION", "Spool"]

logger = logging.getLogger("vwo_otel")

DEFAULT_MAX_AGE = 86400.0
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
#: Rows of a dead process's file read at a time (the disk lock is let go between pages).
PAGE = 1000



@dataclass(slots=True)
class _Run:
    """Consecutive row ids ``first``..``last`` of spilled events in this process's file."""

    first: int
    last: int


class _Reading:
    """What ``Spool.take`` set aside: parked events (in memory), spilled runs and rows of
    adopted files, read by ``read()``."""

    __slots__ = ("spool", "parked", "runs", "orphans", "count")

    def __init__(self, spool: Spool, parked: list[VWOEvent], runs: list[_Run],
                 orphans: list[tuple[Orphan, int]]) -> None:
        self.spool, self.parked, self.runs, self.orphans = spool, parked, runs, orphans
        self.count = len(parked) + sum(r.last - r.first + 1 for r in runs) + sum(n for _, n in orphans)

    def read(self) -> Taken:
        return self.spool._read(self)


class Spool:
    """This process's spool file in ``directory``; see the module docstring for guarantees.
    ``max_age`` (seconds) and ``max_bytes`` bound what waits on disk for VWO to answer again."""

    durable = True

    def __init__(self, directory: str | os.PathLike[str], *, commit_interval: float = 0.05,
                 max_age: float = DEFAULT_MAX_AGE, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.commit_interval = checks.SPOOL_COMMIT_INTERVAL.check("commit_interval", commit_interval)
        self.max_age = checks.SPOOL_MAX_AGE.check("max_age", max_age)
        self.max_bytes = checks.SPOOL_MAX_BYTES.check("max_bytes", max_bytes)
        if not isinstance(directory, (str, os.PathLike)):
            raise TypeError(f"spool must be a directory path, got {type(directory).__name__}")
        self.directory = os.fspath(directory)
        os.makedirs(self.directory, exist_ok=True)
        spoolowner.check_directory(self.directory)
        self._owner: spoolowner.Owner | None = None  # whose events these are: ``open`` says
        self._left = spoolowner.LeftAlone(self.directory)
        self._reset()
        self._file.create(at_start=True)

    @property
    def path(self) -> str:
        """This process's file."""
        return self._file.path

    def __repr__(self) -> str:
        return (f"Spool({self.directory!r}, commit_interval={self.commit_interval:g}, max_age={self.max_age:g}, "
                f"max_bytes={self.max_bytes})")

    def _reset(self) -> None:
        self._file = OwnFile(self.directory, self._owner)
        self._add = self._file.added.append  # the hot path's one call
        self._db_lock = threading.Lock()  # the disk: connections and commits
        self._lock = threading.Lock()  # what waits: runs, adopted files, parked events, counters
        self._ids: dict[int, int] = {}  # id(event) -> its row in this file, for events not yet settled
        self._foreign: dict[int, tuple[Orphan, int]] = {}  # id(event) -> its adopted file and row
        self._next = 0
        #: What waits to be read back, in the order it came: spilled runs and adopted files.
        self._waits: deque[_Run | Orphan] = deque()
        self.waiting = 0  # events in ``_waits`` and being read back
        self.entered = 0
        self.left = 0
        self._spilled_bytes = 0
        self._orphans: list[Orphan] = []
        self._parked = Parking()  # events whose retries ran out, with their rows' bytes
        self._log = LogLimiter()
        self._stop = threading.Event()
        self._writer: threading.Thread | None = None
        self._closing = False  # close began: nothing more spills, parks or is adopted
        self._closed = False
        self._kept = 0

    def open(self, exporter: object) -> None:
        """The engine's exporter: its retry policy decides which failures park and the wait
        between rounds; its ``destination`` is the owner this file records and the only one
        whose dead processes' files this process adopts (none without one)."""
        retry = getattr(exporter, "retry", None)
        if retry is not None:
            self._parked.retry = retry
        self._owner = self._file.owner = spoolowner.of(exporter)

    def after_fork(self) -> list[object]:
        """In a forked child: a file of its own. The parent's connections are returned to be
        kept referenced, never used or closed here; the child's copies of the parent's lock fds
        are closed (the parent keeps the locks), so its files can be adopted once it is gone. A
        spool closed before the fork stays closed (its fd numbers may be other files' by now)."""
        if self._closed:
            return []
        kept: list[object] = [o.conn for o in self._orphans]
        if self._file.conn is not None:
            kept.append(self._file.conn)
        for fd in [self._file.lock_fd, *(o.lock_fd for o in self._orphans)]:
            if fd is not None:
                os.close(fd)
        retry = self._parked.retry
        self._reset()
        self._parked.retry = retry
        self._file.create()
        return kept

    # -- the emitting thread (called with the batcher's lock held) ------------------------
    def put(self, event: VWOEvent) -> None:
        """A new event entered the memory queue: its row is written by the next group commit
        (or now, with ``commit_interval`` 0)."""
        self._next += 1
        self._ids[id(event)] = self._next
        self._add((self._next, time.time(), event, None))
        if self.commit_interval == 0:
            self.commit()
        elif self._writer is None:
            self._start_writer()

    def spill(self, event: VWOEvent) -> bool:
        """Keep a new event only on disk (the batcher drops its reference); False if the spool
        refuses: closing, its disk refusing writes, or ``max_bytes`` of spilled and parked events
        reached. Never touches the disk unless ``commit_interval`` is 0."""
        if self._closing or self._file.failing:
            return False
        text = spoolfile.encode(event)
        with self._lock:
            if self._spilled_bytes + self._parked.nbytes + len(text) > self.max_bytes:
                return False
            self._next += 1
            row = self._next
            self._add((row, time.time(), event, text))
            self._spilled_bytes += len(text)
            last = self._waits[-1] if self._waits else None
            if isinstance(last, _Run) and last.last == row - 1:
                last.last = row
            else:
                self._waits.append(_Run(row, row))
            self.waiting += 1
            self.entered += 1
        if self.commit_interval == 0:
            self.commit()
        elif self._writer is None:
            self._start_writer()
        return True

    # -- back into the queue -------------------------------------------------------------
    def take(self, limit: int, batch: int) -> _Reading | None:
        """Set aside up to ``limit`` events due to go back into the queue (caller holds the
        batcher's lock; no disk access): parked ones when their retry is due (``batch`` of them
        as a probe, all once VWO accepted a request again), then what waits, oldest first."""
        with self._lock:
            parked = self._parked.take(limit, batch, time.monotonic())
            limit -= len(parked)
            runs: list[_Run] = []
            orphans: list[tuple[Orphan, int]] = []
            while limit > 0 and self._waits:
                first = self._waits[0]
                if isinstance(first, _Run):
                    n = min(limit, first.last - first.first + 1)
                    runs.append(_Run(first.first, first.first + n - 1))
                    first.first += n
                    done = first.first > first.last
                else:
                    n = min(limit, first.unread - first.claimed)
                    first.claimed += n
                    orphans.append((first, n))
                    done = first.claimed >= first.unread
                if done:
                    self._waits.popleft()
                limit -= n
        reading = _Reading(self, parked, runs, orphans)
        return reading if reading.count else None

    def _read(self, reading: _Reading) -> Taken:
        """The events ``take`` set aside (on a delivery thread or a waiting flush, never the
        app's); each keeps its row until settled. Spilled ones past ``max_age`` leave the disk
        as expired."""
        taken = Taken(list(reading.parked))
        nbytes = 0
        if reading.runs:
            oldest = time.time() - self.max_age
            with self._db_lock:
                if self._closed:  # shut down meanwhile: they stay on disk for the next start
                    return Taken(list(reading.parked))
                self._write()  # rows spilled in the last commit interval reach the disk first
                unwritten = {row[0]: row for row in self._file.unwritten}  # a failing disk: still in memory
                for run in reading.runs:
                    found = self._select(run)
                    for row in range(run.first, run.last + 1):
                        text, mem = found.get(row), unwritten.get(row)
                        try:
                            ev = mem[2] if text is None and mem else spoolfile.decode(text)
                        except Exception:  # a row that is not an event (or was never written): left on disk
                            logger.error("vwo_otel spool %s: spilled row %d holds no usable event; it is kept on disk",
                                         self._file.path, row)
                            continue
                        nbytes += len(text or (mem and mem[3]) or spoolfile.encode(ev))
                        if ev.time < oldest:
                            self._file.acked.append(row)
                            taken.expired.append(ev)
                        else:
                            self._ids[id(ev)] = row
                            taken.events.append(ev)
                if taken.expired:
                    self._write()
        first = math.inf
        for orphan, n in reading.orphans:
            for start in range(0, n, PAGE):
                with self._db_lock:
                    try:
                        if self._closed:
                            return taken  # shut down meanwhile: they stay on disk for the next start
                        rows = orphan.read(min(PAGE, n - start))
                        with self._lock:
                            orphan.outstanding += len(rows)
                    except sqlite3.Error as exc:
                        logger.error("vwo_otel spool file %s: could not read it (%s); what is left in it stays for a "
                                     "later start", orphan.path, exc)
                        with self._lock:
                            orphan.stuck += orphan.unread
                            orphan.unread = 0
                        break
                for row, queued_at, ev in rows:
                    self._foreign[id(ev)] = (orphan, row)
                    taken.events.append(ev)
                    first = min(first, queued_at)
        with self._lock:
            for orphan, n in reading.orphans:
                orphan.claimed -= n
            moved = reading.count - len(reading.parked)
            self.waiting -= moved
            self.left += moved
            self._spilled_bytes -= nbytes
        if not reading.parked and not reading.runs and first != math.inf:
            taken.queued_at = first
        return taken

    def _select(self, run: _Run) -> dict[int, str]:
        """Rows ``run`` holds on disk (caller holds the disk lock)."""
        if self._file.conn is None:
            return {}
        try:
            return dict(self._file.conn.execute("SELECT id, event FROM events WHERE id BETWEEN ? AND ?",
                                           (run.first, run.last)).fetchall())
        except sqlite3.Error as exc:
            logger.error("vwo_otel spool %s: could not read spilled events back (%s); they stay on disk for the "
                         "next start", self._file.path, exc)
            return {}

    # -- the delivery thread -------------------------------------------------------------
    def settle(self, events: list[VWOEvent], outcomes: list[Outcome] | None) -> Settled:
        """A batch's answer (``None``: given up without one, e.g. dropped): delivered events
        leave the disk; those that failed transiently wait on disk (parked) unless the policy
        refuses them; failed events are reported only once off the disk."""
        if outcomes is None or sum(len(o.events) for o in outcomes) != len(events):
            self._release(events)
            return Settled(outcomes or [], 0, self._due_now())
        report: list[Outcome] = []
        kept = parked = i = 0
        accepted = False
        why: VWODeliveryError | None = None
        for o in outcomes:
            mine = events[i:i + len(o.events)]
            i += len(o.events)
            if o.error is None:
                self._release(mine)
                report.append(o)
                accepted = True
                continue
            failed = mine
            if o.error.retryable:  # a later try may get past it (the retry policy says so)
                failed = self._park(mine)
                parked += len(mine) - len(failed)
                why = o.error
                if failed:
                    o.error.args = (f"{o.error.args[0]} (not kept on disk: past the spool's max_age or max_bytes, "
                                    "or the disk refuses writes)",)
            reportable = self._forget(failed) if failed else []
            kept += len(mine) - len(reportable)
            if len(reportable) == len(mine):
                report.append(o)
            elif reportable:
                ids = {id(ev) for ev in reportable}
                report.append(Outcome(o.error, [d for ev, d in zip(mine, o.events, strict=True) if id(ev) in ids]))
        with self._lock:  # VWO answers again: what waits on disk goes now; a server's wait puts it off
            self._parked.settled(accepted, parked, server_wait(outcomes), time.monotonic())
        if parked:
            self._log.warn("parked", parked, "vwo_otel: VWO did not take a batch within the retry budget (%s); its %d "
                           "event(s) wait on disk (spool) and are sent again when VWO answers", why, parked)
        return Settled(report, kept, self._due_now())

    def _due_now(self) -> bool:
        return bool(self.waiting) or time.monotonic() >= self._parked.due()

    def due(self) -> float:
        """When parked events are next due to be taken (monotonic; inf: none wait for a retry)."""
        return self._parked.due()

    def _park(self, events: list[VWOEvent]) -> list[VWOEvent]:
        """Keep events whose retries ran out on disk, to be sent again; returns those refused."""
        oldest = time.time() - self.max_age
        refused = []
        with self._lock:
            for ev in events:
                size = len(spoolfile.encode(ev))
                if (self._closing or self._file.failing or ev.time < oldest
                        or self._parked.nbytes + size > self.max_bytes):
                    refused.append(ev)
                else:
                    self._parked.add(ev, size)
        return refused

    def _release(self, events: Iterable[VWOEvent]) -> None:
        """These events are delivered (or reported dropped): their rows go."""
        ids, foreign = self._ids, self._foreign
        theirs = []
        for ev in events:
            row = ids.pop(id(ev), None)
            if row is not None:
                self._file.acked.append(row)
            elif (ref := foreign.pop(id(ev), None)) is not None:
                theirs.append(ref)
        if theirs:
            with self._lock:
                for orphan, row in theirs:
                    orphan.acked.append(row)
                    orphan.outstanding -= 1
        if self.commit_interval == 0:
            self.commit()

    def _forget(self, events: list[VWOEvent]) -> list[VWOEvent]:
        """Failed events leave the disk now; returns those that may be reported failed. An event
        whose row the disk will not delete stays on disk, unreported, for the next start."""
        own = {id(ev): self._ids.pop(id(ev), None) for ev in events}
        theirs = {i: ref for i, row in own.items() if row is None and (ref := self._foreign.pop(i, None)) is not None}
        with self._db_lock:
            self._file.acked.extend(row for row in own.values() if row is not None)
            for orphan, row in theirs.values():
                orphan.acked.append(row)
            self._write(inserts=not self._file.failing)  # a failing disk: only the deletions are tried
            stuck = {i for i, row in own.items() if row in self._file.undeleted}
            self._file.undeleted -= {own[i] for i in stuck}  # never deleted by this process: the row is its record
            stuck |= {i for i, (orphan, row) in theirs.items() if row in orphan.undeleted}
            with self._lock:
                for i, (orphan, row) in theirs.items():
                    orphan.outstanding -= 1
                    if i in stuck:
                        orphan.stuck += 1
                        orphan.undeleted.remove(row)
        if not stuck:
            return events
        logger.error("vwo_otel spool %s: %d failed event(s) could not be removed from disk (%s); they are not "
                     "reported now and are tried again by the next start", self._file.path, len(stuck),
                     self._file.last_error)
        return [ev for ev in events if id(ev) not in stuck]

    # -- the disk ------------------------------------------------------------------------
    def commit(self) -> bool:
        """Write what was added and delete what was settled, in one transaction; False if that
        failed (the rows and deletions are kept and tried again by the next commit)."""
        with self._db_lock:
            return self._write()

    def _write(self, inserts: bool = True) -> bool:
        """``commit`` with the disk lock held (``OwnFile.write``), then the adopted files."""
        if self._closed:  # the files are let go: what is settled now stays on disk (sent again)
            return not (self._file.added or self._file.unwritten)
        ok = self._file.write(inserts)
        self._let_go_of_done_orphans()
        return ok

    def _let_go_of_done_orphans(self) -> None:
        """Disk lock held: delete settled rows of adopted files; a file all of whose events
        settled is removed (or set aside, if it holds bad rows)."""
        for orphan in list(self._orphans):
            with self._lock:
                done = orphan.done
                if done:
                    self._orphans.remove(orphan)
            if done:
                orphan.finish()
            elif orphan.acked:
                orphan.commit()

    def _start_writer(self) -> None:
        try:
            writer = threading.Thread(target=quiet(self._run), name="vwo_otel-spool", daemon=True)
            writer.start()
        except RuntimeError:  # interpreter exiting: commit inline instead
            self.commit()
            return
        self._writer = writer

    def _run(self) -> None:
        while not self._stop.wait(max(self.commit_interval, RETRY_INTERVAL) if self._file.failing
                                  else self.commit_interval):
            self.commit()

    def pending_rows(self) -> int:
        """Events in this process's file now (for tests and stats)."""
        with self._db_lock:
            if self._file.conn is None:
                return 0
            return int(self._file.conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    # -- replay, the gateway, the end -----------------------------------------------------
    def adopt(self) -> int:
        """Take over the files of processes that are gone (a replay thread's call): their
        events wait here, to be read back as the queue has room. Returns how many."""
        if self._closing or self._owner is None:
            return 0
        orphans, left = spoolfile.adopt(self.directory, self._file.path, self._owner)
        self._left.saw(left, self._owner)
        with self._lock:
            if self._closing:  # shutting down meanwhile: left for a later start
                for orphan in orphans:
                    orphan.conn.close()
                    os.close(orphan.lock_fd)
                return 0
            for orphan in orphans:
                self._orphans.append(orphan)
                self._waits.append(orphan)
            n = sum(o.unread for o in orphans)
            self.waiting += n
            self.entered += n
        if orphans and self._writer is None:
            self._start_writer()  # settled rows of adopted files are deleted by the group commit
        if n:
            logger.info("vwo_otel: replaying up to %d event(s) from %d spool file(s) in %s", n, len(orphans),
                        self.directory)
        return n

    def refuse(self, held_bytes: int, nbytes: int) -> str | None:
        """Why the disk cannot take ``nbytes`` more bytes of events beside ``held_bytes`` held in
        memory (the gateway's admission: should VWO stop answering, all of it must fit within
        ``max_bytes``), or None. One request larger than that is taken when nothing else waits."""
        if self._closing or self._file.failing or self._file.conn is None:
            return "spool cannot write to disk"
        room = self.max_bytes - self._parked.nbytes - self._spilled_bytes
        if room < held_bytes + nbytes and not (held_bytes == 0 and room == self.max_bytes):
            return "spool full (VWO not answering)"
        return None

    def on_disk(self) -> int:
        """Events waiting on disk for later (parked, spilled, adopted); after close, what stayed."""
        return self._kept if self._closed else len(self._parked) + self.waiting

    def close(self, deadline: float, held: list[VWOEvent] | None = None) -> Closed:
        """Final commit and let go of the files, within ``deadline`` (monotonic; a commit still
        running then is interrupted): says what stays on disk for the next start and what the
        disk never took (to be reported; with a failing disk, without trying it again); what the
        queue still ``held`` is on disk or among those. Logs what stays. Idempotent."""
        self._stop.set()
        with self._lock:
            self._closing = True
        if not self._db_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            lost = [row[2] for row in [*self._file.unwritten, *self._file.added] if row[0] not in self._file.acked]
            logger.error("vwo_otel spool %s: the disk did not answer by the shutdown deadline", self._file.path)
            return Closed(0, lost, "the disk did not answer by the shutdown deadline")
        try:
            if self._closed:
                return Closed()
            conns = [c for c in [self._file.conn, *(o.conn for o in self._orphans)] if c is not None]

            def interrupt() -> None:
                for conn in conns:
                    conn.interrupt()

            watchdog = threading.Timer(max(0.0, deadline - time.monotonic()), interrupt)
            watchdog.daemon = True
            watchdog.start()
            try:
                self._write(inserts=not self._file.failing)  # failing: what the disk never took is lost now
                lost = [row[2] for row in self._file.unwritten]
                resent = len(self._file.undeleted)
                rows = self._file.count()
                kept = sum(orphan.finish() for orphan in self._orphans)
            finally:
                watchdog.cancel()
            self._closed = True
            if self._file.conn is not None:
                self._file.conn.close()
                if rows == 0:
                    spoolfile.try_remove(self._file.path)
            if self._file.lock_fd is not None:
                os.close(self._file.lock_fd)
        finally:
            self._db_lock.release()
        lost_rows = {row[0] for row in self._file.unwritten}
        spilled = sum(1 for run in self._waits if isinstance(run, _Run) for r in range(run.first, run.last + 1)
                      if r not in lost_rows)
        self._kept = max(0, rows - resent) + kept
        if self._kept:
            logger.warning("vwo_otel: %d undelivered event(s) (%d of them spilled from a full queue) stay in the "
                           "spool file(s) in %s for the next start", self._kept, spilled, self.directory)
        if resent:
            logger.warning("vwo_otel: %d settled event(s) could not be removed from the spool file(s) in %s (%s); "
                           "the next start sends them again", resent, self.directory, self._file.last_error)
        why = f"undelivered at shutdown and the spool could not keep them ({self._file.last_error})" if lost else ""
        return Closed(self._kept, lost, why)

