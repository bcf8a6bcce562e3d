"""Whose events a spool file holds, and which dead processes' files this process may adopt.

A file records its owner: one row of its ``meta`` table (layout version 2) holding the
exporter's ``destination`` as JSON: the account id, the endpoint, the sdk key's SHA-256 (never
the key) and ``disabled`` (development mode). A process adopts a dead process's file only if

- the file (and its WAL and shared-memory files) belongs to this process's effective OS user:
  another local user who can write in the directory cannot plant events the app would send
  under its own account and key (where the platform has no ``os.geteuid``, this is not checked);
- it records exactly this process's owner: an app of another account, endpoint or sdk key
  (staging beside production) never sends another's events, a development-mode process never
  takes a sending one's (it would report them ``not_sent`` and delete them), and a sending one
  never sends what development mode spooled (events that were never to be sent).

A file without an owner record (layout 0 or 1, written before owners were recorded) says
nothing about whose events it holds: it is left alone too. What a look leaves alone is said in
one WARNING whenever it changes, never with a key; a directory others may write in is one
WARNING when the spool opens it.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
from collections import Counter
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger("vwo_otel")

TABLE = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID"
WRITE = "INSERT OR REPLACE INTO meta (key, value) VALUES ('owner', ?)"
#: Why a file was left alone: another account, endpoint or key; the same destination in the
#: other mode (sending / development); no owner record; another OS user's file.
OTHER, MODE, UNOWNED, USER = "other", "mode", "unowned", "user"
#: Appended to a reason: the events in the files left alone for it.
EVENTS = " events"

Owner = dict[str, Any]


def of(exporter: object) -> Owner | None:
    """The owner record of ``exporter``'s events (its ``destination``, as JSON reads it back);
    None for an exporter that does not say (its spool adopts nothing, its file names no owner)."""
    destination = getattr(exporter, "destination", None)
    if not isinstance(destination, Mapping):
        return None
    owner: Owner = json.loads(json.dumps(dict(destination)))
    return owner


def text(owner: Owner) -> str:
    return json.dumps(owner, sort_keys=True, separators=(",", ":"))


def recorded(conn: sqlite3.Connection) -> Owner | None:
    """The owner a file records (None: none, or not a JSON object)."""
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'owner'").fetchone()
        found = json.loads(row[0]) if row else None
    except (sqlite3.Error, ValueError, TypeError):
        return None
    return found if isinstance(found, dict) else None


def refusal(found: Owner | None, mine: Owner) -> str | None:
    """Why a file recording ``found`` is not this process's to adopt (None: it is)."""
    if found is None:
        return UNOWNED
    if found == mine:
        return None
    return MODE if {**found, "disabled": mine.get("disabled")} == mine else OTHER


def _euid() -> int | None:
    geteuid = getattr(os, "geteuid", None)
    return None if geteuid is None else int(geteuid())


def foreign(db_path: str) -> bool:
    """The file, its WAL or its shared-memory file belongs to another OS user."""
    euid = _euid()
    if euid is None:
        return False
    for suffix in ("", "-wal", "-shm"):
        try:
            if os.lstat(db_path + suffix).st_uid != euid:
                return True
        except FileNotFoundError:
            continue
    return False


def check_directory(directory: str) -> None:
    """One WARNING if other users may write in ``directory`` (world-writable, or group-writable
    and not ours): files they put there are never adopted, but a private directory is safer."""
    euid = _euid()
    try:
        st = os.stat(directory)
    except OSError:
        return
    if euid is not None and (st.st_mode & stat.S_IWOTH or (st.st_mode & stat.S_IWGRP and st.st_uid != euid)):
        logger.warning("vwo_otel spool %s: the directory is writable by other users (mode %o); spool files they "
                       "put there are never delivered, but a directory only this user can write to is safer",
                       directory, stat.S_IMODE(st.st_mode))


class LeftAlone:
    """The dead processes' files a look left alone, by reason: one WARNING when that changes."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.last: Counter[str] = Counter()

    def saw(self, left: Counter[str], mine: Owner) -> None:
        if left == self.last:
            return
        self.last = left
        if not left:
            return
        words = {
            OTHER: "of another account, endpoint or sdk key",
            MODE: ("of a process that sends (this one is in development mode: disabled)" if mine.get("disabled")
                   else "of a process in development mode (disabled), never to be sent"),
            UNOWNED: "without a readable owner record (written by an older vwo_otel, or damaged)",
            USER: "of another OS user",
        }
        parts = [f"{left[why]} file(s) {words[why]}"
                 + (f" holding {left[why + EVENTS]} event(s)" if why != USER else "")
                 for why in (OTHER, MODE, UNOWNED, USER) if left[why]]
        logger.warning("vwo_otel spool %s: left alone %s; a dead process's spool file is delivered only by a "
                       "process of the same OS user sending to the same account, endpoint and sdk key",
                       self.directory, ", ".join(parts))
