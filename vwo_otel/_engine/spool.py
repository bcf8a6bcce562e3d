"""An optional on-disk copy of the queue (SQLite, WAL) so a crash or ``kill -9`` loses
nothing that was committed: events are written when queued, deleted once settled, and a
process that finds a dead process's spool file in the directory delivers its events.

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
  start. An event older than ``max_age`` (by its own time), or one that would take the parked
  events' data past ``max_bytes``, is reported failed instead.
- With the memory queue full, new events are kept only on disk ("spilled": the batcher lets
  them go; ``spill`` never touches the disk on the app's thread unless ``commit_interval`` is
  0) and are read back, oldest first, on a delivery thread as room frees. Spilled and parked
  events together stay within ``max_bytes`` (past it, or with the disk failing, a full queue
  drops as without a spool); one spilled longer than ``max_age`` is reported when read back.
- A failed event is reported only once its row is off the disk; if the disk refuses the
  deletion (full, read-only) the event stays on disk, unreported, for the next start.
- At shutdown, unsettled events the disk could not take are reported
  (``EventsDropped("shutdown_timeout")``), and the log says how many stay on disk.

Each process writes its own file ``spool-<pid>-<token>.sqlite`` and holds an exclusive
``flock`` on ``<file>.lock`` for its lifetime; a file is adopted only by a process that
can take that lock, so live processes never read or send each other's events.

A row holds one event as the JSON object ``VWOEvent.fields()`` (read back with
``VWOEvent.from_fields``, which ignores keys it does not know), so adding a field needs no
new layout; ``PRAGMA user_version`` is the layout's version. A file of a version this code
cannot read is left alone; a row that is not a usable event is kept on disk (its file is
set aside as ``<file>.quarantine-<time>``, holding only such rows) and the others replay.
Any other error while adopting a file sets that file aside (``<file>.unadoptable-<time>``):
a spool directory never stops the app from starting.
"""

from __future__ import annotations

import fcntl
import glob
import json
import logging
import os
import secrets
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Callable
from urllib.request import pathname2url

from .. import checks
from ..event import DROP_PRIORITY, VWOEvent

logger = logging.getLogger("vwo_otel")

#: The layout ``PRAGMA user_version`` names: 1 = one JSON object per event. 0 is the layout
#: before versions, one column per field, still read so an upgrade replays older files.
SCHEMA_VERSION = 1
_SCHEMA = "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, queued_at REAL NOT NULL, event TEXT NOT NULL)"
_INSERT = "INSERT INTO events (id, queued_at, event) VALUES (?, ?, ?)"
_DELETE = "DELETE FROM events WHERE id = ?"
DEFAULT_MAX_AGE = 86400.0
DEFAULT_MAX_BYTES = 64 * 1024 * 1024


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(_SCHEMA)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    return conn


def _encode(event: VWOEvent) -> str:
    return json.dumps(event.fields(), separators=(",", ":"))


def _decode(row: Mapping[str, Any], version: int) -> VWOEvent:
    """The event a row holds; ``ValueError`` / ``TypeError`` / ``KeyError`` if it holds none."""
    fields = json.loads(row["event"]) if version else row
    if not isinstance(fields, Mapping):
        raise ValueError(f"not a JSON object: {row['event']!r}")
    event = VWOEvent.from_fields(fields)  # TypeError when a required field is missing
    if event.etype not in DROP_PRIORITY or type(event.user_id) is not str or type(event.time) is not int:
        raise ValueError(f"not a VWO event: {fields!r}")
    return event


def _open_rw(path: str) -> sqlite3.Connection:
    """An existing spool file (never created by this call)."""
    return sqlite3.connect(f"file:{pathname2url(path)}?mode=rw", uri=True, isolation_level=None)


