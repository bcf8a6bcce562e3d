"""The ``receive`` and ``check`` commands of ``vwo-otel`` (the parser is in ``__main__``).

``receive`` lives with the receiver (``vwo_otel.servers.receiver``, also run by ``python -m
vwo_otel.servers.receiver``) and is re-exported here, so the imports point one way: cli -> receiver."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

from . import attributes as A
from .env import ConfigError, batch_events_from_env, exporter_from_env, read_env
from .errors import HTTPStatusError, NetworkError, PayloadTooLarge, VWODeliveryError
from .event import from_attributes
from .export.exporter import VWOExporter
from .export.retry import RetryPolicy
from .servers.receiver import add_receive_arguments, receive

__all__ = ["add_check_arguments", "add_receive_arguments", "check", "receive"]


def add_check_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``vwo-otel check``."""
    p.add_argument("--account-id", default=None, help="VWO account id (default: $VWO_ACCOUNT_ID)")
    p.add_argument("--sdk-key", default=None, help="VWO sdk key (default: $VWO_SDK_KEY)")
    p.add_argument("--endpoint", default=None, help="collection endpoint (default: $VWO_ENDPOINT or VWO's)")
    p.add_argument("--timeout", type=float, default=None, help="seconds to wait for the answer (default: "
                   "$VWO_TIMEOUT or 10)")
    p.add_argument("--mode", choices=("auto", "batch", "realtime"), default="auto",
                   help="send as a batch POST or a real-time GET (default: as configured: batch when "
                        "VWO_EVENTS_PER_REQUEST or VWO_REQUEST_TIME_INTERVAL is set)")
    p.add_argument("--user-id", default="vwo-otel-check", help="user id of the test event (default vwo-otel-check)")


# -- check -----------------------------------------------------------------------------

def _mask(key: str) -> str:
    return f"***{key[-4:]} ({len(key)} chars)" if len(key) >= 12 else f"*** ({len(key)} chars)"


def check(args: argparse.Namespace, out: TextIO | None = None, environ: Mapping[str, str] | None = None) -> int:
    """``vwo-otel check``: validate the configuration (args, then ``VWO_*``), send one harmless
    custom-dimension event, and say clearly what is wrong. 0 ok, 1 delivery failed, 2 bad config."""
    stream = out or sys.stdout

    def say(text: str) -> None:
        stream.write(text + "\n")
        stream.flush()

    say("checking the configuration (arguments, then VWO_* variables)...")
    try:
        settings = read_env(environ)
        batch = batch_events_from_env(environ=environ)
        exporter = exporter_from_env(environ=environ, account_id=args.account_id, sdk_key=args.sdk_key,
                                     endpoint=args.endpoint, timeout=args.timeout, retry=RetryPolicy(budget=0.0))
    except (ConfigError, ValueError, TypeError) as exc:
        message = str(exc)
        for key in ("account_id", "sdk_key", "endpoint", "timeout"):
            message = message.replace(f"pass {key}=", f"pass --{key.replace('_', '-')}")
        say(f"config error: {message}")
        return 2
    sdk_key = args.sdk_key or settings["sdk_key"]
    say(f"  account id  {exporter.account_id}")
    say(f"  sdk key     {_mask(sdk_key)}")
    say(f"  endpoint    {exporter.endpoint}")
    if batch is None:
        say("  batching    none: real-time, one GET per event (set VWO_EVENTS_PER_REQUEST to batch)")
    else:
        say(f"  batching    {batch.events_per_request} events or {batch.request_time_interval:g} s per request")
    for key in ("max_queue_size", "shutdown_timeout", "retry_budget", "max_payload_bytes"):
        if key in settings:
            say(f"  {key:<11} {settings[key]}")
    realtime = batch is None if args.mode == "auto" else args.mode == "realtime"
    return _send_one(exporter, realtime, args.user_id, say)


def _send_one(exporter: VWOExporter, realtime: bool, user_id: str, say: Any) -> int:
    attempts: list[tuple[int | None, float]] = []
    exporter.observer = lambda method, events, nbytes, status, error, seconds: attempts.append((status, seconds))
    event = from_attributes({A.EVENT_TYPE: A.CUSTOM_DIMENSION, A.USER_ID: user_id,
                             A.DIMENSION_KEY: "vwo_otel_check", A.DIMENSION_VALUE: "ok"}, time.time_ns())
    where = "GET /server-side/push" if realtime else "POST /server-side/batch-events"
    say(f"sending 1 custom-dimension event (vwo_otel_check=ok for user {user_id!r}) as {where}; "
        f"waiting up to {exporter.timeout:g} s for the answer...")
    try:
        outcome = exporter.send_event(event) if realtime else exporter.send_batch([event])[0]
    finally:
        exporter.shutdown()
    status, seconds = attempts[-1] if attempts else (None, 0.0)
    if outcome.error is None:
        say(f"ok: the endpoint accepted the event (HTTP {status} in {seconds * 1000:.0f} ms)")
        return 0
    say("FAILED: " + _explain(outcome.error, exporter))
    return 1


def _explain(error: VWODeliveryError, exporter: VWOExporter) -> str:
    where = exporter.endpoint
    text = str(error)
    if isinstance(error, PayloadTooLarge):
        return (f"the endpoint refused one small event as too large (HTTP 413): a proxy in front of {where} "
                f"limits request bodies; VWO accepts up to 10 MB ({text})")
    if isinstance(error, HTTPStatusError):
        status = error.status or 0
        if status in (401, 403):
            return (f"the endpoint refused the credentials (HTTP {status}): check VWO_ACCOUNT_ID and VWO_SDK_KEY "
                    f"(--account-id / --sdk-key) ({text})")
        if status == 404:
            return f"no VWO collection endpoint at {where} (HTTP 404): check VWO_ENDPOINT / --endpoint ({text})"
        if status in (400, 405, 411, 415, 422):
            return f"the endpoint rejected the request (HTTP {status}): {text}"
        if status == 429 or status >= 500:
            return (f"the endpoint is overloaded or failing (HTTP {status}); the processors would retry "
                    f"this within the retry budget ({text})")
        return f"unexpected answer (HTTP {status}): {text}"
    if isinstance(error, NetworkError):
        lowered = text.lower()
        if "refused" in lowered:
            return f"connection refused by {where}: nothing listens there; check VWO_ENDPOINT"
        if "timeout" in lowered or "timed out" in lowered:
            return f"no answer from {where} within {exporter.timeout:g} s (VWO_TIMEOUT) ({text})"
        if "name or service not known" in lowered or "nodename" in lowered or "resolve" in lowered:
            return f"cannot resolve the host of {where}: check VWO_ENDPOINT ({text})"
        return f"network error talking to {where}: {text}"
    return text
