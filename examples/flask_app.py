"""A Flask shop that already traces with OpenTelemetry, and adds VWO events.

    VWO_ACCOUNT_ID=123456 VWO_SDK_KEY=... python examples/flask_app.py     # http://127.0.0.1:5000 ($PORT)
    curl 'http://127.0.0.1:5000/product/7?user=alice'; curl -X POST 'http://127.0.0.1:5000/buy/7?user=alice'

(``vwo-otel receive --port 8000`` and ``VWO_ENDPOINT=http://127.0.0.1:8000`` try it locally.)

The app's trace pipeline stays as it was: a BatchSpanProcessor with its exporter (a
ConsoleSpanExporter printing one JSON span per line here; ``OTLPSpanExporter()`` in
production). ``VWOSampler`` records VWO event spans without sampling them, so they reach
the VWO processor only and never the app's exporter (user ids stay out of the trace
backend). The VWO exporter's own HTTP requests are not traced either.
"""

from __future__ import annotations

import os
import signal
import sys
import zlib

from flask import Flask, request
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased

import vwo_otel

CAMPAIGN_ID = 231
GOAL_PURCHASE = 7


def on_flush(err: BaseException | None, events: list[dict]) -> None:
    """VWO's flush_callback: called once per request to VWO, on a thread of its own."""
    if err is None:
        print(f"VWO: {len(events)} event(s) delivered", file=sys.stderr, flush=True)
    else:
        print(f"VWO: {len(events)} event(s) NOT delivered: {err}", file=sys.stderr, flush=True)


# -- the app's existing OpenTelemetry set-up, plus the two VWO lines --------------------
provider = TracerProvider(
    sampler=vwo_otel.VWOSampler(ParentBased(ALWAYS_ON)),  # VWO line 1: wrap the sampler you had
    resource=Resource.create({"service.name": "flask-shop"}),
)
provider.add_span_processor(BatchSpanProcessor(  # the existing pipeline, untouched
    ConsoleSpanExporter(formatter=lambda span: span.to_json(indent=None) + "\n")))
provider.add_span_processor(vwo_otel.span_processor_from_env(  # VWO line 2: VWO_ACCOUNT_ID, VWO_SDK_KEY, ...
    batch_events={"events_per_request": 100, "request_time_interval": 60, "flush_callback": on_flush}))
trace.set_tracer_provider(provider)

tracer = trace.get_tracer("flask-shop")
vwo = vwo_otel.VWOEvents()  # emits through the global provider set above
app = Flask(__name__)


def variation_for(user: str) -> int:
    """A stand-in for VWO's bucketing: stable per user."""
    return 1 + zlib.crc32(user.encode()) % 2


@app.get("/health")
def health() -> dict:
    return {"ok": True}


@app.get("/product/<int:product_id>")
def product(product_id: int) -> dict:
    user = request.args.get("user", "anonymous")
    with tracer.start_as_current_span("GET /product/<id>", attributes={"product.id": product_id}):
        variation = variation_for(user)
        vwo.activate(CAMPAIGN_ID, variation, user, visitor_ua=request.user_agent.string,
                     visitor_ip=request.remote_addr or "")
        return {"product": product_id, "layout": "B" if variation == 2 else "A"}


@app.post("/buy/<int:product_id>")
def buy(product_id: int) -> dict:
    user = request.args.get("user", "anonymous")
    with tracer.start_as_current_span("POST /buy/<id>", attributes={"product.id": product_id}):
        vwo.track(CAMPAIGN_ID, variation_for(user), GOAL_PURCHASE, user, revenue=19.99)
        vwo.push(user, {"customer": "buyer"})
        return {"bought": product_id}


if __name__ == "__main__":
    # On SIGTERM (docker stop, systemd) exit like on Ctrl-C: the queued VWO events and the
    # app's spans are delivered at interpreter exit.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "5000")))
