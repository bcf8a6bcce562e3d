"""Delivery telemetry as OpenTelemetry metrics: opt in with ``meter_provider=`` on a processor.

Nothing here runs on the emitting thread. The queue and event counts are *observable*
instruments: their callbacks read, at collection time, the counters the batcher keeps
anyway (``counts``, ``dropped``, the queue size). The request-level instruments are
recorded on the delivery thread, once per HTTP request, through ``VWOExporter.add_observer``.

Names follow the semantic conventions for SDK components where they exist
(``otel.sdk.processor.span.*``, ``otel.sdk.processor.log.*``, ``otel.sdk.exporter.*.exported``);
the rest are ``vwo.exporter.*``. Every data point carries ``otel.component.type``
(``vwo_span_processor`` / ``vwo_log_record_processor``) and ``otel.component.name``
(``<type>/<n>``, one per processor).
"""

from __future__ import annotations

import itertools
import logging
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Literal

from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

from . import attributes as A
from ._version import __version__

if TYPE_CHECKING:
    from ._engine.batcher import Batcher

logger = logging.getLogger("vwo_otel")

Signal = Literal["span", "log"]

#: Instrument names (``{signal}`` is ``span`` or ``log``).
PROCESSED = "otel.sdk.processor.{signal}.processed"
QUEUE_SIZE = "otel.sdk.processor.{signal}.queue.size"
QUEUE_CAPACITY = "otel.sdk.processor.{signal}.queue.capacity"
EXPORTED = "otel.sdk.exporter.{signal}.exported"
REQUESTS = "vwo.exporter.requests"
BATCH_EVENTS = "vwo.exporter.batch.events"
BATCH_BYTES = "vwo.exporter.batch.bytes"
DURATION = "vwo.exporter.duration"

#: Attribute keys.
COMPONENT_TYPE = "otel.component.type"
COMPONENT_NAME = "otel.component.name"
ERROR_TYPE = "error.type"
HTTP_METHOD = "http.request.method"
HTTP_STATUS = "http.response.status_code"
OUTCOME = "vwo.request.outcome"

#: ``error.type`` of events whose delivery failed (the request-level instruments say why).
DELIVERY_FAILED = "delivery_failed"

_UNITS = {"span": "{span}", "log": "{log_record}"}
_COMPONENT_TYPES = {"span": "vwo_span_processor", "log": "vwo_log_record_processor"}
_SEQ = {"span": itertools.count(), "log": itertools.count()}
#: Bucket bounds (seconds) of request durations to VWO (the gateway's /metrics histogram uses them too).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_EVENT_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)
_BYTE_BUCKETS = (256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 10485760)


def request_outcome(status: int | None) -> str:
    """``vwo.request.outcome`` of one HTTP request: ``success`` (2xx), ``payload_too_large``
    (413), ``http_error`` (any other answer) or ``network_error`` (no answer)."""
    if status is None:
        return "network_error"
    if 200 <= status < 300:
        return "success"
    return "payload_too_large" if status == 413 else "http_error"


