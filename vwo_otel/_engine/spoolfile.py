"""Spool files on disk: the SQLite layout, the lock that marks a live owner, and the files
of dead processes, adopted in place and read in pages.

A file is ``spool-<pid>-<token>.sqlite`` (WAL, readable by its OS user only) with
``<file>.lock``, on which its process holds an exclusive ``flock`` for its lifetime; a file is
adopted only by a process that can take that lock, so live processes never read or send each
other's events, and only if it is that process's own (``spoolowner``: the same OS user, account,
endpoint, sdk key and sending mode).

A row holds one event as the JSON object ``VWOEvent.fields()`` (read back with
``VWOEvent.from_fields``, which ignores keys it does not know), so adding a field needs no new
layout; ``PRAGMA user_version`` is the layout's version (2: events and the ``meta`` table that
records the owner; files of layout 0 and 1 record none and are left alone). A file of a version
this code cannot read is left alone; a row that is not a usable event is kept on disk (once
the others are settled, its file is set aside as ``<file>.quarantine-<time>``, holding only
such rows); any other error sets the file aside
(``<file>.unadoptable-<time>``, ``<file>.corrupt-<time>``, and a name that is not a regular
file: ``<file>.not-a-file-<time>``). Adoption never raises and never blocks on what a
directory holds.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import json
import logging
import math
import os
import secrets
import sqlite3
import stat
import time
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.request import pathname2url

from ..event import DROP_PRIORITY, VWOEvent
from . import spoolowner

logger = logging.getLogger("vwo_otel")

#: The layout ``PRAGMA user_version`` names: 2 = one JSON object per event and the owner record
#: (``spoolowner``). 1 (the same rows, no owner) and 0 (a column per field) are never adopted.
SCHEMA_VERSION = 2
SCHEMA = "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, queued_at REAL NOT NULL, event TEXT NOT NULL)"
INSERT = "INSERT INTO events (id, queued_at, event) VALUES (?, ?, ?)"
DELETE = "DELETE FROM events WHERE id = ?"
PATTERN = "spool-*.sqlite"
#: Near a full disk (free space under ``TIGHT`` reserves) the WAL is copied into the file every
#: half reserve of pages, not SQLite's 1,000 pages (4 MiB, more than a small disk has); with
#: room to spare the default stands (a checkpoint costs an fsync).
TIGHT = 8
#: Seconds between tries while the disk refuses writes (creating the file, group commits).
RETRY_INTERVAL = 1.0
#: Room the spool leaves free on its disk, a quarter of the file system within these bounds:
#: below it no new row is written (as if the disk refused), so the rows of settled events can
#: still be deleted (a deletion needs room in the WAL, a checkpoint room in the file) and a
#: restart can create its file; without it a delivered event whose row could not be deleted
#: is sent again by the next start (near a full disk the WAL is kept small: ``TIGHT``).
DISK_RESERVE = (64 * 1024, 1024 * 1024)
#: A row not yet on disk: (row id, queued_at, event, its JSON once encoded).
Row = tuple[int, float, VWOEvent, "str | None"]
_SUFFIXES = ("", "-wal", "-shm", ".lock")


def connect(path: str, owner: spoolowner.Owner | None = None) -> sqlite3.Connection:
    """This process's own file, created (readable by this OS user only: SQLite gives its WAL the
    file's mode; WAL, ``synchronous=NORMAL``, the current layout), recording ``owner`` if given."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600))
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(SCHEMA)
        conn.execute(spoolowner.TABLE)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        if owner is not None:
            conn.execute(spoolowner.WRITE, (spoolowner.text(owner),))
    except BaseException:
        conn.close()
        raise
    return conn


def encode(event: VWOEvent) -> str:
    return json.dumps(event.fields(), separators=(",", ":"))


def decode(text: Any) -> VWOEvent:
    """The event a row's JSON text holds; ``ValueError`` / ``TypeError`` if it holds none."""
    fields = json.loads(text)
    if not isinstance(fields, Mapping):
        raise ValueError(f"not a JSON object: {text!r}")
    event = VWOEvent.from_fields(fields)  # TypeError when a required field is missing
    if event.etype not in DROP_PRIORITY or type(event.user_id) is not str or type(event.time) is not int:
        raise ValueError(f"not a VWO event: {fields!r}")
    return event


def full(exc: BaseException) -> bool:
    """The disk has no room (SQLite's ``SQLITE_FULL``, ``ENOSPC``, a quota)."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return getattr(exc, "sqlite_errorcode", None) == 13 or "full" in str(exc)  # 13: SQLITE_FULL


def lock(path: str) -> int | None:
    """An exclusive, non-blocking flock on ``path``; the fd, or None if another holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | os.O_NOFOLLOW, 0o600)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def remove(db_path: str) -> None:
    for suffix in _SUFFIXES:
        try:
            os.remove(db_path + suffix)
        except FileNotFoundError:
            pass


