"""The FME tests' app: VWO's FME SDK (``vwo.init`` / ``wingify.init``), alone or with
``VWOFMEInstrumentor``, pointed at loopback stand-ins. The tests run it in a subprocess of its
own: the SDK keeps process-wide singletons (one client per process) and, alone, a non-daemon
settings-poll timer that never lets a process exit.

Set up by environment variables (read at import):

- ``FME_STAND_IN``: the SDK's ``proxy_url`` (settings, and whatever the SDK sends itself)
- ``FME_MODE``: ``alone`` or ``instrumented`` (then ``FME_ENDPOINT`` is vwo_otel's endpoint)
- ``FME_SIGNAL``: ``span`` (default) or ``log``; ``FME_PROCESSOR``: ``none`` (no VWO processor),
  ``shutdown`` (one that is shut down) or an account id (default: the SDK's)
- ``FME_BATCH``: JSON of the SDK's ``batch_event_data`` (a ``flush_callback`` printing
  ``CALLBACK <err> <n>`` is added); ``FME_PROCESSOR_BATCH``: JSON of the processor's ``batch_events``
  (``"realtime"``: None)
- ``FME_BRAND``: ``vwo`` (default) or ``wingify``; ``FME_ACCOUNT``, ``FME_SDK_KEY``

As a script, ``python fme_app.py '<json>'`` runs a workload (see ``main``) and prints ``RESULT <json>``
lines. As a server app: ``gunicorn fme_app:wsgi`` / ``uvicorn fme_app:asgi`` (``GET /?user=U``
runs one user's ``get_flag`` + ``track_event`` + ``set_attribute``).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from typing import Any
from urllib.parse import parse_qs

ACCOUNT = int(os.environ.get("FME_ACCOUNT", "12345"))
SDK_KEY = os.environ.get("FME_SDK_KEY", "test-sdk-key-0123456789")
MODE = os.environ.get("FME_MODE", "instrumented")
POISON = bool(os.environ.get("FME_POISON"))  # user-0's purchase carries currency "XXX" (a stand-in refuses it)

logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="LOG %(levelname)s %(name)s %(message)s")


_OUT = threading.Lock()  # a line from each thread whole: print writes the text and the newline apart


def _line(text: str) -> None:
    with _OUT:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


def result(**values: Any) -> None:
    _line("RESULT " + json.dumps(values))


def _callback(err: Any, events: list) -> None:
    _line(f"CALLBACK {err if err is None else str(err).replace(' ', '_')} {len(events)}")


provider: Any = None
processor: Any = None
instrumentor: Any = None
if MODE == "instrumented":
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk.trace import TracerProvider

    from vwo_otel import VWOExporter, VWOLogRecordProcessor, VWOSampler, VWOSpanProcessor
    from vwo_otel.instrumentation import VWOFMEInstrumentor

    log = os.environ.get("FME_SIGNAL", "span") == "log"
    which = os.environ.get("FME_PROCESSOR", str(ACCOUNT))
    batch_spec = json.loads(os.environ.get("FME_PROCESSOR_BATCH", "null"))
    batch = None if batch_spec == "realtime" else {  # "realtime": the processor's batch_events=None
        **(batch_spec or {"events_per_request": 100, "request_time_interval": 1}), "flush_callback": _callback}
    if log:
        provider = LoggerProvider()
    else:
        provider = TracerProvider(sampler=VWOSampler())
    if which != "none":
        account = ACCOUNT if which == "shutdown" else int(which)
        exporter = VWOExporter(account, SDK_KEY if account == ACCOUNT else "other-sdk-key-0123456789",
                               endpoint=os.environ["FME_ENDPOINT"], timeout=5.0)
        processor = (VWOLogRecordProcessor if log else VWOSpanProcessor)(exporter, batch, shutdown_timeout=5)
        if log:
            provider.add_log_record_processor(processor)
        else:
            provider.add_span_processor(processor)
        if which == "shutdown":
            processor.shutdown()
    instrumentor = VWOFMEInstrumentor()
    instrumentor.instrument(**({"logger_provider": provider} if log else {"tracer_provider": provider}))


def init() -> Any:
    """The FME client, as an app makes it."""
    options: dict[str, Any] = {"sdk_key": SDK_KEY, "account_id": ACCOUNT, "proxy_url": os.environ["FME_STAND_IN"],
                               "logger": {"level": "ERROR"}}
    sdk_batch = json.loads(os.environ.get("FME_BATCH", "null"))
    if sdk_batch is not None:
        options["batch_event_data"] = {**sdk_batch, "flush_callback": _callback}
    if os.environ.get("FME_BRAND", "vwo") == "wingify":
        import wingify
        return wingify.init(options)
    import vwo
    return vwo.init(options)


def context(user: str, i: int = 0, session: int | None = None) -> dict[str, Any]:
    """A user's context: every second one has a user agent and an IP."""
    ctx: dict[str, Any] = {"id": user, "custom_variables": {"plan": "gold"}}
    if i % 2:
        ctx.update(user_agent="Mozilla/5.0 (fme test)", ip_address="10.0.0.1")
    if session is not None:
        ctx["session_id"] = session
    return ctx


