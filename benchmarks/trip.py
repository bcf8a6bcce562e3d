#!/usr/bin/env python3
"""The modules of ``vwo_otel`` one event enters on its way, ``VWOEvents.activate`` to
``flush_callback``, and the calls that cross from one module to another (ARCHITECTURE.md).

    python benchmarks/trip.py           # VWO answers at once
    python benchmarks/trip.py --retry   # VWO answers 503 past the retry budget: parked in the spool, then sent

A profile hook on every thread records each call into a ``vwo_otel`` module while the one event
travels (a warm-up event first, so set-up is not counted); the loopback receiver's own modules
(``testing/``, ``servers/``) are left out. A crossing is a call whose caller is in another
module; one that runs against the data path (the exporter into the engine, the spool into the
batcher, the engine into the processors) is marked.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from types import FrameType
from typing import Any

ORDER = ("api", "handoff", "checks", "event", "processor", "_engine", "export", "errors")
RECORDING = False
entered: dict[str, str] = {}
crossings: dict[tuple[str, str], int] = {}


def module(frame: FrameType | None) -> str | None:
    name = frame.f_code.co_filename if frame is not None else ""
    if "/vwo_otel/" not in name:
        return None
    inner = name.split("/vwo_otel/", 1)[1]
    return None if inner.startswith(("testing/", "servers/")) else inner


def profile(frame: FrameType, event: str, arg: Any) -> None:
    if not RECORDING or event != "call" or (callee := module(frame)) is None:
        return
    entered.setdefault(callee, frame.f_code.co_name)
    caller = module(frame.f_back)
    if caller is not None and caller != callee:
        crossings[(caller, callee)] = crossings.get((caller, callee), 0) + 1


def backwards(caller: str, callee: str) -> bool:
    return ((caller.startswith("export/") and callee.startswith("_engine/"))
            or (caller == "_engine/spool.py" and callee == "_engine/batcher.py")
            or (caller.startswith("_engine/") and callee in ("processor.py", "api.py")))


def main() -> int:
    global RECORDING
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--retry", action="store_true", help="VWO answers 503 until the event is parked, then 200")
    args = parser.parse_args()
    threading.setprofile(profile)
    sys.setprofile(profile)
    from opentelemetry.sdk.trace import TracerProvider

    import vwo_otel
    from vwo_otel.testing import Receiver

    receiver = Receiver(123456, "k" * 32).start()
    done = threading.Event()
    spool = {"spool": vwo_otel.Spool(tempfile.mkdtemp())} if args.retry else {}
    processor = vwo_otel.VWOSpanProcessor(
        vwo_otel.VWOExporter(123456, "k" * 32, endpoint=receiver.url,
                             retry=vwo_otel.RetryPolicy(budget=0.3, initial_backoff=0.05)),
        {"events_per_request": 1, "request_time_interval": 60, "flush_callback": lambda err, events: done.set()},
        **spool)
    provider = TracerProvider(sampler=vwo_otel.VWOSampler())
    provider.add_span_processor(processor)
    events = vwo_otel.VWOEvents(tracer_provider=provider)
    events.activate(1, 1, "warm-up")
    done.wait(10)
    done.clear()
    time.sleep(0.2)
    if args.retry:
        receiver.fail_next(8, status=503)
    RECORDING = True
    events.activate(1, 2, "user-1")
    delivered = done.wait(30)
    time.sleep(0.1)
    RECORDING = False
    sys.setprofile(None)
    threading.setprofile(None)  # type: ignore[arg-type]
    print(f"one event{' (503 past the retry budget, parked, then sent)' if args.retry else ''}: "
          f"{len(entered)} modules entered, {len(crossings)} module pairs, {sum(crossings.values())} crossings, "
          f"{sum(n for (a, b), n in crossings.items() if backwards(a, b))} against the data path; "
          f"delivered: {delivered and receiver.event_count() == 2}")
    for name in sorted(entered, key=lambda m: (next((i for i, o in enumerate(ORDER) if m.startswith(o)), 99), m)):
        print(f"  {name:28s} first: {entered[name]}")
    for (caller, callee), n in sorted(crossings.items()):
        against = "  (against the data path)" if backwards(caller, callee) else ""
        print(f"  {caller:28s} -> {callee:28s} {n:4d}{against}")
    processor.shutdown()
    receiver.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
