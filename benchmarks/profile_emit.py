#!/usr/bin/env python3
"""Where an event's CPU goes: 20,000 ``activate`` calls on default settings with a loopback
VWO (``vwo-otel receive --delay MS``, its own process) answering late, profiled with yappi's
CPU clock on every thread; prints each function's own and total time, then each thread's.

    .venv/bin/pip install yappi && .venv/bin/python benchmarks/profile_emit.py [--delay 100]

The profiler slows everything several times over: read the shares, not the seconds.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import yappi
from opentelemetry.sdk.trace import TracerProvider

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from helpers import free_port, wait_listening  # noqa: E402

from vwo_otel import VWOEvents, VWOExporter, VWOSampler, VWOSpanProcessor  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", type=int, default=100, help="ms the receiver answers late (default 100)")
    parser.add_argument("-n", type=int, default=20_000, help="events (default 20,000)")
    parser.add_argument("--top", type=int, default=30, help="functions printed (default 30)")
    args = parser.parse_args()
    port = free_port()
    rx = subprocess.Popen([sys.executable, "-m", "vwo_otel", "receive", "--port", str(port), "--delay",
                           str(args.delay), "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, rx)
        processor = VWOSpanProcessor(VWOExporter(12345, "k" * 32, endpoint=f"http://127.0.0.1:{port}"),
                                     {"events_per_request": 100, "request_time_interval": 600})
        provider = TracerProvider(sampler=VWOSampler(), shutdown_on_exit=False)
        provider.add_span_processor(processor)
        activate = VWOEvents(tracer_provider=provider).activate
        for i in range(300):  # warm-up: connections, caches
            activate(1, 2, f"warm-{i}")
        processor.force_flush(30_000)
        users = [f"user-{i}" for i in range(args.n)]
        yappi.set_clock_type("cpu")
        yappi.start(builtins=False)
        started = time.perf_counter()
        for user in users:
            activate(1, 2, user)
        flushed = processor.force_flush(60_000)
        yappi.stop()
        print(f"{args.n} events, flushed {flushed} in {time.perf_counter() - started:.2f} s (profiled)")
        print(f"{'own s':>8} {'total s':>8} {'calls':>8}  function")
        for stat in sorted(yappi.get_func_stats(), key=lambda s: -s.tsub)[:args.top]:
            where = stat.module.split("site-packages/")[-1]
            print(f"{stat.tsub:8.3f} {stat.ttot:8.3f} {stat.ncall:8d}  {where}:{stat.lineno} {stat.name}")
        print("CPU s per thread:", ", ".join(f"{t.name} {t.ttot:.3f}" for t in yappi.get_thread_stats()))
        provider.shutdown()
    finally:
        rx.terminate()
        rx.wait(10)


if __name__ == "__main__":
    main()