def try_remove(db_path: str) -> None:
    """``remove``, logging instead of raising (a read-only disk must not break a shutdown)."""
    try:
        remove(db_path)
    except OSError as exc:
        logger.warning("vwo_otel spool file %s: could not remove it (%s)", db_path, exc)


def set_aside(db_path: str, why: str) -> str:
    """Move the file (and its WAL) to ``<file>.<why>-<time>``, a name no start adopts."""
    aside = f"{db_path}.{why}-{int(time.time())}"
    for suffix in ("", "-wal", "-shm"):
        if os.path.lexists(db_path + suffix):
            os.replace(db_path + suffix, aside + suffix)
    remove(db_path)  # the lock file
    return aside


def _regular(db_path: str) -> bool:
    """The file and the companions SQLite opens are regular files or absent (never a FIFO,
    device or link, which SQLite would block on or follow)."""
    for suffix in ("", "-wal", "-shm"):
        try:
            mode = os.lstat(db_path + suffix).st_mode
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(mode):
            return False
    return True


def _never_written(path: str) -> bool:
    """A file its process died creating, before its table existed: an empty SQLite database."""
    try:
        conn = sqlite3.connect(f"file:{pathname2url(path)}?mode=ro", uri=True)
        try:
            return conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == 0
        finally:
            conn.close()
    except sqlite3.Error:
        return False


