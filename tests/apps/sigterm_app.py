"""A small app for the signal tests: queues VWO events with a long ``request_time_interval``
(nothing is sent by the timer during a test), then gets SIGTERM / SIGINT.

    python sigterm_app.py N                    # plain Python: emit N events, print "ready", wait
    python sigterm_app.py busy                 # emit on the main thread until stopped
    APP_FORMAT=fme ...                         # FME impressions (variation_shown) instead of activate
    APP_HANDLER=before|after python sigterm_app.py N   # the app has a SIGTERM handler of its own,
                                               # installed before / after vwo_otel's processor
    uvicorn / hypercorn sigterm_app:asgi       # GET /?user=U&n=K emits K impressions
    gunicorn sigterm_app:wsgi                  # the same as WSGI

Failures reported to ``flush_callback`` go to stderr as "FAILED ..." lines.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from urllib.parse import parse_qs

from opentelemetry.sdk.trace import TracerProvider

import vwo_otel

_stopping = False


def _own_handler(signum, frame) -> None:
    """The app's own graceful stop: note it and let the main loop end normally."""
    global _stopping
    print("app handler ran", flush=True)
    _stopping = True


if os.environ.get("APP_HANDLER") == "before":
    signal.signal(signal.SIGTERM, _own_handler)


def _report(err, events) -> None:
    if err is not None:
        print(f"FAILED pid={os.getpid()} {len(events)} event(s): {type(err).__name__}: {err}",
              file=sys.stderr, flush=True)


provider = TracerProvider(sampler=vwo_otel.VWOSampler(), shutdown_on_exit=False)
provider.add_span_processor(vwo_otel.VWOSpanProcessor(
    vwo_otel.VWOExporter(int(os.environ["VWO_ACCOUNT_ID"]), os.environ["VWO_SDK_KEY"],
                         endpoint=os.environ["VWO_ENDPOINT"]),
    {"events_per_request": 100, "request_time_interval": 600, "flush_callback": _report},
    shutdown_timeout=5,
))
vwo = vwo_otel.VWOEvents(tracer_provider=provider)
if os.environ.get("APP_HANDLER") == "after":
    signal.signal(signal.SIGTERM, _own_handler)


def _emit(user: str, n: int) -> None:
    fme = os.environ.get("APP_FORMAT") == "fme"  # FME impressions (batch-events-v2) instead of legacy ones
    for i in range(n):
        if fme:
            vwo.variation_shown(231, 1, f"{user}-{i}")
        else:
            vwo.activate(231, 1, f"{user}-{i}")


def _answer(query: str) -> bytes:
    q = parse_qs(query)
    _emit(q.get("user", ["anon"])[0], int(q.get("n", ["1"])[0]))
    return json.dumps({"pid": os.getpid()}).encode()


async def asgi(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = _answer(scope.get("query_string", b"").decode())
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def wsgi(environ, start_response):
    body = _answer(environ.get("QUERY_STRING", ""))
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def _busy() -> None:
    """Emit on the main thread until the process ends (a signal then lands inside ``put``)."""
    i = 0
    while True:
        vwo.activate(231, 1, f"busy-{i}")
        i += 1
        if i % 1000 == 0:
            print(f"emitted {i}", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "busy":
        _busy()
    _emit("plain", int(sys.argv[1]))
    print("ready", flush=True)
    while not _stopping:
        time.sleep(0.05)
    print("app stopped", flush=True)
