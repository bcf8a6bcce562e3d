#!/usr/bin/env python3
"""The HTTP server's own cost per request, through the loopback receiver every delivery
benchmark posts to: this checkout against another one (``--baseline PATH``), measured side by
side in one run (rounds alternate between the two).

    python benchmarks/httpd.py --baseline /path/to/other/checkout
    python benchmarks/httpd.py --baseline /path/to/other/checkout --quick

Each side's receiver runs in a process of its own (``vwo_otel.testing.Receiver`` of that
checkout). ``--clients`` threads of this process post pre-encoded batch requests (100 events
each, as the SDK sends them, about 14 KB) over kept-alive connections, ``--requests`` in all per
round. Reported per side: the median over rounds of requests/s, and of the receiver process's
CPU time (user + system, from /proc) per request; the ratios are this checkout / baseline.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ACCOUNT_ID = 12345
SDK_KEY = "bench-sdk-key-0123456789"
_SERVE = """
import sys
from vwo_otel.testing import Receiver
rx = Receiver(account_id=int(sys.argv[1]), sdk_key=sys.argv[2]).start()
print(rx.port, flush=True)
sys.stdin.read()
"""


def _body(n: int = 100) -> bytes:
    events = [{"eT": 2, "u": "C4D95C097902569F9A2D2E87CD3201C8", "sId": 1795663949 + i, "visitor_ua": "bench/1.0",
               "visitor_ip": "10.0.0.1", "e": 231, "c": 2, "g": 7, "r": 12.5} for i in range(n)]
    return json.dumps({"ev": events}, separators=(",", ":")).encode()


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


class Side:
    """One checkout's receiver, in its own process."""

    def __init__(self, name: str, root: str) -> None:
        self.name, self.root = name, root
        env = {**os.environ, "PYTHONPATH": root}
        self.proc = subprocess.Popen([sys.executable, "-c", _SERVE, str(ACCOUNT_ID), SDK_KEY], cwd=root, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())
        self.rounds: list[dict[str, float]] = []

    def round(self, n_requests: int, clients: int, body: bytes) -> None:
        path = f"/server-side/batch-events?a={ACCOUNT_ID}&env={SDK_KEY}"
        headers = {"Authorization": SDK_KEY, "Content-Type": "application/json", "User-Agent": "bench"}
        todo = [n_requests // clients + (1 if i < n_requests % clients else 0) for i in range(clients)]
        errors: list[str] = []
        go = threading.Event()

        def client(count: int) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            go.wait()
            for _ in range(count):
                conn.request("POST", path, body, headers)
                r = conn.getresponse()
                r.read()
                if r.status != 200:
                    errors.append(str(r.status))
            conn.close()

        threads = [threading.Thread(target=client, args=(c,)) for c in todo]
        for t in threads:
            t.start()
        cpu0, t0 = _cpu_seconds(self.proc.pid), time.perf_counter()
        go.set()
        for t in threads:
            t.join()
        seconds, cpu = time.perf_counter() - t0, _cpu_seconds(self.proc.pid) - cpu0
        if errors:
            raise RuntimeError(f"{self.name}: {len(errors)} requests not answered 200: {errors[:3]}")
        self.rounds.append({"requests_per_s": n_requests / seconds, "cpu_us_per_request": cpu / n_requests * 1e6})

    def median(self, key: str) -> float:
        return statistics.median(r[key] for r in self.rounds)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True, help="the other checkout (its root directory)")
    parser.add_argument("--quick", action="store_true", help="3 rounds of 300 requests")
    parser.add_argument("--rounds", type=int, help="rounds per side (default 9)")
    parser.add_argument("--requests", type=int, help="requests per round (default 3000)")
    parser.add_argument("--clients", type=int, default=4, help="posting threads (default 4)")
    args = parser.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 9)
    n = args.requests or (300 if args.quick else 3000)
    body = _body()
    sides = [Side("this checkout", ROOT), Side("baseline", os.path.abspath(args.baseline))]
    try:
        for side in sides:  # warm-up: connections, threads, caches
            side.round(min(n, 200), args.clients, body)
            side.rounds.clear()
        for _ in range(rounds):
            for side in sides:
                side.round(n, args.clients, body)
    finally:
        for side in sides:
            side.close()
    ours, base = sides
    print(f"# loopback receiver, {rounds} rounds x {n} batch POSTs of {len(body)} bytes (100 events) from "
          f"{args.clients} kept-alive connections; medians; {os.cpu_count()} CPU(s), Python {sys.version.split()[0]}")
    print(f"{'':<16} {'requests/s':>12} {'events/s':>12} {'receiver CPU us/request':>24}")
    for side in sides:
        rps, cpu = side.median("requests_per_s"), side.median("cpu_us_per_request")
        print(f"{side.name:<16} {rps:>12,.0f} {rps * 100:>12,.0f} {cpu:>24,.0f}")
    print(f"{'ratio':<16} {ours.median('requests_per_s') / base.median('requests_per_s'):>11.2f}x "
          f"{'':>12} {ours.median('cpu_us_per_request') / base.median('cpu_us_per_request'):>23.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
