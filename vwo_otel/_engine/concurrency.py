"""How many batches may be in flight: an adaptive limit (AIMD, as TCP's congestion window).

The limit starts at ``INITIAL_LIMIT`` and grows by one per healthy answer while batches wait
with every slot of the limit in use (the limit is what holds them back, as RFC 7661 validates
TCP's window) and the answer came about as fast as the fastest recent one (slow start). In
slow start it may also jump at once to the requests that can usefully be in flight: the
fastest recent answer divided by what one request costs the delivery thread in CPU (``spent``),
as many as the waiting batches need. A server 100 ms away is kept busy from the second round
trip of a burst instead of the sixth (from its first, when answers a moment ago still say how far
the server is: ``waiting``), while on loopback, where an answer takes about what
sending it costs, that is one or two and extra threads would only contend for the
interpreter lock. It halves on a sign of overload (429, 5xx, no answer), at most once per round trip,
and grows by one per ``limit`` healthy answers after that (congestion avoidance). It never
passes ``maximum`` (``max_concurrent_requests``). A 429 or 503 also holds every new batch
back until the request that got it has been tried again (the exporter waits its backoff and
``Retry-After`` first), so the whole engine honours the server's wait, not just one request.
A wait longer than the retry budget ends that request's retries; ``hold`` then keeps every
new batch back until it is over, and the limit starts again at one batch (a probe) and grows
from there (slow start) once a request sent since is answered: answers to requests sent before
the wait do not grow it. An engine with nothing in flight for ``RTT_WINDOW`` starts the next
burst as a fresh one, from ``INITIAL_LIMIT`` (slow start, the jump): an overload, or a burst's
grown limit, long past says nothing about the server now (TCP restarts slow start after idle
as well, RFC 5681 4.1).

Not thread-safe: the batcher calls it under its lock. ``clock`` is monotonic seconds.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from ..export.retry import RetryPolicy

#: Batches in flight at the start: small, so a server near by is not flooded with threads.
INITIAL_LIMIT = 2
#: An answer counts as fast (room to grow) if it took at most this many times the fastest
#: recent one: a server far away answers as fast with more requests in flight, while on
#: loopback extra threads only add GIL contention, so the limit stops growing there.
GROW_RTT_FACTOR = 2.0
#: Plus this much slack, so sub-millisecond jitter on loopback still counts as fast.
GROW_RTT_SLACK = 0.002
#: Slow start's jump reads the answer time as distance, so it takes an answer about as fast as
#: the fastest (at most this many times it, plus the slack): one nearly twice as slow (a server
#: holding what was already sent) grows the limit by one, as slow start does, not to 45 at once.
JUMP_RTT_FACTOR = 1.25
#: Slow start's jump before an answer (``waiting``) needs a server at least this far (its fastest
#: answer): a round trip saved is worth it there, while near by an answer comes within a few
#: batches' CPU anyway, and a jump on a loopback's old answers hid its slowing to 20 ms.
EARLY_JUMP_RTT = 0.01
#: The fastest answer is remembered this long, so a server that got slower for good (VWO from
#: 1 ms to 100 ms away, or slowing down) is measured anew: growth waits at most this long
#: (a round of slower answers with no more in flight forgets it sooner: ``SLOW_ROUND``).
RTT_WINDOW = 2.0
#: Answers in a row (at least; a whole limit's worth) slower than the fastest, with no more in
#: flight than it had, that make the fastest forgotten at once: the server got slower (VWO from
#: 1 ms to 20 ms away), not the limit's own doing, so growth need not wait out ``RTT_WINDOW``.
SLOW_ROUND = 4
#: The most the jump reaches: an answer slowed by the server's own load looks like distance, so
#: an overloaded server gets at most this many at once (the maximum before it was raised to 128);
#: past it, slow start's one per fast answer: answers that stay fast at that load. Above it,
#: ``SLOW_ROUND`` slow answers in a row take the limit back to it (a server with a knee there).
JUMP_LIMIT = 64
#: One processor's requests in flight hold at most this share of the process's soft file limit
#: (a socket each): a burst never leaves the app without files (macOS's default 256 allows 64).
FILE_SHARE = 0.25
#: Weight of the newest request in the running CPU cost of a request (``spent``).
COST_WEIGHT = 0.25


def soft_file_limit() -> int | None:
    """The process's soft ``RLIMIT_NOFILE`` (how many files it may hold open); None if unlimited
    or unknown (not POSIX). The servers' connection bound reads it too."""
    try:
        import resource
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):  # pragma: no cover - not POSIX
        return None
    return None if soft == resource.RLIM_INFINITY or soft <= 0 else soft


