"""Process lifecycle: deliver what is queued at interpreter exit, start afresh after fork."""

from __future__ import annotations

import atexit
import os
import weakref
from typing import Any

_live: weakref.WeakSet[Any] = weakref.WeakSet()


def track(batcher: Any) -> None:
    """Have ``batcher.shutdown()`` run at exit and ``batcher.after_fork()`` in forked children."""
    _live.add(batcher)


def _at_exit() -> None:
    for batcher in list(_live):
        batcher.shutdown()


def _in_child() -> None:
    for batcher in list(_live):
        batcher.after_fork()


atexit.register(_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_in_child)
