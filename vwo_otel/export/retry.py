"""When and how long to wait before trying a request again (one budget, backoff, jitter)."""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass

RETRY_STATUSES: frozenset[int] = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """Retry transient failures (network errors and ``RETRY_STATUSES``) within ``budget``
    seconds per batch: waits grow from ``initial_backoff`` doubling up to ``max_backoff``,
    with +-20 % jitter; a server's ``Retry-After`` (seconds or HTTP-date) is honoured: the
    wait is the longer of the two, so ``Retry-After: 0`` cannot cause a hot retry loop."""

    budget: float = 60.0
    initial_backoff: float = 0.5
    max_backoff: float = 30.0

    def __post_init__(self) -> None:
        for name in ("budget", "initial_backoff", "max_backoff"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"RetryPolicy.{name} must be a number of seconds >= 0, got {value!r}")

    def backoff(self, attempt: int) -> float:
        """Wait before attempt ``attempt + 1`` (attempt counts from 0)."""
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
