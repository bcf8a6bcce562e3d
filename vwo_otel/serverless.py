"""Serverless (AWS Lambda, Cloud Run jobs and services, Workers-style short invocations):
deliver what an invocation emitted before its handler returns, and leave nothing behind.

A platform may freeze the process as soon as the handler returns, thaw it minutes later, or
never: a background thread frozen mid-request, or an event still queued, would be lost or
sent late. So with ``VWOSpanProcessor(..., background=False)`` no thread is ever started, and
``deliver_before_return`` ends each invocation by delivering the queue on the handler's thread,
within ``deadline`` seconds; what could not go by then is reported to ``flush_callback``
(``EventsDropped("invocation_deadline")``), never left queued. Prior art: VWO's FME node SDK
(``edgeConfig`` / ``shouldWaitForTrackingCalls`` and ``flushEvents`` in ``waitUntil``), and
posthog / segment's ``sync_mode`` (which send each event on the calling thread; here the
invocation's events go in as few batch requests as ``events_per_request`` allows)::

    exporter = vwo_otel.VWOExporter(ACCOUNT_ID, SDK_KEY)
    processor = vwo_otel.VWOSpanProcessor(exporter, {"events_per_request": 100, "request_time_interval": 600},
                                          background=False)
    ...
    @deliver_before_return(processor, deadline=2.0)
    def handler(event, context):
        vwo.track(...)
        return {"statusCode": 200}

It also works as ``with deliver_before_return(processor): ...``, and around ``async def``
handlers (the delivery then runs on a short-lived thread the handler awaits). On AWS Lambda the
deadline is also kept ``LAMBDA_MARGIN`` seconds inside the invocation's remaining time (the
handler's ``context.get_remaining_time_in_millis()``). A processor with background threads is
flushed the same way, but its threads stay (idle) after the handler returns.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

from . import checks
from .aio import run_blocking
from .processor import VWOProcessor

__all__ = ["LAMBDA_MARGIN", "deliver_before_return"]

F = TypeVar("F", bound=Callable[..., Any])

#: Seconds kept free before a Lambda invocation's own timeout (the handler must still return).
LAMBDA_MARGIN = 0.2


class deliver_before_return:  # noqa: N801 (used as a decorator and a context manager, named as a function)
    """Deliver what the ``processors`` hold when the handler returns (or the ``with`` block
    ends, raising or not), within ``deadline`` seconds; report what could not go in time.
    ``ok`` says whether the last invocation's events were all delivered."""

    def __init__(self, *processors: VWOProcessor, deadline: float = 2.0) -> None:
        if not processors or not all(isinstance(p, VWOProcessor) for p in processors):
            raise TypeError("deliver_before_return needs one or more VWO processors (VWOSpanProcessor, "
                            "VWOLogRecordProcessor)")
        self.processors = processors
        self.deadline = checks.seconds("deadline", deadline, low_open=True)
        self.ok: bool | None = None

    def __call__(self, handler: F) -> F:
        if inspect.iscoroutinefunction(handler):
            @functools.wraps(handler)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                try:
                    return await handler(*args, **kwargs)
                finally:
                    await run_blocking(self.deliver, _deadline(self.deadline, args))

            return run_async  # type: ignore[return-value]

        @functools.wraps(handler)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return handler(*args, **kwargs)
            finally:
                self.deliver(_deadline(self.deadline, args))

        return run  # type: ignore[return-value]

    def __enter__(self) -> deliver_before_return:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.deliver(self.deadline)

    def deliver(self, deadline: float | None = None) -> bool:
        """Deliver now (within ``deadline`` seconds, default the one given), the processors one
        after another on what is left of it; True if every event was delivered."""
        end = time.monotonic() + (self.deadline if deadline is None else deadline)
        ok = True
        for processor in self.processors:
            ok = processor.batcher.deliver_now(max(0.0, end - time.monotonic())) and ok
        self.ok = ok
        return ok


def _deadline(deadline: float, args: tuple[Any, ...]) -> float:
    """``deadline``, kept inside an AWS Lambda invocation's remaining time (its ``context``)."""
    if len(args) >= 2:
        remaining = getattr(args[1], "get_remaining_time_in_millis", None)
        if callable(remaining):
            try:
                return max(0.0, min(deadline, remaining() / 1000 - LAMBDA_MARGIN))
            except Exception:  # not Lambda's context after all
                pass
    return deadline
