"""What the commands share: one-line errors (exit 2), bind errors in words, waiting until Ctrl-C or
SIGTERM, and a shutdown that a second signal does not cut."""

from __future__ import annotations

import contextlib
import errno
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import TextIO


def fail(command: str, problem: object, err: TextIO | None = None) -> int:
    """Report a bad argument or configuration in one line, as argparse does; exit code 2."""
    (err or sys.stderr).write(f"vwo-otel {command}: error: {problem}\n")
    return 2


def cannot_listen(host: str, port: int, exc: OSError) -> str:
    """Why a server could not listen on ``host``:``port``, in one line naming the address."""
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return (f"{address} is already in use (another process listens there): stop it, or choose another "
                "--port (0: any free one)")
    if exc.errno == errno.EACCES:
        return f"{address}: permission denied (ports below 1024 need privileges): choose another --port"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{address}: no such address on this machine: check --host"
    return f"cannot listen on {address}: {exc.strerror or exc}"


@contextlib.contextmanager
def until_interrupted() -> Iterator[threading.Event]:
    """Run the block (a foreground server's wait loop) until Ctrl-C or SIGTERM, which both end it quietly.

    SIGTERM sets the event the block gets and raises ``KeyboardInterrupt`` inside it (main
    thread only); its previous handler is restored on the way out. Enter it before announcing
    that the server listens, so a SIGTERM sent as soon as the announcement is read is already
    handled. Wait in short steps (``event.wait(0.5)``): a signal another thread took runs its
    handler only when the main thread next runs Python code."""
    stopped = threading.Event()

    def interrupt(signum: int, frame: FrameType | None) -> None:
        stopped.set()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield stopped
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


@contextlib.contextmanager
def while_stopping(what: str) -> Iterator[None]:
    """Run the block (a server's bounded shutdown) with further SIGTERM / Ctrl-C logged and
    ignored: a second signal must not cut the delivery of what was accepted."""
    def note(signum: int, frame: FrameType | None) -> None:
        logging.getLogger("vwo_otel").warning("%s is already stopping (within its shutdown_timeout); "
                                              "SIGKILL stops it now, losing what it holds in memory", what)

    previous = [(sig, signal.signal(sig, note)) for sig in (signal.SIGTERM, signal.SIGINT)]
    try:
        yield
    finally:
        for sig, handler in previous:
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
