"""A small WSGI app that sends VWO events through vwo_otel, made to run under gunicorn.

    VWO_ENDPOINT=http://127.0.0.1:8000 gunicorn -w 2 -b 127.0.0.1:8090 --pythonpath examples wsgi_app:app
    VWO_ENDPOINT=http://127.0.0.1:8000 gunicorn -w 2 -b 127.0.0.1:8090 --preload --pythonpath examples wsgi_app:app

``GET /?user=Alice`` records an impression (VWO ``activate``), ``GET /buy?user=Alice&revenue=9.5``
an impression and a conversion (``track``). The provider, sampler and processor are created
once at module level, as an app would. That works with and without ``--preload``:

- without ``--preload`` every worker imports this module after gunicorn forked it;
- with ``--preload`` the master imports it before forking, and vwo_otel's after-fork hook
  gives each worker an empty queue, its own delivery thread and its own HTTP session (the
  master's queued events stay the master's, so none is sent twice).

On ``SIGTERM`` gunicorn stops its workers gracefully; each worker exits through Python's
normal exit path, where vwo_otel delivers what is still queued (bounded by
``shutdown_timeout``, which must stay below gunicorn's ``--graceful-timeout``, 30 s by
default). Whatever cannot be delivered is written to stderr by ``report`` below.

Environment: ``VWO_ENDPOINT`` (default: VWO's collection host), ``VWO_ACCOUNT_ID``,
``VWO_SDK_KEY``. ``VWO_EXAMPLE_STARTUP=1`` also records a custom dimension when the module
is imported (in the master with ``--preload``) and delivers it at once, then queues a
second one: the tests use it to check that what the master holds at fork time is sent
exactly once.
"""

from __future__ import annotations

import json
import os
import sys
from urllib.parse import parse_qs

from opentelemetry.sdk.trace import TracerProvider

import vwo_otel
from vwo_otel.checks import DEFAULT_ENDPOINT

CAMPAIGN_ID, VARIATION_ID, GOAL_ID = 231, 1, 2


def report(err, events) -> None:
    """flush_callback: VWO accepted ``events`` (err is None) or they failed (err says why)."""
    if err is not None:
        print(f"vwo-example pid={os.getpid()} FAILED {len(events)} event(s): "
              f"{type(err).__name__}: {err}", file=sys.stderr, flush=True)


exporter = vwo_otel.VWOExporter(
    int(os.environ.get("VWO_ACCOUNT_ID", "12345")),
    os.environ.get("VWO_SDK_KEY", "example-sdk-key"),
    endpoint=os.environ.get("VWO_ENDPOINT", DEFAULT_ENDPOINT),
    timeout=5.0,
)
processor = vwo_otel.VWOSpanProcessor(
    exporter,
    {"events_per_request": 50, "request_time_interval": 60, "flush_callback": report},
    shutdown_timeout=10.0,
)
provider = TracerProvider(sampler=vwo_otel.VWOSampler())
provider.add_span_processor(processor)
vwo = vwo_otel.VWOEvents(tracer_provider=provider)

if os.environ.get("VWO_EXAMPLE_STARTUP") == "1":
    vwo.push(f"server-{os.getpid()}", {"event": "started"})
    processor.flush_events()  # delivered now: the master holds an open keep-alive connection at fork
    vwo.push(f"server-{os.getpid()}-queued", {"event": "ready"})  # still queued at fork


def app(environ, start_response):
    query = parse_qs(environ.get("QUERY_STRING", ""))
    user = query.get("user", ["anonymous"])[0]
    ua, ip = environ.get("HTTP_USER_AGENT", ""), environ.get("REMOTE_ADDR", "")
    vwo.activate(CAMPAIGN_ID, VARIATION_ID, user, visitor_ua=ua, visitor_ip=ip)
    if environ.get("PATH_INFO") == "/buy":
        revenue = float(query.get("revenue", ["0"])[0])
        vwo.track(CAMPAIGN_ID, VARIATION_ID, GOAL_ID, user, revenue=revenue, visitor_ua=ua, visitor_ip=ip)
    body = json.dumps({"pid": os.getpid(), "user": user}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
