#!/usr/bin/env python3
"""The emitting thread's cost per event on a processor whose delivery threads a burst grew
(VWO 100 ms away: ~100 threads), side by side with one kept at 2 (``max_concurrent_requests=2``),
both then sending to a loopback receiver 20 ms away. The ratio should stay near 1: a batch cut
on the app's thread must not look at every delivery thread.

    .venv/bin/python benchmarks/emit_after_burst.py [--per 1] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

from opentelemetry.sdk.trace import TracerProvider

from vwo_otel import VWOEvents, VWOExporter, VWOSampler, VWOSpanProcessor
from vwo_otel.testing.receiver import Receiver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per", type=int, default=1, help="events_per_request (default 1: a cut per event)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of 2,000 events, medians printed (default 5)")
    args = parser.parse_args()
    with Receiver() as rx:
        made = []
        for most in (2, 128):
            processor = VWOSpanProcessor(VWOExporter(12345, "k" * 32, endpoint=rx.url),
                                         {"events_per_request": args.per, "request_time_interval": 600},
                                         max_concurrent_requests=most)
            provider = TracerProvider(sampler=VWOSampler(), shutdown_on_exit=False)
            provider.add_span_processor(processor)
            made.append((most, processor, VWOEvents(tracer_provider=provider)))
        rx.stall(0.1)
        for _, _, vwo in made:
            for i in range(300 * args.per):  # the burst: 300 batches 100 ms away
                vwo.activate(1, 2, f"burst-{i}")
        for _, processor, _ in made:
            processor.force_flush(60_000)
        rx.clear_faults()
        rx.stall(0.02)
        costs: dict[int, list[float]] = {2: [], 128: []}
        for r in range(args.rounds):
            for most, processor, vwo in made:  # interleaved, so both see the same machine
                spent = 0.0
                for i in range(2000):
                    started = time.perf_counter()
                    vwo.activate(1, 2, f"r{r}-{i}")
                    spent += time.perf_counter() - started
                    if i % 50 == 0:
                        time.sleep(0.002)  # an app doing its own work between events
                costs[most].append(spent / 2000 * 1e6)
                processor.force_flush(60_000)
        threads = sum(t.name == "vwo_otel-delivery" for t in threading.enumerate())
        low, high = statistics.median(costs[2]), statistics.median(costs[128])
        print(f"events_per_request={args.per}: {low:.1f} µs/event with 2 threads, {high:.1f} µs/event after the burst "
              f"({threads} delivery threads in all): ratio {high / low:.2f}")
        for _, processor, _ in made:
            processor.shutdown()


if __name__ == "__main__":
    main()