def _lock(path: str) -> int | None:
    """An exclusive, non-blocking flock on ``path``; the fd, or None if another holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _remove(db_path: str) -> None:
    for suffix in ("", "-wal", "-shm", ".lock"):
        try:
            os.remove(db_path + suffix)
        except FileNotFoundError:
            pass


def _try_remove(db_path: str) -> None:
    """``_remove``, logging instead of raising (a read-only disk must not break a shutdown)."""
    try:
        _remove(db_path)
    except OSError as exc:
        logger.warning("vwo_otel spool file %s: could not remove it (%s)", db_path, exc)


def _set_aside(db_path: str, why: str) -> str:
    """Move the file (and its WAL) to ``<file>.<why>-<time>``, a name no start adopts."""
    aside = f"{db_path}.{why}-{int(time.time())}"
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(db_path + suffix):
            os.replace(db_path + suffix, aside + suffix)
    _remove(db_path)  # the lock file
    return aside


@dataclass(slots=True)
class SpillRun:
    """Consecutive row ids ``first``..``last`` of spilled events."""

    first: int
    last: int


@dataclass(slots=True)
class ReadBack:
    """What ``Spool.read_spilled`` found: ``events`` back in memory (their rows stay until
    settled), ``expired`` ones past ``max_age`` (off the disk, to be reported), ``missing``
    rows that hold no usable event (kept on disk, logged); ``nbytes`` the row bytes read,
    handed to ``Spool.unspilled`` under the batcher's lock."""

    events: list[VWOEvent]
    expired: list[VWOEvent]
    missing: int = 0
    nbytes: int = 0


class SpooledEvent(NamedTuple):
    """An event read back from a spool file, with the time it was first queued."""

    event: VWOEvent
    queued_at: float


@dataclass(frozen=True)
class ClosedSpool:
    """What ``Spool.close`` left: ``kept`` undelivered events on disk for the next start,
    ``lost`` unsettled events the disk never took (to be reported), ``resent`` settled events
    whose rows the disk would not delete (the next start sends them again), ``error`` why."""

    kept: int
    lost: list[VWOEvent]
    resent: int
    error: str = ""


@dataclass
class Orphan:
    """A dead process's spool file, locked by us while its events are taken over;
    ``bad_rows`` are the ids of rows that hold no usable event."""

    path: str
    lock_fd: int
    events: list[SpooledEvent]
    bad_rows: list[int] = field(default_factory=list)

    def release(self) -> None:
        """Its events are in our own spool now: delete the file, or keep only its bad rows
        in a file set aside for a person to look at."""
        if self.bad_rows:
            try:
                conn = _open_rw(self.path)
                try:
                    conn.execute("CREATE TEMP TABLE bad (id INTEGER PRIMARY KEY)")
                    conn.executemany("INSERT INTO bad VALUES (?)", [(i,) for i in self.bad_rows])
                    conn.execute("DELETE FROM events WHERE id NOT IN (SELECT id FROM bad)")
                finally:
                    conn.close()
                aside = _set_aside(self.path, "quarantine")
                logger.error("vwo_otel spool file %s: %d row(s) that are not usable events are kept in %s",
                             self.path, len(self.bad_rows), aside)
            except (sqlite3.Error, OSError) as exc:
                logger.error("vwo_otel spool file %s: could not set its unusable rows aside (%s); the file "
                             "is left for a later start", self.path, exc)
        else:
            _remove(self.path)
        os.close(self.lock_fd)

    def unlock(self) -> None:
        """Leave the file as it is, for a later start to adopt."""
        os.close(self.lock_fd)


