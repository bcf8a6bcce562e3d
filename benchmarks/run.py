#!/usr/bin/env python3
"""Benchmarks: vwo_otel against its anchors, measured side by side in one run.

    python benchmarks/run.py            # default run (6 to 8 minutes on 2 shared cores)
    python benchmarks/run.py --quick    # tiny CI smoke (about 30 s; numbers are not meaningful)
    python benchmarks/run.py --full     # more repeats, more timer cycles (longer than the default)
    python benchmarks/run.py --only e2e,wire    # some sections only

Prints a table (metric | vwo_otel | anchor | ratio | target | met?) and writes the same,
with every raw sample, to benchmarks/results.json (``--json PATH``); exits 1 only if a
measurement itself failed, never because a target was missed.

Anchors (install with ``pip install -r benchmarks/requirements.txt``):

* the official ``vwo-python-sdk`` 1.68.2 with ``batch_events`` (``activate`` + ``track``
  through its own batching), its collection host pointed at the loopback receiver by
  patching ``vwo.constants.constants.HTTPS_PROTOCOL`` / ``ENDPOINTS.BASE_URL``;
* OpenTelemetry's stock ``BatchSpanProcessor`` / ``BatchLogRecordProcessor`` with a no-op
  exporter: the floor cost of "an event is a span / a log record".

Method: the loopback receiver (``vwo_otel.testing.receiver.Receiver``, TCP_NODELAY, one write per
response) runs in a process of its own, with a byte-counting TCP relay in front of it for
the wire-size measurement; every measurement runs in a fresh worker process (``--quick``
runs them all in one) and talks to the receiver over a loopback control channel. Results
are medians of several repeats; ratios are computed within this run only.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable
from multiprocessing.connection import Client, Listener
from typing import Any

ACCOUNT_ID = 12345
SDK_KEY = "bench-sdk-key-0123456789"
EVENTS_PER_REQUEST = 100
LATENCY = 0.02  # seconds the receiver holds each request in the "server across a network" run (2c)
BURST_LATENCY = 0.1  # the burst rows' server: VWO across an ocean, so a burst outpaces delivery
CAMPAIGN_ID, CAMPAIGN_KEY = 231, "bench-ab"
VARIATION_ID = 2
GOAL_ID, GOAL_KEY = 7, "purchase"
REVENUE = 12.5
HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.dirname(HERE) not in sys.path:  # benchmark this checkout, installed or not
    sys.path.insert(0, os.path.dirname(HERE))
_ENV_RX = "VWO_BENCH_RX"
_ENV_AUTH = "VWO_BENCH_AUTH"

#: Minimal settings file for the official SDK: one running A/B campaign with two variations
#: and one custom goal, so ``activate`` emits an impression (eT 1) and ``track`` a conversion (eT 2).
OFFICIAL_SETTINGS = {
    "version": 1,
    "accountId": ACCOUNT_ID,
    "sdkKey": SDK_KEY,
    "campaigns": [{
        "id": CAMPAIGN_ID, "key": CAMPAIGN_KEY, "name": CAMPAIGN_KEY, "status": "RUNNING", "type": "VISUAL_AB",
        "percentTraffic": 100, "isForcedVariationEnabled": False, "segments": {},
        "variations": [
            {"id": 1, "name": "Control", "weight": 50, "segments": {}},
            {"id": VARIATION_ID, "name": "Variation-1", "weight": 50, "segments": {}},
        ],
        "goals": [{"identifier": GOAL_KEY, "id": GOAL_ID, "type": "CUSTOM_GOAL"}],
    }],
}

#: The soak's size per mode: seconds of the whole run, emitting threads, events per burst,
#: pause between bursts, and the tmpfs the spool sits on.
SOAK: dict[str, dict[str, Any]] = {
    "quick": {"seconds": 8, "threads": 4, "burst": 500, "pause": 0.02, "disk_kib": 256},  # loses events on 4d0a6bb
    "default": {"seconds": 20, "threads": 8, "burst": 500, "pause": 0.02, "disk_kib": 1024},
    "full": {"seconds": 40, "threads": 16, "burst": 1000, "pause": 0.02, "disk_kib": 2048},
}

MODES: dict[str, dict[str, Any]] = {
    "quick": {"hot_n": 500, "hot_repeats": 3, "e2e_n": 1000, "e2e_repeats": 1, "latency_n": 400, "latency_repeats": 1,
              "wire_n": 200, "wire_rt_n": 50, "mem_n": 999, "timer_procs": 3, "timer_cycles": 1, "stall_n": 2000,
              "scale_threads": [1, 4], "scale_n": 1000, "scale_sizes": [1000], "scale_repeats": 1},
    "default": {"hot_n": 4000, "hot_repeats": 9, "e2e_n": 20000, "e2e_repeats": 5, "latency_n": 4000,
                "latency_repeats": 3, "wire_n": 4000, "wire_rt_n": 500, "mem_n": 4999, "timer_procs": 8,
                "timer_cycles": 10, "stall_n": 20000, "scale_threads": [1, 4, 16], "scale_n": 20000,
                "scale_sizes": [1000, 10000, 100000], "scale_repeats": 3},
    "full": {"hot_n": 4000, "hot_repeats": 21, "e2e_n": 20000, "e2e_repeats": 9, "latency_n": 10000,
             "latency_repeats": 5, "wire_n": 10000, "wire_rt_n": 1000, "mem_n": 4999, "timer_procs": 16,
             "timer_cycles": 30, "stall_n": 50000, "scale_threads": [1, 4, 16], "scale_n": 20000,
             "scale_sizes": [1000, 10000, 100000], "scale_repeats": 3},
}


# ---------------------------------------------------------------------------- helpers
def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def users(n: int, prefix: str = "user") -> list[str]:
    return [f"{prefix}-{i}" for i in range(n)]


def rss_bytes() -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Samples this process's resident set every 50 ms: peak growth over the baseline."""

    def __init__(self) -> None:
        self.base = rss_bytes()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, rss_bytes())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        return self.peak - self.base


# ---------------------------------------------------------------------------- receiver process
class CountingRelay:
    """A loopback TCP relay in front of the receiver that counts the bytes each way
    (HTTP request line + headers + body as written to the socket; TCP/IP framing not counted),
    the connections clients opened, how many are open now and the most open at once (a
    connection counts as open until its client closes it)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.lock = threading.Lock()
        self.open = 0
        self.reset()
        threading.Thread(target=self._accept, daemon=True).start()

    def reset(self, settle: float = 0.0) -> None:
        """Zero the counters, after waiting up to ``settle`` s for the last client's connections
        to close (a worker process that just exited)."""
        deadline = time.monotonic() + settle
        while self.open and time.monotonic() < deadline:
            time.sleep(0.01)
        with self.lock:
            self.up = self.down = self.connections = 0
            self.peak = self.open

    def counts(self) -> dict[str, int]:
        with self.lock:
            return {"up": self.up, "down": self.down, "connections": self.connections, "open": self.open,
                    "peak": self.peak}

    def _accept(self) -> None:
        while True:
            client, _ = self.server.accept()
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                self.connections += 1
                self.open += 1
                self.peak = max(self.peak, self.open)
            threading.Thread(target=self._pump, args=(client, upstream, "up"), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, "down"), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
                with self.lock:
                    setattr(self, direction, getattr(self, direction) + len(data))
        except OSError:
            pass
        finally:
            if direction == "up":  # the client closed (or reset) its connection
                with self.lock:
                    self.open -= 1
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass


def serve_receiver() -> None:
    """The receiver process: Receiver + counting relay + a control channel for the workers."""
    from vwo_otel.testing.receiver import Receiver

    authkey = bytes.fromhex(os.environ[_ENV_AUTH])
    rx = Receiver(account_id=ACCOUNT_ID, sdk_key=SDK_KEY).start()
    relay = CountingRelay(rx.port)
    listener = Listener(("127.0.0.1", 0), authkey=authkey)
    host, port = listener.address
    print(json.dumps({"url": rx.url, "relay_url": f"http://127.0.0.1:{relay.port}", "ctl": [host, port]}),
          flush=True)

    def handle(conn: Any) -> None:
        with conn:
            while True:
                try:
                    cmd, *args = conn.recv()
                except (EOFError, OSError):
                    return
                if cmd == "quit":
                    conn.send(None)
                    os._exit(0)
                elif cmd == "count":
                    conn.send(rx.event_count())
                elif cmd == "wait":
                    conn.send(rx.wait_for_events(args[0], args[1]))
                elif cmd == "reset":  # optional: seconds to wait for the relay's connections to close
                    rx.reset()
                    relay.reset(*args)
                    conn.send(None)
                elif cmd == "summary":
                    conn.send(rx.summary())
                elif cmd == "requests":
                    conn.send(rx.requests())
                elif cmd == "events":
                    conn.send(rx.events(with_raw=True))
                elif cmd == "stall":
                    rx.stall(args[0])
                    conn.send(None)
                elif cmd == "clear":
                    rx.clear_faults()
                    conn.send(None)
                elif cmd == "relay":
                    conn.send(relay.counts())
                else:
                    conn.send(ValueError(f"unknown command {cmd!r}"))

    while True:
        conn = listener.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


class RX:
    """A worker's handle on the receiver process."""

    def __init__(self) -> None:
        info = json.loads(os.environ[_ENV_RX])
        self.url: str = info["url"]
        self.relay_url: str = info["relay_url"]
        self._conn = Client(tuple(info["ctl"]), authkey=bytes.fromhex(os.environ[_ENV_AUTH]))
        self._lock = threading.Lock()

    def call(self, *cmd: Any) -> Any:
        with self._lock:
            self._conn.send(cmd)
            result = self._conn.recv()
        if isinstance(result, Exception):
            raise result
        return result


# ---------------------------------------------------------------------------- pipelines
def our_pipeline(url: str, *, logs: bool = False, batch: Any = "default", max_queue_size: int = 5000,
                 callback: Callable | None = None, spool: Any = None) -> tuple[Any, Any, Any]:
    """(VWOEvents, processor, provider) wired to the receiver at ``url``."""
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk.trace import TracerProvider

    from vwo_otel import VWOEvents, VWOExporter, VWOLogRecordProcessor, VWOSampler, VWOSpanProcessor

    if batch == "default":
        batch = {"events_per_request": EVENTS_PER_REQUEST, "request_time_interval": 600}
    if batch is not None and callback is not None:
        batch = {**batch, "flush_callback": callback}
    exporter = VWOExporter(ACCOUNT_ID, SDK_KEY, endpoint=url)
    if logs:
        processor: Any = VWOLogRecordProcessor(exporter, batch, max_queue_size=max_queue_size)
        provider: Any = LoggerProvider(shutdown_on_exit=False)
        provider.add_log_record_processor(processor)
        return VWOEvents(logger_provider=provider), processor, provider
    processor = VWOSpanProcessor(exporter, batch, max_queue_size=max_queue_size, spool=spool)
    provider = TracerProvider(sampler=VWOSampler(), shutdown_on_exit=False)
    provider.add_span_processor(processor)
    return VWOEvents(tracer_provider=provider), processor, provider


