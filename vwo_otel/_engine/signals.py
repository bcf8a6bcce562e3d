"""Deliver what is queued when SIGTERM / SIGINT would kill the process, without the app adding code.

A signal whose disposition is the default action (``SIG_DFL``) kills Python at once: no
``atexit``, so the queue would be lost. That is the case for a plain ``python app.py`` stopped
by Kubernetes, systemd or ``docker stop``. Where the disposition of SIGTERM or SIGINT is
``SIG_DFL`` when an engine starts (on the main thread), vwo_otel installs its handler: it
delivers (``lifecycle.shutdown_all``, bounded by ``shutdown_timeout``), restores ``SIG_DFL`` and
raises the signal again, so the process still ends the way the signal says. ``signal.signal``
and ``signal.getsignal`` are left as they are: ``getsignal`` shows vwo_otel's handler, and an
app or server that saves the handler it replaces and restores it later restores vwo_otel's
(uvicorn with one worker imports the app before it installs its own handlers, so it does).

A handler already in place (the app's, a server's, Python's ``KeyboardInterrupt``) still runs
and decides; a normal exit then delivers through ``atexit``. For SIGTERM one more thing is
needed, read from uvicorn (``Server.capture_signals``): a server that installed its handler
before the app was imported (uvicorn with ``--workers`` > 1 or ``--reload``) restores the
default action when it has stopped and raises the signal again, which would kill the process
before ``atexit``. So where SIGTERM has a handler, vwo_otel's runs it first, unchanged, and
then holds that signal on the main thread (blocks it): a re-raise waits until the process
exits, after ``atexit`` delivered (``release``), and then takes its effect. ``SIG_IGN`` stays
ignored. Main thread only. Opt out with ``VWO_SIGNALS=false``.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from .. import checks

logger = logging.getLogger("vwo_otel")

SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: Extra seconds the handler waits for delivery beyond the engines' own shutdown deadline.
_GRACE = 1.0

_deliver: Callable[[], Any] | None = None
_timeout: Callable[[], float] = lambda: 10.0  # noqa: E731 - replaced by install()
_last_words: Callable[[], Any] = lambda: None  # noqa: E731 - replaced by install()
_lock = threading.Lock()
_signalled: dict[int, bool] = {}  # signals whose delivery has started
_held: set[int] = set()  # signals blocked on the main thread after an app's / server's handler ran


def install(deliver: Callable[[], Any], timeout: Callable[[], float],
            last_words: Callable[[], Any] = lambda: None) -> None:
    """Install vwo_otel's handler where SIGTERM / SIGINT take the default action, and chain onto
    a SIGTERM handler already in place: ``deliver()`` runs (given at most ``timeout()`` seconds)
    before the default action. Idempotent per signal; a no-op off the main thread (signals can
    only be set there; a later call from the main thread installs) or when ``VWO_SIGNALS`` is false."""
    global _deliver, _timeout, _last_words
    if threading.current_thread() is not threading.main_thread() or not enabled():
        return
    with _lock:
        _deliver, _timeout, _last_words = deliver, timeout, last_words
    for sig in SIGNALS:
        current = signal.getsignal(sig)
        if current is signal.SIG_DFL:
            signal.signal(sig, _on_signal)
        elif sig == signal.SIGTERM and callable(current) and current is not _on_signal \
                and not isinstance(current, _Chained):
            signal.signal(sig, _Chained(current))


def quiet(target: Callable[..., Any]) -> Callable[..., Any]:
    """``target`` for a vwo_otel thread that never takes SIGTERM / SIGINT (it blocks them first).
    Python runs signal handlers only on the main thread, when it next runs Python code: a
    signal another thread takes while the main thread sleeps in C (``time.sleep``, a lock)
    waits until that returns. Blocked in vwo_otel's threads, it goes to the main thread."""
    def run(*args: Any, **kwargs: Any) -> Any:
        if hasattr(signal, "pthread_sigmask"):
            signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        return target(*args, **kwargs)

    return run


def enabled(environ: Any = None) -> bool:
    """False when ``VWO_SIGNALS`` says so (``false``, ``0``, ``no``, ``off``)."""
    raw = (os.environ if environ is None else environ).get("VWO_SIGNALS", "")
    return not raw.strip() or checks.flag("VWO_SIGNALS", raw)


class _Chained:
    """SIGTERM's handler where one was in place: runs it unchanged, then holds the signal on the
    main thread, so a default action its owner sets up and raises later waits for ``release``."""

    def __init__(self, previous: Callable[[int, FrameType | None], Any]) -> None:
        self.previous = previous

    def __call__(self, signum: int, frame: FrameType | None) -> Any:
        try:
            return self.previous(signum, frame)
        finally:
            if signum not in _held:
                _held.add(signum)
                signal.pthread_sigmask(signal.SIG_BLOCK, {signum})

    def __repr__(self) -> str:
        return f"vwo_otel signals chained onto {self.previous!r}"


def release() -> None:
    """At exit, after delivery: a held signal takes its effect now (``lifecycle`` calls this);
    in a forked child: the parent's hold is not the child's."""
    if _held:
        held = set(_held)
        _held.clear()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, held)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    """Start delivery and return at once: the main thread may have been interrupted while
    holding an engine's lock, which delivery needs. A (non-daemon) thread delivers, then ends
    the process with the signal's default action; a second signal meanwhile ends it at once."""
    with _lock:
        busy = _signalled.get(signum)
        _signalled[signum] = True
    if busy or _deliver is None:
        _die(signum)
        return
    try:
        threading.Thread(target=quiet(_deliver_then_die), args=(_deliver, signum), name="vwo_otel-signal").start()
    except RuntimeError:  # interpreter shutting down: nothing more can be sent
        _die(signum)


def _deliver_then_die(deliver: Callable[[], Any], signum: int) -> None:
    worker = threading.Thread(target=quiet(_run), args=(deliver,), name="vwo_otel-signal-delivery", daemon=True)
    worker.start()
    worker.join(_timeout() + _GRACE)
    if worker.is_alive():
        logger.warning("vwo_otel: delivery on signal %d did not finish in time", signum)
    try:  # what was refused since (an app still emitting), not yet reported: counted in the log
        _last_words()
    except Exception:  # pragma: no cover - logging only
        logger.exception("vwo_otel: the last log lines failed")
    # The signal again: the handler, on the main thread (only it may restore SIG_DFL), now ends
    # the process. Should the main thread never get to run it (stuck in C code), exit anyway.
    os.kill(os.getpid(), signum)
    time.sleep(_GRACE)
    os._exit(128 + signum)


def _die(signum: int) -> None:
    """The signal's default action, now (main thread)."""
    signal.signal(signum, signal.SIG_DFL)
    signal.raise_signal(signum)


def _run(deliver: Callable[[], Any]) -> None:
    try:
        deliver()
    except Exception:  # pragma: no cover - shutdown_all logs its own failures
        logger.exception("vwo_otel: delivery on signal failed")
