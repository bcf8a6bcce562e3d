"""``vwo-otel gateway --workers N``: N processes serve one port, so the gateway uses N cores.

The parent (``Fleet``) binds the port (``listeners.listen_many``: a socket per worker with
``SO_REUSEPORT`` where the kernel balances connections over them, else one shared socket; a port
another process listens on is refused either way) and forks the workers; it never serves a
request. Each worker is a whole ``Gateway``: its own backlogs, its own spool file in the shared
spool directory (files are per process), its figures published for the others (``stats.Peers``)
so ``/stats`` and ``/metrics`` answer for the port. A worker that dies is started again (its
spool file is adopted by the others or by its successor); SIGTERM / Ctrl-C to the parent drains
every worker at once (each keeps its listener open, answering 503, within ``shutdown_timeout``).
POSIX only (``fork``); the parent starts no thread before forking.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import shutil
import signal
import socket
import tempfile
import threading
import time
from types import FrameType
from typing import Any

from .. import listeners
from .app import CLOSE_TIME, Gateway
from .config import GatewayConfig
from .stats import Peers

logger = logging.getLogger("vwo_otel")

#: Seconds a worker has to start serving; one that does not (or exits first) stops the start.
START_TIMEOUT = 60.0
#: Seconds between starts of a worker that keeps dying soon after starting (doubling up to this).
RESPAWN_BACKOFF_MAX = 30.0
_SOON = 10.0  # seconds: a worker dying sooner after its start counts toward the backoff


class WorkerFailed(RuntimeError):
    """A worker could not start (its own log line says why)."""


class Fleet:
    """The parent of ``config.workers`` gateway processes on one port. ``start()`` binds and
    forks (``OSError`` if the port is taken, ``WorkerFailed`` if a worker cannot start),
    ``watch()`` restarts workers that die, ``stop()`` drains them all; ``stats()`` is every
    worker's ``/stats`` merged."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.n = config.workers
        self._socks: list[socket.socket] = []
        self._dir = ""
        self._slots: dict[int, int] = {}  # live worker pid -> its slot (socket)
        self._started: dict[int, float] = {}  # slot -> when its worker last started
        self._quick_deaths: dict[int, int] = {}  # slot -> deaths soon after start in a row
        self._due: dict[int, float] = {}  # slot -> when a dead worker's successor may start
        self.failed = 0  # workers that ended with a non-zero status (or a signal) while running
        self.port = config.port
        self._stopping = False

    @property
    def url(self) -> str:
        host, scheme = self.config.host, self.config.scheme
        return f"{scheme}://[{host}]:{self.port}" if ":" in host else f"{scheme}://{host}:{self.port}"

    def start(self) -> Fleet:
        c = self.config
        self._socks = listeners.listen_many(c.host, c.port, self.n)
        self.port = int(self._socks[0].getsockname()[1])
        self._dir = tempfile.mkdtemp(prefix="vwo-otel-gateway-")
        try:
            ready = [self._spawn(slot) for slot in range(self.n)]
            deadline = time.monotonic() + START_TIMEOUT
            for fd in ready:
                if not _ready(fd, deadline):
                    raise WorkerFailed("a gateway worker did not start (its log above says why)")
        except BaseException:
            self.stop(0.0)
            raise
        return self

    def _spawn(self, slot: int) -> int:
        """Fork the worker of ``slot``; the read end of a pipe it writes one byte to once it serves."""
        r, w = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker: never returns
            os.close(r)
            _worker(self.config, self._socks[slot], [s for s in self._socks if s is not self._socks[slot]],
                    self._dir, w, parent)
        os.close(w)
        self._slots[pid] = slot
        self._started[slot] = time.monotonic()
        return r

    def watch(self) -> None:
        """Reap workers that ended and start their successors (with a backoff for one that keeps
        dying soon after starting). Call it every so often from the parent's main thread."""
        while self._slots:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                break
            self._ended(pid, status)
        now = time.monotonic()
        for slot, due in list(self._due.items()):
            if now >= due and not self._stopping:
                del self._due[slot]
                fd = self._spawn(slot)
                os.close(fd)  # it announces nothing now: a successor that fails dies and comes back here
                logger.info("vwo_otel gateway: started worker %d again (slot %d)", next(
                    p for p, s in self._slots.items() if s == slot), slot)

    def _ended(self, pid: int, status: int) -> None:
        slot = self._slots.pop(pid, None)
        if slot is None:
            return
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            self.failed += 1
        if self._stopping:  # its last figures stay as it wrote them (on_disk: what stays there)
            return
        Peers(self._dir).retire(pid)
        lived = time.monotonic() - self._started.get(slot, 0.0)
        quick = self._quick_deaths.get(slot, 0) + 1 if lived < _SOON else 0
        self._quick_deaths[slot] = quick
        delay = min(RESPAWN_BACKOFF_MAX, 2.0 ** quick / 2) if quick else 0.0
        how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
        logger.warning("vwo_otel gateway: worker %d %s after %.1f s; starting another in %.1f s (what it accepted "
                       "with --spool is delivered from its spool file; without, it is lost)", pid, how, lived, delay)
        self._due[slot] = time.monotonic() + delay

    def stop(self, timeout: float | None = None) -> bool:
        """SIGTERM every worker (each drains within ``shutdown_timeout``), wait for them (then
        SIGKILL what is left: its spool keeps what it held), let the port go. True if every
        worker ended with status 0 and none failed while running."""
        self._stopping = True
        for pid in list(self._slots):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for sock in self._socks:  # each worker's copy stays open while it drains
            sock.close()
        budget = self.config.shutdown_timeout + CLOSE_TIME + 3.0 if timeout is None else timeout
        deadline = time.monotonic() + budget
        while self._slots and time.monotonic() < deadline:
            self.watch()
            time.sleep(0.05)
        for pid in list(self._slots):
            logger.error("vwo_otel gateway: worker %d did not end within %.0f s of SIGTERM; killing it", pid, budget)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                self._ended(*os.waitpid(pid, 0))
        return self.failed == 0

    def stats(self) -> dict[str, Any]:
        """Every worker's ``/stats`` merged (after ``stop``: what each reported at its end)."""
        return Peers(self._dir).gather() if self._dir else {}

    def close(self) -> None:
        """Remove the directory the workers shared their figures in."""
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)


