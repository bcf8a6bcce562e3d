"""OpenTelemetry processors that pick VWO events out of spans / log records and batch them."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from typing import Any, TypedDict

from opentelemetry.metrics import MeterProvider
from opentelemetry.sdk._logs import LogRecordProcessor
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor

from . import checks
from ._engine.batcher import DEFAULT_MAX_CONCURRENT_REQUESTS, DEFAULT_MAX_QUEUE_SIZE, DEFAULT_SHUTDOWN_TIMEOUT, Batcher
from ._engine.spool import Spool
from ._engine.uwsgi import check as uwsgi_check
from .aio import run_blocking
from .config import _UNSET, BatchEventsLike, batch_events_argument, parse_batch_events
from .event import MalformedEvent, from_record
from .export.exporter import VWOExporter
from .handoff import HANDED
from .metrics import DeliveryMetrics, Signal

logger = logging.getLogger("vwo_otel")


class _Stats(TypedDict):
    events: dict[str, int]  # events whose delivery settled: "delivered", "failed" ("not_sent" when disabled)
    dropped: dict[str, int]  # events dropped before any request, by reason (as in ``EventsDropped.reason``)
    queued: int  # events held now: queued, batched or in flight


class ProcessorStats(_Stats, total=False):
    """What ``stats()`` returns (see ``VWOProcessor.stats``)."""

    on_disk: int  # with a spool: events waiting on disk (parked, spilled, a dead process's)


class VWOProcessor:
    """What the span and log-record processors share: config, batching and flushing.

    ``max_queue_size`` bounds the events held (about 250 B each: the default 100,000 is
    about 25 MB). ``block_when_full`` (seconds, default 0) lets an emitting thread wait that
    long for room when the queue is full before the event is dropped: for backfills and
    batch jobs that emit faster than VWO takes events.

    ``max_concurrent_requests`` is the most batches in flight at once (an int, range
    ``checks.MAX_CONCURRENT_REQUESTS``): the adaptive limit starts at 2 and grows toward it only
    while batches wait and VWO answers as fast as before; each batch in flight has a delivery
    thread of its own; the threads above 2 end after a quiet spell. ``1`` sends strictly one batch at a time.

    ``background=False`` (serverless: AWS Lambda, Cloud Run, short invocations) starts no thread
    at all: events wait in the queue until ``flush_events`` / ``force_flush`` / ``shutdown``
    delivers them on the calling thread (``request_time_interval`` never fires on its own, a
    full ``events_per_request`` batch waits too); ``vwo_otel.serverless.deliver_before_return``
    does that as each invocation ends. No ``spool`` then (it writes from a thread).
    """

    _signal: Signal = "span"

    def __init__(self, exporter: VWOExporter, batch_events: BatchEventsLike = None, *,
                 batch_event_data: BatchEventsLike = _UNSET,
                 max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE,
                 shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
                 max_concurrent_requests: int = DEFAULT_MAX_CONCURRENT_REQUESTS,
                 block_when_full: float = 0.0,
                 spool: str | os.PathLike[str] | Spool | None = None,
                 meter_provider: MeterProvider | None = None, background: bool = True) -> None:
        if not isinstance(exporter, VWOExporter):
            raise TypeError(f"exporter must be a vwo_otel.VWOExporter, got {type(exporter).__name__}")
        if meter_provider is not None and not hasattr(meter_provider, "get_meter"):
            raise TypeError(f"meter_provider must be a MeterProvider, got {type(meter_provider).__name__}")
        background = checks.boolean("background", background)
        if not background:
            if spool is not None:
                raise ValueError("spool= needs background threads (it commits and replays on threads of its own); "
                                 "with background=False each invocation delivers before it returns")
            exporter.without_threads()
        self._batcher = Batcher(exporter, parse_batch_events(batch_events_argument(batch_events, batch_event_data)),
                                max_queue_size=max_queue_size, shutdown_timeout=shutdown_timeout,
                                max_concurrent_requests=max_concurrent_requests, block_when_full=block_when_full,
                                spool=_open_spool(spool), background=background)
        self._put = self._batcher.put
        self._count_lock = threading.Lock()
        self._handed_to_sdk = 0  # events of the instrumented VWO SDK its own dispatch sent (see stats)
        self._account_id = exporter.account_id  # events the instrumented VWO SDK tags for another account pass by
        uwsgi_check()  # one WARNING if this is a uWSGI worker that runs no Python thread
        #: Delivery metrics (``vwo_otel.metrics``), only when a ``meter_provider`` is given.
        self.metrics = None if meter_provider is None else DeliveryMetrics(meter_provider, self._batcher, self._signal)

    @property
    def batcher(self) -> Batcher:
        """The engine behind this processor: queue, timer and delivery threads (internal, for
        tests and tools: its settings and ``snapshot()``; not a stable API)."""
        return self._batcher

    def __repr__(self) -> str:
        b = self._batcher
        mode = "real-time" if b.realtime else f"events_per_request={b.events_per_request}, " \
                                             f"request_time_interval={b.interval:g}"
        return f"{type(self).__name__}({b.exporter!r}, {mode})"

    def flush_events(self, mode: str | None = "sync") -> bool | None:
        """Send everything queued now, whatever the batch settings, and clear the timer.
        ``"sync"`` returns after the callbacks ran, with True only if every event emitted
        before the call was delivered (False if one failed or was dropped, e.g. ``queue_full``,
        since the last flush that returned False for it); ``"async"`` starts the same flush
        and returns None at once."""
        if mode is None or mode == "sync":  # VWO: "defaults to 'sync'" (its Flask example may pass None)
            return self._batcher.flush(None)
        if mode == "async":
            self._batcher.flush_async()
            return None
        raise ValueError(f"flush_events mode must be 'sync' or 'async', got {mode!r}")

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Deliver what is queued within ``timeout_millis``; False if time ran out, or an event
        emitted before the call failed or was dropped (as for ``flush_events``)."""
        timeout = checks.number("timeout_millis", timeout_millis, low=0)
        return self._batcher.flush(timeout / 1000.0)

    def shutdown(self) -> None:
        """Deliver the queue (bounded by ``shutdown_timeout``), then refuse new events; idempotent."""
        self._batcher.shutdown()

    # -- asyncio: the same calls, awaited without blocking the event loop (``vwo_otel.aio``) --
    async def aflush_events(self) -> bool:
        """``flush_events("sync")``, awaitable: the wait runs on a thread of its own while the
        event loop goes on. Cancelling the await stops the waiting, not the flush."""
        result = await run_blocking(self.flush_events, "sync")
        return bool(result)

    async def aforce_flush(self, timeout_millis: int = 30000) -> bool:
        """``force_flush(timeout_millis)``, awaitable without blocking the event loop."""
        return await run_blocking(self.force_flush, timeout_millis)

    async def ashutdown(self) -> None:
        """``shutdown()``, awaitable without blocking the event loop (bounded by ``shutdown_timeout``);
        for FastAPI / Starlette lifespans and aiohttp's ``on_cleanup``."""
        await run_blocking(self.shutdown)

    def stats(self) -> ProcessorStats:
        """Counters since the processor started (in a forked child: since the fork); cheap,
        safe from any thread:

        - ``events["delivered"]``: events VWO accepted (a 2xx answer).
        - ``events["failed"]``: events whose delivery settled with an error (``flush_callback``
          got a ``VWODeliveryError`` that is not ``EventsDropped``: HTTP status, network,
          payload too large, retry budget spent).
        - ``events["not_sent"]``: only with a disabled exporter (development mode,
          ``VWO_DISABLED``): events checked and reported as accepted without a request
          (``delivered`` then stays 0).
        - ``dropped[reason]``: events given up before any request, by ``EventsDropped.reason``
          (``queue_full``, ``already_shutdown``, ``shutdown_timeout``, ``shutdown_in_flight``,
          ``malformed``, ``invocation_deadline``); a reason appears once it happened.
        - ``events["handed_to_sdk"]``: only with ``VWOInstrumentor``, once it happened: events of
          the official VWO SDK this processor's provider could not take (another account's, an
          unrecorded span, ...), which the SDK then sent itself, on the calling thread.
        - ``queued``: events held now (queued, cut into a batch, or in flight).
        - ``on_disk``: only with a spool: events waiting on disk, not in memory (parked after
          their retry budget ran out, spilled from a full queue, or a dead process's).
        """
        b = self._batcher
        events = dict(b.counts)
        if b.exporter.disabled:  # an accepted Outcome of a disabled exporter made no request
            events["not_sent"], events["delivered"] = events["delivered"], 0
        if self._handed_to_sdk:
            events["handed_to_sdk"] = self._handed_to_sdk
        stats: ProcessorStats = {"events": events, "dropped": dict(b.dropped), "queued": b.queue_size()}
        if b.backlog.durable:
            stats["on_disk"] = b.backlog.on_disk()
        return stats

    def count_handed_to_sdk(self, n: int = 1) -> None:
        """``VWOInstrumentor`` handed ``n`` events of its provider back to the VWO SDK (``stats``)."""
        with self._count_lock:
            self._handed_to_sdk += n