def official_client(url: str, *, batch: bool = True, events_per_request: int = EVENTS_PER_REQUEST,
                    interval: float = 600) -> Any:
    """The official SDK, launched with OFFICIAL_SETTINGS and its collection host set to ``url``."""
    import vwo  # type: ignore[import-not-found]
    from vwo.constants import constants  # type: ignore[import-not-found]

    scheme, host = url.split("://", 1)
    constants.HTTPS_PROTOCOL = scheme + "://"  # read at call time by impression_util / event_dispatcher
    constants.ENDPOINTS.BASE_URL = host
    batch_events = {"events_per_request": events_per_request, "request_time_interval": interval} if batch else None
    client = vwo.launch(json.dumps(OFFICIAL_SETTINGS), batch_events=batch_events)
    if client is None:
        raise RuntimeError("vwo.launch refused the benchmark settings")
    return client


class Impl:
    """One way of emitting the benchmark workload: activate + track (no revenue) per user."""

    def __init__(self, name: str, url: str, *, max_queue_size: int = 5000, epr: int = EVENTS_PER_REQUEST,
                 interval: float = 600) -> None:
        self.name = name
        self.processor: Any = None
        self.provider: Any = None
        batch = {"events_per_request": epr, "request_time_interval": interval}
        if name == "official":
            self.client = official_client(url, events_per_request=epr, interval=interval)
            activate, track = self.client.activate, self.client.track

            def emit(user: str) -> None:
                activate(CAMPAIGN_KEY, user)
                track(CAMPAIGN_KEY, user, GOAL_KEY)
        elif name in ("ours", "ours_log", "ours_realtime"):
            events, self.processor, self.provider = our_pipeline(
                url, logs=name == "ours_log", batch=None if name == "ours_realtime" else batch,
                max_queue_size=max_queue_size)
            our_activate, our_track = events.activate, events.track

            def emit(user: str) -> None:
                our_activate(CAMPAIGN_ID, VARIATION_ID, user)
                our_track(CAMPAIGN_ID, VARIATION_ID, GOAL_ID, user)
        else:
            raise ValueError(name)
        self.emit = emit

    def flush(self) -> None:
        if self.name == "official":
            self.client.flush_events(mode="sync")
        else:
            self.processor.force_flush(60_000)

    def dropped(self) -> int:
        return 0 if self.processor is None else sum(self.processor.stats()["dropped"].values())

    def close(self) -> None:
        if self.name == "official":
            self.client.flush_events(mode="sync")  # cancels its (non-daemon) timer
        else:
            self.provider.shutdown()


def emit_all(emit: Callable[[str], None], ids: list[str], threads: int) -> float:
    """Emit for every id from ``threads`` threads released together; returns the start time."""
    if threads == 1:
        start = time.perf_counter()
        for user in ids:
            emit(user)
        return start
    chunks = [ids[i::threads] for i in range(threads)]
    barrier = threading.Barrier(threads + 1)

    def run(chunk: list[str]) -> None:
        barrier.wait()
        for user in chunk:
            emit(user)

    workers = [threading.Thread(target=run, args=(c,)) for c in chunks]
    for w in workers:
        w.start()
    start = time.perf_counter()
    barrier.wait()
    for w in workers:
        w.join()
    return start


