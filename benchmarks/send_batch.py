#!/usr/bin/env python3
"""The exporter's CPU for one batch of 100 FME events: this checkout against another one
(``--baseline PATH``), measured side by side in one run (rounds alternate between the two).

    python benchmarks/send_batch.py --baseline /path/to/other/checkout
    python benchmarks/send_batch.py --baseline /path/to/other/checkout --quick

Each side runs in a process of its own with that checkout's ``vwo_otel`` and its own loopback
receiver (``vwo_otel.testing.Receiver``, on threads of that process). Measured on the calling
thread only (``time.thread_time``, so the receiver's threads do not count): ``encode``, the
exporter turning 100 FME events (impressions with usage statistics, custom events with
properties, visitor attributes) into the dicts reports get and the bytes sent; ``send_batch``,
the same plus the HTTP request to the receiver, answered 200. Reported per side: the median
over rounds of each round's mean CPU per call (us); the ratio is this checkout / baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CHILD = r"""
import json, sys, time
from vwo_otel import VWOExporter
from vwo_otel import attributes as A
from vwo_otel.event import from_attributes
from vwo_otel.testing import Receiver

ACCOUNT_ID, SDK_KEY = 12345, "bench-sdk-key-0123456789"
rx = Receiver(account_id=ACCOUNT_ID, sdk_key=SDK_KEY).start()
exporter = VWOExporter(ACCOUNT_ID, SDK_KEY, endpoint=rx.url)
t = time.time_ns()
events = []
for i in range(100):
    user = f"user-{i}"
    if i % 3 == 0:
        attrs = {A.EVENT_TYPE: A.VARIATION_SHOWN, A.USER_ID: user, A.CAMPAIGN_ID: 231, A.VARIATION_ID: 2,
                 A.VISITOR_UA: "bench/1.0", A.USAGE_STATS: '{"eb": 1, "ll": 2}'}
    elif i % 3 == 1:
        attrs = {A.EVENT_TYPE: "purchase", A.USER_ID: user,
                 A.EVENT_PROPERTIES: json.dumps({"amount": i + 0.5, "currency": "EUR"})}
    else:
        attrs = {A.EVENT_TYPE: A.SYNC_VISITOR_PROP, A.USER_ID: user, A.VISITOR_PROPERTIES: '{"plan": "pro"}'}
    events.append(from_attributes(attrs, t + i))
for _ in range(20):  # warm-up: caches, the kept-alive connection
    exporter.encode(events)
    assert all(o.ok for o in exporter.send_batch(events))
print("ready", flush=True)
for line in sys.stdin:
    what, reps = line.split()
    call = exporter.encode if what == "encode" else exporter.send_batch
    cpu = time.thread_time()
    for _ in range(int(reps)):
        call(events)
    print((time.thread_time() - cpu) / int(reps) * 1e6, flush=True)
exporter.shutdown()
rx.stop()
"""


class Side:
    """One checkout, in a process of its own."""

    def __init__(self, name: str, root: str) -> None:
        self.name = name
        env = {**os.environ, "PYTHONPATH": root}
        self.proc = subprocess.Popen([sys.executable, "-c", _CHILD], cwd=root, env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.proc.stdout is not None and self.proc.stdin is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{name}: the benchmark process did not start")
        self.samples: dict[str, list[float]] = {"encode": [], "send_batch": []}

    def run(self, what: str, reps: int) -> None:
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self.proc.stdin.write(f"{what} {reps}\n")
        self.proc.stdin.flush()
        self.samples[what].append(float(self.proc.stdout.readline()))

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="the other checkout (its root directory)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--reps", type=int, default=200, help="calls per round and side")
    parser.add_argument("--quick", action="store_true", help="3 rounds of 20 calls (a smoke run)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    rounds, reps = (3, 20) if args.quick else (args.rounds, args.reps)
    sides = [Side("this checkout", ROOT), Side("baseline", os.path.abspath(args.baseline))]
    try:
        for r in range(rounds):
            order = sides if r % 2 == 0 else sides[::-1]
            for what in ("encode", "send_batch"):
                for side in order:
                    side.run(what, reps)
    finally:
        for side in sides:
            side.close()
    result = {}
    for what in ("encode", "send_batch"):
        ours, base = (statistics.median(s.samples[what]) for s in sides)
        result[what] = {"this_us": round(ours, 1), "baseline_us": round(base, 1), "ratio": round(ours / base, 3)}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"CPU per call, 100 FME events, median of {rounds} rounds x {reps} calls (this / baseline):")
        for what, r in result.items():
            print(f"  {what:10} {r['this_us']:9.1f} us  {r['baseline_us']:9.1f} us  {r['ratio']:.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