class Spool:
    """This process's spool file in ``directory``; see the module docstring for guarantees.
    ``max_age`` (seconds) and ``max_bytes`` bound what waits on disk for VWO to answer again."""

    def __init__(self, directory: str | os.PathLike[str], *, commit_interval: float = 0.05,
                 max_age: float = DEFAULT_MAX_AGE, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.commit_interval = checks.SPOOL_COMMIT_INTERVAL.check("commit_interval", commit_interval)
        self.max_age = checks.SPOOL_MAX_AGE.check("max_age", max_age)
        self.max_bytes = checks.SPOOL_MAX_BYTES.check("max_bytes", max_bytes)
        if not isinstance(directory, (str, os.PathLike)):
            raise TypeError(f"spool must be a directory path, got {type(directory).__name__}")
        self.directory = os.fspath(directory)
        os.makedirs(self.directory, exist_ok=True)
        self._inherited: list[Any] = []  # connections from before a fork: never used, never closed
        self._failed_at = 0.0  # last commit failure logged (rate-limited)
        self._open()

    def __repr__(self) -> str:
        return (f"Spool({self.directory!r}, commit_interval={self.commit_interval:g}, max_age={self.max_age:g}, "
                f"max_bytes={self.max_bytes})")

    def _open(self) -> None:
        self.path = os.path.join(self.directory, f"spool-{os.getpid()}-{secrets.token_hex(4)}.sqlite")
        fd = _lock(self.path + ".lock")
        assert fd is not None, "a fresh spool file cannot be locked by anyone else"
        self._lock_fd = fd
        self._conn = _connect(self.path)
        self._db_lock = threading.Lock()
        #: Held by a replay from start to end; ``close`` waits for it, so a process that ends
        #: never leaves adopted events half taken over.
        self.replaying = threading.Lock()
        self._ids: dict[int, int] = {}  # id(event) -> row id, for events not yet settled
        self._next = 0
        self._added: deque[tuple[int, float, VWOEvent]] = deque()  # (row id, queued_at, event)
        self._acked: deque[int] = deque()
        self._unwritten: list[tuple[int, float, VWOEvent]] = []  # rows of a failed commit, tried again next time
        self._undeleted: set[int] = set()  # deletions of a failed commit, tried again next time
        self._last_error = ""
        self._parked: deque[tuple[VWOEvent, int]] = deque()  # (event, its row's bytes), oldest first
        self._parked_bytes = 0
        #: Spilled events (kept only on disk while the memory queue is full): runs of
        #: consecutive row ids, oldest first, and their total row bytes.
        self._spilled: deque[SpillRun] = deque()
        self._spilled_bytes = 0
        self._rounds = 0  # retry rounds of parked events since a request was last accepted
        self._timer: threading.Timer | None = None
        self._stop = threading.Event()
        self._writer: threading.Thread | None = None
        self._closed = False

    def after_fork(self) -> None:
        """In a forked child: a file of its own. The parent's connection is kept, unused and
        unclosed; the child's copy of the parent's lock fd is closed (the parent keeps the
        lock), so the parent's file can be adopted as soon as the parent is gone. A spool closed
        before the fork stays closed: its lock fd is gone, and its number may now be another
        file's (closing it again would close that file)."""
        if self._closed:
            return
        self._inherited.append(self._conn)
        os.close(self._lock_fd)
        self._open()

    # -- the emitting thread (called with the batcher's lock held) ------------------------
    def add(self, event: VWOEvent, queued_at: float | None = None) -> None:
        """Record a newly queued event (written by the next group commit, or now if interval 0).
        With ``queued_at`` (replay, parked events back in the queue) the caller commits, and an
        event that already has a row keeps it."""
        if queued_at is not None:
            if id(event) not in self._ids:
                self._next += 1
                self._ids[id(event)] = self._next
                self._added.append((self._next, queued_at, event))
            return
        self._next += 1
        self._ids[id(event)] = self._next
        self._added.append((self._next, time.time(), event))
        if self.commit_interval == 0:
            self.commit()
        elif self._writer is None:
            self._start_writer()

    def take_over(self, items: list[SpooledEvent]) -> bool:
        """Write adopted events into this file in one transaction (caller holds the batcher's
        lock); True once they are durable here, False (nothing kept) if the disk refused."""
        rows = [(self._next + i, item.queued_at, item.event) for i, item in enumerate(items, 1)]
        with self._db_lock:
            if self._closed:
                return False
            try:
                self._conn.execute("BEGIN")
                self._conn.executemany(_INSERT, [(r, q, _encode(ev)) for r, q, ev in rows])
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                logger.error("vwo_otel spool %s: could not take over %d event(s) of dead processes (%s); "
                             "their files are left for a later start", self.path, len(rows), exc)
                return False
        self._next += len(rows)
        for row, _, ev in rows:
            self._ids[id(ev)] = row
        return True

    # -- the delivery thread ---------------------------------------------------------------
    def ack(self, events: list[VWOEvent]) -> None:
        """These events are delivered (or reported dropped): forget them."""
        ids = self._ids
        for ev in events:
            row = ids.pop(id(ev), None)
            if row is not None:
                self._acked.append(row)
        if self.commit_interval == 0:
            self.commit()

    def forget_failed(self, events: list[VWOEvent]) -> list[VWOEvent]:
        """Failed events leave the disk now; returns those that may be reported failed. An
        event whose row the disk will not delete stays on disk, unreported, for the next start."""
        rows = {id(ev): self._ids.pop(id(ev), None) for ev in events}
        with self._db_lock:
            self._acked.extend(r for r in rows.values() if r is not None)
            if self._commit_locked():
                return events
            stuck = self._undeleted & set(rows.values())
            self._undeleted -= stuck  # never deleted by this process: the row is the event's record
        if not stuck:
            return events
        logger.error("vwo_otel spool %s: %d failed event(s) could not be removed from disk (%s); they are not "
                     "reported now and are tried again by the next start", self.path, len(stuck), self._last_error)
        return [ev for ev in events if rows[id(ev)] not in stuck]

    # -- spilled events: kept only on disk while the memory queue is full --------------------
    def spill(self, event: VWOEvent) -> bool:
        """Keep a new event only on disk (caller holds the batcher's lock and drops its own
        reference); False if the spool refuses: closed, its disk failing, or ``max_bytes`` of
        spilled and parked events reached. Never touches the disk unless ``commit_interval`` is 0."""
        if self._closed or self._unwritten:
            return False
        size = len(_encode(event))
        if self._spilled_bytes + self._parked_bytes + size > self.max_bytes:
            return False
        self._next += 1
        row = self._next
        self._added.append((row, time.time(), event))
        self._spilled_bytes += size
        runs = self._spilled
        if runs and runs[-1].last == row - 1:
            runs[-1].last = row
        else:
            runs.append(SpillRun(row, row))
        if self.commit_interval == 0:
            self.commit()
        elif self._writer is None:
            self._start_writer()
        return True

    def spill_rows(self, events: list[VWOEvent]) -> None:
        """Events already written to this file (replayed ones) become spilled: memory lets
        them go, ``read_spilled`` brings them back. Caller holds the batcher's lock."""
        for ev in events:
            row = self._ids.pop(id(ev))
            self._spilled_bytes += len(_encode(ev))
            runs = self._spilled
            if runs and runs[-1].last == row - 1:
                runs[-1].last = row
            else:
                runs.append(SpillRun(row, row))

    def take_spilled(self, limit: int) -> list[SpillRun]:
        """Up to ``limit`` of the oldest spilled row ids, taken off the spill list (caller
        holds the batcher's lock); ``read_spilled`` reads them."""
        taken: list[SpillRun] = []
        runs = self._spilled
        while runs and limit > 0:
            run = runs[0]
            n = run.last - run.first + 1
            if n <= limit:
                taken.append(runs.popleft())
                limit -= n
            else:
                taken.append(SpillRun(run.first, run.first + limit - 1))
                run.first += limit
                limit = 0
        return taken

    def read_spilled(self, runs: list[SpillRun]) -> ReadBack:
        """The events of spilled rows, oldest first (on a delivery thread, never the app's);
        each keeps its row until settled. Past ``max_age`` they leave the disk as expired."""
        oldest = time.time() - self.max_age
        back = ReadBack([], [])
        with self._db_lock:
            self._commit_locked()  # rows spilled in the last commit interval reach the disk first
            unwritten = {r: ev for r, _, ev in self._unwritten}  # a failing disk: still in memory
            for run in runs:
                try:
                    rows = self._conn.execute("SELECT id, event FROM events WHERE id BETWEEN ? AND ? ORDER BY id",
                                              (run.first, run.last)).fetchall()
                except sqlite3.Error as exc:
                    logger.error("vwo_otel spool %s: could not read spilled events back (%s); they stay on disk "
                                 "for the next start", self.path, exc)
                    rows = []
                found = {r: text for r, text in rows}
                for row in range(run.first, run.last + 1):
                    text = found.get(row)
                    try:
                        ev = unwritten[row] if text is None else _decode({"event": text}, SCHEMA_VERSION)
                    except Exception:  # a row that is not an event (or was never written): left on disk
                        back.missing += 1
                        continue
                    back.nbytes += len(text) if text is not None else len(_encode(ev))
                    if ev.time < oldest:
                        self._acked.append(row)
                        back.expired.append(ev)
                    else:
                        self._ids[id(ev)] = row
                        back.events.append(ev)
            if back.expired:
                self._commit_locked()
        if back.missing:
            logger.error("vwo_otel spool %s: %d spilled row(s) hold no usable event; they are kept on disk",
                         self.path, back.missing)
        return back

    def unspilled(self, back: ReadBack) -> None:
        """The bytes of a read-back no longer count as spilled (caller holds the batcher's lock)."""
        self._spilled_bytes -= back.nbytes

    def spill_mark(self) -> int:
        """The row id of the newest spilled event (0: none); caller holds the batcher's lock."""
        return self._spilled[-1].last if self._spilled else 0

    def spilled_through(self, mark: int) -> bool:
        """Spilled events up to row ``mark`` still wait on disk; caller holds the batcher's lock."""
        return bool(self._spilled) and self._spilled[0].first <= mark

    def spilled(self) -> int:
        """Events kept only on disk now (read without the lock)."""
        return sum(run.last - run.first + 1 for run in self._spilled)

    # -- parked events: waiting on disk for VWO to answer again --------------------------
    def park(self, events: list[VWOEvent]) -> list[VWOEvent]:
        """Keep events whose retries ran out on a transient failure on disk, to be sent again;
        returns those the policy refuses (older than ``max_age``, or past ``max_bytes``)."""
        oldest = time.time() - self.max_age
        refused = []
        with self._db_lock:
            for ev in events:
                size = len(_encode(ev))
                if ev.time < oldest or self._parked_bytes + size > self.max_bytes or self._closed:
                    refused.append(ev)
                else:
                    self._parked.append((ev, size))
                    self._parked_bytes += size
            self._rounds += 1
        return refused

    def unpark(self, limit: int) -> list[VWOEvent]:
        """Up to ``limit`` parked events, oldest first, to go back in the queue (their rows stay)."""
        out: list[VWOEvent] = []
        with self._db_lock:
            while self._parked and len(out) < limit:
                ev, size = self._parked.popleft()
                self._parked_bytes -= size
                out.append(ev)
        return out

    def room(self) -> int:
        """Bytes more events may take on disk while VWO does not answer (``max_bytes`` less the
        parked and spilled events); 0 while the disk refuses writes or after close."""
        if self._closed or self._unwritten:
            return 0
        return max(0, self.max_bytes - self._parked_bytes - self._spilled_bytes)

    def parked(self) -> int:
        """Events waiting on disk for VWO to answer again (read without the lock)."""
        return len(self._parked)

    def accepted(self) -> None:
        """VWO accepted a request: the next retry round of parked events starts from the shortest wait."""
        self._rounds = 0

    def retry_later(self, wait: Callable[[int], float], wake: Callable[[], None]) -> None:
        """Call ``wake`` after ``wait(rounds)`` seconds, unless a call is already pending."""
        with self._db_lock:
            if self._closed or (self._timer is not None and self._timer.is_alive()):
                return
            timer = threading.Timer(wait(self._rounds), wake)
            timer.name, timer.daemon = "vwo_otel-spool-retry", True
            try:
                timer.start()
            except RuntimeError:  # interpreter exiting: parked events stay on disk
                return
            self._timer = timer

    def commit(self) -> bool:
        """Write what was added and delete what was acked, in one transaction; False if that
        failed (the rows and deletions are kept and tried again by the next commit)."""
        with self._db_lock:
            return self._commit_locked()

    def _commit_locked(self) -> bool:
        if self._closed:
            return not (self._added or self._unwritten)
        acked = self._undeleted
        while self._acked:  # acks first: any acked event's add is already queued
            acked.add(self._acked.popleft())
        rows = []
        for row in self._unwritten:
            if row[0] in acked:
                acked.discard(row[0])
            else:
                rows.append(row)
        while self._added:
            row = self._added.popleft()
            if row[0] in acked:
                acked.discard(row[0])  # settled before it ever reached the disk
            else:
                rows.append(row)
        self._unwritten, self._undeleted = [], set()
        if not rows and not acked:
            return True
        try:
            self._conn.execute("BEGIN")
            self._conn.executemany(_INSERT, [(r, q, _encode(ev)) for r, q, ev in rows])
            self._conn.executemany(_DELETE, [(i,) for i in acked])
            self._conn.execute("COMMIT")
            return True
        except sqlite3.Error as exc:
            self._rollback()
            self._unwritten, self._undeleted = rows, acked
            self._last_error = str(exc)
            now = time.monotonic()
            if now - self._failed_at >= 10.0:
                self._failed_at = now
                logger.error("vwo_otel spool %s: commit failed (%s); %d event(s) not on disk yet and %d "
                             "deletion(s) not done, tried again at the next commit", self.path, exc, len(rows),
                             len(acked))
            return False

    def _rollback(self) -> None:
        try:
            self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    def _start_writer(self) -> None:
        try:
            writer = threading.Thread(target=self._run, name="vwo_otel-spool", daemon=True)
            writer.start()
        except RuntimeError:  # interpreter exiting: commit inline instead
            self.commit()
            return
        self._writer = writer

    def _run(self) -> None:
        while not self._stop.wait(self.commit_interval):
            self.commit()

    def pending_rows(self) -> int:
        """Events on disk now (for tests and stats)."""
        with self._db_lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    def close(self) -> ClosedSpool:
        """Final commit (after a replay in progress ends); unsettled events stay in the file
        for the next start. Says what stayed and what the disk did not take; idempotent."""
        self._stop.set()
        with self.replaying, self._db_lock:
            if self._closed:
                return ClosedSpool(0, [], 0)
            self._commit_locked()
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
            lost = [ev for _, _, ev in self._unwritten]
            resent = len(self._undeleted)
            try:
                rows = int(self._conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])
            except sqlite3.Error:
                rows = -1
            self._conn.close()
        if rows == 0:
            _try_remove(self.path)
        os.close(self._lock_fd)
        return ClosedSpool(max(0, rows - resent), lost, resent, self._last_error if lost or resent else "")

    # -- replay --------------------------------------------------------------------------
    def adopt(self) -> list[Orphan]:
        """Lock the spool files of processes that are gone and read their events, oldest
        first. A corrupt or unreadable file is moved aside, a file of an unknown layout version
        is left alone, a row that is no usable event is skipped and kept: each with a log line.
        Any other error sets that file aside; adoption itself never raises."""
        orphans = []
        for path in sorted(glob.glob(os.path.join(self.directory, "spool-*.sqlite"))):
            if path == self.path:
                continue
            try:
                orphan = _adopt_one(path)
            except Exception as exc:
                _give_up_on(path, exc)
                continue
            if orphan is not None:
                orphans.append(orphan)
        return orphans


