"""asyncio without a blocked event loop: run a blocking call (a flush, a shutdown) on a thread of
its own and await its result.

``VWOProcessor.aflush_events()`` / ``aforce_flush()`` / ``ashutdown()`` use it; ``run_blocking``
serves the calls around them (``await vwo_otel.aio.run_blocking(provider.shutdown)`` in a
FastAPI / Starlette lifespan or an aiohttp ``on_cleanup``).

Why a thread of its own, not ``loop.run_in_executor(None, ...)`` / ``asyncio.to_thread``: a
flush against a slow VWO waits as long as the answer takes (up to the retry budget), and the
default executor's threads are the app's own (blocking handlers, DNS lookups, file I/O); a
dedicated short-lived thread costs about 0.1 ms to start and never makes them queue.
``benchmarks/asyncio_loop.py`` measures the event loop's longest stall for each way.

Cancelling the awaiting task stops the waiting, not the call: the flush or shutdown goes on in
its thread (it is bounded by its own timeout or ``shutdown_timeout``), so events are not lost
because a lifespan was cancelled.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import ParamSpec, TypeVar

__all__ = ["run_blocking"]

P = ParamSpec("P")
T = TypeVar("T")


async def run_blocking(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)`` on a new daemon thread; the running loop goes on meanwhile and
    this coroutine returns its result (or raises its exception)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        def apply() -> None:
            if not future.done():  # cancelled meanwhile: nobody waits for the result any more
                outcome()
        try:
            loop.call_soon_threadsafe(apply)
        except RuntimeError:  # the loop closed before the call ended
            pass

    def work() -> None:
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: B036 - handed to the awaiting task, as run_in_executor does
            error = exc
            settle(lambda: future.set_exception(error))
        else:
            settle(lambda: future.set_result(result))

    name = getattr(fn, "__qualname__", "call")
    threading.Thread(target=work, name=f"vwo_otel-aio:{name}", daemon=True).start()
    return await future

