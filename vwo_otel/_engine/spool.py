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

Delivery is at-least-once across crashes: events of a request that VWO accepted just
before the crash, before the deletion was committed, are sent again by the next process.

Each process writes its own file ``spool-<pid>-<token>.sqlite`` and holds an exclusive
``flock`` on ``<file>.lock`` for its lifetime; a file is adopted only by a process that
can take that lock, so live processes never read or send each other's events.

A row holds one event as the JSON object ``VWOEvent.fields()`` (read back with
``VWOEvent.from_fields``, which ignores keys it does not know), so adding a field needs no
new layout; ``PRAGMA user_version`` is the layout's version. A file of a version this code
cannot read is left alone; a row that is not a usable event is kept on disk (its file is
set aside as ``<file>.quarantine-<time>``, holding only such rows) and the others replay.
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
from typing import Any, NamedTuple
from urllib.request import pathname2url

from ..event import DROP_PRIORITY, VWOEvent

logger = logging.getLogger("vwo_otel")

#: The layout ``PRAGMA user_version`` names: 1 = one JSON object per event. 0 is the layout
#: before versions, one column per field, still read so an upgrade replays older files.
SCHEMA_VERSION = 1
_SCHEMA = "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, queued_at REAL NOT NULL, event TEXT NOT NULL)"
_INSERT = "INSERT INTO events (id, queued_at, event) VALUES (?, ?, ?)"
_DELETE = "DELETE FROM events WHERE id = ?"


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


def _set_aside(db_path: str, why: str) -> str:
    """Move the file (and its WAL) to ``<file>.<why>-<time>``, a name no start adopts."""
    aside = f"{db_path}.{why}-{int(time.time())}"
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(db_path + suffix):
            os.replace(db_path + suffix, aside + suffix)
    _remove(db_path)  # the lock file
    return aside