def file_bound(maximum: int) -> int:
    """``maximum`` requests in flight, or fewer if more would hold over ``FILE_SHARE`` of the
    process's soft file limit (read once, when a processor starts)."""
    soft = soft_file_limit()
    return maximum if soft is None else max(1, min(maximum, int(soft * FILE_SHARE)))


class Signal(enum.Enum):
    """What one HTTP answer says about the server's load."""

    HEALTHY = "healthy"  # 2xx
    NEUTRAL = "neutral"  # an answer about the request itself (400, 413, a bad URL)
    OVERLOADED = "overloaded"  # a retryable status (408, 5xx...) other than a pause, or no answer
    SLOW_DOWN = "slow_down"  # a pause status (429, 503): the server asks for a pause (Retry-After)


def signal_of(status: int | None, retryable_error: bool, retry: RetryPolicy) -> Signal:
    """The ``Signal`` of an answer with HTTP ``status`` (None: no answer; ``retryable_error``
    says whether sending it again could help, i.e. the failure was the network's or the server's),
    by the statuses of ``retry``: its ``pause_statuses`` ask for a pause, its other retryable
    statuses say the server is overloaded, any other answer is about the request itself."""
    if status is None:
        return Signal.OVERLOADED if retryable_error else Signal.NEUTRAL
    if 200 <= status < 300:
        return Signal.HEALTHY
    if status in retry.pause_statuses:
        return Signal.SLOW_DOWN
    if status in retry.statuses:
        return Signal.OVERLOADED
    return Signal.NEUTRAL