# ---------------------------------------------------------------------------- measurements
def task_hot(spec: dict) -> dict:
    """µs per event on the emitting thread: VWOEvents.track through our processor vs the same
    span / log record (same name, same six attributes) under the stock batch processor with a
    no-op exporter. Ours runs with events_per_request=5000 so no delivery happens inside the
    timed window (delivery cost is measured end to end); the queue is delivered after each repeat."""
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExporter, LogRecordExportResult
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    from vwo_otel import __version__
    from vwo_otel import attributes as A

    class NoopSpans(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    class NoopLogs(LogRecordExporter):
        def export(self, batch: Any) -> LogRecordExportResult:
            return LogRecordExportResult.SUCCESS

        def shutdown(self) -> None:
            pass

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return True

    rx = RX()
    n, logs = spec["n"], spec["logs"]
    ids = users(n)
    name = A.EVENT_NAMES[A.GOAL]

    def ours() -> float:
        events, processor, provider = our_pipeline(
            rx.url, logs=logs, batch={"events_per_request": 5000, "request_time_interval": 600})
        track = events.track
        gc.collect()
        start = time.perf_counter()
        for user in ids:
            track(CAMPAIGN_ID, VARIATION_ID, GOAL_ID, user, revenue=REVENUE)
        elapsed = time.perf_counter() - start
        provider.shutdown()
        return elapsed / n * 1e6

    def stock() -> float:
        if logs:
            provider: Any = LoggerProvider(shutdown_on_exit=False)
            provider.add_log_record_processor(BatchLogRecordProcessor(NoopLogs()))
            emit = provider.get_logger("vwo_otel", __version__).emit
            time_ns = time.time_ns
        else:
            provider = TracerProvider(shutdown_on_exit=False)
            provider.add_span_processor(BatchSpanProcessor(NoopSpans()))
            start_span = provider.get_tracer("vwo_otel", __version__).start_span
        gc.collect()
        start = time.perf_counter()
        for user in ids:
            attrs = {A.EVENT_TYPE: A.GOAL, A.USER_ID: user, A.CAMPAIGN_ID: CAMPAIGN_ID,
                     A.VARIATION_ID: VARIATION_ID, A.GOAL_ID: GOAL_ID, A.REVENUE: REVENUE}
            if logs:
                emit(event_name=name, attributes=attrs, timestamp=time_ns())
            else:
                start_span(name, attributes=attrs).end()
        elapsed = time.perf_counter() - start
        provider.shutdown()
        return elapsed / n * 1e6

    ours()
    stock()  # warm up both
    a, b = [], []
    for _ in range(spec["repeats"]):
        a.append(ours())
        b.append(stock())
    rx.call("reset")
    return {"ours_us": a, "stock_us": b}


def task_spool(spec: dict) -> dict:
    """The on-disk spool's cost: µs per track() on the emitting thread (events_per_request=5000,
    nothing sent in the timed loop) and delivered events/s end to end, spool off vs group
    commit (default, 50 ms) vs commit per event; each spool in a fresh temporary directory."""
    import shutil
    import tempfile

    from vwo_otel import Spool

    rx = RX()
    n = spec["n"]
    ids = users(n)
    modes: dict[str, Any] = {"off": None, "group": 0.05, "per_event": 0.0}

    def make_spool(mode: str) -> tuple[Any, str | None]:
        if modes[mode] is None:
            return None, None
        directory = tempfile.mkdtemp(prefix="vwo-spool-bench-")
        return Spool(directory, commit_interval=modes[mode]), directory

    def hot(mode: str) -> float:
        spool, directory = make_spool(mode)
        events, processor, provider = our_pipeline(
            rx.url, batch={"events_per_request": 5000, "request_time_interval": 600}, spool=spool)
        track = events.track
        gc.collect()
        start = time.perf_counter()
        for user in ids:
            track(CAMPAIGN_ID, VARIATION_ID, GOAL_ID, user, revenue=REVENUE)
        elapsed = time.perf_counter() - start
        provider.shutdown()
        if directory:
            shutil.rmtree(directory, ignore_errors=True)
        return elapsed / n * 1e6

    def e2e(mode: str) -> float:
        spool, directory = make_spool(mode)
        events, processor, provider = our_pipeline(rx.url, spool=spool, max_queue_size=max(5000, 2 * n))
        activate, track = events.activate, events.track
        rx.call("reset")
        gc.collect()
        start = time.perf_counter()
        for user in ids:
            activate(CAMPAIGN_ID, VARIATION_ID, user)
            track(CAMPAIGN_ID, VARIATION_ID, GOAL_ID, user)
        processor.force_flush(60_000)
        if not rx.call("wait", 2 * n, 60):
            raise RuntimeError(f"spool e2e {mode}: only {rx.call('count')} of {2 * n} delivered")
        elapsed = time.perf_counter() - start
        provider.shutdown()
        if directory:
            shutil.rmtree(directory, ignore_errors=True)
        return 2 * n / elapsed

    for mode in modes:  # warm up
        hot(mode)
    out: dict[str, Any] = {f"hot_{m}": [] for m in modes} | {f"e2e_{m}": [] for m in modes}
    for _ in range(spec["repeats"]):
        for mode in modes:
            out[f"hot_{mode}"].append(hot(mode))
            out[f"e2e_{mode}"].append(e2e(mode))
    rx.call("reset")
    return out


def task_e2e(spec: dict) -> dict:
    """Delivered events/s: first emit -> the receiver has accepted all ``n`` events."""
    rx = RX()
    n, threads = spec["n"], spec.get("threads", 1)
    impl = Impl(spec["impl"], rx.url, max_queue_size=max(5000, n))
    rx.call("reset")
    for user in users(EVENTS_PER_REQUEST, "warm"):  # two warm-up batches: connection, threads, caches
        impl.emit(user)
    impl.flush()
    if not rx.call("wait", 2 * EVENTS_PER_REQUEST, 30):
        raise RuntimeError(f"warm-up events never arrived ({rx.call('count')})")
    rx.call("reset")
    latency = spec.get("latency", 0)
    if latency:
        rx.call("stall", latency)  # every request answered `latency` s late: a server across a network
    ids = users(n // 2)
    gc.collect()
    mem = PeakRSS()
    start = emit_all(impl.emit, ids, threads)
    emitted = time.perf_counter()
    impl.flush()
    ok = rx.call("wait", n, 60 + n / 1000)
    end = time.perf_counter()
    grew = mem.stop()
    delivered = rx.call("count")
    if latency:
        rx.call("clear")
    impl.close()
    return {"ok": ok, "n": n, "delivered": delivered, "seconds": end - start, "emit_seconds": emitted - start,
            "events_per_s": delivered / (end - start), "peak_rss_growth": grew, "dropped": impl.dropped(),
            "threads": threads}


def task_wire(spec: dict) -> dict:
    """Bytes client -> receiver per delivered event, counted at the socket by the relay
    (request line + headers + body, keep-alive connections), plus the body bytes the receiver saw."""
    rx = RX()
    n = spec["n"]
    impl = Impl(spec["impl"], rx.relay_url)
    rx.call("reset")
    for user in users(n // 2):
        impl.emit(user)
    impl.flush()
    ok = rx.call("wait", n, 120)
    time.sleep(0.2)  # let the relay count the last response
    counts, summary, requests = rx.call("relay"), rx.call("summary"), rx.call("requests")
    impl.close()
    events = summary["events"]
    return {"ok": ok, "events": events, "requests": len(requests), "up_bytes": counts["up"],
            "down_bytes": counts["down"], "connections": counts["connections"],
            "bytes_per_event": counts["up"] / events if events else float("nan"),
            "body_bytes_per_event": summary["bytes"] / events if events else float("nan")}


def task_memory(spec: dict) -> dict:
    """tracemalloc: bytes held per queued event with ``n`` events queued and nothing sent
    (events_per_request=5000, request_time_interval=600; user-id strings made inside the window
    count when the queue keeps them alive)."""
    rx = RX()
    n, which = spec["n"], spec["impl"]
    gc.collect()
    if which == "stock_span":
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

        from vwo_otel import attributes as A

        class Noop(SpanExporter):
            def export(self, spans: Any) -> SpanExportResult:
                return SpanExportResult.SUCCESS

        provider = TracerProvider(shutdown_on_exit=False)
        bsp = BatchSpanProcessor(Noop(), max_queue_size=5000, schedule_delay_millis=600_000,
                                 max_export_batch_size=5000)
        provider.add_span_processor(bsp)
        tracer = provider.get_tracer("vwo_otel")

        def emit(user: str) -> None:
            for etype, name in ((A.VISITOR, "vwo.visitor"), (A.GOAL, "vwo.goal")):
                attrs: dict[str, Any] = {A.EVENT_TYPE: etype, A.USER_ID: user, A.CAMPAIGN_ID: CAMPAIGN_ID,
                                         A.VARIATION_ID: VARIATION_ID}
                if etype == A.GOAL:
                    attrs[A.GOAL_ID] = GOAL_ID
                tracer.start_span(name, attributes=attrs).end()

        emit("warm")
        bsp.force_flush()
        close: Callable[[], None] = provider.shutdown
        sent: Callable[[], int] = lambda: 0  # noqa: E731
    else:
        impl = Impl(which, rx.url, epr=5000, interval=600)
        warm = Impl(which, rx.url, epr=5000, interval=600)  # warm code paths on another instance
        warm.emit("warm")
        warm.close()
        emit, close = impl.emit, impl.close
        rx.call("wait", 2, 10)
        rx.call("reset")
        sent = lambda: rx.call("count")  # noqa: E731
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    i = 0
    while 2 * i + 2 <= n:
        emit(f"user-{i}")
        i += 1
    queued = 2 * i
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    nothing_sent = sent() == 0
    close()
    return {"queued": queued, "bytes": after - before, "bytes_per_event": (after - before) / queued,
            "nothing_sent": nothing_sent}


def task_timer(spec: dict) -> dict:
    """Timer precision: ``procs`` processors (request_time_interval=1 s), each emitting one event
    into an empty queue per cycle; lag = receiver's arrival time of the request minus
    (emit time + 1 s). Processors are staggered over the second so their deadlines differ."""
    from vwo_otel import visitor_uuid

    rx = RX()
    procs, cycles, interval = spec["procs"], spec["cycles"], 1.0
    rx.call("reset")
    deadlines: dict[str, float] = {}
    callbacks_at: dict[str, float] = {}
    lock = threading.Lock()
    errors: list[str] = []

    def run(k: int) -> None:
        done = threading.Event()

        def callback(err: Any, evs: list) -> None:
            now = time.time()
            with lock:
                for ev in evs:
                    callbacks_at[ev["u"]] = now
            if err is not None:
                errors.append(str(err))
            done.set()

        events, processor, provider = our_pipeline(
            rx.url, batch={"events_per_request": EVENTS_PER_REQUEST, "request_time_interval": interval},
            callback=callback)
        time.sleep(k * interval / procs)
        for c in range(cycles):
            user = f"timer-{k}-{c}"
            done.clear()
            t = time.time()
            events.activate(CAMPAIGN_ID, VARIATION_ID, user)
            with lock:
                deadlines[visitor_uuid(ACCOUNT_ID, user)] = t + interval
            if not done.wait(interval + 10):
                errors.append(f"cycle {c} of processor {k} never flushed")
        provider.shutdown()

    workers = [threading.Thread(target=run, args=(k,)) for k in range(procs)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    arrived = {r["id"]: r["received_at"] for r in rx.call("requests")}
    lags, cb_lags = [], []
    for ev in rx.call("events"):
        due = deadlines.get(ev["u"])
        if due is not None:
            lags.append((arrived[ev["request_id"]] - due) * 1000)
            cb_lags.append((callbacks_at.get(ev["u"], float("nan")) - due) * 1000)
    rx.call("reset")
    return {"lags_ms": lags, "callback_lags_ms": cb_lags, "expected": procs * cycles, "errors": errors}


def task_stall(spec: dict) -> dict:
    """Emit latency while the receiver is stalled and the backlog is full (max_queue_size=200,
    events_per_request=100, a counting flush_callback): every timed call is a drop.
    Anchor: the stock BatchSpanProcessor, max_queue_size=200, exporter blocked (a stall)."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    from vwo_otel import __version__
    from vwo_otel import attributes as A

    rx = RX()
    n = spec["n"]
    ids = users(n, "stall")
    clock = time.perf_counter_ns
    drops = [0]

    def callback(err: Any, evs: list) -> None:
        drops[0] += len(evs)

    def timed(call: Callable[[str], None]) -> list[float]:
        out = [0.0] * n
        gc.collect()
        for i, user in enumerate(ids):
            t = clock()
            call(user)
            out[i] = (clock() - t) / 1000
        return out

    rx.call("reset")
    rx.call("stall", 300)
    events, processor, provider = our_pipeline(rx.url, max_queue_size=200, callback=callback)
    for user in users(400, "fill"):
        events.track(CAMPAIGN_ID, VARIATION_ID, GOAL_ID, user, revenue=REVENUE)
    time.sleep(0.2)
    track = events.track
    ours = timed(lambda u: track(CAMPAIGN_ID, VARIATION_ID, GOAL_ID, u, revenue=REVENUE))
    dropped = dict(processor.stats()["dropped"])
    rx.call("clear")
    provider.shutdown()

    release = threading.Event()

    class Stalled(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            release.wait(300)
            return SpanExportResult.SUCCESS

    stock_provider = TracerProvider(shutdown_on_exit=False)
    stock_provider.add_span_processor(BatchSpanProcessor(Stalled(), max_queue_size=200, max_export_batch_size=100))
    start_span = stock_provider.get_tracer("vwo_otel", __version__).start_span
    name = A.EVENT_NAMES[A.GOAL]

    def stock_emit(user: str) -> None:
        start_span(name, attributes={A.EVENT_TYPE: A.GOAL, A.USER_ID: user, A.CAMPAIGN_ID: CAMPAIGN_ID,
                                     A.VARIATION_ID: VARIATION_ID, A.GOAL_ID: GOAL_ID,
                                     A.REVENUE: REVENUE}).end()

    for user in users(400, "fill"):
        stock_emit(user)
    time.sleep(0.2)
    stock = timed(stock_emit)
    release.set()
    stock_provider.shutdown()
    rx.call("reset")
    return {"ours_us": ours, "stock_us": stock, "dropped": dropped, "reported_to_callback": drops[0]}


class Urllib3Transport:
    """The A/B's other side: a bare urllib3 ``PoolManager`` (no whole-request deadline), with
    the same contract as ``vwo_otel.export.http.Transport`` (one try, no redirects, a bounded answer)."""

    def __init__(self) -> None:
        import urllib3

        self._urllib3 = urllib3
        self.pool = urllib3.PoolManager(maxsize=64, retries=False)

    def request(self, method: str, url: str, body: bytes | None, headers: dict[str, str], timeout: float) -> Any:
        from vwo_otel.export.http import MAX_ANSWER_BYTES, Reply

        u3 = self._urllib3
        response = self.pool.request(method, url, body=body, headers=headers, timeout=u3.Timeout(total=timeout),
                                     retries=False, redirect=False, preload_content=False)
        try:
            data = response.read(MAX_ANSWER_BYTES)
        finally:
            response.release_conn()
        return Reply(response.status, data.decode("utf-8", "replace"), response.headers)

    def close(self) -> None:
        self.pool.clear()


def task_http(spec: dict) -> dict:
    """Delivered events/s with the exporter's own transport ("direct": its HTTP/1.1 client) or a bare
    urllib3 ``PoolManager`` ("urllib3") carrying the same batches: first emit -> all accepted."""
    from opentelemetry.sdk.trace import TracerProvider

    from vwo_otel import VWOEvents, VWOExporter, VWOSampler, VWOSpanProcessor

    rx = RX()
    n = spec["n"]
    exporter = VWOExporter(ACCOUNT_ID, SDK_KEY, endpoint=rx.url)
    if spec["client"] == "urllib3":
        exporter._transport = Urllib3Transport()  # type: ignore[assignment]  # the A/B's one swap
    elif spec["client"] == "h11":  # the library's own client, h11 doing its framing
        from http_framing import H11Transport

        exporter._transport = H11Transport()  # type: ignore[assignment]
    processor = VWOSpanProcessor(exporter, {"events_per_request": EVENTS_PER_REQUEST, "request_time_interval": 600},
                                 max_queue_size=max(5000, n))
    provider = TracerProvider(sampler=VWOSampler(), shutdown_on_exit=False)
    provider.add_span_processor(processor)
    events = VWOEvents(tracer_provider=provider)

    def emit(user: str) -> None:
        events.activate(CAMPAIGN_ID, VARIATION_ID, user)
        events.track(CAMPAIGN_ID, VARIATION_ID, GOAL_ID, user)

    rx.call("reset")
    for user in users(EVENTS_PER_REQUEST, "warm"):
        emit(user)
    processor.force_flush(60_000)
    if not rx.call("wait", 2 * EVENTS_PER_REQUEST, 30):
        raise RuntimeError(f"warm-up events never arrived ({rx.call('count')})")
    rx.call("reset")
    latency = spec.get("latency", 0)
    if latency:
        rx.call("stall", latency)
    gc.collect()
    cpu = time.process_time()
    start = emit_all(emit, users(n // 2), 1)
    processor.force_flush(60_000)
    ok = rx.call("wait", n, 60 + n / 1000)
    end = time.perf_counter()
    cpu = time.process_time() - cpu
    delivered = rx.call("count")
    if latency:
        rx.call("clear")
    dropped = sum(processor.stats()["dropped"].values())
    provider.shutdown()
    return {"ok": ok, "n": n, "delivered": delivered, "events_per_s": delivered / (end - start),
            "cpu_us_per_event": cpu / max(delivered, 1) * 1e6, "dropped": dropped, "client": spec["client"]}

def task_burst(spec: dict) -> dict:
    """A backfill on the processor's defaults: ``n`` events (one activate per user) from
    ``threads`` threads as fast as they go, to a server that answers ``BURST_LATENCY`` s late;
    lost = emitted - delivered."""
    from opentelemetry.sdk.trace import TracerProvider

    from vwo_otel import VWOEvents, VWOExporter, VWOSampler, VWOSpanProcessor

    rx = RX()
    rx.call("reset")
    n, threads = spec["n"], spec["threads"]
    processor = VWOSpanProcessor(VWOExporter(ACCOUNT_ID, SDK_KEY, endpoint=rx.url),
                                 {"events_per_request": EVENTS_PER_REQUEST, "request_time_interval": 600})
    provider = TracerProvider(sampler=VWOSampler(), shutdown_on_exit=False)
    provider.add_span_processor(processor)
    activate = VWOEvents(tracer_provider=provider).activate
    rx.call("stall", BURST_LATENCY)
    emit_all(lambda user: activate(CAMPAIGN_ID, VARIATION_ID, user), users(n, "burst"), threads)
    flushed = processor.force_flush(60_000)
    rx.call("wait", n, 60)
    rx.call("clear")
    delivered = rx.call("count")
    dropped = processor.stats()["dropped"]
    provider.shutdown()
    return {"n": n, "threads": threads, "delivered": delivered, "lost": n - delivered, "dropped": dropped,
            "flush_ok": flushed}


DELAYS_MS = (0, 20, 50, 100)  # the "latency" section's answer delays
BURST_DELAYS_MS = (0, 50, 100)  # the "burst" section's, against the official SDK (issue #21 item 11)


def task_delay(spec: dict) -> dict:
    """Delivered events/s on default settings when every answer comes ``latency`` s late, through
    the counting relay (connections opened, most open at once, open after the load); ours also
    samples its requests in flight and events held every 20 ms. CPU: the whole process's and the
    emitting thread's, per delivered event. ``slow_to``: the server slows to that many seconds
    halfway through emitting; ``max_queue_size`` and ``track_every`` (every k-th event a
    conversion, the others impressions) then show the backlog bound and what it drops.
    ``idle_wait``: seconds to watch the connections close after the load."""
    from vwo_otel import VWOEvents, VWOExporter, VWOSampler, VWOSpanProcessor

    rx = RX()
    n, latency, realtime = spec["n"], spec["latency"], spec.get("realtime", False)
    track_every = spec.get("track_every", 0)
    # B rows go straight to the receiver: they count no bytes or connections, and the relay's two
    # threads per connection run on the same cores, charging each connection to the client
    url = rx.url if spec.get("direct") else rx.relay_url
    dropped_types: dict[int, int] = {}

    def reported(err: Any, events: list) -> None:
        if getattr(err, "reason", None) == "queue_full":
            for e in events:
                dropped_types[e["eT"]] = dropped_types.get(e["eT"], 0) + 1

    batch = None if realtime else {"events_per_request": EVENTS_PER_REQUEST, "request_time_interval": 600,
                                   "flush_callback": reported}
    processor = None
    if spec["impl"] == "official":
        client = official_client(url, batch=not realtime)
        activate = client.activate

        def emit(i: int, user: str) -> None:
            activate(CAMPAIGN_KEY, user)
    else:
        from opentelemetry.sdk.trace import TracerProvider

        kwargs = {"max_queue_size": spec["max_queue_size"]} if "max_queue_size" in spec else {}
        processor = VWOSpanProcessor(VWOExporter(ACCOUNT_ID, SDK_KEY, endpoint=url), batch, **kwargs)
        provider = TracerProvider(sampler=VWOSampler(), shutdown_on_exit=False)
        provider.add_span_processor(processor)
        events = VWOEvents(tracer_provider=provider)
        our_activate, our_track = events.activate, events.track

        def emit(i: int, user: str) -> None:
            if track_every and i % track_every == 0:
                our_track(CAMPAIGN_ID, VARIATION_ID, GOAL_ID, user)
            else:
                our_activate(CAMPAIGN_ID, VARIATION_ID, user)
    rx.call("reset", 2.0)  # the previous worker's connections closed: this one's are counted alone
    if latency:
        rx.call("stall", latency)
    for user in users(EVENTS_PER_REQUEST, "warm"):  # a warm-up batch: connection, threads, caches
        emit(1, user)
    if processor is None:
        client.flush_events(mode="sync")
    else:
        processor.force_flush(30_000)
    if not rx.call("wait", EVENTS_PER_REQUEST, 30):
        raise RuntimeError(f"warm-up events never arrived ({rx.call('count')})")
    rx.call("reset")  # also ends the stall: set it again
    if latency:
        rx.call("stall", latency)
    samples: list[int] = []
    held: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while processor is not None and not stop.wait(0.02):
            snap = processor.batcher.snapshot()
            samples.append(snap.in_flight)
            held.append(snap.held)

    threading.Thread(target=sample, daemon=True).start()
    gc.collect()
    mem = PeakRSS()
    ids = users(n, "delay")
    slow_to = spec.get("slow_to")
    cpu0, start, emit_cpu = time.process_time(), time.perf_counter(), time.thread_time()
    for i, user in enumerate(ids):
        if slow_to and i == n // 2:
            rx.call("stall", slow_to)
        emit(i, user)
    emit_cpu, emit_wall = time.thread_time() - emit_cpu, time.perf_counter() - start
    emit_busy = (time.process_time() - cpu0) / emit_wall  # cores the process used while emitting
    if spec["impl"] == "official":
        client.flush_events(mode="sync")
    else:
        processor.force_flush(120_000)
    dropped = {} if processor is None else dict(processor.stats()["dropped"])
    rx.call("wait", n - sum(dropped.values()), 120)
    end, cpu = time.perf_counter(), time.process_time() - cpu0
    stop.set()
    grew = mem.stop()
    delivered = rx.call("count")
    conns = rx.call("relay")
    rx.call("clear")
    idle: dict[str, float] = {}
    if spec.get("idle_wait"):  # the load is over: watch the kept-alive connections close
        waited = time.perf_counter()
        while True:
            still = rx.call("relay")["open"]
            if still <= 1 and "closed_1_after_s" not in idle:
                idle["closed_1_after_s"] = time.perf_counter() - waited
            if still == 0 or time.perf_counter() - waited >= spec["idle_wait"]:
                break
            time.sleep(0.05)
        idle["open_after_wait"] = still
        idle["waited_s"] = time.perf_counter() - waited
    if processor is not None:
        processor.shutdown()
    return {"n": n, "delivered": delivered, "lost": n - delivered - sum(dropped.values()),
            "events_per_s": delivered / (end - start), "cpu_us_per_event": cpu / max(delivered, 1) * 1e6,
            "emit_cpu_us_per_event": emit_cpu / n * 1e6, "emit_seconds": emit_wall, "emit_busy": emit_busy,
            "connections": conns["connections"],
            "connections_peak": conns["peak"], "connections_open_at_end": conns["open"], **idle,
            "in_flight_max": max(samples, default=0), "in_flight_p50": percentile(samples, 50) if samples else 0,
            "in_flight": samples[::5], "held_max": max(held, default=0), "peak_rss_growth": grew,
            "dropped": dropped, "dropped_by_type": dropped_types, "max_queue_size": spec.get("max_queue_size")}


# ---------------------------------------------------------------------------- soak
#: The soak's app: bursts from several threads, a spool, its own SIGTERM handler (stop the
#: emitters, record what they emitted) and then the signal's default action, for which vwo_otel
#: stands in (deliver within shutdown_timeout, then die of the signal). Writes "E phase thread n"
#: (emitted) and "R uuid" / "U n" (reported to flush_callback, listed / only counted) lines.
SOAK_APP = r"""
import os, signal, sys, threading, time
from opentelemetry.sdk.trace import TracerProvider
import vwo_otel
url, spool_dir, out, phase = sys.argv[1:5]
threads, burst, pause, limit = int(sys.argv[5]), int(sys.argv[6]), float(sys.argv[7]), float(sys.argv[8])
fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

def reported(err, events):
    if err is None:
        return
    lines = [f"R {e['u']}" for e in events if isinstance(e, dict) and "u" in e]
    unlisted = (getattr(err, "count", None) or len(events)) - len(lines)
    if unlisted > 0:
        lines.append(f"U {unlisted}")
    os.write(fd, ("\n".join(lines) + "\n").encode())

exporter = vwo_otel.VWOExporter(ACCOUNT_ID, SDK_KEY, endpoint=url, timeout=1.0,
                                retry=vwo_otel.RetryPolicy(budget=1.0, initial_backoff=0.01, max_backoff=0.1))
processor = vwo_otel.VWOSpanProcessor(
    exporter, {"events_per_request": 100, "request_time_interval": 1, "flush_callback": reported},
    max_queue_size=500, shutdown_timeout=3.0, spool=spool_dir)
provider = TracerProvider(sampler=vwo_otel.VWOSampler(), shutdown_on_exit=False)
provider.add_span_processor(processor)
vwo = vwo_otel.VWOEvents(tracer_provider=provider)
stop = threading.Event()
counts = [0] * threads

def emit(t):
    i = 0
    while not stop.is_set():
        for _ in range(burst):
            vwo.track(1, 2, 3, f"{phase}-{t}-{i}", revenue=1)
            i += 1
            counts[t] = i
        stop.wait(pause)

previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
workers = [threading.Thread(target=emit, args=(t,)) for t in range(threads)]
for w in workers:
    w.start()
print("started", flush=True)
stop.wait(limit)
stop.set()
for w in workers:
    w.join()
os.write(fd, "".join(f"E {phase} {t} {n}\n" for t, n in enumerate(counts)).encode())
if phase == "term":
    signal.signal(signal.SIGTERM, previous)  # vwo_otel's, standing in for the default action: delivers, then dies
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(60)
processor.shutdown()
""".replace("ACCOUNT_ID", str(ACCOUNT_ID)).replace("SDK_KEY", repr(SDK_KEY))


def _soak_app(url: str, spool_dir: str, out: str, phase: str, spec: dict, limit: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SOAK_APP, url, spool_dir, out, phase, str(spec["threads"]),
                             str(spec["burst"]), str(spec["pause"]), str(limit)],
                            stdout=subprocess.PIPE, stderr=open(f"{out}.{phase}.err", "w"), text=True,
                            env={**os.environ, "PYTHONPATH": os.path.dirname(HERE)})


def _small_disk(path: str, kib: int) -> bool:
    """Mount a tmpfs of ``kib`` KiB on ``path`` (root only); False: a plain directory it stays."""
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", path],
                          capture_output=True).returncode == 0


def _rows_on_disk(directory: str) -> list[str]:
    """The user ids of every event row left in the spool directory (set-aside files included)."""
    import sqlite3

    users: list[str] = []
    for name in os.listdir(directory):
        if not name.startswith("spool-") or name.endswith(("-wal", "-shm", ".lock")):
            continue
        conn = sqlite3.connect(f"file:{os.path.join(directory, name)}?mode=ro", uri=True)
        try:
            users += [json.loads(text)["user_id"] for (text,) in conn.execute("SELECT event FROM events")]
        except sqlite3.OperationalError:  # a file the full disk left without its table: no events in it
            pass
        finally:
            conn.close()
    return users


def task_soak(spec: dict) -> dict:
    """Everything at once: bursts from several threads, random faults, a slow server, VWO down,
    a full disk, SIGTERM mid-run, a restart that replays. Every emitted event must end as
    delivered, reported to flush_callback, or on disk."""
    import shutil
    import signal
    import tempfile

    from vwo_otel import visitor_uuid
    from vwo_otel._engine.spool import DISK_RESERVE  # the room the spool leaves free: "filled" up to it
    from vwo_otel.testing import Receiver

    base = tempfile.mkdtemp(prefix="vwo-soak-")
    spool_dir = os.path.join(base, "spool")
    os.makedirs(spool_dir)
    out = os.path.join(base, "ledger.txt")
    mounted = _small_disk(spool_dir, spec["disk_kib"])
    stage = spec["seconds"] / 4
    start = time.monotonic()
    try:
        with Receiver(account_id=ACCOUNT_ID, sdk_key=SDK_KEY) as rx:
            rx.random_faults(0.2, seed=7)  # stage 1: bursts against random 5xx/429/dropped connections
            app = _soak_app(rx.url, spool_dir, out, "term", spec, limit=600)
            assert app.stdout is not None
            if app.stdout.readline().strip() != "started":
                raise RuntimeError(f"the soak app did not start: {open(out + '.term.err').read()[-2000:]}")
            time.sleep(stage)
            rx.clear_faults()
            rx.stall(0.3)  # stage 2: a server that answers every request late
            time.sleep(stage)
            rx.clear_faults()
            rx.fail_next(10**9)  # stage 3: VWO down; the queue spills until the disk is full
            time.sleep(stage)
            disk = shutil.disk_usage(spool_dir)
            app.send_signal(signal.SIGTERM)  # mid-run
            term_exit = app.wait(60)
            rx.clear_faults()
            again = _soak_app(rx.url, spool_dir, out, "restart", spec, limit=stage)  # stage 4: restart, replay
            assert again.stdout is not None
            again.stdout.read()
            restart_exit = again.wait(60)
            received = [e["u"] for e in rx.events()]
        left = _rows_on_disk(spool_dir)
        with open(out) if os.path.exists(out) else open(os.devnull) as f:
            ledger = f.read().splitlines()  # read before the folder is removed below
    finally:
        if mounted:
            subprocess.run(["umount", "-l", spool_dir], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
    emitted: set[str] = set()
    reported: set[str] = set()
    unlisted = 0
    for line in ledger:
        if line.strip():
            kind, *rest = line.split()
            if kind == "E":
                emitted.update(visitor_uuid(ACCOUNT_ID, f"{rest[0]}-{rest[1]}-{i}") for i in range(int(rest[2])))
            elif kind == "R":
                reported.add(rest[0])
            elif kind == "U":
                unlisted += int(rest[0])
    delivered = set(received)
    on_disk = {visitor_uuid(ACCOUNT_ID, u) for u in left}
    accounted = delivered | reported | on_disk
    return {"seconds": time.monotonic() - start, "disk": f"tmpfs {spec['disk_kib']} KiB" if mounted else "temp dir",
            "disk_full": mounted and disk.free < 2 * min(max(disk.total // 4, DISK_RESERVE[0]), DISK_RESERVE[1]),
            "term_exit": term_exit, "restart_exit": restart_exit,
            "emitted": len(emitted), "delivered": len(delivered & emitted),
            "reported": len((reported - delivered) & emitted) + unlisted,
            "on_disk": len(on_disk - delivered - reported),
            "duplicates": len(received) - len(delivered), "reported_and_delivered": len(reported & delivered),
            "unlisted": unlisted,  # reported by count only (an EventsDropped report lists at most 10,000)
            "unaccounted": len(emitted - accounted), "unknown": len(accounted - emitted)}


TASKS: dict[str, Callable[[dict], dict]] = {
    "hot": task_hot, "e2e": task_e2e, "wire": task_wire, "memory": task_memory, "timer": task_timer,
    "stall": task_stall, "burst": task_burst, "latency": task_delay, "spool": task_spool, "http": task_http,
    "soak": task_soak,
}


def worker_main(specs: list[dict]) -> None:
    results = []
    for spec in specs:
        try:
            results.append(TASKS[spec["task"]](spec))
        except ImportError as exc:
            results.append({"error": f"missing dependency: {exc} (pip install -r benchmarks/requirements.txt)"})
        except Exception as exc:  # report, don't hide: the orchestrator prints it
            results.append({"error": f"{type(exc).__name__}: {exc}"})
    print("RESULT " + json.dumps(results), flush=True)
    sys.stdout.flush()
    os._exit(0)  # don't wait for the official SDK's non-daemon threads / atexit flushes


# ---------------------------------------------------------------------------- orchestration
class Orchestrator:
    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.cfg = MODES[mode]
        self.auth = secrets.token_hex(16)
        env = {**os.environ, _ENV_AUTH: self.auth}
        self.rx_proc = subprocess.Popen([sys.executable, __file__, "--serve-receiver"], stdout=subprocess.PIPE,
                                        env=env, text=True)
        assert self.rx_proc.stdout is not None
        line = self.rx_proc.stdout.readline()
        if not line:
            raise SystemExit("the receiver process did not start")
        self.env = {**env, _ENV_RX: line.strip()}
        self.batched: list[dict] = []

    def close(self) -> None:
        try:
            info = json.loads(self.env[_ENV_RX])
            conn = Client(tuple(info["ctl"]), authkey=bytes.fromhex(self.auth))
            conn.send(("quit",))
        except (OSError, EOFError):
            pass
        try:
            self.rx_proc.wait(5)
        except subprocess.TimeoutExpired:
            self.rx_proc.kill()

    def run(self, specs: list[dict]) -> list[dict]:
        """Run specs in one fresh worker process."""
        proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(specs)], env=self.env,
                              capture_output=True, text=True, timeout=900)
        for line in reversed(proc.stdout.splitlines()):
            if line.startswith("RESULT "):
                return json.loads(line[len("RESULT "):])
        raise RuntimeError(f"worker failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")

    def one(self, spec: dict) -> dict:
        if self.mode == "quick":  # one process for everything: the smoke must be fast
            self.batched.append(spec)
            return spec
        return self.run([spec])[0]

    def flush_batched(self) -> None:
        if self.batched:
            results = self.run(self.batched)
            for spec, result in zip(self.batched, results, strict=False):
                spec["result"] = result
            self.batched = []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="tiny smoke run (seconds); numbers not meaningful")
    group.add_argument("--full", action="store_true", help="more repeats and timer cycles")
    parser.add_argument("--json", default=os.path.join(HERE, "results.json"), help="where to write the results")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections to run (default all: {','.join(SECTIONS)})")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--serve-receiver", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_receiver:
        serve_receiver()
        return 0
    if args.worker:
        worker_main(json.loads(args.worker))
        return 0
    mode = "quick" if args.quick else "full" if args.full else "default"
    started = time.perf_counter()
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    unknown = only - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {sorted(unknown)}; choose from {','.join(SECTIONS)}")
    orch = Orchestrator(mode)
    try:
        raw = collect(orch, only)
    finally:
        orch.close()
    rows, details = report(raw, orch.cfg)
    elapsed = time.perf_counter() - started
    print_table(rows, mode, elapsed)
    if mode == "quick":
        details["notes"].insert(0, "QUICK smoke: tiny n, one worker process for everything; numbers are not meaningful")
    for note in details["notes"]:
        print(f"- {note}")
    details["raw"] = summarize(details["raw"])  # keep the file small: long sample lists become percentiles
    out = {"mode": mode, "seconds": round(elapsed, 1), "machine": machine(), "rows": rows, "details": details}
    with open(args.json, "w") as f:
        json.dump(out, f, indent=1, default=str)
    print(f"\nJSON: {args.json}")
    failed = [r["metric"] for r in rows if r["note"].startswith("FAILED")]
    if failed:
        print(f"measurements that failed: {failed}", file=sys.stderr)
    return 1 if failed else 0  # targets not met are reported, not an error (a noisy machine decides them)


def summarize(obj: Any) -> Any:
    """``obj`` with every list of more than 200 numbers replaced by its count and percentiles."""
    if isinstance(obj, dict):
        return {k: summarize(v) for k, v in obj.items()}
    if isinstance(obj, list):
        if len(obj) > 200 and all(isinstance(v, (int, float)) for v in obj):
            return {"n": len(obj), **{f"p{q:g}": percentile(obj, q) for q in (0, 50, 90, 99, 99.9, 100)}}
        return [summarize(v) for v in obj]
    return obj


def machine() -> dict:
    import importlib.metadata as md

    versions: dict[str, str | None] = {}
    for dist in ("vwo-otel", "vwo-python-sdk", "opentelemetry-sdk", "requests"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            versions[dist] = None
    return {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "versions": versions}


SECTIONS = ("hot", "e2e", "wire", "memory", "timer", "stall", "scale", "spool", "http", "burst", "latency", "fme",
            "soak")


def collect(orch: Orchestrator, only: set[str]) -> dict:
    cfg = orch.cfg
    raw: dict[str, Any] = {}
    log = print if orch.mode != "quick" else (lambda *a, **k: None)
    log(f"mode {orch.mode}: receiver in its own process; each measurement in a fresh worker process", flush=True)
    if "hot" in only:
        log("1/8 hot path (spans, log records)...", flush=True)
        raw["hot_span"] = orch.one({"task": "hot", "logs": False, "n": cfg["hot_n"], "repeats": cfg["hot_repeats"]})
        raw["hot_log"] = orch.one({"task": "hot", "logs": True, "n": cfg["hot_n"], "repeats": cfg["hot_repeats"]})
    if "e2e" in only:
        log("2/8 end to end (ours vs official SDK, alternating)...", flush=True)
        raw["e2e"] = {"ours": [], "official": [], "ours_log": []}
        for _ in range(cfg["e2e_repeats"]):
            for impl in ("ours", "official", "ours_log"):
                raw["e2e"][impl].append(orch.one({"task": "e2e", "impl": impl, "n": cfg["e2e_n"]}))
        raw["e2e_latency"] = {impl: [orch.one({"task": "e2e", "impl": impl, "n": cfg["latency_n"],
                                               "latency": LATENCY}) for _ in range(cfg["latency_repeats"])]
                              for impl in ("ours", "official")}
    if "wire" in only:
        log("3/8 bytes on the wire...", flush=True)
        raw["wire"] = {impl: orch.one({"task": "wire", "impl": impl,
                                       "n": cfg["wire_rt_n" if impl == "ours_realtime" else "wire_n"]})
                       for impl in ("ours", "official", "ours_realtime")}
    if "memory" in only:
        log("4/8 memory per queued event...", flush=True)
        raw["memory"] = {impl: orch.one({"task": "memory", "impl": impl, "n": cfg["mem_n"]})
                         for impl in ("ours", "official", "stock_span")}
    if "timer" in only:
        log("5/8 timer precision...", flush=True)
        raw["timer"] = orch.one({"task": "timer", "procs": cfg["timer_procs"], "cycles": cfg["timer_cycles"]})
    if "stall" in only:
        log("6/8 emit latency under a stalled receiver...", flush=True)
        raw["stall"] = orch.one({"task": "stall", "n": cfg["stall_n"]})
    if "scale" in only:
        log("7/8 scaling (threads, event counts)...", flush=True)
        raw["scale_threads"] = {impl: {t: [orch.one({"task": "e2e", "impl": impl, "n": cfg["scale_n"],
                                                     "threads": t})
                                           for _ in range(cfg["scale_repeats"])]
                                       for t in cfg["scale_threads"]} for impl in ("ours", "official")}
        raw["scale_sizes"] = {impl: {n: [orch.one({"task": "e2e", "impl": impl, "n": n})
                                         for _ in range(cfg["scale_repeats"])]
                                     for n in cfg["scale_sizes"]} for impl in ("ours", "official")}
    if "spool" in only:
        log("8/8 the on-disk spool (off vs group commit vs per-event commit)...", flush=True)
        raw["spool"] = orch.one({"task": "spool", "n": cfg["hot_n"], "repeats": max(3, cfg["hot_repeats"] // 2)})
    if "http" in only:
        log("http client A/B/C (vwo_otel transport; the same with h11 framing; a bare urllib3 PoolManager; "
            "alternating)...", flush=True)
        repeats = 1 if orch.mode == "quick" else max(3, cfg["latency_repeats"])
        clients = ("direct", "h11", "urllib3")
        raw["http"] = {f"{client}_{ms}ms": [] for ms in (0, round(LATENCY * 1000)) for client in clients}
        for _ in range(repeats):
            for latency, n in ((0, cfg["e2e_n"]), (LATENCY, cfg["latency_n"])):
                for client in clients:
                    raw["http"][f"{client}_{round(latency * 1000)}ms"].append(
                        orch.one({"task": "http", "client": client, "n": n, "latency": latency}))
    if "burst" in only:
        log("burst on defaults (20,000 events: 1 thread, 16 threads; vs the official SDK at 0/50/100 ms)...",
            flush=True)
        n = 2000 if orch.mode == "quick" else 20_000
        raw["burst"] = [orch.one({"task": "burst", "n": n, "threads": t}) for t in (1, 16)]
        # the same burst against the official SDK, answers 0/50/100 ms late: each repeat runs ours and
        # then the official SDK back to back (paired), as the latency section does
        repeats = 1 if orch.mode == "quick" else max(5, cfg["latency_repeats"])
        raw["burst_vs"] = {f"{impl}_{ms}ms": [] for ms in BURST_DELAYS_MS for impl in ("ours", "official")}
        for _ in range(repeats):
            for ms in BURST_DELAYS_MS:
                for impl in ("ours", "official"):
                    raw["burst_vs"][f"{impl}_{ms}ms"].append(orch.one({
                        "task": "latency", "impl": impl, "n": n, "latency": ms / 1000, "direct": True}))
    if "latency" in only:
        from vwo_otel.export.http import IDLE_TIMEOUT

        log("delivery vs answer delay (0/20/50/100 ms; a 20 -> 500 ms slowdown; real time at 50 ms)...", flush=True)
        n = 2000 if orch.mode == "quick" else cfg["e2e_n"]
        repeats = 1 if orch.mode == "quick" else max(5, cfg["latency_repeats"])  # a noisy machine: 5 pairs
        raw["latency"] = {f"{impl}_{ms}ms": [] for ms in DELAYS_MS for impl in ("ours", "official")}
        for r in range(repeats):
            # the last repeat also watches the connections close after the load (not in the one-process smoke)
            idle = IDLE_TIMEOUT + 2 if r == repeats - 1 and orch.mode != "quick" else 0
            for ms in DELAYS_MS:
                for impl in ("ours", "official"):
                    raw["latency"][f"{impl}_{ms}ms"].append(orch.one({
                        "task": "latency", "impl": impl, "n": n, "latency": ms / 1000,
                        "idle_wait": idle if impl == "ours" else 0}))
        # VWO 25x slower halfway: on defaults the limit grows and keeps up; 100x slower, over a
        # smaller bound, the backlog fills and gives up impressions (reported) to keep conversions
        raw["latency_slowdown"] = orch.one({"task": "latency", "impl": "ours", "n": 5 * n, "latency": 0.02,
                                            "slow_to": 0.5, "track_every": 10})
        raw["latency_overload"] = orch.one({"task": "latency", "impl": "ours", "n": 5 * n, "latency": 0.02,
                                            "slow_to": 2.0, "max_queue_size": n, "track_every": 10})
        rt_n = {"ours": 200, "official": 20} if orch.mode == "quick" else {"ours": 2000, "official": 300}
        raw["latency_realtime"] = {impl: orch.one({"task": "latency", "impl": impl, "n": rt_n[impl], "latency": 0.05,
                                                   "realtime": True}) for impl in ("ours", "official")}
    if "fme" in only:
        log("VWO's FME SDK: its own batching vs instrumented vs VWOEvents (benchmarks/fme.py in .venv-fme)...",
            flush=True)
        raw["fme"] = run_fme(orch.mode)
    if "soak" in only:
        log("soak: bursts, faults, a slow server, VWO down, a full disk, SIGTERM mid-run, a restart...", flush=True)
        raw["soak"] = orch.one({"task": "soak", **SOAK[orch.mode]})
    orch.flush_batched()
    return resolve(raw)


def run_fme(mode: str) -> dict:
    """``benchmarks/fme.py`` in the FME SDK's environment (``.venv-fme``, which installs a ``vwo``
    package of its own beside the legacy SDK's): its rows, or why it did not run."""
    python = os.path.join(os.path.dirname(HERE), ".venv-fme", "bin", "python")
    if not os.path.exists(python):
        return {"skipped": "no .venv-fme: run `python3 dev.py fme` once to create it"}
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "fme.json")
        extra = ["--quick", "--repeat", "1"] if mode == "quick" else ["--repeat", "5"] if mode == "full" else []
        done = subprocess.run([python, os.path.join(HERE, "fme.py"), "--json", out, *extra],
                              capture_output=True, text=True, timeout=1800)
        if done.returncode or not os.path.exists(out):
            raise RuntimeError(f"benchmarks/fme.py failed: {done.stderr.strip()[-500:]}")
        with open(out) as f:
            return {"rows": json.load(f), "users": 200 if mode == "quick" else 1000}


def resolve(obj: Any) -> Any:
    if isinstance(obj, dict):
        if "task" in obj and "result" in obj:
            return obj["result"]
        return {k: resolve(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [resolve(v) for v in obj]
    return obj


def _check(result: dict, what: str) -> dict:
    if "error" in result:
        raise RuntimeError(f"{what}: {result['error']}")
    return result


def report(raw: dict, cfg: dict) -> tuple[list[dict], dict]:
    from vwo_otel.processor import DEFAULT_MAX_CONCURRENT_REQUESTS

    rows: list[dict] = []
    notes: list[str] = [
        "ratios: vwo_otel / anchor, medians of repeats measured in this run; receiver in its own process; "
        "each measurement in a fresh worker process",
        "1: µs per call on the emitting thread, track(revenue=...) = a span / log record named vwo.goal with the "
        "same six attributes; ours with events_per_request=5000 so no delivery falls inside the timed loop "
        "(delivery is what 2 measures)",
        "2: activate + track per user (no revenue), 100 events per request, first emit -> receiver has accepted "
        "all; ours with max_queue_size >= n (the official SDK's queue is unbounded); drops would fail the row",
    ]

    def row(metric: str, ours: float | None, anchor: float | None, unit: str, target: str = "-",
            met: bool | None = None, ratio: float | None = None, fmt: str = "{:.2f}", note: str = "") -> None:
        if ratio is None and ours is not None and anchor:
            ratio = ours / anchor
        rows.append({"metric": metric, "vwo_otel": ours, "anchor": anchor, "unit": unit, "ratio": ratio,
                     "target": target, "met": met, "fmt": fmt, "note": note})

    def safe(fn: Callable[[], None], what: str, key: str) -> None:
        if key not in raw:
            return
        try:
            fn()
        except (RuntimeError, KeyError, ZeroDivisionError, TypeError) as exc:
            rows.append({"metric": what, "vwo_otel": None, "anchor": None, "unit": "", "ratio": None,
                         "target": "-", "met": False, "fmt": "{}", "note": f"FAILED: {exc}"})

    def hot(key: str, label: str) -> None:
        r = _check(raw[key], label)
        ours, stock = median(r["ours_us"]), median(r["stock_us"])
        ratio = ours / stock
        row(label, ours, stock, "µs/event", "<= 1.2x", ratio <= 1.2, ratio)

    safe(lambda: hot("hot_span", "1a hot path, span (track -> VWOSpanProcessor vs stock BSP)"),
         "1a hot path span", "hot_span")
    safe(lambda: hot("hot_log", "1b hot path, log record (vs stock BatchLogRecordProcessor)"),
         "1b hot path log", "hot_log")

    def e2e() -> None:
        runs = {k: [_check(r, f"e2e {k}") for r in v] for k, v in raw["e2e"].items()}
        for k, v in runs.items():
            bad = [r for r in v if not r["ok"] or r["dropped"]]
            if bad:
                raise RuntimeError(f"e2e {k}: incomplete delivery {bad[0]}")
        ours = median([r["events_per_s"] for r in runs["ours"]])
        off = median([r["events_per_s"] for r in runs["official"]])
        ours_log = median([r["events_per_s"] for r in runs["ours_log"]])
        row(f"2a delivered events/s, spans ({cfg['e2e_n']} events, 100/request)", ours, off, "events/s",
            ">= 3x", ours / off >= 3, fmt="{:,.0f}")
        row("2b delivered events/s, log records", ours_log, off, "events/s", ">= 3x", ours_log / off >= 3,
            fmt="{:,.0f}")
        lat = {k: [_check(r, f"e2e latency {k}") for r in v] for k, v in raw.get("e2e_latency", {}).items()}
        if lat:
            for k, v in lat.items():
                if any(not r["ok"] or r["dropped"] for r in v):
                    raise RuntimeError(f"e2e with latency {k}: incomplete delivery")
            n = lat["ours"][0]["n"]
            row(f"2c   same as 2a, server answers {LATENCY * 1000:.0f} ms late ({n} events)",
                median([r["events_per_s"] for r in lat["ours"]]), median([r["events_per_s"] for r in lat["official"]]),
                "events/s", fmt="{:,.0f}")
            most = DEFAULT_MAX_CONCURRENT_REQUESTS
            notes.append(f"2c: vwo_otel adapts its requests in flight (up to max_concurrent_requests, default {most}), "
                         f"so its ceiling is {most} x events_per_request / server latency; the official SDK starts a "
                         "thread per batch")

    safe(e2e, "2 end to end", "e2e")

    def wire() -> None:
        w = {k: _check(v, f"wire {k}") for k, v in raw["wire"].items()}
        ours, off, rt = w["ours"], w["official"], w["ours_realtime"]
        row("3a bytes/event on the wire, batched vs official batch", ours["bytes_per_event"],
            off["bytes_per_event"], "B/event", "<= 1.0x", ours["bytes_per_event"] <= off["bytes_per_event"],
            fmt="{:.1f}")
        row("3b   (body only: JSON payload)", ours["body_bytes_per_event"], off["body_bytes_per_event"], "B/event",
            fmt="{:.1f}")
        row("3c bytes/event, batched vs our real-time GETs", ours["bytes_per_event"], rt["bytes_per_event"],
            "B/event", fmt="{:.1f}")
        notes.append("bytes: everything the client writes to the socket (request line, headers, body), counted "
                     "by a TCP relay in front of the receiver; TCP/IP framing and responses not counted")

    safe(wire, "3 bytes on the wire", "wire")

    def memory() -> None:
        m = {k: _check(v, f"memory {k}") for k, v in raw["memory"].items()}
        if not m["ours"]["nothing_sent"] or not m["official"]["nothing_sent"]:
            raise RuntimeError("memory: something was sent during the measurement")
        ours = m["ours"]["bytes_per_event"]
        row(f"4a memory per queued event ({m['ours']['queued']} queued) vs official", ours,
            m["official"]["bytes_per_event"], "B/event", "<= 300 B", ours <= 300, fmt="{:.0f}")
        row("4b   same, vs stock BSP holding the spans", ours, m["stock_span"]["bytes_per_event"], "B/event",
            fmt="{:.0f}")
        notes.append("4: tracemalloc growth with the events queued (events_per_request=5000, nothing sent; the "
                     "5000th would trigger a send), activate + track per user, user-id strings made inside the "
                     "window (kept alive only by the queue); gc.collect() before reading")

    safe(memory, "4 memory", "memory")

    def timer() -> None:
        t = _check(raw["timer"], "timer")
        lags = t["lags_ms"]
        if len(lags) < t["expected"] or t["errors"]:
            raise RuntimeError(f"timer: {len(lags)}/{t['expected']} cycles, errors {t['errors'][:3]}")
        p99 = percentile(lags, 99)
        row(f"5a timer lag p50 (deadline -> request arrives; {len(lags)} cycles)", percentile(lags, 50), None, "ms",
            fmt="{:.2f}")
        row("5b timer lag p99", p99, None, "ms", "<= 20 ms", p99 <= 20, fmt="{:.2f}")
        notes.append("5: concurrent processors with request_time_interval=1 s, started staggered over the second, "
                     "one event into an empty queue per cycle; lag = receiver's arrival time (request line "
                     "parsed) minus (emit time + 1 s); idle machine apart from the receiver")

    safe(timer, "5 timer", "timer")

    def stall() -> None:
        s = _check(raw["stall"], "stall")
        ours, stock = percentile(s["ours_us"], 99), percentile(s["stock_us"], 99)
        row("6a emit latency p99, receiver stalled + backlog full", ours, stock, "µs", "<= 50 µs", ours <= 50)
        row("6b   p50", percentile(s["ours_us"], 50), percentile(s["stock_us"], 50), "µs")
        row("6c   p99.9", percentile(s["ours_us"], 99.9), percentile(s["stock_us"], 99.9), "µs")
        notes.append(f"6: receiver stalled, max_queue_size=200 full, {len(s['ours_us'])} track() calls timed one by "
                     "one (every one a drop, reported to a flush_callback); anchor: stock BSP max_queue_size=200 "
                     "with an exporter blocked the same way (it drops silently)")

    safe(stall, "6 stall", "stall")

    def scale() -> None:
        for label, key in (("threads", "scale_threads"), ("events", "scale_sizes")):
            for x in raw[key]["ours"]:
                o = [_check(r, f"scale {x}") for r in raw[key]["ours"][x]]
                a = [_check(r, f"scale {x}") for r in raw[key]["official"][x]]
                for r in o + a:
                    if not r["ok"] or r["dropped"]:
                        raise RuntimeError(f"scale {label}={x}: incomplete delivery")
                n = o[0]["n"]
                what = (f"{x} emitting thread{'s' if int(x) > 1 else ''}, {n} events" if label == "threads"
                        else f"{int(x):,} events, 1 thread")
                row(f"7 events/s, {what}", median([r["events_per_s"] for r in o]),
                    median([r["events_per_s"] for r in a]), "events/s", fmt="{:,.0f}")
                row("7   peak RSS growth", median([r["peak_rss_growth"] for r in o]) / 2**20,
                    median([r["peak_rss_growth"] for r in a]) / 2**20, "MiB", fmt="{:.1f}")

    safe(scale, "7 scaling", "scale_threads")

    def spool() -> None:
        sp = _check(raw["spool"], "spool")
        off = median(sp["hot_off"])
        group, per_event = median(sp["hot_group"]), median(sp["hot_per_event"])
        row("8a emit cost with the spool (group commit 50 ms) vs without", group, off, "µs/event", "<= 2x",
            group / off <= 2)
        row("8b   spool committing every event vs without", per_event, off, "µs/event")
        e_off = median(sp["e2e_off"])
        row("8c delivered events/s, spool (group commit) vs without", median(sp["e2e_group"]), e_off, "events/s",
            fmt="{:,.0f}")
        row("8d   spool committing every event vs without", median(sp["e2e_per_event"]), e_off, "events/s",
            fmt="{:,.0f}")
        notes.append("8: same track() loop as 1a; the spool in a fresh temporary directory per repeat (SQLite WAL, "
                     "synchronous=NORMAL); e2e = activate + track per user, 100 per request, first emit -> all "
                     "accepted")

    safe(spool, "8 spool", "spool")
    if "scale_threads" in raw:
        notes.append("7: same run as 2a (ours: spans); peak RSS growth sampled every 50 ms; ours is configured with "
                     "max_queue_size >= n, so a backlog that outruns the requests in flight stays in memory "
                     "(about 240 B/event) where a smaller bound would drop; the official SDK hands every batch "
                     "to a new thread at once")
    def http_ab() -> None:
        runs = {k: [_check(r, f"http {k}") for r in v] for k, v in raw["http"].items()}
        for k, v in runs.items():
            if any(not r["ok"] or r["dropped"] for r in v):
                raise RuntimeError(f"http {k}: incomplete delivery")
        for ms in (0, round(LATENCY * 1000)):
            own, u3 = runs[f"direct_{ms}ms"], runs[f"urllib3_{ms}ms"]
            ours, other = median([r["events_per_s"] for r in own]), median([r["events_per_s"] for r in u3])
            row(f"H delivered events/s, vwo_otel transport vs bare urllib3, answer in {ms} ms ({own[0]['n']} events)",
                ours, other, "events/s", "own kept if urllib3 < 0.9x", other < 0.9 * ours, fmt="{:,.0f}")
            row("H   CPU per delivered event (client process)", median([r["cpu_us_per_event"] for r in own]),
                median([r["cpu_us_per_event"] for r in u3]), "µs/event")
            h11 = runs[f"h11_{ms}ms"]
            theirs = median([r["events_per_s"] for r in h11])
            row(f"H delivered events/s, h11 framing vs the own parser, answer in {ms} ms", theirs, ours, "events/s",
                "h11 if >= 0.95x", theirs >= 0.95 * ours, fmt="{:,.0f}")
            cpu_h11, cpu_own = (median([r["cpu_us_per_event"] for r in x]) for x in (h11, own))
            row("H   CPU per delivered event, h11 framing vs the own parser", cpu_h11, cpu_own, "µs/event",
                "h11 if <= 1.05x", cpu_h11 <= 1.05 * cpu_own)
        notes.append("H: the same pipeline (spans, 100 events per request) with the exporter's transport swapped; "
                     "medians of alternating runs, each in a fresh worker; the rule: keep the own HTTP client only "
                     "if urllib3 costs more than 10 % of delivered events/s; h11 framing (benchmarks/http_framing.py: "
                     "the same client, h11 parsing) replaces the own parser only within 5 % of its events/s and CPU "
                     "per event (issue #20)")

    safe(http_ab, "H http client A/B", "http")
    section_of = {"1:": "hot_span", "2:": "e2e"}  # the method notes written up front; the others come with rows
    notes = [n for n in notes if section_of.get(n[:2], "") in raw or n[:2] not in section_of]
    def latency() -> None:
        from vwo_otel.export.http import IDLE_TIMEOUT

        runs = {k: [_check(r, f"latency {k}") for r in v] for k, v in raw["latency"].items()}
        for ms in DELAYS_MS:
            ours, off = runs[f"ours_{ms}ms"], runs[f"official_{ms}ms"]
            lost = max(r["lost"] + sum(r["dropped"].values()) for r in ours)
            eps, off_eps = median([r["events_per_s"] for r in ours]), median([r["events_per_s"] for r in off])
            # each repeat runs ours and then the official SDK back to back: the median of those pairs'
            # ratios cancels the machine's slower and faster minutes better than a ratio of medians
            paired = median([a["events_per_s"] / b["events_per_s"] for a, b in zip(ours, off, strict=False)])
            row(f"L{ms:<3} delivered events/s, answers {ms} ms late (defaults; lost {lost})", eps, off_eps,
                "events/s", ">= 3x, 0 lost", paired >= 3 and lost == 0, ratio=paired, fmt="{:,.0f}",
                note="ratio: median of paired runs; runs: " + " / ".join(
                    f"{a['events_per_s']:,.0f} vs {b['events_per_s']:,.0f}" for a, b in zip(ours, off, strict=False)))
            row(f"L{ms:<3}   CPU per delivered event, whole process (the emitting thread's)",
                median([r["cpu_us_per_event"] for r in ours]), median([r["cpu_us_per_event"] for r in off]),
                "µs/event", fmt="{:.1f}",
                note=f"emitting thread: ours {median([r['emit_cpu_us_per_event'] for r in ours]):.1f}, "
                     f"official {median([r['emit_cpu_us_per_event'] for r in off]):.1f}")
            row(f"L{ms:<3}   requests in flight: most / median (ours)", median([r["in_flight_max"] for r in ours]),
                median([r["in_flight_p50"] for r in ours]), "requests", fmt="{:.0f}", ratio=float("nan"))
            watched = next((r for r in ours if "open_after_wait" in r), None)
            after = "" if watched is None else (
                f"; ours open {IDLE_TIMEOUT + 2:.0f} s after the load: {watched['open_after_wait']} (<= 1 after "
                f"{watched.get('closed_1_after_s', float('nan')):.1f} s)")
            row(f"L{ms:<3}   connections opened (the most open at once, open when all was delivered)",
                median([r["connections"] for r in ours]), median([r["connections"] for r in off]), "connections",
                fmt="{:.0f}", ratio=float("nan"), target=f"ours <= 1 open {IDLE_TIMEOUT + 2:.0f} s after",
                met=None if watched is None else watched["open_after_wait"] <= 1,
                note=f"most open: ours {median([r['connections_peak'] for r in ours]):.0f}, official "
                     f"{median([r['connections_peak'] for r in off]):.0f}; open when delivered: ours "
                     f"{median([r['connections_open_at_end'] for r in ours]):.0f}, official "
                     f"{median([r['connections_open_at_end'] for r in off]):.0f}" + after)
        kinds = {1: "impressions", 2: "conversions"}
        for key, label in (("latency_slowdown", "L500 server slows 20 -> 500 ms halfway"),
                           ("latency_overload", "L2000 server slows 20 -> 2000 ms halfway")):
            slow = _check(raw[key], key)
            bound = slow.get("max_queue_size") or 100_000
            by_type = ", ".join(f"{kinds.get(int(k), k)} {v:,}" for k, v in sorted(slow["dropped_by_type"].items()))
            row(f"{label} ({slow['n']:,} events, 1 in 10 a conversion, max_queue_size {bound:,}): peak RSS growth",
                slow["peak_rss_growth"] / 1e6, None, "MB", "held <= bound; drops reported, impressions only",
                slow["held_max"] <= bound and {int(k) for k in slow["dropped_by_type"]} <= {1}
                and slow["lost"] == 0, fmt="{:.1f}",
                note=f"most held {slow['held_max']:,}; delivered {slow['delivered']:,}; dropped and reported: "
                     f"{by_type or 'none'}; unreported loss {slow['lost']}; most in flight {slow['in_flight_max']}")
        rt = {k: _check(v, f"latency realtime {k}") for k, v in raw["latency_realtime"].items()}
        row(f"LRT  real time (one GET per event), answers 50 ms late ({rt['ours']['n']:,} / {rt['official']['n']:,} "
            "events)", rt["ours"]["events_per_s"], rt["official"]["events_per_s"], "events/s", fmt="{:,.0f}",
            note=f"lost: ours {rt['ours']['lost']}, official {rt['official']['lost']}; most in flight "
                 f"{rt['ours']['in_flight_max']}; CPU µs/event ours {rt['ours']['cpu_us_per_event']:.0f}, official "
                 f"{rt['official']['cpu_us_per_event']:.0f}")
        notes.append("L: activate only, one emitting thread, processor defaults (queue 100,000, adaptive requests in "
                     f"flight up to max_concurrent_requests={DEFAULT_MAX_CONCURRENT_REQUESTS}), through the "
                     "counting relay; CPU = the worker "
                     "process's CPU time from first emit to last event accepted / delivered events; connections "
                     "counted by the relay (open until the client closes them), the last repeat watched for "
                     f"{IDLE_TIMEOUT + 2:.0f} s after the load (our idle timeout: {IDLE_TIMEOUT:.0f} s); the "
                     "official SDK's real-time mode sends each GET on the calling thread")

    safe(latency, "L delivery vs answer delay", "latency")

    def burst() -> None:
        for r in (_check(x, "burst") for x in raw["burst"]):
            row(f"B burst on defaults, {r['n']:,} events from {r['threads']} thread(s), server "
                f"{BURST_LATENCY * 1000:.0f} ms away: lost", r["lost"], None,
                "events", "0", r["lost"] == 0, fmt="{:,.0f}")
        runs = {k: [_check(r, f"burst {k}") for r in v] for k, v in raw.get("burst_vs", {}).items()}

        def ceiling(ms: int, ours: list, off: list) -> str:
            """The ratio this delay allows if delivering cost no more than with instant answers:
            the official SDK's time over our time at 0 ms plus one round trip (the last batch
            cannot go before the last event)."""
            if not ms:
                return ""
            zero = median([r["n"] / r["events_per_s"] for r in runs["ours_0ms"]])
            top = median([r["n"] / r["events_per_s"] for r in off]) / (zero + ms / 1000)
            return f"ceiling with delivery as cheap as at 0 ms {top:.2f}x; "

        for ms in BURST_DELAYS_MS if runs else ():
            ours, off = runs[f"ours_{ms}ms"], runs[f"official_{ms}ms"]
            lost = max(r["lost"] + sum(r["dropped"].values()) for r in ours)
            paired = median([a["events_per_s"] / b["events_per_s"] for a, b in zip(ours, off, strict=False)])
            row(f"B{ms:<3} the burst ({ours[0]['n']:,} events, one thread, defaults) vs the official SDK, answers "
                f"{ms} ms late: delivered events/s (lost {lost})", median([r["events_per_s"] for r in ours]),
                median([r["events_per_s"] for r in off]), "events/s", ">= 3x, 0 lost", paired >= 3 and lost == 0,
                ratio=paired, fmt="{:,.0f}",
                note=f"ratio: median of paired runs; {ceiling(ms, ours, off)}emitting thread's CPU per event: ours "
                     f"{median([r['emit_cpu_us_per_event'] for r in ours]):.1f} µs, official "
                     f"{median([r['emit_cpu_us_per_event'] for r in off]):.1f} µs; most in flight "
                     f"{median([r['in_flight_max'] for r in ours]):.0f}; runs: " + " / ".join(
                         f"{a['events_per_s']:,.0f} vs {b['events_per_s']:,.0f}"
                         for a, b in zip(ours, off, strict=False)))

        if runs:
            notes.append("B0-B100: the L rows' scenario (same worker) with 20,000 events, straight to the receiver: "
                         "the relay the L rows count bytes and connections with runs two threads per connection "
                         "on the same cores, a cost per connection VWO's servers do not put on the app's machine")

    safe(burst, "B burst", "burst")

    def fme() -> None:
        if "skipped" in raw["fme"]:
            notes.append(f"F: not run ({raw['fme']['skipped']})")
            return
        for r in raw["fme"]["rows"]:
            ms = f"{r['delay'] * 1000:.0f} ms"
            clean = r["lost"] == 0 and r["duplicated"] == 0
            tail = f"(lost {r['lost']}, duplicated {r['duplicated']})"
            if r["variant"] == "instrumented":
                row(f"F{ms:<7} FME SDK instrumented vs the SDK's own batching: events/s {tail}", r["events_per_s"],
                    r["events_per_s"] / r["speed_vs_sdk"], "events/s", ">= 1.0x, 0 lost, 0 dup",
                    r["speed_vs_sdk"] >= 1.0 and clean, ratio=r["speed_vs_sdk"], fmt="{:,.0f}")
                row(f"F{ms:<7} FME SDK instrumented vs the SDK's own batching: bytes per event", r["bytes_per_event"],
                    r["bytes_per_event"] / r["bytes_vs_sdk"], "B/event", "<= 0.75x", r["bytes_vs_sdk"] <= 0.75,
                    ratio=r["bytes_vs_sdk"], fmt="{:,.0f}")
            elif r["variant"] == "direct":
                row(f"F{ms:<7} FME events through VWOEvents vs the SDK's own batching: events/s {tail}",
                    r["events_per_s"], r["events_per_s"] / r["speed_vs_sdk"], "events/s", ">= 3x, 0 lost, 0 dup",
                    r["speed_vs_sdk"] >= 3.0 and clean, ratio=r["speed_vs_sdk"], fmt="{:,.0f}")
        notes.append("F: benchmarks/fme.py (the FME SDK 1.65 in .venv-fme, the loopback FMEStandIn answering 0 and "
                     f"50 ms late; {raw['fme']['users']:,} users x get_flag + track_event + set_attribute from 4 "
                     "threads, defaults); the anchor is the SDK batching its own events; medians of interleaved runs")

    safe(fme, "F FME SDK", "fme")

    def soak() -> None:
        r = _check(raw["soak"], "soak")
        held = r["delivered"] + r["reported"] + r["on_disk"]
        row(f"S soak ({r['seconds']:.0f} s, spool on {r['disk']}{', filled' if r['disk_full'] else ''}): emitted "
            f"{r['emitted']:,} = delivered {r['delivered']:,} + reported {r['reported']:,} + on disk "
            f"{r['on_disk']:,}; duplicates", r["duplicates"], None, "events", "sum holds",
            r["emitted"] == held and not r["unknown"] and r["unaccounted"] <= r.get("unlisted", 0), fmt="{:,.0f}")
        notes.append("S: a child app, 4 stages: bursts from several threads against random faults (20% of requests "
                     "5xx/429/dropped), a server answering 300 ms late, VWO down (the queue spills to a small "
                     "tmpfs until it is full), then SIGTERM (the app stops its threads; vwo_otel delivers within "
                     "shutdown_timeout, then the process dies of the signal) and a restart that replays the spool; "
                     "delivered = unique at the receiver, reported = flush_callback errors (listed, or counted past "
                     "the 10,000 one report lists), on disk = rows left; "
                     "duplicates = deliveries beyond the first (at-least-once across the kill)")

    safe(soak, "S soak", "soak")
    return rows, {"raw": raw, "notes": notes}


def fmt_value(value: Any, fmt: str) -> str:
    if value is None:
        return "-"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def print_table(rows: list[dict], mode: str, elapsed: float) -> None:
    header = ("metric", "vwo_otel", "anchor", "ratio", "target", "met?")
    lines = []
    for r in rows:
        unit = f" {r['unit']}" if r["unit"] else ""
        met = "-" if r["met"] is None else ("yes" if r["met"] else "NO")
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        lines.append((r["metric"] + (f"  [{r['note']}]" if r["note"] else ""),
                      fmt_value(r["vwo_otel"], r["fmt"]) + (unit if r["vwo_otel"] is not None else ""),
                      fmt_value(r["anchor"], r["fmt"]) + (unit if r["anchor"] is not None else ""),
                      ratio, r["target"], met))
    widths = [max(len(str(x[i])) for x in [header, *lines]) for i in range(len(header))]
    sep = "-+-".join("-" * w for w in widths)
    print(f"\nvwo_otel benchmarks ({mode} mode, {elapsed:.0f} s, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()})")
    print("anchors: 1 stock OTel batch processor + no-op exporter; 2-4a,7 official vwo-python-sdk 1.68.2 "
          "(batch_events, 100/request); 4b stock BSP; 6 stock BSP with a blocked exporter")
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=False)))
    print(sep)
    for line in lines:
        print(" | ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=False)))


if __name__ == "__main__":
    sys.exit(main())