class SpooledEvent(NamedTuple):
    """An event read back from a spool file, with the time it was first queued."""

    event: VWOEvent
    queued_at: float


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
    """This process's spool file in ``directory``; see the module docstring for guarantees."""

    def __init__(self, directory: str | os.PathLike[str], *, commit_interval: float = 0.05) -> None:
        if isinstance(commit_interval, bool) or not isinstance(commit_interval, (int, float)) or not (
            0 <= commit_interval <= 60
        ):
            raise ValueError(f"spool commit_interval must be seconds from 0 to 60, got {commit_interval!r}")
        if not isinstance(directory, (str, os.PathLike)):
            raise TypeError(f"spool must be a directory path, got {type(directory).__name__}")
        self.directory = os.fspath(directory)
        os.makedirs(self.directory, exist_ok=True)
        self.commit_interval = float(commit_interval)
        self._inherited: list[Any] = []  # connections from before a fork: never used, never closed
        self._failed_at = 0.0  # last commit failure logged (rate-limited)
        self._open()

    def __repr__(self) -> str:
        return f"Spool({self.directory!r}, commit_interval={self.commit_interval:g})"

    def _open(self) -> None:
        self.path = os.path.join(self.directory, f"spool-{os.getpid()}-{secrets.token_hex(4)}.sqlite")
        fd = _lock(self.path + ".lock")
        assert fd is not None, "a fresh spool file cannot be locked by anyone else"
        self._lock_fd = fd
        self._conn = _connect(self.path)
        self._db_lock = threading.Lock()
        self._ids: dict[int, int] = {}  # id(event) -> row id, for events not yet settled
        self._next = 0
        self._added: deque[tuple[int, float, VWOEvent]] = deque()  # (row id, queued_at, event)
        self._acked: deque[int] = deque()
        self._unwritten: list[tuple[int, float, str]] = []  # rows of a failed commit, tried again next time
        self._undeleted: set[int] = set()  # deletions of a failed commit, tried again next time
        self._stop = threading.Event()
        self._writer: threading.Thread | None = None
        self._closed = False

    def after_fork(self) -> None:
        """In a forked child: a file of its own. The parent's connection is kept, unused and
        unclosed; the child's copy of the parent's lock fd is closed (the parent keeps the
        lock), so the parent's file can be adopted as soon as the parent is gone."""
        self._inherited.append(self._conn)
        os.close(self._lock_fd)
        self._open()

    # -- the emitting thread (called with the batcher's lock held) ------------------------
    def add(self, event: VWOEvent, queued_at: float | None = None) -> None:
        """Record a newly queued event (written by the next group commit, or now if interval 0);
        ``queued_at`` keeps the original time of a replayed event."""
        self._next += 1
        self._ids[id(event)] = self._next
        self._added.append((self._next, time.time() if queued_at is None else queued_at, event))
        if self.commit_interval == 0:
            self.commit()
        elif self._writer is None:
            self._start_writer()

    # -- the delivery thread ---------------------------------------------------------------
    def ack(self, events: list[VWOEvent]) -> None:
        """These events are settled (delivered, or reported failed): forget them."""
        ids = self._ids
        for ev in events:
            row = ids.pop(id(ev), None)
            if row is not None:
                self._acked.append(row)
        if self.commit_interval == 0:
            self.commit()

    def commit(self) -> bool:
        """Write what was added and delete what was acked, in one transaction; False if that
        failed (the rows and deletions are kept and tried again by the next commit)."""
        with self._db_lock:
            if self._closed:
                return True
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
                row_id, queued_at, ev = self._added.popleft()
                if row_id in acked:
                    acked.discard(row_id)  # settled before it ever reached the disk
                else:
                    rows.append((row_id, queued_at, _encode(ev)))
            self._unwritten, self._undeleted = [], set()
            if not rows and not acked:
                return True
            try:
                self._conn.execute("BEGIN")
                self._conn.executemany(_INSERT, rows)
                self._conn.executemany(_DELETE, [(i,) for i in acked])
                self._conn.execute("COMMIT")
                return True
            except sqlite3.Error as exc:
                try:
                    self._conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                self._unwritten, self._undeleted = rows, acked
                now = time.monotonic()
                if now - self._failed_at >= 10.0:
                    self._failed_at = now
                    logger.error("vwo_otel spool %s: commit failed (%s); %d event(s) not on disk yet, "
                                 "tried again at the next commit", self.path, exc, len(rows))
                return False

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

    def close(self) -> None:
        """Final commit; unsettled events stay in the file for the next process; idempotent."""
        self._stop.set()
        self.commit()
        with self._db_lock:
            if self._closed:
                return
            self._closed = True
            empty = self._conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 0
            self._conn.close()
        if empty:
            _remove(self.path)
        os.close(self._lock_fd)

    # -- replay --------------------------------------------------------------------------
    def adopt(self) -> list[Orphan]:
        """Lock the spool files of processes that are gone and read their events, oldest
        first. A corrupt or unreadable file is moved aside, a file of an unknown layout version
        is left alone, a row that is no usable event is skipped and kept: each with a log line."""
        orphans = []
        for path in sorted(glob.glob(os.path.join(self.directory, "spool-*.sqlite"))):
            if path == self.path:
                continue
            fd = _lock(path + ".lock")
            if fd is None:
                continue  # a live process owns it
            if not os.path.exists(path):  # another process adopted and removed it meanwhile
                _remove(path)  # only our fresh .lock is left
                os.close(fd)
                continue
            orphan = _read(path, fd)
            if orphan is None:
                os.close(fd)
            else:
                orphans.append(orphan)
        return orphans


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


def _read(path: str, lock_fd: int) -> Orphan | None:
    """A dead process's file as an ``Orphan``; None (with a log line) if it cannot be adopted."""
    try:
        version, rows = _rows(path)
    except sqlite3.Error as exc:
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
        except (ValueError, TypeError, KeyError) as exc:
            orphan.bad_rows.append(row["id"])
            problem = problem or f"row {row['id']}: {exc}"
    if orphan.bad_rows:
        logger.error("vwo_otel spool file %s: %d row(s) hold no usable event (%s); they are kept on disk, "
                     "the other %d event(s) are replayed", path, len(orphan.bad_rows), problem, len(orphan.events))
    return orphan