@dataclass
class Concurrency:
    """The adaptive limit on batches in flight (see the module docstring)."""

    maximum: int
    clock: Callable[[], float] = time.monotonic
    limit: int = field(init=False)
    #: False after the first decrease: growth is then additive (one per ``limit`` answers).
    slow_start: bool = field(default=True, init=False)
    _credit: int = field(default=0, init=False)  # healthy answers toward the next additive step
    _cut_at: float = field(default=-math.inf, init=False)  # when the limit last halved
    _fastest: float = field(default=math.inf, init=False)  # fastest recent answer, seconds
    _fastest_at: float = field(default=-math.inf, init=False)
    _fastest_limit: int = field(default=0, init=False)  # the limit when the fastest answer came
    _slow: int = field(default=0, init=False)  # answers in a row slower than that, with no more in flight
    _slow_fastest: float = field(default=math.inf, init=False)  # the fastest of them
    _cost: float = field(default=0.0, init=False)  # CPU seconds a request costs its delivery thread (running mean)
    _ceiling: float = field(default=math.inf, init=False)  # slow start ends here (after a server's long wait)
    _held: set[Hashable] = field(default_factory=set, init=False)  # requests waiting out a 429/503
    _until: float = field(default=-math.inf, init=False)  # no batch starts before this (a server's long wait)
    _probing: bool = field(default=False, init=False)  # after a hold, until a request sent since is answered 2xx
    _last: float = field(default=-math.inf, init=False)  # when a request was last answered or settled
    _over: int = field(default=0, init=False)  # slow answers in a row with the limit above JUMP_LIMIT
    _jumpable: bool = field(default=False, init=False)  # the last answer was healthy and about as fast as the fastest

    def __post_init__(self) -> None:
        self.limit = min(INITIAL_LIMIT, self.maximum)

    @property
    def paused(self) -> bool:
        """Whether a 429/503 holds new batches back."""
        return bool(self._held) or self.clock() < self._until

    def may_start(self, in_flight: int) -> bool:
        """Whether one more batch may go out now, with ``in_flight`` already out (after a quiet
        spell, from the limit ``rest`` gives). After a server's wait the probe still goes alone:
        the limit stays 1 until it is answered."""
        return in_flight < self.rest(in_flight) and not self._held and self.clock() >= self._until

    def rest(self, in_flight: int) -> int:
        """The limit now, ``in_flight`` out: after ``RTT_WINDOW`` with nothing in flight (and no
        server's wait over for less), the next burst starts as a fresh one, from at most
        ``INITIAL_LIMIT`` in slow start without a ceiling (TCP's restart window after idle, RFC
        5681 4.1): an overload or a wait long past, a halving's additive growth or the ceiling a
        wait set, would else hold a burst to one more per round trip, and a burst's grown limit
        would meet a server that may be busy now with every request at once (the delivery threads
        above it end: ``delivery.THREAD_IDLE``)."""
        if not in_flight and self.clock() - max(self._last, self._until) > RTT_WINDOW:
            self.limit = min(self.limit, INITIAL_LIMIT)
            self.slow_start, self._ceiling, self._credit = True, math.inf, 0
        return self.limit

    def hold(self, until: float) -> None:
        """The server asked for a wait until ``until`` (on the clock) that outlasted a request's
        retries: no batch starts before then, and the first after it goes alone (a probe)."""
        self._until = max(self._until, until)
        if not self._probing:  # the first of a wait's holds: the others (requests in flight then) keep its ceiling
            self._ceiling = max(INITIAL_LIMIT, self.limit // 2)  # slow start again, up to half the old limit
        self.limit = 1
        self.slow_start = True
        self._credit = 0
        self._cut_at = self.clock()  # answers to requests sent before the hold say nothing new
        self._probing = True  # nothing grows the limit until the probe (or a later request) is answered
        self._jumpable = False

    def resumes(self) -> float:
        """When a server's wait (``hold``) ends; -inf if none holds batches back."""
        return self._until if self.clock() < self._until else -math.inf

    def answered(self, who: Hashable, started: float, seconds: float, signal: Signal, backlog: int) -> bool:
        """Record one answer to the request ``who`` is making (started at ``started`` on the
        clock, answered in ``seconds``); ``backlog``: how many batches wait for a delivery
        thread that the limit holds back (0: none). Returns True if the limit grew (the caller
        may start more threads)."""
        self._held.discard(who)  # its retry was answered: the server's wait is over
        self._last = self.clock()
        if signal is Signal.HEALTHY:
            if started >= self._cut_at:
                self._probing = False
            return self._healthy(started, seconds, 0 if self._probing else backlog)
        if signal is not Signal.NEUTRAL:
            self._overloaded(started)
            if signal is Signal.SLOW_DOWN:
                self._held.add(who)
        return False

    def done(self, who: Hashable) -> None:
        """``who``'s batch settled (delivered, failed or given up): it holds nothing back."""
        self._held.discard(who)
        self._last = self.clock()

    def spent(self, cpu: float) -> None:
        """Sending one batch cost its delivery thread ``cpu`` seconds of CPU."""
        self._cost = cpu if not self._cost else self._cost + COST_WEIGHT * (cpu - self._cost)

    def waiting(self, in_flight: int, backlog: int, out_since: float) -> bool:
        """``backlog`` batches wait with ``in_flight`` filling the limit, the oldest of them sent at
        ``out_since``: in slow start, the jump the next answer would bring, made now from the last
        ones, so a burst on an engine that has been delivering to a server far away gets its
        requests in flight a round trip sooner. Only on a record that still holds: the fastest
        answer no older than ``RTT_WINDOW`` and at least ``EARLY_JUMP_RTT``, the latest healthy
        and about as fast (``JUMP_RTT_FACTOR``), and no request out longer than such an answer
        takes (else the server got slower: its answers decide). True if the limit grew (the
        caller starts threads for it)."""
        now = self.clock()
        if (not backlog or in_flight < self.rest(in_flight) or not self.slow_start or not self._jumpable
                or self._probing or self.paused or now - self._fastest_at > RTT_WINDOW
                or self._fastest < EARLY_JUMP_RTT
                or now - out_since > self._fastest * JUMP_RTT_FACTOR + GROW_RTT_SLACK):
            return False
        jump = self._jump(backlog)
        if jump <= self.limit:
            return False
        self._grow_to(jump)
        return True

    def _jump(self, backlog: int) -> int:
        """Slow start's jump after an answer about as fast as the fastest: the requests the answer
        time allows (``useful``), as many as ``backlog`` waiting batches need, at most
        ``JUMP_LIMIT`` and the ceiling; 0 after a slower answer."""
        return int(min(self.useful(), self.limit + backlog, self._ceiling, JUMP_LIMIT)) if self._jumpable else 0

    def _grow_to(self, limit: int) -> None:
        """Slow start's limit to ``limit`` (at most the maximum); at the ceiling slow start ends."""
        self.limit = min(self.maximum, int(limit))
        if self.limit >= self._ceiling:
            self.slow_start = False

    def useful(self) -> int:
        """Requests in flight that keep the delivery threads busy rather than waiting: the
        fastest recent answer over what one request costs in CPU (0 before both are known)."""
        if not self._cost or self._fastest == math.inf:
            return 0
        return math.ceil(self._fastest / self._cost)

    def _healthy(self, started: float, seconds: float, backlog: int) -> bool:
        now = self.clock()
        if seconds <= self._fastest or now - self._fastest_at > RTT_WINDOW:
            self._fastest, self._fastest_at, self._fastest_limit = seconds, now, self.limit
        fast = seconds <= self._fastest * GROW_RTT_FACTOR + GROW_RTT_SLACK
        if fast or self.limit > self._fastest_limit:
            self._slow, self._slow_fastest = 0, math.inf
        else:  # slower with no more in flight than the fastest answer had: the server, not us
            self._slow += 1
            self._slow_fastest = min(self._slow_fastest, seconds)
            if self._slow >= max(self.limit, SLOW_ROUND):  # a whole round: it got slower for good
                self._fastest, self._fastest_at, self._fastest_limit = self._slow_fastest, now, self.limit
                self._slow, self._slow_fastest, fast = 0, math.inf, True
        self._jumpable = seconds <= self._fastest * JUMP_RTT_FACTOR + GROW_RTT_SLACK
        if self._past_knee(started, fast, now):
            return False
        if not backlog or not fast or self.limit >= self.maximum:
            return False
        if not self.slow_start:
            self._credit += 1
            if self._credit < self.limit:
                return False
            self._credit = 0
            self.limit += 1
            return True
        self._grow_to(max(self.limit + 1, self._jump(backlog)))
        return True

    def _past_knee(self, started: float, fast: bool, now: float) -> bool:
        """Above ``JUMP_LIMIT``, whether a round of slow answers (``SLOW_ROUND`` in a row) just
        took the limit back to it, growth additive from there (once per round trip, as a cut):
        the server slowed at the load the limit's growth put on it."""
        if fast or self.limit <= JUMP_LIMIT:
            self._over = 0
            return False
        self._over += 1
        if self._over < SLOW_ROUND or started < self._cut_at:
            return False
        self._over = 0
        self._cut(JUMP_LIMIT)
        return True

    def _overloaded(self, started: float) -> None:
        """Halve the limit, once per round trip: answers to requests sent before the last
        decrease say nothing about the new limit."""
        if started >= self._cut_at:
            self._cut(max(1, self.limit // 2))

    def _cut(self, limit: int) -> None:
        """Lower the limit to ``limit`` now; growth is additive from there (congestion avoidance)."""
        self.limit, self.slow_start, self._credit, self._cut_at = limit, False, 0, self.clock()
        self._jumpable = False