class VWOSpanProcessor(VWOProcessor, SpanProcessor):
    """Batches spans that carry ``vwo.event.type`` as VWO events; other spans cost one dict lookup.

    ``batch_events`` is VWO's dict ``{"events_per_request", "request_time_interval",
    "flush_callback"}`` (or a ``BatchEvents``); ``None`` sends each event in real time. The names
    VWO's SDKs use work too: ``batch_event_data=`` (FME) and the key ``flushCallback``.
    """

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        handed = HANDED  # VWOEvents' own span on this thread: the event it built (``handoff``)
        if handed.key is getattr(span, "_context", False) and handed.event is not None:
            self._put(handed.event)
            return
        try:
            event = from_record(span)
        except MalformedEvent as exc:
            # counted, logged (rate-limited) and reported to flush_callback as EventsDropped("malformed")
            self._batcher.malformed(span.attributes or {}, str(exc))
            return
        if event is not None and (event.account_id is None or event.account_id == self._account_id):
            self._put(event)


class VWOLogRecordProcessor(VWOProcessor, LogRecordProcessor):
    """Batches log records that carry ``vwo.event.type`` as VWO events; others are ignored."""

    _signal: Signal = "log"

    def on_emit(self, log_record: Any) -> None:
        handed = HANDED  # VWOEvents' own record on this thread: the event it built (``handoff``)
        if handed.key is getattr(getattr(log_record, "log_record", log_record), "timestamp", False) \
                and handed.event is not None:
            self._put(handed.event)
            return
        try:
            event = from_record(log_record)
        except MalformedEvent as exc:
            self._batcher.malformed(log_record.log_record.attributes or {}, str(exc))  # as in on_end
            return
        if event is not None and (event.account_id is None or event.account_id == self._account_id):
            self._put(event)


def _open_spool(spool: str | os.PathLike[str] | Spool | None) -> Spool | None:
    """The spool for a ``spool=`` argument. A directory that cannot hold one (a full or read-only
    disk, no permission) must not stop the app: events then stay in memory only, said at ERROR."""
    if spool is None or isinstance(spool, Spool):
        return spool
    try:
        return Spool(spool)
    except (OSError, sqlite3.Error) as exc:
        logger.error("the spool directory %s is unusable (%s); events are kept in memory only",
                     os.fspath(spool), exc)
        return None
