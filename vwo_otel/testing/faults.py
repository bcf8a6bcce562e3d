"""The faults the stand-in receiver plays on purpose (VWO's bad days): scheduled failures,
dropped connections, "accepted but answered an error", stalls, random faults, a smaller body
limit. ``Faults.take()`` decides, as a request's head arrives, how that request is treated."""

from __future__ import annotations

import random
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from .. import checks
from .collection import TEXT, reason

RetryAfter = int | str | None


@dataclass
class _Fault:
    """One scheduled fault: kind is "fail", "drop" or "accept_fail"; remaining counts requests left."""

    kind: str
    remaining: int
    status: int = 503
    retry_after: str | None = None
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"


@dataclass
class _Stall:
    """A response delay applied to the next ``remaining`` requests (None: until cleared), plus
    ``per_held`` for each request already held in a stall when one arrives (a loaded server)."""

    seconds: float
    remaining: int | None
    per_held: float = 0.0


@dataclass(frozen=True)
class _Plan:
    """How to treat one request, decided as it arrives: its fault (if any), how long to stall
    it (``release`` ends the stall early) and the body size limit in force."""

    fault: _Fault | None
    stall_seconds: float
    release: threading.Event
    max_body: int
    stall_per_held: float = 0.0  # plus this for each request held in a stall as it arrives


class Faults:
    """What the next requests get (thread-safe); ``max_body`` is the body limit when no fault lowers it."""

    def __init__(self, max_body: int) -> None:
        self._default_max_body = self._max_body = max_body
        self._fault_lock = threading.Lock()
        self._faults: deque[_Fault] = deque()
        self._stall: _Stall | None = None
        self._release = threading.Event()
        self._random_rate = 0.0
        self._random_statuses: tuple[int, ...] = ()
        self._random_drop = False
        self._rng = random.Random()

    def release(self) -> None:
        """End the stalls in progress (the receiver stops)."""
        with self._fault_lock:
            self._release.set()
            self._release = threading.Event()

    def fail_next(self, n: int, status: int = 503, retry_after: RetryAfter = None, body: str = "") -> None:
        """Answer the next n requests with status (and Retry-After if given), storing nothing."""
        self._schedule(_Fault("fail", self._count(n), self._status(status), self._retry_after(retry_after),
                              body.encode()))

    def drop_next(self, n: int) -> None:
        """Close the connection without any response for the next n requests (after reading the body)."""
        self._schedule(_Fault("drop", self._count(n)))

    def accept_then_fail_next(self, n: int, status: int = 504, body: str | None = None,
                              content_type: str = TEXT) -> None:
        """Store the events of the next n valid requests but answer ``status`` with ``body`` (default
        its reason phrase) as ``content_type``: "accepted, client saw failure", or, with a 2xx, an
        answer a client may misread (``200`` with ``application/json`` that is not JSON)."""
        self._schedule(_Fault("accept_fail", self._count(n), self._status(status), None,
                              (reason(status) if body is None else body).encode(), content_type))

    def set_max_body(self, nbytes: int) -> None:
        """Answer 413 for bodies above nbytes until clear_faults() (simulates a smaller server limit)."""
        checks.number("nbytes", nbytes, low=0, integer=True)
        with self._fault_lock:
            self._max_body = nbytes

    def stall(self, seconds: float, n: int | None = None, *, per_held: float = 0.0) -> None:
        """Delay the next n requests (None: all, until cleared) by seconds, plus ``per_held`` for
        each request already held in a stall when one arrives (an overloaded server); stop() /
        clear_faults() end it."""
        seconds = checks.seconds("seconds", seconds)
        per_held = checks.seconds("per_held", per_held)
        with self._fault_lock:
            self._stall = _Stall(seconds, None if n is None else self._count(n), per_held)

    def random_faults(self, rate: float, *, seed: int | None = None,
                      statuses: Sequence[int] = (429, 500, 502, 503, 504), drop: bool = True) -> None:
        """Fail each request with probability rate: a random status from statuses or a dropped connection."""
        checks.number("rate", rate, low=0, high=1)
        codes = tuple(self._status(s) for s in statuses)
        if rate > 0 and not codes and not drop:
            raise ValueError("give statuses or drop=True")
        with self._fault_lock:
            self._random_rate = float(rate)
            self._random_statuses = codes
            self._random_drop = bool(drop)
            self._rng = random.Random(seed)

    def clear_faults(self) -> None:
        """Remove every fault: scheduled failures, stalls (ending current ones), random faults, body limit."""
        with self._fault_lock:
            self._faults.clear()
            self._stall = None
            self._release.set()
            self._release = threading.Event()
            self._random_rate = 0.0
            self._max_body = self._default_max_body

    @staticmethod
    def _count(n: int) -> int:
        """Validate a request count."""
        return int(checks.number("n", n, low=0, integer=True))

    @staticmethod
    def _status(status: int) -> int:
        """Validate an HTTP status code."""
        return int(checks.number("status", status, low=100, high=999, integer=True))

    @staticmethod
    def _retry_after(value: RetryAfter) -> str | None:
        """Retry-After header text: int seconds or an HTTP-date string, passed through."""
        if value is None:
            return None
        text = str(int(value)) if isinstance(value, (int, float)) and not isinstance(value, bool) else value
        if not isinstance(text, str) or not text or "\r" in text or "\n" in text:
            raise ValueError("retry_after must be int seconds or an HTTP-date string")
        return text

    def _schedule(self, fault: _Fault) -> None:
        """Queue a fault behind those already scheduled (they apply in call order)."""
        if fault.remaining:
            with self._fault_lock:
                self._faults.append(fault)

    def take(self) -> _Plan:
        """Decide how to treat this request: its fault, stall and body limit."""
        with self._fault_lock:
            seconds = per_held = 0.0
            stall = self._stall
            if stall is not None:
                seconds, per_held = stall.seconds, stall.per_held
                if stall.remaining is not None:
                    stall.remaining -= 1
                    if stall.remaining <= 0:
                        self._stall = None
                    if stall.remaining < 0:
                        seconds = per_held = 0.0
            fault: _Fault | None = None
            if self._faults:
                fault = self._faults[0]
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.popleft()
            elif self._random_rate and self._rng.random() < self._random_rate:
                rng = self._rng
                n = len(self._random_statuses) + (1 if self._random_drop else 0)
                pick = rng.randrange(n)
                if pick == len(self._random_statuses):
                    fault = _Fault("drop", 1)
                else:
                    status = self._random_statuses[pick]
                    retry = "0" if status in (429, 503) and rng.random() < 0.5 else None
                    fault = _Fault("fail", 1, status, retry, reason(status).encode())
            return _Plan(fault, seconds, self._release, self._max_body, per_held)
