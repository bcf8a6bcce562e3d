"""An asyncio web app (Starlette on uvicorn) that emits VWO events from async handlers.

    VWO_ACCOUNT_ID=123456 VWO_SDK_KEY=... python examples/asyncio_app.py   # http://127.0.0.1:8001 ($PORT)
    VWO_ACCOUNT_ID=123456 VWO_SDK_KEY=... uvicorn asyncio_app:app          # the same, from examples/
    curl 'http://127.0.0.1:8001/?user=alice'; curl -X POST 'http://127.0.0.1:8001/signup?user=alice'

Emitting a VWO event queues it and returns (a few microseconds, no network, no lock held
across I/O), so it is safe on the event loop. Delivery happens on vwo_otel's own threads.
What may wait for VWO is awaited without blocking the loop: ``await processor.aflush_events()``,
``await processor.ashutdown()`` (also ``aforce_flush``), ``vwo_otel.aio.run_blocking(...)`` for
other blocking calls; ``flush_events(mode="async")`` starts a flush and returns at once. The
lifespan below delivers what is queued when uvicorn stops (Ctrl-C, SIGTERM). FastAPI takes the
same ``lifespan``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator

import uvicorn
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import vwo_otel
import vwo_otel.aio

CAMPAIGN_ID = 88
GOAL_SIGNUP = 3

provider = TracerProvider(sampler=vwo_otel.VWOSampler())
provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter(  # the app's own traces
    formatter=lambda span: span.to_json(indent=None) + "\n")))
vwo_processor = vwo_otel.span_processor_from_env(  # VWO_ACCOUNT_ID, VWO_SDK_KEY, VWO_ENDPOINT, ...
    batch_events={"events_per_request": 50, "request_time_interval": 30})
provider.add_span_processor(vwo_processor)
tracer = provider.get_tracer("asyncio-app")
vwo = vwo_otel.VWOEvents(tracer_provider=provider)


async def home(request: Request) -> JSONResponse:
    user = request.query_params.get("user", "anonymous")
    with tracer.start_as_current_span("GET /"):
        await asyncio.sleep(0)  # your async work
        vwo.activate(CAMPAIGN_ID, 2, user, visitor_ua=request.headers.get("user-agent", ""))
        return JSONResponse({"hello": user})


async def signup(request: Request) -> JSONResponse:
    user = request.query_params.get("user", "anonymous")
    with tracer.start_as_current_span("POST /signup"):
        vwo.track(CAMPAIGN_ID, 2, GOAL_SIGNUP, user)
        return JSONResponse({"signed_up": user})


async def flush(request: Request) -> JSONResponse:
    vwo_processor.flush_events(mode="async")  # starts sending what is queued; never blocks the loop
    return JSONResponse({"flushing": True})


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    yield
    # Shutting down: deliver what is queued; the loop keeps serving while VWO answers.
    delivered = await vwo_processor.aflush_events()
    print(f"VWO flush at shutdown: {'all delivered' if delivered else 'NOT all delivered'}",
          file=sys.stderr, flush=True)
    await vwo_processor.ashutdown()  # bounded by shutdown_timeout
    await vwo_otel.aio.run_blocking(provider.shutdown)  # the app's own trace pipeline


app = Starlette(routes=[Route("/", home), Route("/signup", signup, methods=["POST"]),
                        Route("/flush", flush, methods=["POST"])], lifespan=lifespan)

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8001")), log_level="warning")
