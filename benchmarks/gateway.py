#!/usr/bin/env python3
"""Benchmark of ``vwo-otel gateway``: throughput and batching gain, 1 vs 10 sending processes.

    python benchmarks/gateway.py            # default run (about a minute)
    python benchmarks/gateway.py --quick    # tiny smoke (a few seconds; numbers not meaningful)

Last, the gateway process's peak RSS and thread count under hostile bodies (decompression and
item-count bombs) and with 300 idle keep-alive connections.

Two ways for N app processes to get VWO events to VWO (here: the loopback receiver,
``vwo_otel.testing.receiver.Receiver``, in this driver process):

* ``gateway``: each app exports its VWO event spans with OpenTelemetry's own
  ``OTLPSpanExporter`` (``BatchSpanProcessor``) to one ``vwo-otel gateway`` process, which
  batches all of them together (``events_per_request``, ``request_time_interval``);
* ``per-process``: each app batches on its own with ``VWOSpanProcessor`` (same
  ``events_per_request``, and a short ``request_time_interval`` so events are not held long).

Two phases:

* ``throughput``: the apps emit as fast as they can. "events/s in" is what the gateway
  accepted per second (per-process: what reached VWO per second), "requests/s out" the
  requests VWO received per second, from the go signal until the last event arrived.
* ``paced``: the apps together emit ``--rate`` events/s for ``--seconds``, spread evenly, as
  real traffic does. Each process alone fills a batch slowly, so its batches are cut by age
  and are small; the gateway sees the sum and sends full batches. "req/10^4 ev" is the
  number of requests VWO received per 10,000 events; "gain" = per-process / gateway.

Every app process is started and imports everything before a common go signal, so start-up
is not measured. Needs ``opentelemetry-exporter-otlp-proto-http`` (``pip install -e '.[test]'``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

ACCOUNT_ID = 12345
SDK_KEY = "bench-sdk-key-0123456789"
EVENTS_PER_REQUEST = 100
REQUEST_TIME_INTERVAL = 1.0
MODES = {
    "quick": {"senders": [1, 2], "throughput_events": 600, "rate": 200, "seconds": 1.5},
    "default": {"senders": [1, 10], "throughput_events": 20000, "rate": 200, "seconds": 6.0},
}


# -- the app process -----------------------------------------------------------------------------

def run_sender(cfg: dict[str, Any]) -> int:
    """One app process: set up its pipeline, say ready, wait for go, emit, shut down (flush)."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    import vwo_otel

    if cfg["mode"] == "gateway-raw":
        return _raw_sender(cfg)
    resource = Resource.create({"service.name": cfg["name"]})
    if cfg["mode"] == "gateway":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        provider.add_span_processor(BatchSpanProcessor(
            OTLPSpanExporter(endpoint=cfg["url"] + "/v1/traces", timeout=30),
            max_export_batch_size=512, schedule_delay_millis=200, max_queue_size=100_000))
    else:
        provider = TracerProvider(resource=resource, sampler=vwo_otel.VWOSampler(), shutdown_on_exit=False)
        exporter = vwo_otel.VWOExporter(ACCOUNT_ID, SDK_KEY, endpoint=cfg["url"])
        provider.add_span_processor(vwo_otel.VWOSpanProcessor(
            exporter, {"events_per_request": EVENTS_PER_REQUEST, "request_time_interval": REQUEST_TIME_INTERVAL},
            max_queue_size=100_000, shutdown_timeout=60))
    vwo = vwo_otel.VWOEvents(tracer_provider=provider, to_gateway=cfg["mode"] == "gateway")
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 1
    n, rate, name = cfg["n"], cfg["rate"], cfg["name"]
    t0 = time.perf_counter()
    for i in range(n):
        if rate:
            ahead = t0 + i / rate - time.perf_counter()
            if ahead > 0:
                time.sleep(ahead)
        user = f"{name}-{i}"
        if i % 2:
            vwo.track(231, 2, 7, user, revenue=12.5)
        else:
            vwo.activate(231, 2, user)
    emitted = time.perf_counter() - t0
    provider.shutdown()
    print(json.dumps({"emit_seconds": emitted}), flush=True)
    return 0