def _as_dict(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> dict[str, Any]:
    return {col[0]: value for col, value in zip(cursor.description, row, strict=True)}


@dataclass(eq=False)
class Orphan:
    """A dead process's spool file, locked by us and delivered in place: its rows are read in
    pages (``read``) as the queue has room, and deleted as their events settle (``acked``,
    committed by the owner's group commit). ``unread`` rows are still to be read; ``outstanding``
    events were read and are not settled; ``stuck`` failed events whose rows would not delete
    (kept, unreported); ``bad`` ids of rows that hold no usable event. The owner keeps the
    counts (under its own lock); ``read``, ``commit`` and ``finish`` run under its disk lock."""

    path: str
    lock_fd: int
    conn: sqlite3.Connection
    unread: int
    cursor: int = -(2 ** 63)  # the last row id read
    claimed: int = 0  # unread rows set aside for a read in progress (the owner's bookkeeping)
    outstanding: int = 0
    stuck: int = 0
    bad: list[int] = field(default_factory=list)
    acked: deque[int] = field(default_factory=deque)  # rows of settled events, deleted by the next commit
    undeleted: list[int] = field(default_factory=list)  # deletions a commit could not make yet
    closed: bool = False

    def read(self, limit: int) -> list[tuple[int, float, VWOEvent]]:
        """The next ``limit`` rows, in id order (the order their process queued them), as
        (id, queued_at, event); rows that hold no usable event are noted in ``bad`` and kept."""
        rows = self.conn.execute("SELECT * FROM events WHERE id > ? ORDER BY id LIMIT ?",
                                 (self.cursor, limit)).fetchall()
        self.unread = 0 if len(rows) < limit else self.unread - limit
        out: list[tuple[int, float, VWOEvent]] = []
        problem = ""
        for row in rows:
            self.cursor = row["id"]
            try:
                out.append((row["id"], float(row["queued_at"]), decode(row["event"])))
            except Exception as exc:  # whatever a damaged row holds, it is kept, never raised
                self.bad.append(row["id"])
                problem = problem or f"row {row['id']}: {exc}"
        if problem:
            logger.error("vwo_otel spool file %s: row(s) that hold no usable event (%s) are kept on disk; the "
                         "others are replayed", self.path, problem)
        return out

    def commit(self) -> bool:
        """Delete the rows of settled events, in one transaction; False if the disk refused
        (they are tried again by the next commit, or go with the file)."""
        rows = self.undeleted
        while self.acked:
            rows.append(self.acked.popleft())
        self.undeleted = []
        if not rows or self.closed:
            return True
        try:
            self.conn.execute("BEGIN")
            self.conn.executemany(DELETE, [(i,) for i in rows])
            self.conn.execute("COMMIT")
            return True
        except sqlite3.Error:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            self.undeleted = rows
            return False

    @property
    def done(self) -> bool:
        """Every event read and settled: the file holds nothing that must be kept but bad rows."""
        return not self.unread and not self.outstanding and not self.stuck

    def finish(self) -> int:
        """Let the file go: removed once every event in it settled (rows the disk would not
        delete go with it), set aside if it holds bad rows, else unlocked for a later start.
        Returns the events it still holds for a later start."""
        if self.closed:
            return 0
        kept = 0
        try:
            if self.done and self.conn.execute("SELECT 1 FROM events WHERE id > ? LIMIT 1", (self.cursor,)).fetchone():
                self.unread = -1  # rows its count did not see: not done, kept for a later start
            if self.done and not self.bad:
                self.conn.close()
                remove(self.path)
            elif self.done:
                self._quarantine()
            else:
                self.commit()
                kept = self._rows()
                self.conn.close()
        except (sqlite3.Error, OSError) as exc:
            logger.error("vwo_otel spool file %s: could not let it go cleanly (%s); it is left for a later start",
                         self.path, exc)
        finally:
            self.closed = True
            os.close(self.lock_fd)
        return kept

    def _rows(self) -> int:
        try:
            return int(self.conn.execute("SELECT COUNT(*) AS n FROM events").fetchone()["n"]) - len(self.bad)
        except sqlite3.Error:
            return self.unread + self.outstanding + self.stuck

    def _quarantine(self) -> None:
        self.conn.execute("CREATE TEMP TABLE bad (id INTEGER PRIMARY KEY)")
        self.conn.executemany("INSERT INTO bad VALUES (?)", [(i,) for i in self.bad])
        self.conn.execute("DELETE FROM events WHERE id NOT IN (SELECT id FROM bad)")
        self.conn.close()
        aside = set_aside(self.path, "quarantine")
        logger.error("vwo_otel spool file %s: %d row(s) that are not usable events are kept in %s",
                     self.path, len(self.bad), aside)



class OwnFile:
    """This process's spool file. Rows added by the emitting threads (``added``) and deletions
    of settled rows (``acked``) are written by ``write``, in one transaction; a disk that refuses
    keeps them for the next try (``unwritten``, ``undeleted``) and sets ``failing``; below the
    disk reserve no new row is written. Callers hold their disk lock; a full disk at start is
    waited out (``create`` is tried again), any other error at start raises. ``owner`` (once
    known) is recorded by the first transaction, with or before the first rows."""

    def __init__(self, directory: str, owner: spoolowner.Owner | None = None) -> None:
        self.directory = directory
        self.owner = owner
        self.owner_written = False
        self.path = os.path.join(directory, f"spool-{os.getpid()}-{secrets.token_hex(4)}.sqlite")
        self.conn: sqlite3.Connection | None = None  # None while the disk refuses to create the file
        self.lock_fd: int | None = None
        self.tried_at = -math.inf  # last try to create the file or commit while the disk refused
        try:
            st = os.statvfs(directory)
            size = st.f_blocks * st.f_frsize
        except OSError:
            size = 0
        self.reserve = min(max(size // 4, DISK_RESERVE[0]), DISK_RESERVE[1])
        self.added: deque[Row] = deque()
        self.acked: deque[int] = deque()
        self.unwritten: list[Row] = []  # rows of a failed commit, tried again next time
        self.undeleted: set[int] = set()  # deletions of a failed commit, tried again next time
        self.failing = False  # the last commit failed: nothing spills or parks until one succeeds
        self.last_error = ""
        self._logged_at = -math.inf
        self._free = math.inf  # free bytes on the disk when last looked (statvfs at most every 0.2 s
        self._looked_at = -math.inf  # unless it is tight), less what was written since
        self._small_wal = False

    def create(self, at_start: bool = False) -> bool:
        """Create this process's file. A disk that refuses it for lack of room is waited out
        (False, tried again every ``RETRY_INTERVAL``); at start any other error raises."""
        self.tried_at = time.monotonic()
        fd = None
        try:
            fd = lock(self.path + ".lock")
            assert fd is not None, "a fresh spool file cannot be locked by anyone else"
            conn = connect(self.path)
        except (OSError, sqlite3.Error) as exc:
            if fd is not None:
                os.close(fd)
            try:
                remove(self.path)
            except OSError:
                pass
            if at_start and not full(exc):
                raise
            self.failing, self.last_error = True, str(exc)
            if at_start:
                logger.error("vwo_otel spool %s: the disk has no room for this process's file (%s); events are kept "
                             "in memory only (a full queue drops) until it has, and files of processes that are "
                             "gone are delivered from where they are", self.directory, exc)
            return False
        self.lock_fd, self.conn, self.owner_written = fd, conn, False
        return True

    def write(self, inserts: bool = True) -> bool:
        """Write and delete what waits. ``inserts=False`` (and for ``RETRY_INTERVAL`` after
        the disk refused a commit): deletions only, rows wait (a row never written and since
        settled is simply dropped). True when nothing is left unwritten or undeleted."""
        if self.failing and (time.monotonic() - self.tried_at < RETRY_INTERVAL or self.free() < 2 * self.reserve):
            inserts = False
        acked = self.undeleted
        while self.acked:  # acks first: any acked event's row is already added
            acked.add(self.acked.popleft())
        rows: list[Row] = []
        for row in self.unwritten:
            if row[0] in acked:
                acked.discard(row[0])
            else:
                rows.append(row)
        while self.added:
            row = self.added.popleft()
            if row[0] in acked:
                acked.discard(row[0])  # settled before it ever reached the disk
            else:
                rows.append(row)
        self.unwritten, self.undeleted = [], set()
        if inserts and (rows or acked or self.failing):  # failing with nothing to write: a probe
            ok = self._transaction(rows, acked)
        elif acked and self.conn is not None:
            self.unwritten = rows
            ok = self._transaction([], acked) and not rows
        else:
            self.unwritten = rows
            ok = not rows
        return ok

    def _transaction(self, rows: list[Row], acked: set[int]) -> bool:
        """Disk lock held: one transaction in this process's file (created first if the disk
        refused it so far); on failure the rows and deletions are kept for the next try."""
        if self.conn is None and not self.create():
            self.unwritten[:0] = rows
            return False
        assert self.conn is not None
        rows = [(r, q, ev, text if text is not None else encode(ev)) for r, q, ev, text in rows]
        # their pages in the WAL, then in the file (a page holds about 3,000 bytes of rows)
        need = self.reserve + 2 * 4096 * (sum(len(row[3] or "") for row in rows) // 3000 + 4)
        if rows and self.free() < need:
            self.checkpoint()
        if rows and self.free() < need:
            self.unwritten[:0] = rows  # they would eat the room deletions need: as if the disk refused
            self.failing, self.last_error, self.tried_at = True, "the disk is nearly full", time.monotonic()
            rows = []
            if not acked:
                return False
        owner = None if self.owner_written else self.owner
        try:
            self.conn.execute("BEGIN")
            if owner is not None:
                self.conn.execute(spoolowner.WRITE, (spoolowner.text(owner),))
            self.conn.executemany(INSERT, [(r, q, text) for r, q, _, text in rows])
            self.conn.executemany(DELETE, [(i,) for i in acked])
            if not rows and not acked:  # a probe: does the disk take a write again?
                self.conn.execute(INSERT, (0, 0.0, ""))
                self.conn.execute(DELETE, (0,))
            self.conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._refused(rows, acked, exc)
            return False
        self.owner_written = self.owner_written or owner is not None
        self._free -= 2 * sum(len(row[3] or "") for row in rows)  # until the next look
        if self.unwritten:  # rows held back for room: the deletions went, the rows wait
            return False
        free = self.free()
        if free < self.reserve:  # the WAL's pages into the file; still too little: write no more rows
            self.checkpoint()
            free = self.free()
        self.failing = free < self.reserve
        if self.failing:
            self.last_error = f"the disk is nearly full ({free} bytes free)"
            self.tried_at = time.monotonic()
        return True

    def checkpoint(self) -> None:
        """Copy the WAL into the file; the next transaction reuses the WAL from its start."""
        try:
            if self.conn is not None:
                self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error:
            pass

    def free(self) -> float:
        """Free bytes on the disk (looked up at most every 0.2 s while there is plenty); near
        full, the WAL is kept small (see ``TIGHT``)."""
        now = time.monotonic()
        if now - self._looked_at >= 0.2 or self._free < 2 * TIGHT * self.reserve:
            try:
                st = os.statvfs(self.directory)
                self._free = float(st.f_bavail * st.f_frsize)
            except OSError:
                self._free = math.inf
            self._looked_at = now
            if self._free < TIGHT * self.reserve and not self._small_wal and self.conn is not None:
                self._small_wal = True
                try:
                    self.conn.execute(f"PRAGMA wal_autocheckpoint={max(8, self.reserve // 8192)}")
                except sqlite3.Error:
                    self._small_wal = False
        return self._free

    def _refused(self, rows: list[Row], acked: set[int], exc: sqlite3.Error) -> None:
        """Disk lock held: a commit failed; its rows and deletions wait for the next try."""
        assert self.conn is not None
        try:
            self.conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        self.unwritten[:0] = rows
        self.undeleted = acked
        self.failing, self.last_error = True, str(exc)
        self.tried_at = now = time.monotonic()
        if now - self._logged_at >= 10.0:
            self._logged_at = now
            logger.error("vwo_otel spool %s: commit failed (%s); %d event(s) not on disk yet and %d deletion(s) "
                         "not done; nothing spills or parks until a commit succeeds", self.path, exc,
                         len(self.unwritten), len(acked))

    def count(self) -> int:
        """Rows in this process's file (-1: unknown, the disk did not say)."""
        if self.conn is None:
            return 0
        try:
            return int(self.conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])
        except sqlite3.Error:
            return -1


def adopt(directory: str, own: str, owner: spoolowner.Owner) -> tuple[list[Orphan], Counter[str]]:
    """Lock the spool files of processes that are gone whose owner is ``owner`` and open them,
    oldest name first; and what was left alone, by reason (``spoolowner``): files, and under
    ``reason + spoolowner.EVENTS`` the events in them (another OS user's files are not opened).
    Never raises and never blocks on what the directory holds (see the module docstring)."""
    orphans = []
    left: Counter[str] = Counter()
    for path in sorted(glob.glob(os.path.join(directory, PATTERN))):
        if path == own:
            continue
        try:
            orphan = _adopt_one(path, owner)
        except Exception as exc:
            _give_up_on(path, exc, "unadoptable")
            continue
        if isinstance(orphan, Orphan):
            orphans.append(orphan)
        elif orphan is not None:
            why, rows = orphan
            left[why] += 1
            left[why + spoolowner.EVENTS] += rows
    return orphans, +left


def _adopt_one(path: str, owner: spoolowner.Owner) -> Orphan | tuple[str, int] | None:
    """One file, locked and opened; why it is not this process's to adopt (``spoolowner``) and
    its events; or None if a live process owns it or it cannot be adopted."""
    if spoolowner.foreign(path):  # before anything is created or moved in another user's name
        return spoolowner.USER, 0
    if not _regular(path):
        _give_up_on(path, OSError("not a regular file"), "not-a-file")
        return None
    try:
        fd = lock(path + ".lock")
    except OSError as exc:  # its .lock is a link or no file: whoever put it there, the events stay as they are
        logger.warning("vwo_otel spool file %s left alone: its lock file cannot be locked (%s); remove %s.lock "
                       "to let a process deliver it", path, exc, path)
        return None
    if fd is None:
        return None  # a live process owns it
    try:
        if not os.path.exists(path):  # another process adopted and removed it meanwhile
            remove(path)  # only our fresh .lock is left
            os.close(fd)
            return None
        orphan = _open(path, fd, owner)
    except BaseException:
        os.close(fd)
        raise
    if not isinstance(orphan, Orphan):
        os.close(fd)
    return orphan


def _open(path: str, lock_fd: int, owner: spoolowner.Owner) -> Orphan | tuple[str, int] | None:
    """A dead process's file as an ``Orphan``; why it is not ours and its events; None (with a
    log line) if it cannot be adopted."""
    conn = None
    try:
        conn = sqlite3.connect(f"file:{pathname2url(path)}?mode=rw", uri=True, isolation_level=None,
                               check_same_thread=False)
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if not 0 <= version <= SCHEMA_VERSION:
            conn.close()
            logger.error("vwo_otel spool file %s has layout version %d, which this vwo_otel (version %d) cannot "
                         "read; left as it is for a vwo_otel that can", path, version, SCHEMA_VERSION)
            return None
        rows = int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])
        found = spoolowner.recorded(conn) if version == SCHEMA_VERSION else None
        conn.row_factory = _as_dict
    except sqlite3.Error as exc:
        if conn is not None:
            conn.close()
        if _never_written(path):  # its process died while creating it: nothing to replay
            remove(path)
            return None
        _give_up_on(path, exc, "corrupt")
        return None
    if not rows:
        conn.close()
        remove(path)
        return None
    # again now that SQLite opened its WAL: one another user put there meanwhile is not read from
    why = spoolowner.USER if spoolowner.foreign(path) else spoolowner.refusal(found, owner)
    if why is not None:
        conn.close()
        return why, 0 if why == spoolowner.USER else rows
    return Orphan(path, lock_fd, conn, rows)


def _give_up_on(path: str, exc: BaseException, why: str) -> None:
    """An unexpected error adopting ``path``: set it aside (logged), so later starts skip it."""
    try:
        aside = set_aside(path, why)
    except OSError as move_error:
        logger.error("vwo_otel spool file %s could not be adopted (%r) nor moved aside (%s)", path, exc, move_error)
    else:
        what = "is unreadable" if why == "corrupt" else "could not be adopted"
        logger.error("vwo_otel spool file %s %s (%r); moved aside to %s", path, what, exc, aside)
