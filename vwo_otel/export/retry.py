"""The retry policy: which failures are retried and how long to wait before the next attempt.

``RetryPolicy.statuses`` is the one list of retryable HTTP statuses: the exporter's retries, the
spool's decision to keep a failed batch on disk and the adaptive limit on requests in flight
(``_engine/concurrency.py``: ``pause_statuses`` pause it, the other retryable ones halve it) all
read it from the policy in use.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .. import checks
from .http import TransportError

#: Answers worth trying again: a timeout, rate limiting, or a server-side hiccup.
RETRY_STATUSES: frozenset[int] = frozenset({408, 429, 500, 502, 503, 504})
#: Of those, the answers by which a server asks senders to pause (they carry ``Retry-After``).
PAUSE_STATUSES: frozenset[int] = frozenset({429, 503})


@dataclass(frozen=True)
class RetryPolicy:
    """Retry transient failures (``statuses`` and transport errors a resend could fix) within
    ``budget`` seconds per batch, and at most ``max_retries`` times (None: as many as the budget
    allows). The budget is one deadline from the batch's start and bounds retrying only: a
    request's first attempt always gets the exporter's whole ``timeout`` (shutdown, or a
    caller's deadline, may still cut it), so ``budget=0`` means no retry, never a first attempt
    cut short; each retry starts only if its wait ends within the budget and gets ``timeout`` or
    what is left of the budget, whichever is less. Waits grow from ``initial_backoff`` by
    ``backoff_multiplier`` up to ``max_backoff``, with +-20 % jitter; a server's ``Retry-After``
    (seconds or HTTP-date) is honoured: the wait is the longer of the two, so ``Retry-After: 0``
    cannot cause a hot retry loop.

    ``max_retry_after`` caps how long a server's ``Retry-After`` is honoured (default an hour:
    a typo or an HTTP-date in 2099 cannot stop delivery for good). A wait longer than what is left
    of the budget ends the batch's retries, but not the wait: the engine then sends nothing for
    that long and keeps the batch (in memory, or parked in the spool) for a probe afterwards."""

    budget: float = 60.0
    max_retry_after: float = 3600.0
    initial_backoff: float = 0.5
    max_backoff: float = 30.0
    max_retries: int | None = None
    backoff_multiplier: float = 2.0
    statuses: frozenset[int] = RETRY_STATUSES
    pause_statuses: frozenset[int] = PAUSE_STATUSES

    def __post_init__(self) -> None:
        for name in ("budget", "max_retry_after"):
            checks.seconds(f"RetryPolicy.{name}", getattr(self, name))
        for name in ("initial_backoff", "max_backoff"):  # 0 would retry in a hot loop
            checks.RETRY_BACKOFF.check(f"RetryPolicy.{name}", getattr(self, name))
        if self.max_retries is not None:
            checks.MAX_RETRIES.check("RetryPolicy.max_retries", self.max_retries)
        checks.BACKOFF_MULTIPLIER.check("RetryPolicy.backoff_multiplier", self.backoff_multiplier)
        for name in ("statuses", "pause_statuses"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not all(type(s) is int and 400 <= s <= 599 and s != 413
                                                              for s in value):  # a 2xx is delivered, a 413 split
                raise ValueError(f"RetryPolicy.{name} must be a set of HTTP error statuses (ints 400 to 599, "
                                 f"except 413: that batch is split), got {value!r}")
            object.__setattr__(self, name, frozenset(value))

    @classmethod
    def from_retry_config(cls, retry_config: Mapping[str, Any], **kwargs: Any) -> RetryPolicy:
        """The policy for VWO FME SDKs' ``retry_config`` (``should_retry``, ``max_retries``,
        ``initial_delay`` seconds, ``backoff_multiplier``); ``kwargs`` set the rest (``budget``...)."""
        known = {"should_retry", "max_retries", "initial_delay", "backoff_multiplier"}
        if not isinstance(retry_config, Mapping):
            raise TypeError(f"retry_config must be a dict, got {type(retry_config).__name__}")
        unknown = sorted(set(retry_config) - known)
        if unknown:
            raise ValueError(f"retry_config has unknown key(s) {unknown}; allowed keys: {sorted(known)}")
        should = retry_config.get("should_retry", True)
        if not isinstance(should, bool):
            raise TypeError(f"retry_config['should_retry'] must be True or False, got {should!r}")
        values = dict(kwargs)
        values["max_retries"] = 0 if not should else retry_config.get("max_retries", values.get("max_retries", 3))
        if "initial_delay" in retry_config:
            values["initial_backoff"] = retry_config["initial_delay"]
        if "backoff_multiplier" in retry_config:
            values["backoff_multiplier"] = retry_config["backoff_multiplier"]
        return cls(**values)

    def is_retryable(self, status: int | None = None, error: TransportError | None = None) -> bool:
        """Whether a request that got HTTP ``status``, or failed with ``error``, is worth sending again."""
        if error is not None:
            return error.retryable  # False when no attempt could send this request
        return status in self.statuses

    def allows(self, attempt: int) -> bool:
        """Whether retry number ``attempt + 1`` may be made (``max_retries``; the budget is the caller's)."""
        return self.max_retries is None or attempt < self.max_retries

    def wait(self, attempt: int, retry_after: str | None = None) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (``attempt`` counts from 0), given the
        answer's ``Retry-After`` header: never sooner than the server asked, never less than the backoff."""
        wait = self.backoff(attempt)
        asked = self.server_wait(retry_after)
        return wait if asked is None else max(wait, asked)

    def server_wait(self, retry_after: str | None) -> float | None:
        """The seconds a ``Retry-After`` header asks for, capped at ``max_retry_after``; None if absent or bad."""
        asked = parse_retry_after(retry_after)
        return None if asked is None else min(asked, self.max_retry_after)

    def backoff(self, attempt: int) -> float:
        """The jittered exponential backoff before attempt ``attempt + 1``."""
        base: float = min(self.max_backoff, self.initial_backoff * (self.backoff_multiplier ** min(attempt, 60)))
        return base * random.uniform(0.8, 1.2)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