def _raw_sender(cfg: dict[str, Any]) -> int:
    """An app process that posts pre-encoded OTLP/protobuf requests (512 spans each) as fast
    as it can: the gateway's own intake ceiling, without the SDK's cost of making spans."""
    import requests
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

    n, name = cfg["n"], cfg["name"]
    now = time.time_ns()
    bodies = []
    for lo in range(0, n, 512):
        req = ExportTraceServiceRequest()
        rs = req.resource_spans.add()
        rs.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value=name)))
        ss = rs.scope_spans.add()
        for i in range(lo, min(n, lo + 512)):
            span = ss.spans.add(trace_id=os.urandom(16), span_id=os.urandom(8), name="vwo.goal",
                                start_time_unix_nano=now, end_time_unix_nano=now)
            for key, value in (("vwo.event.type", AnyValue(int_value=2)),
                               ("vwo.user_id", AnyValue(string_value=f"{name}-{i}")),
                               ("vwo.campaign_id", AnyValue(int_value=231)),
                               ("vwo.variation_id", AnyValue(int_value=2)),
                               ("vwo.goal_id", AnyValue(int_value=7)), ("vwo.revenue", AnyValue(double_value=12.5))):
                span.attributes.append(KeyValue(key=key, value=value))
        bodies.append(req.SerializeToString())
    session = requests.Session()
    url = cfg["url"] + "/v1/traces"
    headers = {"Content-Type": "application/x-protobuf"}
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 1
    t0 = time.perf_counter()
    for body in bodies:
        while session.post(url, data=body, headers=headers, timeout=30).status_code != 200:
            time.sleep(0.05)  # 429: the backlog is full; retry like an OTLP exporter would
    print(json.dumps({"emit_seconds": time.perf_counter() - t0}), flush=True)
    return 0


# -- the driver ------------------------------------------------------------------------------------

def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _start_gateway(receiver_url: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "vwo_otel", "gateway", "--account", f"{ACCOUNT_ID}={SDK_KEY}",
         "--default-account", str(ACCOUNT_ID), "--endpoint", receiver_url, "--port", "0",
         "--events-per-request", str(EVENTS_PER_REQUEST), "--request-time-interval", str(REQUEST_TIME_INTERVAL),
         "--max-backlog", "1000000", "--log-level", "WARNING"],
        cwd=ROOT, env=_env(), stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on " not in line:
        proc.kill()
        raise RuntimeError(f"gateway did not start: {line!r}")
    return proc, line.split("listening on ", 1)[1].split()[0]


