"""Deliver what is queued when SIGTERM / SIGINT would kill the process, without the app adding code.

A signal whose disposition is the default action (``SIG_DFL``) kills Python at once: no
``atexit``, so the queue would be lost. That is the case for a plain ``python app.py`` stopped
by Kubernetes, systemd or ``docker stop``, and for uvicorn, which restores the default handler
after its graceful shutdown and raises the signal again. Wherever the disposition of SIGTERM or
SIGINT is ``SIG_DFL`` (now or later, whoever sets it), vwo_otel stands in for it: it delivers
(``lifecycle.shutdown_all``, bounded by ``shutdown_timeout``), restores ``SIG_DFL`` and raises
the signal again, so the process still ends the way the signal says.

A handler the app or a server installed (gunicorn's, uvicorn's while it runs, the app's own,
Python's ``KeyboardInterrupt``) is never replaced or wrapped: it decides, and a normal exit
delivers through ``atexit``. ``SIG_IGN`` stays ignored. ``signal.getsignal`` still reports
``SIG_DFL`` where vwo_otel stands in. Main thread only. Opt out with ``VWO_SIGNALS=false``.
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

_set_handler = signal.signal  # the original functions: the wrappers below call them
_get_handler = signal.getsignal
_deliver: Callable[[], Any] | None = None
_timeout: Callable[[], float] = lambda: 10.0  # noqa: E731 - replaced by install()
_lock = threading.Lock()
_signalled: dict[int, bool] = {}  # signals whose delivery has started


def install(deliver: Callable[[], Any], timeout: Callable[[], float]) -> None:
    """Stand in for ``SIG_DFL`` of SIGTERM/SIGINT from now on: ``deliver()`` runs (given at most
    ``timeout()`` seconds) before the default action. Idempotent; a no-op off the main thread
    (signals can only be set there; a later call from the main thread installs) or when
    ``VWO_SIGNALS`` is false."""
    global _deliver, _timeout
    if threading.current_thread() is not threading.main_thread() or not enabled():
        return
    with _lock:
        if _deliver is not None:
            return
        _deliver, _timeout = deliver, timeout
        signal.signal = _signal  # type: ignore[assignment]
        signal.getsignal = _getsignal  # type: ignore[assignment]
    for sig in SIGNALS:
        if _get_handler(sig) is signal.SIG_DFL:
            _set_handler(sig, _on_signal)


def enabled(environ: Any = None) -> bool:
    """False when ``VWO_SIGNALS`` says so (``false``, ``0``, ``no``, ``off``)."""
    raw = (os.environ if environ is None else environ).get("VWO_SIGNALS", "")
    return not raw.strip() or checks.flag("VWO_SIGNALS", raw)


def _signal(signum: int, handler: Any) -> Any:
    """``signal.signal`` that keeps standing in for ``SIG_DFL`` (and reports it as ``SIG_DFL``)."""
    if handler is signal.SIG_DFL and signum in SIGNALS and _deliver is not None:
        handler = _on_signal
    previous = _set_handler(signum, handler)
    return signal.SIG_DFL if previous is _on_signal else previous


def _getsignal(signum: int) -> Any:
    handler = _get_handler(signum)
    return signal.SIG_DFL if handler is _on_signal else handler


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
        threading.Thread(target=_deliver_then_die, args=(_deliver, signum), name="vwo_otel-signal").start()
    except RuntimeError:  # interpreter shutting down: nothing more can be sent
        _die(signum)


def _deliver_then_die(deliver: Callable[[], Any], signum: int) -> None:
    worker = threading.Thread(target=_run, args=(deliver,), name="vwo_otel-signal-delivery", daemon=True)
    worker.start()
    worker.join(_timeout() + _GRACE)
    if worker.is_alive():
        logger.warning("vwo_otel: delivery on signal %d did not finish in time", signum)
    # The signal again: the handler, on the main thread (only it may restore SIG_DFL), now ends
    # the process. Should the main thread never get to run it (stuck in C code), exit anyway.
    os.kill(os.getpid(), signum)
    time.sleep(_GRACE)
    os._exit(128 + signum)


def _die(signum: int) -> None:
    """The signal's default action, now (main thread)."""
    _set_handler(signum, signal.SIG_DFL)
    signal.raise_signal(signum)


def _run(deliver: Callable[[], Any]) -> None:
    try:
        deliver()
    except Exception:  # pragma: no cover - shutdown_all logs its own failures
        logger.exception("vwo_otel: delivery on signal failed")