def _adopt_one(path: str) -> Orphan | None:
    """One file, locked and read; None if a live process owns it or it cannot be adopted."""
    fd = _lock(path + ".lock")
    if fd is None:
        return None  # a live process owns it
    try:
        if not os.path.exists(path):  # another process adopted and removed it meanwhile
            _remove(path)  # only our fresh .lock is left
            return None
        orphan = _read(path, fd)
    except BaseException:
        os.close(fd)
        raise
    if orphan is None:
        os.close(fd)
    return orphan


def _give_up_on(path: str, exc: Exception) -> None:
    """An unexpected error adopting ``path``: set it aside (logged), so later starts skip it."""
    try:
        aside = _set_aside(path, "unadoptable")
    except OSError as move_error:
        logger.error("vwo_otel spool file %s could not be adopted (%r) nor moved aside (%s)", path, exc, move_error)
    else:
        logger.error("vwo_otel spool file %s could not be adopted (%r); moved aside to %s", path, exc, aside)


def _as_dict(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> dict[str, Any]:
    return {col[0]: value for col, value in zip(cursor.description, row, strict=True)}


def _rows(path: str) -> tuple[int, list[dict[str, Any]]]:
    """The layout version of a spool file and, if this code can read it, its rows, oldest first."""
    conn = _open_rw(path)
    try:
        conn.row_factory = _as_dict
        version = int(conn.execute("PRAGMA user_version").fetchone()["user_version"])
        if not 0 <= version <= SCHEMA_VERSION:
            return version, []
        return version, conn.execute("SELECT * FROM events ORDER BY queued_at, id").fetchall()
    finally:
        conn.close()


def _never_written(path: str) -> bool:
    """A file its process died creating, before its table existed: an empty SQLite database
    (no table at all, not one row of data ever written)."""
    try:
        conn = sqlite3.connect(f"file:{pathname2url(path)}?mode=ro", uri=True)
        try:
            return conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == 0
        finally:
            conn.close()
    except sqlite3.Error:
        return False


def _read(path: str, lock_fd: int) -> Orphan | None:
    """A dead process's file as an ``Orphan``; None (with a log line) if it cannot be adopted."""
    try:
        version, rows = _rows(path)
    except sqlite3.Error as exc:
        if _never_written(path):  # its process died while creating it: nothing to replay
            _remove(path)
            return None
        try:
            aside = _set_aside(path, "corrupt")
        except OSError as move_error:
            logger.error("vwo_otel spool file %s is unreadable (%s) and could not be moved aside (%s)",
                         path, exc, move_error)
        else:
            logger.error("vwo_otel spool file %s is unreadable (%s); moved aside to %s", path, exc, aside)
        return None
    if not 0 <= version <= SCHEMA_VERSION:
        logger.error("vwo_otel spool file %s has layout version %d, which this vwo_otel (version %d) cannot "
                     "read; left as it is for a vwo_otel that can", path, version, SCHEMA_VERSION)
        return None
    orphan = Orphan(path, lock_fd, [])
    problem = ""
    for row in rows:
        try:
            orphan.events.append(SpooledEvent(_decode(row, version), float(row["queued_at"])))
        except Exception as exc:  # whatever a damaged row holds, it is set aside, never raised
            orphan.bad_rows.append(row["id"])
            problem = problem or f"row {row['id']}: {exc}"
    if orphan.bad_rows:
        logger.error("vwo_otel spool file %s: %d row(s) hold no usable event (%s); they are kept on disk, "
                     "the other %d event(s) are replayed", path, len(orphan.bad_rows), problem, len(orphan.events))
    return orphan