def _stop_gateway(proc: subprocess.Popen) -> dict[str, Any]:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    lines = [ln for ln in out.strip().splitlines() if ln.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


def _gateway_accepted(url: str) -> int:
    import requests

    return int(requests.get(url + "/stats", timeout=5).json()["accepted"])


def run_case(receiver: Any, mode: str, senders: int, total: int, rate: float) -> dict[str, Any]:
    """One measurement: ``senders`` app processes emit ``total`` events (at ``rate`` events/s
    in all, or as fast as they can when 0) through ``mode``; returns the numbers."""
    receiver.reset()
    gateway = None
    url = receiver.url
    if mode.startswith("gateway"):
        gateway, url = _start_gateway(receiver.url)
    per = [total // senders + (1 if i < total % senders else 0) for i in range(senders)]
    procs = []
    for i, n in enumerate(per):
        cfg = {"mode": mode, "url": url, "n": n, "rate": rate / senders if rate else 0, "name": f"{mode}-{i}"}
        procs.append(subprocess.Popen([sys.executable, os.path.abspath(__file__), "--sender", json.dumps(cfg)],
                                      cwd=ROOT, env=_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
    for p in procs:
        assert p.stdout is not None
        if p.stdout.readline().strip() != "ready":
            raise RuntimeError("a sender failed to start")
    started = time.perf_counter()
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    accepted_at = None
    deadline = started + 300
    while time.perf_counter() < deadline:
        if gateway is not None and accepted_at is None and _gateway_accepted(url) >= total:
            accepted_at = time.perf_counter()
        if receiver.event_count() >= total:
            break
        time.sleep(0.01)
    delivered_at = time.perf_counter()
    emit = []
    for p in procs:
        out, _ = p.communicate(timeout=120)
        emit.append(json.loads(out.strip().splitlines()[-1])["emit_seconds"])
    gw_stats = _stop_gateway(gateway) if gateway is not None else {}
    summary = receiver.summary()
    events, reqs = summary["events"], summary["accepted_requests"]
    seconds = delivered_at - started
    intake = (accepted_at or delivered_at) - started
    return {
        "mode": mode, "senders": senders, "events": events, "expected": total, "seconds": seconds,
        "events_per_s_in": total / intake if intake > 0 else 0.0,
        "requests_out": reqs, "requests_per_s_out": reqs / seconds if seconds > 0 else 0.0,
        "requests_per_10k": reqs * 10_000 / events if events else 0.0,
        "events_per_request": summary["events_per_request"], "emit_seconds": max(emit),
        "upstream_requests": sum(gw_stats.get("requests", {}).values()) if gw_stats else None,
    }


def _proc_status(pid: int) -> dict[str, int]:
    """VmHWM (peak RSS) and VmRSS in MB and the thread count of process ``pid``."""
    out = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(value.split()[0]) // 1024
            elif key == "Threads":
                out[key] = int(value)
    return out


def run_memory(receiver: Any, idle: int = 300) -> list[dict[str, Any]]:
    """The gateway process's peak RSS and threads: at start, after two of each hostile body
    (``vwo_otel.testing.hostile_bodies``, 64 MiB inflated) at once, and with ``idle`` idle
    keep-alive connections open (then a new client is timed)."""
    import socket
    import threading

    import requests

    from vwo_otel.testing import hostile_bodies

    proc, url = _start_gateway(receiver.url)
    rows = []
    try:
        rows.append({"case": "started", **_proc_status(proc.pid)})
        bombs = hostile_bodies()
        codes: list[int] = []
        threads = [threading.Thread(target=lambda b=b: codes.append(
            requests.post(url + b.path, data=b.body, headers=b.headers, timeout=60).status_code))
            for b in bombs for _ in range(2)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rows.append({"case": f"{len(threads)} bombs at once", "answers": sorted(set(codes)),
                     "seconds": time.perf_counter() - t0, **_proc_status(proc.pid)})
        host, port = url.rsplit("/", 1)[1].rsplit(":", 1)
        conns = []
        for _ in range(idle):
            s = socket.create_connection((host, int(port)))
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            s.recv(4096)  # answered: now an idle keep-alive connection
            conns.append(s)
        time.sleep(0.5)
        t0 = time.perf_counter()
        status = requests.get(url + "/healthz", timeout=10).status_code
        rows.append({"case": f"{idle} idle connections", "answers": [status],
                     "seconds": time.perf_counter() - t0, **_proc_status(proc.pid)})
        for s in conns:
            s.close()
    finally:
        _stop_gateway(proc)
    return rows


def worst_json_body() -> bytes:
    """A gzip OTLP/JSON body at the bounds: just under ``max_inflated_bytes`` (32 MiB) inflated and
    ``max_items`` x ``JSON_VALUES_PER_ITEM`` (1,000,000) values, spent on the objects that cost
    ``json.loads`` the most memory (spans with a name only, no VWO event among them): about 110 KB."""
    import gzip

    span = b'{"name":"' + b"x" * 55 + b'"},'
    return gzip.compress(b'{"resourceSpans":[{"scopeSpans":[{"spans":[' + span * 499_000 + b'{}]}]}]}', 9)


def run_worst_json(receiver: Any) -> dict[str, Any]:
    """A fresh gateway process's peak RSS for one ``worst_json_body`` (answered 200: it is within the bounds)."""
    import requests

    body = worst_json_body()
    proc, url = _start_gateway(receiver.url)
    try:
        time.sleep(0.5)
        start = _proc_status(proc.pid)["VmHWM"]
        t0 = time.perf_counter()
        status = requests.post(url + "/v1/traces", data=body, timeout=60,
                               headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}).status_code
        return {"case": f"worst JSON ({len(body) // 1024} KB gzip)", "answers": [status],
                "seconds": time.perf_counter() - t0, "start": start, **_proc_status(proc.pid)}
    finally:
        _stop_gateway(proc)


def main(argv: list[str] | None = None) -> int:
    """Run the phases and print a table with the ratios."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument("--senders", type=int, nargs="+", help="numbers of app processes (default 1 10)")
    parser.add_argument("--events", type=int, help="events in the throughput phase (default 20000)")
    parser.add_argument("--rate", type=float, help="events/s of all apps together in the paced phase (default 200)")
    parser.add_argument("--seconds", type=float, help="length of the paced phase (default 6)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--memory", action="store_true", help="only the last table (peak RSS and threads)")
    parser.add_argument("--sender", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sender:
        return run_sender(json.loads(args.sender))

    from vwo_otel.testing.receiver import Receiver

    mode = dict(MODES["quick" if args.quick else "default"])
    senders = args.senders or mode["senders"]
    total = args.events or mode["throughput_events"]
    rate = args.rate or mode["rate"]
    seconds = args.seconds or mode["seconds"]
    results: list[dict[str, Any]] = []
    if args.memory:
        senders = []
    print(f"# vwo-otel gateway benchmark: events_per_request={EVENTS_PER_REQUEST}, "
          f"request_time_interval={REQUEST_TIME_INTERVAL:g} s, {os.cpu_count()} CPU(s), Python "
          f"{sys.version.split()[0]}", flush=True)
    with Receiver(account_id=ACCOUNT_ID, sdk_key=SDK_KEY) as receiver:
        for phase, n_events, phase_rate, hows in (
                ("throughput", total, 0.0, ("gateway", "gateway-raw", "per-process")),
                ("paced", int(rate * seconds), rate, ("gateway", "per-process"))):
            for n in senders:
                for how in hows:
                    row = run_case(receiver, how, n, n_events, phase_rate)
                    row["phase"] = phase
                    results.append(row)
                    print(f"  {phase:<10} {how:<11} senders={n:<3} events={row['events']}/{row['expected']} "
                          f"in {row['seconds']:.2f} s", flush=True)
    head = (f"{'phase':<10} {'mode':<11} {'senders':>7} {'events':>7} {'seconds':>8} {'events/s in':>12} "
            f"{'VWO reqs':>8} {'reqs/s out':>10} {'req/10^4 ev':>11} {'ev/req':>7} {'gain':>6}")
    print()
    print(head)
    print("-" * len(head))
    for row in results:
        twin = next(r for r in results if r["phase"] == row["phase"] and r["senders"] == row["senders"]
                    and r["mode"] == "per-process")
        gain = ""
        if row["mode"].startswith("gateway") and row["requests_per_10k"]:
            gain = f"{twin['requests_per_10k'] / row['requests_per_10k']:.1f}x"
        print(f"{row['phase']:<10} {row['mode']:<11} {row['senders']:>7} {row['events']:>7} {row['seconds']:>8.2f} "
              f"{row['events_per_s_in']:>12,.0f} {row['requests_out']:>8} {row['requests_per_s_out']:>10.1f} "
              f"{row['requests_per_10k']:>11.0f} {row['events_per_request']:>7.1f} {gain:>6}")
    print()
    print("gain = per-process req/10^4 ev / gateway req/10^4 ev (same phase and senders): how many times fewer "
          "requests VWO receives through the gateway.")
    for phase in ("throughput", "paced"):
        rows = {(r["mode"], r["senders"]): r for r in results if r["phase"] == phase}
        if len(senders) >= 2:
            lo, hi = min(senders), max(senders)
            g_lo, g_hi = rows[("gateway", lo)], rows[("gateway", hi)]
            p_lo, p_hi = rows[("per-process", lo)], rows[("per-process", hi)]
            def x(a: dict, b: dict, key: str) -> str:
                return f"x{b[key] / max(a[key], 1e-9):.2f}"

            print(f"{phase}: {lo} -> {hi} senders: gateway req/10^4 ev {x(g_lo, g_hi, 'requests_per_10k')}, "
                  f"per-process {x(p_lo, p_hi, 'requests_per_10k')}; "
                  f"gateway events/s in {x(g_lo, g_hi, 'events_per_s_in')}")
            if ("gateway-raw", lo) in rows:
                r_lo, r_hi = rows[("gateway-raw", lo)], rows[("gateway-raw", hi)]
                print(f"{phase}: gateway intake ceiling (pre-encoded OTLP): {r_lo['events_per_s_in']:,.0f} events/s "
                      f"with {lo} sender(s), {r_hi['events_per_s_in']:,.0f} with {hi}")
    with Receiver(account_id=ACCOUNT_ID, sdk_key=SDK_KEY) as receiver:
        memory = run_memory(receiver)
        memory.append(run_worst_json(receiver))
    print()
    print("gateway process: peak RSS (VmHWM) and threads; x = peak / peak at start "
          "(before the bounds: 1.7 GB for one JSON bomb, 2,002 threads for 2,000 idle connections)")
    start_hwm = memory[0]["VmHWM"]
    for row in memory:
        answers = ",".join(map(str, row.get("answers", []))) or "-"
        took = f"{row['seconds']:.2f} s" if "seconds" in row else "-"
        x = row["VmHWM"] / max(row.get("start", start_hwm), 1)  # against its own gateway's start
        print(f"  {row['case']:<26} peak {row['VmHWM']:>5} MB (x{x:.1f})  "
              f"rss {row['VmRSS']:>5} MB  threads {row['Threads']:>4}  answers {answers:<8} {took}")
    missing = [r for r in results if r["events"] != r["expected"]]
    if missing:
        print(f"WARNING: {len(missing)} run(s) did not deliver every event", flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"events_per_request": EVENTS_PER_REQUEST, "request_time_interval": REQUEST_TIME_INTERVAL,
                       "cpus": os.cpu_count(), "results": results, "memory": memory}, f, indent=1)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
