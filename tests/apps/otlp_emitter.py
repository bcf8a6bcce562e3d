"""An app that sends VWO events only through OpenTelemetry's own OTLP/HTTP exporter (to a
Collector or the gateway), as a fleet process would; used by tests/integration/test_rotel.py and
test_gateway.py.

    OTEL_RESOURCE_ATTRIBUTES=vwo.account_id=123456 \
    python otlp_emitter.py '{"name": "app1", "n": 2000, "signal": "logs", "url": "http://127.0.0.1:4318",
                             "rate": 500}'

Emits ``n`` events (activate / track / push in turn, or with ``"format": "fme"`` variation_shown /
track_event / set_attribute; user ids ``<name>-<i>``) with ``VWOEvents(...,
to_gateway=True)`` at about ``rate`` events/s (0: as fast as it can), plus some non-VWO noise;
optional ``account`` (a ``vwo.account_id`` resource attribute), ``gzip`` (compressed exports),
``batch`` (the batch processor's ``max_export_batch_size``) and ``own_records`` (goals as the app's
own spans / log records with the ``vwo.*`` attributes instead of ``VWOEvents``: the account on the
resource only);
then shuts the provider down and prints one JSON line: events emitted, export calls and how many
of them failed (what the app's own hop lost: a failed export is dropped by the SDK).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.resources import Resource

import vwo_otel


class Counting:
    """Wraps an OTLP exporter and counts its export calls and failures (thread-safe)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls = self.failed = 0
        self._lock = threading.Lock()

    def export(self, batch: Sequence[Any]) -> Any:
        """Export through the wrapped exporter and count the result."""
        result = self.inner.export(batch)
        with self._lock:
            self.calls += 1
            self.failed += result.name != "SUCCESS"
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def main(cfg: dict[str, Any]) -> None:
    """Emit the configured events through the configured signal's OTLP exporter."""
    from opentelemetry.exporter.otlp.proto.http import Compression

    attrs: dict[str, Any] = {"service.name": cfg["name"]}  # + OTEL_RESOURCE_ATTRIBUTES (vwo.account_id)
    if cfg.get("account"):
        attrs["vwo.account_id"] = cfg["account"]
    resource = Resource.create(attrs)
    compression = Compression.Gzip if cfg.get("gzip") else Compression.NoCompression
    batch = {"max_queue_size": 20_000, "schedule_delay_millis": 200, "max_export_batch_size": cfg.get("batch", 512)}
    counting: Counting
    if cfg["signal"] == "traces":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        tracer_provider = TracerProvider(resource=resource)
        counting = Counting(OTLPSpanExporter(endpoint=cfg["url"] + "/v1/traces", compression=compression))
        tracer_provider.add_span_processor(BatchSpanProcessor(counting, **batch))  # type: ignore[arg-type]
        vwo = vwo_otel.VWOEvents(tracer_provider=tracer_provider, to_gateway=True)
        tracer = tracer_provider.get_tracer("app")
        provider: Any = tracer_provider

        def noise() -> None:
            with tracer.start_as_current_span("GET /item", attributes={"http.route": "/item"}):
                pass

        def own(attrs: dict[str, Any]) -> None:
            tracer.start_span("vwo.goal", attributes=attrs).end()
    else:
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
        from opentelemetry.sdk._logs import LoggerProvider
        from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

        logger_provider = LoggerProvider(resource=resource)
        counting = Counting(OTLPLogExporter(endpoint=cfg["url"] + "/v1/logs", compression=compression))
        logger_provider.add_log_record_processor(BatchLogRecordProcessor(counting, **batch))  # type: ignore[arg-type]
        vwo = vwo_otel.VWOEvents(logger_provider=logger_provider, to_gateway=True)
        app_logger = logger_provider.get_logger("app")
        provider = logger_provider

        def noise() -> None:
            app_logger.emit(body="request served", attributes={"http.route": "/item"})

        def own(attrs: dict[str, Any]) -> None:
            app_logger.emit(event_name="vwo.goal", attributes=attrs, timestamp=time.time_ns())

    rate, start = float(cfg.get("rate", 0)), time.monotonic()
    for i in range(cfg["n"]):
        if rate and i % 10 == 0:
            time.sleep(max(0.0, start + i / rate - time.monotonic()))
        user = f"{cfg['name']}-{i}"
        kind = i % 3
        if cfg.get("own_records"):
            own({"vwo.event.type": 2, "vwo.user_id": user, "vwo.campaign_id": 231, "vwo.variation_id": 2,
                 "vwo.goal_id": 7})
        elif cfg.get("format") == "fme":
            if kind == 0:
                vwo.variation_shown(231, 2, user)
            elif kind == 1:
                vwo.track_event("purchase", user, {"revenue": 1.5})
            else:
                vwo.set_attribute({"plan": "pro"}, user)
        elif kind == 0:
            vwo.activate(231, 2, user)
        elif kind == 1:
            vwo.track(231, 2, 7, user, revenue=1.5)
        else:
            vwo.push(user, {"plan": "pro"})
        if i % 4 == 0:
            noise()
    provider.shutdown()
    print(json.dumps({"emitted": cfg["n"], "export_calls": counting.calls, "export_failed": counting.failed,
                      "seconds": round(time.monotonic() - start, 2)}), flush=True)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
