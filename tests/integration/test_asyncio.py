"""Awaitable flush and shutdown (``aflush_events``, ``aforce_flush``, ``ashutdown``,
``vwo_otel.aio.run_blocking``): the event loop keeps running while VWO answers late. Real HTTP
to the loopback receiver; the loop's longest stall is asserted only within a generous bound
(``benchmarks/asyncio_loop.py`` measures it)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from vwo_otel.aio import run_blocking

STALL = 0.3  # the receiver answers this late
BOUND = 0.15  # the loop's longest pause allowed while a flush waits that long (ticks are 5 ms)


async def longest_stall(work: Callable[[], Awaitable[Any]]) -> tuple[Any, float, float]:
    """(work's result, the loop's longest pause between 5 ms ticks while it ran, its duration)."""
    done = asyncio.Event()
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.monotonic()
        while not done.is_set():
            await asyncio.sleep(0.005)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.02)
    started = time.monotonic()
    try:
        result = await work()
    finally:
        took = time.monotonic() - started
        done.set()
        await task
    return result, max(gaps), took


def emit(events, n: int) -> None:
    for i in range(n):
        events.activate(231, 1, f"user-{i}")


def test_aflush_events_delivers_and_the_loop_keeps_running(pipeline, receiver):
    events, processor, _ = pipeline({"events_per_request": 100, "request_time_interval": 60})
    emit(events, 30)
    receiver.stall(STALL)
    ok, stall, took = asyncio.run(longest_stall(processor.aflush_events))
    assert ok is True and receiver.event_count() == 30
    assert took >= STALL - 0.01  # it waited for the late answer ...
    assert stall < BOUND, stall  # ... without holding the loop


def test_the_blocking_flush_would_have_held_the_loop(pipeline, receiver):
    """The contrast the awaitable exists for (the same set-up, flush_events() called on the loop)."""
    events, processor, _ = pipeline({"events_per_request": 100, "request_time_interval": 60})
    emit(events, 30)
    receiver.stall(STALL)

    async def blocking() -> Any:
        return processor.flush_events()

    ok, stall, _ = asyncio.run(longest_stall(blocking))
    assert ok is True and stall >= STALL - 0.01


def test_aforce_flush_honours_its_timeout(pipeline, receiver):
    events, processor, _ = pipeline({"events_per_request": 100, "request_time_interval": 60})
    emit(events, 5)
    receiver.stall(1.0, n=1)
    ok, stall, took = asyncio.run(longest_stall(lambda: processor.aforce_flush(200)))
    assert ok is False and took < 0.9 and stall < BOUND
    assert asyncio.run(processor.aforce_flush(10_000)) is True
    assert receiver.event_count() == 5
    with pytest.raises(ValueError, match="timeout_millis"):
        asyncio.run(processor.aforce_flush(-1))


def test_ashutdown_delivers_then_refuses(pipeline, receiver, callbacks):
    events, processor, _ = pipeline({"events_per_request": 100, "request_time_interval": 60})
    emit(events, 12)
    receiver.stall(STALL)
    _, stall, _ = asyncio.run(longest_stall(processor.ashutdown))
    assert receiver.event_count() == 12 and stall < BOUND
    emit(events, 1)
    assert callbacks.wait_for(lambda calls: any(err is not None and err.reason == "already_shutdown"
                                                for err, _ in calls))


def test_a_cancelled_await_stops_waiting_not_the_flush(pipeline, receiver):
    events, processor, _ = pipeline({"events_per_request": 100, "request_time_interval": 60})
    emit(events, 20)
    receiver.stall(STALL)

    async def cancel_midway() -> None:
        task = asyncio.create_task(processor.aflush_events())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_midway())
    assert receiver.wait_for_events(20, timeout=5)  # the flush went on in its thread
    assert processor.flush_events() is True


def test_run_blocking_uses_no_default_executor_thread_and_passes_errors():
    async def main() -> tuple[str, str]:
        loop = asyncio.get_running_loop()
        used: list[str] = []
        loop.set_default_executor(_Refusing())
        name = await run_blocking(lambda: threading.current_thread().name)
        used.append(name)
        with pytest.raises(KeyError, match="boom"):
            await run_blocking(_raise, KeyError("boom"))
        return used[0], await run_blocking(str.upper, "ok")

    name, upper = asyncio.run(main())
    assert name.startswith("vwo_otel-aio:") and upper == "OK"


class _Refusing(concurrent.futures.ThreadPoolExecutor):
    """A default executor that fails the test if anything is run on it."""

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("run_blocking must not use the default executor")


def _raise(exc: BaseException) -> None:
    raise exc
