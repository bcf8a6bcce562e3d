#!/usr/bin/env python3
"""Benchmark of a ``vwo-otel gateway`` under slow senders: how long a sender with a valid token
waits while others trickle request bodies (issue #22 item 2).

    python benchmarks/trickle.py                    # 200 anonymous tricklers, then 200 with a token
    python benchmarks/trickle.py --quick            # 36 of each, fewer legitimate requests
    python benchmarks/trickle.py --nofile 256 --tricklers 250    # the gateway at a 256-file limit

The gateway runs in a process of its own (``python -m vwo_otel gateway`` with one bearer token,
delivering to the loopback receiver in this process). ``--tricklers`` connections each send a
request head announcing a large body (``--announce`` bytes) and then one body byte every
``--every`` seconds; a connection the gateway closes is opened again at once, so the attack
keeps its size. Once they are all open, ``--legit`` requests with the valid token (one VWO
event each) are sent from 4 threads, each with a 20 s timeout; the table gives their latency
(p50, p90, max) and how many were answered 200. ``anonymous``: the tricklers send no token;
``token``: they send the valid one (a client that has a token, or any local process when the
gateway has no tokens).

To compare with another checkout: ``python benchmarks/trickle.py --root /path/to/checkout``
runs that checkout's gateway (this script itself needs nothing from it).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import select
import socket
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

ACCOUNT_ID = 12345
SDK_KEY = "bench-sdk-key-0123456789"
TOKEN = "bench-token-0123456789abcdef"


def _start_gateway(root: str, receiver_url: str, nofile: int) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": root, "BENCH_TOKEN": TOKEN}

    def limit() -> None:
        if nofile:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    proc = subprocess.Popen(
        [sys.executable, "-m", "vwo_otel", "gateway", "--account", f"{ACCOUNT_ID}={SDK_KEY}",
         "--default-account", str(ACCOUNT_ID), "--endpoint", receiver_url, "--port", "0",
         "--auth-token-env", "BENCH_TOKEN", "--request-time-interval", "1", "--log-level", "WARNING"],
        cwd=root, env=env, stdout=subprocess.PIPE, text=True, preexec_fn=limit)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on " not in line:
        proc.kill()
        raise RuntimeError(f"gateway did not start: {line!r}")
    return proc, line.split("listening on ", 1)[1].split()[0]


class Tricklers:
    """``n`` connections trickling request bodies, reopened when the server closes them."""

    def __init__(self, port: int, n: int, announce: int, every: float, token: bool) -> None:
        auth = b"Authorization: Bearer %s\r\n" % TOKEN.encode() if token else b""
        self.head = (b"POST /v1/traces HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n" + auth
                     + b"Content-Length: %d\r\n\r\n{" % announce)
        self.port, self.n, self.every = port, n, every
        self.socks: list[socket.socket] = []
        self.reopened = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _open(self) -> socket.socket | None:
        try:
            s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            s.sendall(self.head)
            s.setblocking(False)
            return s
        except OSError:
            return None

    def start(self) -> None:
        for _ in range(self.n):
            s = self._open()
            if s is not None:
                self.socks.append(s)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            readable = select.select(self.socks, [], [], 0)[0] if self.socks else []
            for s in readable:  # an answer or a close: the gateway gave up on it; open another
                try:
                    while s.recv(65536):
                        pass
                except BlockingIOError:
                    continue
                except OSError:
                    pass
                s.close()
                self.socks.remove(s)
            while len(self.socks) < self.n and not self.stop.is_set():
                s = self._open()
                if s is None:
                    break
                self.socks.append(s)
                self.reopened += 1
            for s in list(self.socks):
                try:
                    s.send(b" ")
                except OSError:
                    pass
            self.stop.wait(self.every)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        for s in self.socks:
            s.close()


def _body(user: str) -> bytes:
    attrs = {"vwo.event.type": 2, "vwo.user_id": user, "vwo.campaign_id": 231, "vwo.variation_id": 2,
             "vwo.goal_id": 7}
    kvs = [{"key": k, "value": {"intValue": str(v)} if isinstance(v, int) else {"stringValue": v}}
           for k, v in attrs.items()]
    doc = {"resourceSpans": [{"scopeSpans": [{"spans": [{
        "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174", "name": "s",
        "startTimeUnixNano": str(time.time_ns()), "endTimeUnixNano": str(time.time_ns()), "attributes": kvs}]}]}]}
    return json.dumps(doc).encode()


def send_legit(url: str, n: int, threads: int = 4) -> tuple[list[float], list[int]]:
    """``n`` one-event exports with the valid token from ``threads`` threads: (latencies, statuses)."""
    import requests

    latencies: list[float] = []
    statuses: list[int] = []
    lock = threading.Lock()
    todo = iter(range(n))

    def run() -> None:
        with requests.Session() as session:
            while True:
                with lock:
                    i = next(todo, None)
                if i is None:
                    return
                t0 = time.perf_counter()
                try:
                    status = session.post(url + "/v1/traces", data=_body(f"legit-{i}"), timeout=20, headers={
                        "Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}).status_code
                except requests.RequestException:
                    status = 0
                took = time.perf_counter() - t0
                with lock:
                    latencies.append(took)
                    statuses.append(status)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return latencies, statuses


def run_case(root: str, receiver_url: str, *, tricklers: int, token: bool, announce: int, every: float,
             n_legit: int, nofile: int) -> dict[str, Any]:
    proc, url = _start_gateway(root, receiver_url, nofile)
    port = int(url.rsplit(":", 1)[1])
    attack = Tricklers(port, tricklers, announce, every, token)
    try:
        attack.start()
        time.sleep(1.0)  # the attack settles
        latencies, statuses = send_legit(url, n_legit)
    finally:
        attack.close()
        proc.terminate()
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
    latencies.sort()
    ok = statuses.count(200)
    failed = {str(s): statuses.count(s) for s in sorted(set(statuses) - {200})}  # 0: no answer (reset, timeout)
    return {"tricklers": tricklers, "token": token, "nofile": nofile, "legit": n_legit, "served": ok, "failed": failed,
            "p50": statistics.median(latencies), "p90": latencies[int(0.9 * (len(latencies) - 1))],
            "max": latencies[-1], "reopened": attack.reopened}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="36 tricklers, 12 legitimate requests")
    parser.add_argument("--tricklers", type=int, help="trickling connections (default 200)")
    parser.add_argument("--legit", type=int, help="requests with the valid token (default 36)")
    parser.add_argument("--announce", type=int, default=1_000_000, help="Content-Length the tricklers announce")
    parser.add_argument("--every", type=float, default=0.1, help="seconds between a trickler's bytes")
    parser.add_argument("--nofile", type=int, default=0, help="the gateway's RLIMIT_NOFILE (0: unchanged)")
    parser.add_argument("--only", choices=("anonymous", "token"), help="one kind of trickler only")
    parser.add_argument("--root", default=ROOT, help="the checkout whose gateway runs (default this one)")
    args = parser.parse_args(argv)

    from vwo_otel.testing import Receiver

    tricklers = args.tricklers or (36 if args.quick else 200)
    n_legit = args.legit or (12 if args.quick else 36)
    kinds = [args.only == "token"] if args.only else [False, True]
    print(f"# gateway from {args.root}: {tricklers} trickling connections (Content-Length {args.announce}, a byte "
          f"every {args.every:g} s), {n_legit} requests with the valid token from 4 threads"
          + (f", RLIMIT_NOFILE {args.nofile}" if args.nofile else ""), flush=True)
    rows = []
    with Receiver(account_id=ACCOUNT_ID, sdk_key=SDK_KEY) as receiver:
        for token in kinds:
            rows.append(run_case(args.root, receiver.url, tricklers=tricklers, token=token, announce=args.announce,
                                 every=args.every, n_legit=n_legit, nofile=args.nofile))
    print(f"{'tricklers':<20} {'served':>8} {'p50 s':>8} {'p90 s':>8} {'max s':>8} {'reopened':>9}  others")
    for r in rows:
        kind = f"{r['tricklers']} {'with token' if r['token'] else 'anonymous'}"
        print(f"{kind:<20} {r['served']:>4}/{r['legit']:<3} {r['p50']:>8.3f} {r['p90']:>8.3f} {r['max']:>8.3f} "
              f"{r['reopened']:>9}  {r['failed'] or ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
