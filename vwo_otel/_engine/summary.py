"""What a shutdown says (issue #23 item 7): an exit with VWO down used to sit silent for the
whole ``shutdown_timeout``, then print one line per kind of drop and no total.

- ``NOTICE_AFTER`` seconds into a shutdown that still has events to deliver, one WARNING says
  that delivery is being attempted, how many events wait, why they did not go yet (the last
  failed answer) and how long it may still take, so the wait is explained while it happens.
- At the end, one line sums up the engine's life: delivered, failed, dropped (by reason) and
  kept on disk for the next start; a WARNING when anything was not delivered, else INFO.

Only words: the counts are the batcher's (``counts``, ``dropped``) and the backlog's.
"""

from __future__ import annotations

import logging

logger = logging.getLogger("vwo_otel")

#: Seconds a shutdown may deliver quietly before it says what it is waiting for.
NOTICE_AFTER = 1.0


def failure(status: int | None, error: BaseException | None) -> str:
    """One HTTP answer that was not a success, in words (for the notice): the status, or why there was none."""
    if error is not None:
        return (str(error) or type(error).__name__)[:160]
    return f"HTTP {status}"


def notice(waiting: int, last_failure: str, left: float) -> None:
    """The shutdown is still delivering ``waiting`` events, ``left`` seconds at most to go."""
    why = f"; the last attempt: {last_failure}" if last_failure else ""
    logger.warning("shutting down: still delivering %d VWO event(s)%s; waiting up to %.1f s more "
                   "(shutdown_timeout), then what is left is reported", waiting, why, left)


def summary(counts: dict[str, int], dropped: dict[str, int], on_disk: int, disabled: bool = False) -> None:
    """The one line a shutdown ends with: the engine's totals since it started."""
    delivered, failed = counts.get("delivered", 0), counts.get("failed", 0)
    lost = sum(dropped.values())
    if not (delivered or failed or lost or on_disk):
        return
    by_reason = ", ".join(f"{reason} {n:,}" for reason, n in sorted(dropped.items()) if n)
    level = logging.WARNING if failed or lost or on_disk else logging.INFO
    logger.log(level, "shut down: %s VWO event(s) %s, %s failed, %s dropped%s, %s kept on disk for the next start "
               "(since it started; each failure and drop was reported as it happened: flush_callback, or the gateway's "
               "log and /stats)",
               f"{delivered:,}", "checked, not sent (disabled)" if disabled else "delivered", f"{failed:,}",
               f"{lost:,}", f" ({by_reason})" if by_reason else "", f"{on_disk:,}")
