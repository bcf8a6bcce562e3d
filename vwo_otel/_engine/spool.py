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
"""

from __future__ import annotations

import fcntl
import glob
import logging
import os
import secrets
import sqlite3
import threading
import time
from collections import deque
from typing import Any
from urllib.request import pathname2url

from ..event import VWOEvent

logger = logging.getLogger("vwo_otel")

_FIELDS = ("etype", "user_id", "time", "campaign_id", "variation_id", "goal_id", "revenue", "key", "value",
           "visitor_ua", "visitor_ip")
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, queued_at REAL NOT NULL, "
    + ", ".join(_FIELDS) + ")"
)
_INSERT = f"INSERT INTO events (id, queued_at, {', '.join(_FIELDS)}) VALUES ({', '.join('?' * (len(_FIELDS) + 2))})"
_DELETE = "DELETE FROM events WHERE id = ?"


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(_SCHEMA)
    return conn


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


class Orphan:
    """A dead process's spool file, locked by us while its events are taken over."""

    def __init__(self, path: str, lock_fd: int, events: list[tuple[VWOEvent, float]]) -> None:
        self.path, self.lock_fd, self.events = path, lock_fd, events

    def release(self) -> None:
        """Delete the file: its events are in our own spool now."""
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
        self._added: deque[tuple[int, float, VWOEvent]] = deque()
        self._acked: deque[int] = deque()
        self._unwritten: list[tuple[Any, ...]] = []  # rows of a failed commit, tried again next time
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
                    rows.append((row_id, queued_at, *(getattr(ev, f) for f in _FIELDS)))
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
        first. A corrupt or unreadable file is moved aside with an error in the log."""
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
            try:
                conn = sqlite3.connect(f"file:{pathname2url(path)}?mode=rw", uri=True, isolation_level=None)
                try:
                    rows = conn.execute(
                        f"SELECT queued_at, {', '.join(_FIELDS)} FROM events ORDER BY queued_at, id").fetchall()
                finally:
                    conn.close()
            except sqlite3.Error as exc:
                aside = f"{path}.corrupt-{int(time.time())}"
                logger.error("vwo_otel spool file %s is unreadable (%s); moved aside to %s", path, exc, aside)
                for suffix in ("", "-wal", "-shm"):
                    if os.path.exists(path + suffix):
                        os.replace(path + suffix, aside + suffix)
                os.close(fd)
                continue
            events = [(VWOEvent(*row[1:]), row[0]) for row in rows]
            orphans.append(Orphan(path, fd, events))
        return orphans