class DeliveryMetrics:
    """The instruments of one processor. Built by the processor when ``meter_provider`` is given."""

    def __init__(self, meter_provider: MeterProvider, batcher: Batcher, signal: Signal) -> None:
        if signal not in _UNITS:
            raise ValueError(f"signal must be 'span' or 'log', got {signal!r}")
        if not hasattr(meter_provider, "get_meter"):
            raise TypeError(f"meter_provider must be a MeterProvider, got {type(meter_provider).__name__}")
        component = _COMPONENT_TYPES[signal]
        self.attributes: dict[str, str] = {
            COMPONENT_TYPE: component, COMPONENT_NAME: f"{component}/{next(_SEQ[signal])}"}
        self._batcher = weakref.ref(batcher)  # metrics must not keep a dropped processor alive
        unit = _UNITS[signal]
        meter = meter_provider.get_meter(A.SCOPE, __version__)
        meter.create_observable_counter(
            PROCESSED.format(signal=signal), callbacks=[self._observe_processed], unit=unit,
            description="VWO events whose processing finished: handed to delivery (no error.type) "
                        "or dropped before any request (error.type = queue_full, already_shutdown, "
                        "shutdown_timeout, shutdown_in_flight, malformed).")
        meter.create_observable_up_down_counter(
            QUEUE_SIZE.format(signal=signal), callbacks=[self._observe_queue_size], unit=unit,
            description="VWO events held by the processor: queued, batched and in flight.")
        meter.create_observable_up_down_counter(
            QUEUE_CAPACITY.format(signal=signal), callbacks=[self._observe_capacity], unit=unit,
            description="The most VWO events the processor holds (max_queue_size).")
        meter.create_observable_counter(
            EXPORTED.format(signal=signal), callbacks=[self._observe_exported], unit=unit,
            description="VWO events whose delivery settled: accepted by VWO (no error.type) or "
                        f"failed (error.type = {DELIVERY_FAILED}).")
        self._requests = meter.create_counter(
            REQUESTS, unit="{request}",
            description="HTTP requests to VWO (each retry counts), by vwo.request.outcome and status.")
        self._batch_events = meter.create_histogram(
            BATCH_EVENTS, unit="{event}", explicit_bucket_boundaries_advisory=_EVENT_BUCKETS,
            description="VWO events per HTTP request.")
        self._batch_bytes = meter.create_histogram(
            BATCH_BYTES, unit="By", explicit_bucket_boundaries_advisory=_BYTE_BUCKETS,
            description="Payload bytes per HTTP request (the body, or the query of a real-time GET).")
        self._duration = meter.create_histogram(
            DURATION, unit="s", explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
            description="Duration of one HTTP request to VWO, until the answer or the error.")
        batcher.exporter.add_observer(self.on_request)

    # -- the delivery thread: once per HTTP request ------------------------------------
    def on_request(self, method: str, events: int, nbytes: int, status: int | None,
                   error: BaseException | None, seconds: float) -> None:
        """Record one HTTP request; called by the exporter after each attempt."""
        try:
            outcome = request_outcome(status)
            attrs: dict[str, str | int] = {**self.attributes, HTTP_METHOD: method, OUTCOME: outcome}
            if status is not None:
                attrs[HTTP_STATUS] = status
            if outcome != "success":
                attrs[ERROR_TYPE] = str(status) if status is not None else type(error).__name__
            self._requests.add(1, attrs)
            self._duration.record(seconds, attrs)
            size_attrs = {**self.attributes, HTTP_METHOD: method}
            self._batch_events.record(events, size_attrs)
            self._batch_bytes.record(nbytes, size_attrs)
        except Exception:  # metrics must never break delivery
            logger.debug("vwo_otel could not record request metrics", exc_info=True)

    # -- collection time: read what the batcher counts anyway ---------------------------
    def _observe_processed(self, options: CallbackOptions) -> Iterator[Observation]:
        batcher = self._batcher()
        if batcher is None:
            return
        counts = batcher.counts
        yield Observation(counts["delivered"] + counts["failed"], self.attributes)
        for reason, n in list(batcher.dropped.items()):
            yield Observation(n, {**self.attributes, ERROR_TYPE: reason})

    def _observe_exported(self, options: CallbackOptions) -> Iterator[Observation]:
        batcher = self._batcher()
        if batcher is None:
            return
        counts = batcher.counts
        yield Observation(counts["delivered"], self.attributes)
        yield Observation(counts["failed"], {**self.attributes, ERROR_TYPE: DELIVERY_FAILED})

    def _observe_queue_size(self, options: CallbackOptions) -> Iterator[Observation]:
        batcher = self._batcher()
        if batcher is not None:
            yield Observation(batcher.queue_size(), self.attributes)

    def _observe_capacity(self, options: CallbackOptions) -> Iterator[Observation]:
        batcher = self._batcher()
        if batcher is not None:
            yield Observation(batcher.max_queue_size, self.attributes)
