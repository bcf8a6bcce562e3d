#!/usr/bin/env python3
"""The event loop during a VWO flush: its longest stall, for each way an asyncio app can wait.

    python benchmarks/asyncio_loop.py            # about 30 s on 2 shared cores
    python benchmarks/asyncio_loop.py --quick    # a few seconds (smoke; numbers not meaningful)

VWO is played by ``vwo-otel receive --delay 100`` in a process of its own (every answer 100 ms
late), so the receiver does not share this process's interpreter lock. Each round emits
``--events`` activates (``events_per_request`` 100) on the loop, then flushes them while a
ticker task sleeps 1 ms at a time and records the gaps between its wake-ups; the longest gap
is the loop's longest stall during the flush. Ways compared, side by side in one run:

* ``flush_events()`` called on the loop (what not to do: the loop waits for VWO);
* ``await asyncio.to_thread(processor.flush_events)`` (a default-executor thread);
* ``await processor.aflush_events()`` (``vwo_otel.aio``: a thread of its own);
* the last two again while the default executor's threads are all busy (an app's blocking
  handlers): ``to_thread`` queues behind them, ``aflush_events`` does not.

Prints medians over ``--repeats`` rounds. Nothing here is a timed test; the test suite only
asserts a generous bound (``tests/integration/test_asyncio.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.dirname(HERE) not in sys.path:  # benchmark this checkout, installed or not
    sys.path.insert(0, os.path.dirname(HERE))

from opentelemetry.sdk.trace import TracerProvider  # noqa: E402

import vwo_otel  # noqa: E402

ACCOUNT_ID, SDK_KEY = 12345, "bench-sdk-key-0123456789"
DELAY_MS = 100


def start_receiver() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "vwo_otel", "receive", "--port", "0", "--quiet",
                             "--account-id", str(ACCOUNT_ID), "--sdk-key", SDK_KEY, "--delay", str(DELAY_MS)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    match = re.search(r"listening on (http://\S+?)[;,]", first)
    if not match:
        proc.kill()
        raise SystemExit(f"the receiver did not start: {first}{proc.communicate()[1]}")
    return proc, match.group(1)


async def measure(flush: Callable[[], Awaitable[Any]]) -> tuple[float, float, float]:
    """(longest loop stall, p99 gap, flush duration), all in ms."""
    done = asyncio.Event()
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    gaps.clear()
    started = time.perf_counter()
    ok = await flush()
    took = time.perf_counter() - started
    done.set()
    await task
    if ok is not True:
        raise SystemExit("a flush did not deliver everything")
    gaps.sort()
    return max(gaps) * 1000, gaps[int(len(gaps) * 0.99) - 1 if len(gaps) > 1 else 0] * 1000, took * 1000


def busy_executor(loop: asyncio.AbstractEventLoop, workers: int, seconds: float) -> list[Any]:
    """Occupy every default-executor thread with a blocking job of ``seconds``."""
    return [loop.run_in_executor(None, time.sleep, seconds) for _ in range(workers)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--events", type=int, default=None, help="events per flush (default 1000)")
    args = ap.parse_args()
    repeats = args.repeats or (2 if args.quick else 7)
    n = args.events or (200 if args.quick else 1000)
    rx, url = start_receiver()
    try:
        provider = TracerProvider(sampler=vwo_otel.VWOSampler(), shutdown_on_exit=False)
        processor = vwo_otel.VWOSpanProcessor(vwo_otel.VWOExporter(ACCOUNT_ID, SDK_KEY, endpoint=url),
                                              {"events_per_request": 100, "request_time_interval": 600})
        provider.add_span_processor(processor)
        events = vwo_otel.VWOEvents(tracer_provider=provider)
        counter = iter(range(10**9))

        def emit() -> None:
            for _ in range(n):
                events.activate(231, 2, f"user-{next(counter)}")

        async def on_loop() -> bool:
            return bool(processor.flush_events())

        async def to_thread() -> bool:
            return bool(await asyncio.to_thread(processor.flush_events))

        async def aflush() -> bool:
            return await processor.aflush_events()

        workers = 2
        ways: list[tuple[str, Callable[[], Awaitable[Any]], bool]] = [
            ("flush_events() on the loop (blocking)", on_loop, False),
            ("await asyncio.to_thread(flush_events)", to_thread, False),
            ("await processor.aflush_events()", aflush, False),
            (f"to_thread, default executor ({workers} threads) busy 1 s", to_thread, True),
            (f"aflush_events, default executor ({workers} threads) busy 1 s", aflush, True),
        ]
        results: dict[str, list[tuple[float, float, float]]] = {name: [] for name, _, _ in ways}

        async def run_all() -> None:
            loop = asyncio.get_running_loop()
            loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(max_workers=workers))
            await processor.aflush_events()  # warm: connections open
            for _ in range(repeats):
                for name, way, busy in ways:  # side by side, alternating
                    emit()
                    jobs = busy_executor(loop, workers, 1.0) if busy else []
                    await asyncio.sleep(0.005)
                    results[name].append(await measure(way))
                    if jobs:
                        await asyncio.gather(*jobs)

        started = time.perf_counter()
        asyncio.run(run_all())
        overhead = startup_cost(repeats * 20)
        provider.shutdown()
        print(f"asyncio loop stall during a flush of {n} events, VWO answering {DELAY_MS} ms late "
              f"(medians of {repeats}; Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
              f"{time.perf_counter() - started:.0f} s)")
        print("| way | longest loop stall | p99 gap (1 ms ticks) | flush took |")
        print("|---|---|---|---|")
        for name, _, _ in ways:
            rows = results[name]
            stall, p99, took = (statistics.median(r[i] for r in rows) for i in range(3))
            print(f"| {name} | {stall:.1f} ms | {p99:.1f} ms | {took:.0f} ms |")
        print(f"start-up cost of one call (median of {repeats * 20}): run_blocking (a new thread) "
              f"{overhead[0]:.3f} ms, asyncio.to_thread (a pooled thread) {overhead[1]:.3f} ms")
        stats = processor.stats()["events"]
        print(f"delivered {stats['delivered']}, failed {stats['failed']}")
        return 0 if stats["failed"] == 0 else 1
    finally:
        rx.terminate()
        rx.communicate(timeout=10)


def startup_cost(rounds: int) -> tuple[float, float]:
    """Median ms to await a no-op through run_blocking and through asyncio.to_thread."""
    async def run() -> tuple[float, float]:
        ours, pooled = [], []
        for _ in range(rounds):
            t = time.perf_counter()
            await vwo_otel.aio.run_blocking(threading.get_ident)
            ours.append(time.perf_counter() - t)
            t = time.perf_counter()
            await asyncio.to_thread(threading.get_ident)
            pooled.append(time.perf_counter() - t)
        return statistics.median(ours) * 1000, statistics.median(pooled) * 1000
    return asyncio.run(run())


if __name__ == "__main__":
    sys.exit(main())
