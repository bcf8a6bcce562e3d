"""Process lifecycle: deliver what is queued at interpreter exit, start afresh after fork.

Exit: every live batcher is shut down at interpreter exit (``atexit``), all in parallel
within one ``shutdown_timeout``: ``shutdown_all`` first begins every shutdown (refuse new
events, cut queues, cap retry waits), then waits for each. The hook re-registers itself
whenever a batcher is created, so it runs before the ``atexit`` shutdown of a
``TracerProvider`` made earlier. A SIGTERM / SIGINT whose default action would kill
Python without ``atexit`` runs the same delivery first (``signals``).

Fork: one at-fork hook (``_in_child``) walks every engine: a forked child starts with an empty
queue, fresh threads, a fresh exporter and transport and a fresh backlog (``after_fork``, in
that order); what the parent's side left (its connections, sockets) is returned and kept in
one list here, never used or closed in the child. The events queued before the fork are the
parent's to deliver, so
none is sent twice. Events emitted in the child are delivered by the child when it exits
through a path that runs ``atexit`` (returning from the program, ``sys.exit``) or
through ``multiprocessing`` (its children end with ``os._exit`` after running the
finalizers registered here). A child that ends with a bare ``os._exit()`` (or is killed)
skips both: call ``processor.shutdown()`` or ``vwo_otel._engine.lifecycle.shutdown_all()``
first, or its queued events are lost without a report.
"""

from __future__ import annotations

import atexit
import logging
import os
import weakref
from collections.abc import Iterable
from typing import Any, Protocol

from . import signals

logger = logging.getLogger("vwo_otel")


class Batcher(Protocol):
    """What the lifecycle needs of an engine (``batcher.Batcher``): a two-step shutdown, so at
    exit every engine drains in parallel, and a fresh start in a forked child."""

    shutdown_timeout: float

    def begin_shutdown(self, timeout: float | None = None) -> Any: ...

    def finish_shutdown(self, state: Any) -> bool: ...

    def after_fork(self) -> list[object]: ...

    def last_words(self) -> None: ...


_live: weakref.WeakSet[Batcher] = weakref.WeakSet()
#: In a forked child: what the parent's side of the fork left (its connections), kept referenced
#: and never used or closed, so the child cannot disturb the files and sockets the parent uses.
_inherited: list[object] = []


def track(batcher: Batcher) -> None:
    """Have ``batcher.shutdown()`` run at exit, on a SIGTERM / SIGINT that would otherwise kill
    the process at once (``signals``), and ``batcher.after_fork()`` in forked children."""
    _live.add(batcher)
    atexit.unregister(_at_exit)  # move to the end of the list: atexit runs it first
    atexit.register(_at_exit)
    signals.install(shutdown_all, _longest_timeout, _last_words)


def _last_words() -> None:
    """Just before a signal ends the process: each engine logs the drops its log held back
    since its shutdown (an app still emitting), which its callback may not get to report."""
    for batcher in list(_live):
        batcher.last_words()


def _longest_timeout() -> float:
    """How long ``shutdown_all()`` may take: the live batchers drain in parallel."""
    return max((b.shutdown_timeout for b in list(_live)), default=0.0)


def shutdown_all(timeout: float | None = None, batchers: Iterable[Batcher] | None = None) -> bool:
    """Shut down ``batchers`` (default: every live one), each within ``timeout`` (default its
    own ``shutdown_timeout``), in parallel; True if everything queued was delivered."""
    started: list[tuple[Batcher, Any]] = []
    for batcher in list(_live if batchers is None else batchers):
        try:
            state = batcher.begin_shutdown(timeout)
        except Exception:
            logger.exception("vwo_otel: shutdown of %r failed", batcher)
            continue
        if state is not None:
            started.append((batcher, state))
    ok = True
    for batcher, state in started:
        try:
            ok = batcher.finish_shutdown(state) and ok
        except Exception:
            logger.exception("vwo_otel: shutdown of %r failed", batcher)
            ok = False
    return ok


def _at_exit() -> None:
    shutdown_all()
    signals.release()  # a SIGTERM a server raised again after its own handler takes its effect now


def _in_child() -> None:
    """The one at-fork hook: each engine starts afresh (queue, threads, exporter and its
    transport, backlog), in that order."""
    signals.release()
    for batcher in list(_live):
        try:
            _inherited.extend(batcher.after_fork())
        except Exception:  # pragma: no cover - must never break the child
            logger.exception("vwo_otel: after-fork reset of %r failed", batcher)


class _Token:
    """Keeps the multiprocessing after-fork registration alive (it holds a weak reference)."""


_token = _Token()


def _mp_child(_: Any) -> None:
    """In a ``multiprocessing`` child (after its finalizer registry was cleared): run
    ``shutdown_all`` in the finalizers it runs just before ``os._exit``."""
    from multiprocessing import util

    util.Finalize(None, shutdown_all, exitpriority=10)


atexit.register(_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_in_child)
    try:
        from multiprocessing import util as _mp_util
    except ImportError:  # pragma: no cover
        pass
    else:
        _mp_util.register_after_fork(_token, _mp_child)
