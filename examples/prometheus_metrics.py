"""An app whose VWO processor's delivery metrics (``vwo_otel.metrics``) go to Prometheus.

    pip install opentelemetry-exporter-prometheus
    VWO_ACCOUNT_ID=123456 VWO_SDK_KEY=... python examples/prometheus_metrics.py [N_EVENTS]
    curl http://127.0.0.1:9464/metrics        # $METRICS_PORT; Prometheus scrapes this

The processor gets ``meter_provider=``: its OpenTelemetry instruments (events processed, queue
size and capacity, events exported, requests to VWO and their durations) are read by the
OpenTelemetry Prometheus exporter (``PrometheusMetricReader``), which serves them in
Prometheus' format on its own port. ``examples/grafana/vwo-otel.json`` charts them beside the
gateway's ``/metrics`` (``examples/prometheus/prometheus.yml`` scrapes both). The app emits
``N_EVENTS`` events (default 200), then serves its metrics until Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import start_http_server

import vwo_otel

port = int(os.environ.get("METRICS_PORT", "9464"))
server, _ = start_http_server(port, addr="127.0.0.1")  # 0.0.0.0 for a Prometheus on another host
meter_provider = MeterProvider(metric_readers=[PrometheusMetricReader()])
provider = TracerProvider(sampler=vwo_otel.VWOSampler())
processor = vwo_otel.span_processor_from_env(
    batch_events={"events_per_request": 100, "request_time_interval": 10}, meter_provider=meter_provider)
provider.add_span_processor(processor)
vwo = vwo_otel.VWOEvents(tracer_provider=provider)

n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
for i in range(n):
    if i % 2:
        vwo.track(231, 2, 7, f"user-{i}", revenue=9.5)
    else:
        vwo.activate(231, 2, f"user-{i}")
processor.flush_events()
print(f"emitted {n} VWO events; metrics on http://127.0.0.1:{server.server_port}/metrics", flush=True)

stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
try:
    stop.wait()
except KeyboardInterrupt:
    pass
provider.shutdown()
server.shutdown()