def user_calls(client: Any, user: str, i: int = 0, session: int | None = None,
               calls: tuple[str, ...] = ("get_flag", "track_event", "set_attribute")) -> list[Any]:
    """One user's API calls; their return values (the SDK's decisions)."""
    ctx = context(user, i, session)
    out: list[Any] = []
    for call in calls:
        if call == "get_flag":
            flag = client.get_flag("checkout", ctx)
            out.append([flag.is_enabled(), flag.get_variables()])
        elif call == "track_event":
            currency = "XXX" if POISON and i == 0 else "EUR"
            out.append(client.track_event("purchase", ctx, {"amount": 12.5 + i, "currency": currency}))
        elif call == "set_attribute":
            out.append(client.set_attribute({"tier": f"t{i % 3}", "visits": i}, ctx))
    return out


def main(spec: dict[str, Any]) -> None:
    """Run ``spec``: ``users`` (count), ``threads``, ``calls``, ``session`` (a fixed sessionId),
    ``flush`` (call ``flush_events`` and print its result), ``second_wave`` (users after that),
    ``uninstrument``, ``sleep`` (seconds before the end); then return from main (the process
    should end), or with ``hard_exit`` end at once."""
    client = init()
    n, threads = int(spec.get("users", 1)), int(spec.get("threads", 1))
    calls = tuple(spec.get("calls", ("get_flag", "track_event", "set_attribute")))
    values: list[Any] = [None] * n

    def run(k: int) -> None:
        for i in range(k, n, threads):
            values[i] = user_calls(client, f"user-{i}", i, spec.get("session"), calls)

    started = time.monotonic()
    workers = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    result(values=values, seconds=time.monotonic() - started, queued=queued(client))
    if spec.get("flush"):
        result(flush=client.flush_events())
    if spec.get("uninstrument") and instrumentor is not None:
        instrumentor.uninstrument()
        result(restored=restored())
    if spec.get("second_wave"):  # more users after the flush (and after uninstrument)
        for i in range(int(spec["second_wave"])):
            user_calls(client, f"second-{i}", i, spec.get("session"), calls)
    time.sleep(float(spec.get("sleep", 0)))
    result(threads=sorted((t.name, t.daemon, type(t).__name__) for t in threading.enumerate()
                          if t is not threading.main_thread()),
           stats=processor.stats() if processor is not None else None)
    if spec.get("hard_exit"):  # end now, whatever threads remain (and deliver nothing more)
        sys.stdout.flush()
        os._exit(0)


#: Every SDK function through which events pass (wherever it is bound) and its flush.
SDK_FUNCTIONS = (
    ("wingify.services.batch_event_queue", "BatchEventQueue.enqueue"),
    ("wingify.services.batch_event_queue", "BatchEventQueue.create_new_batch_timer"),
    ("wingify.services.batch_event_queue", "BatchEventQueue.flush"),
    ("wingify.utils.impression_util", "send_impression_for_variation_shown_batch"),
    ("wingify.api.get_flag_api", "send_impression_for_variation_shown_batch"),
    ("wingify.utils.holdout_util", "send_impression_for_variation_shown_batch"),
    ("wingify.utils.network_util", "send_post_api_request"),
    ("wingify.utils.network_util", "send_post_batch_request"),
    ("wingify.utils.network_util", "send_event"),
    ("wingify.api.track_api", "send_post_api_request"),
    ("wingify.api.set_attribute_api", "send_post_api_request"),
    ("wingify.utils.impression_util", "send_post_api_request"),
    ("wingify.utils.event_util", "send_event"),
    ("wingify.wingify_client", "WingifyClient.flush_events"),
    ("wingify.services.settings_manager", "SettingsManager.is_settings_valid"),
)


def restored() -> bool:
    """Whether the SDK's functions are its own again (nothing of the instrumentor left)."""
    import importlib

    for module, name in SDK_FUNCTIONS:
        owner: Any = importlib.import_module(module)
        for part in name.split("."):
            owner = getattr(owner, part)
        if hasattr(owner, "__wrapped__"):
            return False
    from wingify.services.settings_manager import SettingsManager

    if not isinstance(vars(SettingsManager)["is_settings_valid"], staticmethod):  # as the SDK defines it
        return False
    return importlib.import_module("wingify.wingify_builder").threading is threading


def queued(client: Any) -> int | None:
    """Events waiting for delivery: in the VWO processor, else in the SDK's own batch queue."""
    if processor is not None:
        return int(processor.stats()["queued"])
    queue = getattr(client, "batch_event_queue", None)
    return len(queue.batch_queue) if queue is not None else None


# -- server apps ---------------------------------------------------------------------------------------
_client: Any = None
_lock = threading.Lock()


def _served(query: str) -> bytes:
    global _client
    with _lock:
        if _client is None:
            _client = init()
    user = parse_qs(query).get("user", ["anonymous"])[0]
    values = user_calls(_client, user)
    return json.dumps({"pid": os.getpid(), "values": values}).encode()


if os.environ.get("FME_PRELOAD"):  # gunicorn --preload: the client is made in the master, before the fork
    _client = init()


def wsgi(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    body = _served(environ.get("QUERY_STRING", ""))
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = _served(scope.get("query_string", b"").decode())
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


if __name__ == "__main__":
    main(json.loads(sys.argv[1]) if len(sys.argv) > 1 else {})
