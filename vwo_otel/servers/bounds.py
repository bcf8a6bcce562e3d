"""Bounds the HTTP server keeps whatever clients do: connections within the file limit
(``connection_limit``), body bytes held at once (``Budget``), worker threads (``Pool``), and a
bounded wait for a socket (``ready``)."""

from __future__ import annotations

import math
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from .._engine.concurrency import soft_file_limit

_T = TypeVar("_T")

#: Files kept free for everything else (outgoing connections, spool files): at least this many
#: and a quarter of the soft RLIMIT_NOFILE.
FD_RESERVE = 64


class Budget:
    """Body bytes held at once (``used``) against ``total``; ``freed`` is called when some are given back."""

    def __init__(self, total: int, freed: Callable[[], None]) -> None:
        self.total, self.used, self._freed = total, 0, freed
        self._lock = threading.Lock()

    def change(self, delta: int) -> None:
        with self._lock:
            self.used += delta
        if delta < 0:
            self._freed()

    def room(self) -> int:
        return self.total - self.used


def ready(sock: socket.socket, for_write: bool, timeout: float) -> bool:
    """Whether ``sock`` became readable (writable) within ``timeout`` seconds (poll: any fd number)."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, select.POLLOUT if for_write else select.POLLIN)
        return bool(poller.poll(max(1, math.ceil(timeout * 1000))))
    r, w, _ = select.select([] if for_write else [sock], [sock] if for_write else [], [], timeout)  # pragma: no cover
    return bool(r or w)  # pragma: no cover


def connection_limit(requested: int) -> int:
    """``requested``, lowered so that many connections plus ``FD_RESERVE`` (at least a quarter of
    the limit) other files fit the process's soft RLIMIT_NOFILE."""
    soft = soft_file_limit()
    return requested if soft is None else max(1, min(requested, soft - max(FD_RESERVE, soft // 4)))


class Pool(Generic[_T]):
    """At most ``size`` daemon worker threads, started as work arrives and kept until ``close``."""

    def __init__(self, size: int, run: Callable[[_T], None], name: str) -> None:
        self._size, self._run, self._name = size, run, name
        self._jobs: deque[_T] = deque()
        self._cond = threading.Condition()
        self._idle = 0
        self._threads: list[threading.Thread] = []
        self._closed = False

    def submit(self, job: _T) -> bool:
        """Queue ``job`` for a worker (starting one if all are busy and there is room); False once closed."""
        with self._cond:
            if self._closed:
                return False
            self._jobs.append(job)
            if self._idle < len(self._jobs) and len(self._threads) < self._size:
                thread = threading.Thread(target=self._work, name=f"{self._name}-{len(self._threads) + 1}",
                                          daemon=True)
                self._threads.append(thread)
                thread.start()
            else:
                self._cond.notify()
        return True

    def _work(self) -> None:
        """A worker: run queued work, wait while there is none, exit once closed and done."""
        while True:
            with self._cond:
                while not self._jobs:
                    if self._closed:
                        return
                    self._idle += 1
                    try:
                        self._cond.wait()
                    finally:
                        self._idle -= 1
                job = self._jobs.popleft()
            self._run(job)

    def queued(self) -> int:
        """Work waiting for a worker."""
        return len(self._jobs)

    def close(self) -> None:
        """Take no more work; workers exit once the queued work is done."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every worker to exit; True if none is left."""
        deadline = time.monotonic() + timeout
        with self._cond:
            threads = list(self._threads)
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in threads if t is not threading.current_thread())


