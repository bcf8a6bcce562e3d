"""An app of a fleet: VWO events as OpenTelemetry log records, over OTLP/HTTP to a collector in
front of ``vwo-otel gateway``s (or to a gateway itself), never holding an sdk key.

    pip install vwo-otel opentelemetry-exporter-otlp-proto-http
    OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 OTEL_RESOURCE_ATTRIBUTES=vwo.account_id=123456 \\
        python examples/gateway_app.py --name app1 --events 1000 --rate 200

``VWOEvents(logger_provider=..., to_gateway=True)`` puts the account (from
``OTEL_RESOURCE_ATTRIBUTES``) on every record, so it survives a collector that splits batches.
The OpenTelemetry SDK's batch processor and OTLP exporter send them; add
``OTEL_EXPORTER_OTLP_HEADERS=Authorization=Bearer%20<token>`` when the gateway has tokens. At the
end the app shuts its provider down (sending what is queued) and prints one JSON line: events
emitted and exports that failed (the SDK drops a batch whose export failed). ``deploy/compose.yaml``
runs it; ``tests/integration/test_deploy.py`` runs the same command.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExporter, LogRecordExportResult

import vwo_otel


class Counted(LogRecordExporter):
    """The OTLP exporter, counting the exports that failed."""

    def __init__(self, inner: OTLPLogExporter) -> None:
        self.inner, self.failed = inner, 0
        self._lock = threading.Lock()

    def export(self, batch: Sequence[Any]) -> LogRecordExportResult:
        result = self.inner.export(batch)
        if result is not LogRecordExportResult.SUCCESS:
            with self._lock:
                self.failed += 1
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.inner.force_flush(timeout_millis)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", default="app", help="this app's name: user ids are <name>-<i>")
    p.add_argument("--events", type=int, default=1000, help="events to emit (default 1000)")
    p.add_argument("--rate", type=float, default=200.0, help="events per second (0: as fast as it can)")
    args = p.parse_args(argv)
    exporter = Counted(OTLPLogExporter())  # OTEL_EXPORTER_OTLP_ENDPOINT (+ /v1/logs), _HEADERS, _CERTIFICATE
    provider = LoggerProvider()  # its resource reads OTEL_RESOURCE_ATTRIBUTES (vwo.account_id=...)
    provider.add_log_record_processor(BatchLogRecordProcessor(exporter, max_queue_size=20_000,
                                                              schedule_delay_millis=200))
    vwo = vwo_otel.VWOEvents(logger_provider=provider, to_gateway=True)
    start = time.monotonic()
    for i in range(args.events):
        if args.rate and i % 10 == 0:
            time.sleep(max(0.0, start + i / args.rate - time.monotonic()))
        user = f"{args.name}-{i}"
        if i % 2:
            vwo.track(231, 2, 7, user, revenue=9.5)
        else:
            vwo.activate(231, 2, user)
    provider.shutdown()
    print(json.dumps({"emitted": args.events, "export_failed": exporter.failed}), flush=True)
    return 0 if exporter.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
