#!/usr/bin/env python3
"""``vwo-otel gateway --workers N``: intake with 1 vs 2 (or more) worker processes, side by side.

    python benchmarks/gateway_workers.py             # default: 3 rounds of 1 and 2 workers, 120,000 events each
    python benchmarks/gateway_workers.py --quick     # a few seconds; numbers not meaningful
    python benchmarks/gateway_workers.py --workers 1 2 4 --events 200000 --rounds 5

Each sample starts a gateway (``--port 0 --workers N``, the loopback receiver as VWO,
``events_per_request`` 100, ``request_time_interval`` 1 s, a backlog large enough never to answer
429), then ``--senders`` processes post pre-encoded OTLP/protobuf requests of 512 spans, each on
a new connection (the kernel spreads connections over the workers), as fast as the answers come.
"events/s" is events accepted (answered 200) per second, from a common go signal until the last
sender's last answer; the gateway delivers to the receiver meanwhile. "CPU/event" is the gateway
processes' CPU time (parent and workers, from /proc) per accepted event; "events/CPU-s" its
inverse: what one fully used core takes in, the figure to size a deployment with. Samples
alternate (1, 2, 1, 2, ...) so the shared machine's load falls on both alike; the ratio is of
the medians. Linux only (/proc).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

ACCOUNT_ID = 12345
SDK_KEY = "bench-sdk-key-0123456789"
SPANS_PER_REQUEST = 512
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def run_sender(cfg: dict[str, Any]) -> int:
    """One sender process: build its bodies, say ready, wait for go, post them all (a new
    connection each), print when it got its last 200 (time.monotonic, shared by all processes)."""
    import http.client

    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

    n, name = cfg["n"], cfg["name"]
    now = time.time_ns()
    bodies = []
    for lo in range(0, n, SPANS_PER_REQUEST):
        req = ExportTraceServiceRequest()
        rs = req.resource_spans.add()
        rs.resource.attributes.append(KeyValue(key="vwo.account_id", value=AnyValue(string_value=str(ACCOUNT_ID))))
        ss = rs.scope_spans.add()
        for i in range(lo, min(n, lo + SPANS_PER_REQUEST)):
            span = ss.spans.add(trace_id=os.urandom(16), span_id=os.urandom(8), name="vwo.goal",
                                start_time_unix_nano=now, end_time_unix_nano=now)
            for key, value in (("vwo.event.type", AnyValue(int_value=2)),
                               ("vwo.user_id", AnyValue(string_value=f"{name}-{i}")),
                               ("vwo.campaign_id", AnyValue(int_value=231)),
                               ("vwo.variation_id", AnyValue(int_value=2)),
                               ("vwo.goal_id", AnyValue(int_value=7)), ("vwo.revenue", AnyValue(double_value=12.5))):
                span.attributes.append(KeyValue(key=key, value=value))
        bodies.append(req.SerializeToString())
    host, port = cfg["host"], cfg["port"]
    headers = {"Content-Type": "application/x-protobuf"}
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 1
    refused = 0
    for body in bodies:
        while True:
            conn = http.client.HTTPConnection(host, port, timeout=60)
            conn.request("POST", "/v1/traces", body, headers)
            status = conn.getresponse().status
            conn.close()
            if status == 200:
                break
            refused += 1
            time.sleep(0.05)
    print(json.dumps({"done_at": time.monotonic(), "refused": refused}), flush=True)
    return 0


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime


def _gateway_pids(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as f:
            return [pid, *(int(p) for p in f.read().split())]
    except OSError:
        return [pid]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env[f"VWO_SDK_KEY_{ACCOUNT_ID}"] = SDK_KEY
    return env


def run_sample(receiver: Any, workers: int, senders: int, total: int, events_per_request: int) -> dict[str, Any]:
    """One gateway with ``workers`` processes taking ``total`` events from ``senders`` processes."""
    receiver.reset()
    gateway = subprocess.Popen(
        [sys.executable, "-m", "vwo_otel", "gateway", "--account", str(ACCOUNT_ID), "--endpoint", receiver.url,
         "--port", "0", "--workers", str(workers), "--events-per-request", str(events_per_request),
         "--request-time-interval", "1", "--max-backlog", "1000000", "--log-level", "WARNING"],
        cwd=ROOT, env=_env(), stdout=subprocess.PIPE, text=True)
    assert gateway.stdout is not None
    line = gateway.stdout.readline()
    if "listening on " not in line:
        gateway.kill()
        raise RuntimeError(f"the gateway did not start: {line!r}")
    url = line.split("listening on ", 1)[1].split()[0]
    host, port = url.rsplit("/", 1)[1].rsplit(":", 1)
    per = [total // senders + (1 if i < total % senders else 0) for i in range(senders)]
    procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), "--sender", json.dumps(
        {"n": n, "name": f"w{workers}-s{i}", "host": host, "port": int(port)})], cwd=ROOT, env=_env(),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for i, n in enumerate(per)]
    for p in procs:
        assert p.stdout is not None
        if p.stdout.readline().strip() != "ready":
            raise RuntimeError("a sender failed to start")
    pids = _gateway_pids(gateway.pid)
    cpu0 = sum(_cpu_seconds(p) for p in pids)
    own0 = _cpu_seconds(os.getpid())  # the receiver (VWO) runs in this process
    t0 = time.monotonic()
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    done = []
    for p in procs:
        out, _ = p.communicate(timeout=600)
        done.append(json.loads(out.strip().splitlines()[-1]))
    seconds = max(d["done_at"] for d in done) - t0
    cpu = sum(_cpu_seconds(p) for p in pids) - cpu0  # intake and the delivery of what went out meanwhile
    receiver_cpu = _cpu_seconds(os.getpid()) - own0
    delivered_by_then = receiver.event_count()
    receiver.wait_for_events(total, 120)
    gateway.send_signal(signal.SIGTERM)
    out, _ = gateway.communicate(timeout=120)
    stats = json.loads(out.strip().splitlines()[-1])
    return {"workers": workers, "events": total, "seconds": seconds, "events_per_s": total / seconds,
            "cpu_seconds": cpu, "cpu_us_per_event": cpu / total * 1e6, "receiver_cpu": receiver_cpu / seconds,
            "delivered_during": delivered_by_then,
            "refused": sum(d["refused"] for d in done), "accepted": stats.get("accepted"),
            "delivered": receiver.event_count(), "exit": gateway.returncode}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few seconds; numbers not meaningful")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts (default 1 2)")
    parser.add_argument("--events", type=int, help="events per sample (default 120000)")
    parser.add_argument("--senders", type=int, default=4, help="sender processes (default 4)")
    parser.add_argument("--rounds", type=int, help="samples of each worker count (default 3)")
    parser.add_argument("--events-per-request", type=int, default=100, help="the gateway's batch size (default 100)")
    parser.add_argument("--sender", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sender:
        return run_sender(json.loads(args.sender))

    from vwo_otel.testing.receiver import Receiver

    total = args.events or (6000 if args.quick else 120_000)
    rounds = args.rounds or (1 if args.quick else 3)
    print(f"# vwo-otel gateway --workers: {total} events per sample, {args.senders} senders, events_per_request "
          f"{args.events_per_request}, {os.cpu_count()} CPU(s), load {os.getloadavg()[0]:.1f}, Python "
          f"{sys.version.split()[0]}", flush=True)
    rows: list[dict[str, Any]] = []
    with Receiver(account_id=ACCOUNT_ID, sdk_key=SDK_KEY) as receiver:
        for r in range(rounds):
            for workers in args.workers:
                row = run_sample(receiver, workers, args.senders, total, args.events_per_request)
                rows.append(row)
                print(f"  round {r + 1} workers={workers}: {row['events_per_s']:,.0f} events/s, "
                      f"{row['cpu_us_per_event']:.1f} us CPU/event, gateway {row['cpu_seconds'] / row['seconds']:.2f} "
                      f"cores, receiver {row['receiver_cpu']:.2f} cores, {row['delivered']}/{total} delivered, "
                      f"{row['refused']} refused, exit {row['exit']}", flush=True)
    print()
    head = (f"{'workers':>7} {'events/s (median)':>18} {'samples':>40} {'gateway cores':>14} {'CPU us/event':>13} "
            f"{'events/CPU-s':>13} {'x':>6}")
    print(head)
    print("-" * len(head))
    base = None
    for workers in args.workers:
        mine = [r for r in rows if r["workers"] == workers]
        rate = statistics.median(r["events_per_s"] for r in mine)
        cpu = statistics.median(r["cpu_us_per_event"] for r in mine)
        base = base or rate
        cores = statistics.median(r["cpu_seconds"] / r["seconds"] for r in mine)
        samples = " ".join(f"{r['events_per_s']:,.0f}" for r in mine)
        print(f"{workers:>7} {rate:>18,.0f} {samples:>40} {cores:>14.2f} {cpu:>13.1f} {1e6 / cpu:>13,.0f} "
              f"{rate / base:>5.2f}x")
    print("x: median events/s against the first worker count's. The gateway shares the machine with the senders "
          "and the receiver (and whatever else runs): with N workers it can use N cores only if they are free.")
    lost = [r for r in rows if r["delivered"] != r["events"] or r["exit"] != 0]
    if lost:
        print(f"WARNING: {len(lost)} sample(s) did not deliver every event exactly: {lost}")
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
