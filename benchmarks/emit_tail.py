#!/usr/bin/env python3
"""The app's emitting thread during a burst on a warm engine (one batch answered a moment
before) to a server 100 ms away (``vwo-otel receive --delay 100`` in its own process): each
``activate``'s wall time, p99.9 and the longest, this checkout against another one
(``--baseline PATH``, a directory holding its ``vwo_otel``), runs alternating, medians printed.
Slow start's jump before the first answer starts up to 64 delivery threads where a batch is cut
(on the app's thread, under the engine's lock): this shows what that costs the app's calls.

    .venv/bin/python benchmarks/emit_tail.py --baseline /path/to/other/checkout [--rounds 4]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time

CHILD = """
import sys, time
from opentelemetry.sdk.trace import TracerProvider
from vwo_otel import VWOEvents, VWOExporter, VWOSampler, VWOSpanProcessor
url, n, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
p = VWOSpanProcessor(VWOExporter(12345, "k" * 32, endpoint=url),
                     {"events_per_request": per, "request_time_interval": 600})
provider = TracerProvider(sampler=VWOSampler(), shutdown_on_exit=False)
provider.add_span_processor(p)
act = VWOEvents(tracer_provider=provider).activate
for i in range(per):
    act(1, 2, f"warm-{i}")
assert p.force_flush(30000)
time.sleep(0.2)
took, pc = [], time.perf_counter
for i in range(n):
    s = pc()
    act(1, 2, f"u{i}")
    took.append(pc() - s)
assert p.force_flush(60000)
took.sort()
print(took[int(0.999 * len(took))] * 1e6, took[-1] * 1e6)
provider.shutdown()
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="a directory holding the other checkout's vwo_otel")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--per", type=int, default=100, help="events_per_request (default 100)")
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rx = subprocess.Popen([sys.executable, "-m", "vwo_otel", "receive", "--port", str(port), "--delay", "100",
                           "--quiet"], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        runs: dict[str, list[tuple[float, float]]] = {"this": [], "baseline": []}
        for _ in range(args.rounds):
            for name, path in (("this", here), ("baseline", os.path.abspath(args.baseline))):
                out = subprocess.run([sys.executable, "-c", CHILD, f"http://127.0.0.1:{port}", str(args.events),
                                      str(args.per)], env={**os.environ, "PYTHONPATH": path}, check=True,
                                     capture_output=True, text=True).stdout.split()
                runs[name].append((float(out[0]), float(out[1])))
        tail = {k: statistics.median(r[0] for r in v) for k, v in runs.items()}
        top = {k: statistics.median(r[1] for r in v) for k, v in runs.items()}
        for k in runs:
            print(f"{k:>8}: p99.9 {tail[k]:,.0f} µs, longest {top[k]:,.0f} µs (medians of {args.rounds}; each run: "
                  + ", ".join(f"{a:,.0f}/{b:,.0f}" for a, b in runs[k]) + ")")
        print(f"ratio this/baseline: p99.9 {tail['this'] / tail['baseline']:.2f}, "
              f"longest {top['this'] / top['baseline']:.2f}")
    finally:
        rx.terminate()
        rx.wait()


if __name__ == "__main__":
    main()
