"""``batch_events`` configuration: VWO's keys, defaults and ranges, validated up front."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from . import checks

#: ``flush_callback(err, events)``: ``err`` is None on success, else a ``VWODeliveryError``.
FlushCallback = Callable[[BaseException | None, list[dict[str, Any]]], Any]

MAX_EVENTS_PER_REQUEST = int(checks.EVENTS_PER_REQUEST.high)
DEFAULT_EVENTS_PER_REQUEST = 100
DEFAULT_REQUEST_TIME_INTERVAL = 600.0
_KEYS = ("events_per_request", "request_time_interval", "flush_callback")


@dataclass(frozen=True)
class BatchEvents:
    """Validated ``batch_events``: send when ``events_per_request`` are queued or the
    oldest queued event is ``request_time_interval`` seconds old, whichever is first."""

    events_per_request: int = DEFAULT_EVENTS_PER_REQUEST
    request_time_interval: float = DEFAULT_REQUEST_TIME_INTERVAL
    flush_callback: FlushCallback | None = None

    def __post_init__(self) -> None:
        checks.EVENTS_PER_REQUEST.check("batch_events['events_per_request']", self.events_per_request)
        interval = checks.REQUEST_TIME_INTERVAL.check("batch_events['request_time_interval']",
                                                      self.request_time_interval)
        object.__setattr__(self, "request_time_interval", interval)
        if self.flush_callback is not None:
            _check_callback(self.flush_callback)


def _check_callback(callback: Any) -> None:
    """``flush_callback`` must take ``(err, events)``: a wrong signature is refused here, at
    set-up, instead of failing on every batch on the callback thread."""
    name = "batch_events['flush_callback']"
    if not callable(callback):
        raise TypeError(f"{name} must be callable(err, events), got {type(callback).__name__}")
    if inspect.iscoroutinefunction(callback) or inspect.iscoroutinefunction(type(callback).__call__):
        raise TypeError(f"{name} must be a plain function: it runs on a thread of its own, so an async def "
                        "would never be awaited (from it, hand the result to your loop with "
                        "loop.call_soon_threadsafe or asyncio.run_coroutine_threadsafe)")
    try:
        signature = inspect.signature(callback)
    except (TypeError, ValueError):  # some builtins have none: nothing to check
        return
    try:
        signature.bind(None, [])
    except TypeError:
        raise TypeError(f"{name} must accept two arguments (err, events), but its signature is "
                        f"{getattr(callback, '__name__', type(callback).__name__)}{signature}") from None


BatchEventsLike = BatchEvents | Mapping[str, Any] | None
#: What VWO's batching page calls ``flush_callback``.
FLUSH_CALLBACK_ALIAS = "flushCallback"
_UNSET: Any = object()


def batch_events_argument(batch_events: Any, batch_event_data: Any = _UNSET, default: Any = None) -> Any:
    """``batch_events``, or ``batch_event_data`` (what VWO's FME SDK calls it), never both
    (``batch_events`` is not given when it is ``default``)."""
    if batch_event_data is _UNSET:
        return batch_events
    if batch_events is not default:
        raise TypeError("pass batch_events or batch_event_data (the FME SDK's name for it), not both")
    return batch_event_data


def parse_batch_events(value: BatchEventsLike) -> BatchEvents | None:
    """Turn VWO's ``batch_events`` dict (or a ``BatchEvents``) into a ``BatchEvents``;
    ``None`` means real-time mode. Raises ``TypeError``/``ValueError`` naming the key."""
    if value is None or isinstance(value, BatchEvents):
        return value
    if not isinstance(value, Mapping):
        raise TypeError(f"batch_events must be a dict or BatchEvents, got {type(value).__name__}")
    if FLUSH_CALLBACK_ALIAS in value:  # VWO's batching page spells it flushCallback
        if "flush_callback" in value:
            raise ValueError("batch_events has both 'flush_callback' and 'flushCallback' (the same key): give one")
        value = {("flush_callback" if k == FLUSH_CALLBACK_ALIAS else k): v for k, v in value.items()}
    unknown = sorted(set(value) - set(_KEYS))
    if unknown:
        raise ValueError(f"batch_events has unknown key(s) {unknown}; allowed keys: {list(_KEYS)}")
    if value.get("events_per_request") is None and value.get("request_time_interval") is None:
        raise ValueError(
            f"batch_events needs 'events_per_request' ({checks.EVENTS_PER_REQUEST}) or "
            f"'request_time_interval' ({checks.REQUEST_TIME_INTERVAL}), or both; "
            "pass batch_events=None for real-time delivery"
        )
    given = {k: v for k, v in value.items() if v is not None}
    return BatchEvents(**given)
