"""The retry policy: which failures are retried and how long to wait before the next attempt."""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass

from .. import checks
from .http import TransportError

#: Answers worth trying again: a timeout, rate limiting, or a server-side hiccup.
RETRY_STATUSES: frozenset[int] = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """Retry transient failures (``RETRY_STATUSES`` and transport errors a resend could fix)
    within ``budget`` seconds per batch: waits grow from ``initial_backoff`` doubling up to
    ``max_backoff``, with +-20 % jitter; a server's ``Retry-After`` (seconds or HTTP-date)
    is honoured: the wait is the longer of the two, so ``Retry-After: 0`` cannot cause a hot
    retry loop."""

    budget: float = 60.0
    initial_backoff: float = 0.5
    max_backoff: float = 30.0

    def __post_init__(self) -> None:
        for name in ("budget", "initial_backoff", "max_backoff"):
            checks.seconds(f"RetryPolicy.{name}", getattr(self, name))

    def is_retryable(self, status: int | None = None, error: TransportError | None = None) -> bool:
        """Whether a request that got HTTP ``status``, or failed with ``error``, is worth sending again."""
        if error is not None:
            return error.retryable  # False when no attempt could send this request
        return status in RETRY_STATUSES

    def wait(self, attempt: int, retry_after: str | None = None) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (``attempt`` counts from 0), given the
        answer's ``Retry-After`` header: never sooner than the server asked, never less than the backoff."""
        wait = self.backoff(attempt)
        asked = parse_retry_after(retry_after)
        return wait if asked is None else max(wait, asked)

    def backoff(self, attempt: int) -> float:
        """The jittered exponential backoff before attempt ``attempt + 1``."""
        base: float = min(self.max_backoff, self.initial_backoff * (2 ** min(attempt, 30)))
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
