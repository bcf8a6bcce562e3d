#!/usr/bin/env python3
"""Issue #19 item 8: VWO's FME SDK batching its own events, vs the same SDK instrumented
(``VWOFMEInstrumentor``: vwo_otel delivers), vs FME events emitted through ``VWOEvents``
directly (a service that does not run the SDK), side by side in one run.

Same loopback stand-in (``vwo_otel.testing.fme.FMEStandIn``: the SDK's settings, every event
request recorded) answering after 0 and 50 ms; defaults everywhere (``batch_event_data={}`` for
the SDK; the processor: VWO's same 100 events per request, 600 s); N users x
``get_flag`` + ``track_event`` + ``set_attribute`` from 4 threads, then ``flush_events()``.
Each run is a process of its own (the SDK keeps one client per process, and alone never exits).

    .venv-fme/bin/python benchmarks/fme.py            # 1,000 users (python3 dev.py fme creates .venv-fme)
    .venv-fme/bin/python benchmarks/fme.py --quick    # 200 users

events/s: events delivered / (first API call .. last event request answered); bytes/event: the
bodies of accepted event requests / events; lost: events the workload made that never arrived;
duplicated: events that arrived more than once. Goals: instrumented >= 1.0x the SDK's events/s,
<= 0.75x its bytes/event, 0 lost, 0 duplicated; direct >= 3x the SDK's events/s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = json.loads((ROOT / "tests" / "data" / "fme_settings.json").read_text())
ACCOUNT, SDK_KEY = SETTINGS["accountId"], SETTINGS["sdkKey"]
VARIANTS = ("alone", "instrumented", "direct")
THREADS = 4
#: VWO's batching defaults, which both the SDK (``batch_event_data={}``) and the processor use.
DEFAULTS = {"events_per_request": 100, "request_time_interval": 600}


# -- the worker (one process per run) ---------------------------------------------------------------
def context(i: int) -> dict[str, Any]:
    ctx: dict[str, Any] = {"id": f"user-{i}"}
    if i % 2:
        ctx.update(user_agent="Mozilla/5.0 (benchmark)", ip_address="10.0.0.1")
    return ctx


def worker(variant: str, url: str, users: int) -> None:
    processor = events = None
    if variant != "alone":
        from opentelemetry.sdk.trace import TracerProvider

        from vwo_otel import VWOEvents, VWOExporter, VWOSampler, VWOSpanProcessor
        provider = TracerProvider(sampler=VWOSampler())
        processor = VWOSpanProcessor(VWOExporter(ACCOUNT, SDK_KEY, endpoint=url), DEFAULTS)
        provider.add_span_processor(processor)
        if variant == "instrumented":
            from vwo_otel.instrumentation import VWOFMEInstrumentor
            VWOFMEInstrumentor().instrument(tracer_provider=provider)
        else:
            events = VWOEvents(tracer_provider=provider)
    client = None
    if variant != "direct":
        import vwo
        client = vwo.init({"sdk_key": SDK_KEY, "account_id": ACCOUNT, "proxy_url": url, "batch_event_data": {}})

    def sdk_user(i: int) -> None:
        ctx = context(i)
        client.get_flag("checkout", ctx)
        client.track_event("purchase", ctx, {"amount": 10 + i % 7, "currency": "EUR"})
        client.set_attribute({"tier": f"t{i % 3}", "visits": i}, ctx)

    def direct_user(i: int) -> None:  # what get_flag + track_event + set_attribute send, without the SDK
        user, ua, ip = f"user-{i}", context(i).get("user_agent"), context(i).get("ip_address")
        events.variation_shown(11, 1, user, visitor_ua=ua, visitor_ip=ip)
        events.variation_shown(12, 1 + i % 2, user, visitor_ua=ua, visitor_ip=ip)
        events.track_event("purchase", user, {"amount": 10 + i % 7, "currency": "EUR"}, visitor_ua=ua, visitor_ip=ip)
        events.set_attribute({"tier": f"t{i % 3}", "visits": i}, user, visitor_ua=ua, visitor_ip=ip)

    run = direct_user if variant == "direct" else sdk_user

    def share(k: int) -> None:
        for i in range(k, users, THREADS):
            run(i)

    threads = [threading.Thread(target=share, args=(k,)) for k in range(THREADS)]
    print(f"START {time.monotonic()!r}", flush=True)
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"API {time.monotonic()!r}", flush=True)
    flushed = client.flush_events() if client is not None else processor.flush_events()
    print(f"END {time.monotonic()!r} {flushed}", flush=True)
    if processor is not None:
        print("STATS " + json.dumps(processor.stats()), flush=True)
        sys.stdout.flush()
        os._exit(0)
    time.sleep(3600)  # the SDK alone: its queue is sent on its own threads; the parent kills this process


# -- the parent: one stand-in, the runs, the table ---------------------------------------------------
def key(d: dict[str, Any]) -> tuple[Any, ...]:
    """An event's identity in this workload (the SDK's msgId is not unique)."""
    props = d["event"]["props"]
    return d["visId"], d["event"]["name"], props.get("id"), str(props.get("variation")), props.get("amount")


def measure(stand_in: Any, variant: str, users: int) -> dict[str, Any]:
    stand_in.reset()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "VWO_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.Popen([sys.executable, __file__, "--worker", variant, "--url", stand_in.url,
                             "--users", str(users)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    start = end = api = None
    stats = None
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("START "):
            start = float(line.split()[1])
        elif line.startswith("API "):
            api = float(line.split()[1])
        elif line.startswith("END "):
            end = float(line.split()[1])
            if variant == "alone":
                break
        elif line.startswith("STATS "):
            stats = json.loads(line[6:])
    if start is None or end is None:
        proc.kill()
        raise SystemExit(f"{variant}: the worker failed: {proc.communicate()[1][-3000:]}")
    # the SDK alone sends on its own threads after flush_events() returns: wait until arrivals stop
    quiet, deadline = 1.0, time.monotonic() + 120
    while time.monotonic() < deadline:
        requests = stand_in.event_requests()
        if requests and time.monotonic() - requests[-1].at > quiet and time.monotonic() - end > quiet:
            break
        time.sleep(0.1)
    proc.kill()
    proc.communicate()
    accepted = [r for r in stand_in.event_requests() if 200 <= r.status < 300]
    events = [d for r in accepted for d in r.events]
    last = max((r.at for r in accepted), default=end)
    counts = Counter(key(d) for d in events)
    return {"variant": variant, "events": len(events), "keys": set(counts),
            "duplicated": sum(n - 1 for n in counts.values()), "seconds": max(last, end) - start,
            "events_per_s": len(events) / (max(last, end) - start),
            "bytes_per_event": sum(len(r.raw) for r in accepted) / max(1, len(events)),
            "requests": len(accepted), "empty_requests": sum(1 for r in accepted if not r.events),
            "api_seconds": (api or end) - start, "flush_seconds": end - (api or end),
            "stats": stats}


def verdict(variant: str, goal: bool) -> str:
    return "" if variant == "alone" else "goal met" if goal else "GOAL MISSED"


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median events/s; lost and duplicated are the worst of all runs."""
    ordered = sorted(runs, key=lambda r: r["events_per_s"])
    out = dict(ordered[len(ordered) // 2])
    out["duplicated"] = max(r["duplicated"] for r in runs)
    out["keys"] = set.intersection(*(r["keys"] for r in runs))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="200 users instead of 1,000")
    parser.add_argument("--users", type=int, default=None)
    parser.add_argument("--delays", default="0,0.05", help="answer delays in seconds (default 0,0.05)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each (interleaved; the median is shown)")
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    users = args.users or (200 if args.quick else 1000)
    if args.worker:
        worker(args.worker, args.url, users)
        return 0
    from vwo_otel.testing.fme import FMEStandIn

    rows = []
    print(f"FME: {users} users x get_flag + track_event + set_attribute, {THREADS} threads, defaults; "
          f"median of {max(1, args.repeat)} interleaved runs")
    print(f"{'delay':>6} {'run':<13} {'events':>7} {'events/s':>9} {'x SDK':>6} {'B/event':>8} {'x SDK':>6} "
          f"{'lost':>5} {'dup':>4} {'requests':>8} {'empty':>5} {'calls':>6} {'total':>6}")
    ok = True
    for delay in (float(x) for x in args.delays.split(",")):
        tries: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
        with FMEStandIn(SETTINGS, delay=delay) as stand_in:
            for _ in range(max(1, args.repeat)):
                for v in VARIANTS:
                    tries[v].append(measure(stand_in, v, users))
        runs = {v: median_run(tries[v]) for v in VARIANTS}
        made = set().union(*(t["keys"] for v in ("alone", "instrumented") for t in tries[v]))  # deterministic
        base = runs["alone"]
        for v in VARIANTS:
            r = runs[v]
            lost = users * 4 - len(r["keys"]) if v == "direct" else len(made - r["keys"])
            speed = r["events_per_s"] / base["events_per_s"]
            size = r["bytes_per_event"] / base["bytes_per_event"]
            goal = {"alone": True, "instrumented": speed >= 1.0 and size <= 0.75 and lost == 0 and r["duplicated"] == 0,
                    "direct": speed >= 3.0 and lost == 0 and r["duplicated"] == 0}[v]
            ok = ok and goal
            print(f"{delay * 1000:>4.0f}ms {v:<13} {r['events']:>7} {r['events_per_s']:>9.0f} {speed:>5.2f}x "
                  f"{r['bytes_per_event']:>8.0f} {size:>5.2f}x {lost:>5} {r['duplicated']:>4} {r['requests']:>8} "
                  f"{r['empty_requests']:>5} {r['api_seconds']:>5.2f}s {r['seconds']:>5.2f}s  {verdict(v, goal)}")
            rows.append({k: val for k, val in r.items() if k != "keys"} | {"delay": delay, "lost": lost,
                                                                          "speed_vs_sdk": speed, "bytes_vs_sdk": size})
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    print("all goals met" if ok else "some goals missed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