def _ready(fd: int, deadline: float) -> bool:
    """Wait for a worker's "serving" byte on ``fd`` (False: it exited or took too long)."""
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            readable, _, _ = select.select([fd], [], [], min(left, 1.0))
            if readable:
                return os.read(fd, 1) == b"r"
    finally:
        os.close(fd)


def _worker(config: GatewayConfig, sock: socket.socket, others: list[socket.socket], peers: str, ready: int,
            parent: int) -> None:
    """A worker process: serve ``sock`` until SIGTERM / SIGINT (or the parent is gone), drain,
    exit 0 if everything it accepted was delivered (or stays in its spool), else 1."""
    code = 1
    try:
        stopped = threading.Event()

        def stop(signum: int, frame: FrameType | None) -> None:
            stopped.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, stop)
        for other in others:
            other.close()
        gateway = Gateway(config, listener=sock, peers=peers).start()
        with contextlib.suppress(OSError):  # a successor's pipe is not read
            os.write(ready, b"r")
        os.close(ready)
        while not stopped.wait(0.5):
            if os.getppid() != parent:  # the parent died (kill -9): do not hold the port alone
                logger.warning("vwo_otel gateway: worker %d: the parent process is gone; stopping", os.getpid())
                break
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)  # a second signal must not cut the drain
        ok = gateway.stop()
        stats = gateway.stats()
        lost = any(a["failed"] or any(a["dropped"].values()) for a in stats["accounts"].values())
        code = 0 if ok and not lost else 1
    except BaseException:
        logger.exception("vwo_otel gateway: worker %d failed", os.getpid())
    finally:
        logging.shutdown()
        os._exit(code)
