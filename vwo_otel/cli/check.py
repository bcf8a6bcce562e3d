"""``vwo-otel check``: validate the configuration (arguments, then ``VWO_*``), send one harmless
event in either wire format and say clearly what is wrong."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import TextIO

from .. import attributes as A
from .. import checks
from ..env import (
    ConfigError,
    batch_events_from_env,
    describe_unknown,
    exporter_from_env,
    given,
    read_env,
    unknown_names,
)
from ..errors import HTTPStatusError, NetworkError, PayloadTooLarge, VWODeliveryError
from ..event import from_attributes
from ..export.exporter import VWOExporter
from ..export.http import TransportError
from ..export.retry import RetryPolicy
from ..hints import hint, is_tls_failure


def arguments(p: argparse.ArgumentParser) -> None:
    p.set_defaults(run=check)
    p.add_argument("--account-id", default=None, help="VWO account id (default: $VWO_ACCOUNT_ID)")
    p.add_argument("--sdk-key", default=None, help="VWO sdk key (default: $VWO_SDK_KEY)")
    p.add_argument("--endpoint", default=None, help="collection endpoint (default: $VWO_ENDPOINT or VWO's)")
    p.add_argument("--timeout", type=float, default=None, help="seconds to wait for the answer (default: "
                   "$VWO_TIMEOUT or 10)")
    p.add_argument("--mode", choices=("auto", "batch", "realtime"), default="auto",
                   help="send as a batch POST or a real-time GET (default: as configured: batch when "
                        "VWO_EVENTS_PER_REQUEST or VWO_REQUEST_TIME_INTERVAL is set)")
    p.add_argument("--user-id", default="vwo-otel-check", help="user id of the test event (default vwo-otel-check)")
    p.add_argument("--format", choices=("legacy", "fme"), default="legacy",
                   help="the wire format of the test event: legacy (vwo-python-sdk: a custom dimension to "
                        "/server-side/batch-events) or fme (vwo-fme-python-sdk: a visitor attribute to "
                        "/server-side/batch-events-v2; real time: /events/t) (default legacy)")


def check(args: argparse.Namespace, out: TextIO | None = None, environ: Mapping[str, str] | None = None) -> int:
    """``vwo-otel check``: validate the configuration (args, then ``VWO_*``), send one harmless
    custom-dimension event, and say clearly what is wrong. 0 ok, 1 delivery failed, 2 bad config."""
    stream = out or sys.stdout

    def say(text: str) -> None:
        stream.write(text + "\n")
        stream.flush()

    say("checking the configuration (arguments, then VWO_* variables)...")
    unknown = unknown_names(environ)
    if unknown:  # said once, in the list below: the settings are read without them (they set nothing)
        ignored = {name for name, _ in unknown}
        environ = {k: v for k, v in (os.environ if environ is None else environ).items() if k not in ignored}
    try:
        if args.account_id is not None:
            checks.account_id(args.account_id, "--account-id")
        if args.sdk_key is not None:
            checks.sdk_key(args.sdk_key, "--sdk-key")
        if args.endpoint is not None:
            checks.endpoint(args.endpoint, "--endpoint")
        settings = read_env(environ)
        batch = batch_events_from_env(environ=environ)
        exporter = exporter_from_env(environ=environ, account_id=args.account_id, sdk_key=args.sdk_key,
                                     endpoint=args.endpoint, timeout=args.timeout, retry=_SendOnce())
    except (ConfigError, ValueError, TypeError) as exc:
        message = str(exc)
        for key in ("account_id", "sdk_key", "endpoint", "timeout"):
            message = message.replace(f"pass {key}=", f"pass --{key.replace('_', '-')}")
        say(f"config error: {message}")
        return 2
    sdk_key = args.sdk_key or settings["sdk_key"]
    say(f"  account id  {exporter.account_id}")
    say(f"  sdk key     {checks.mask(sdk_key)}")
    say(f"  endpoint    {exporter.endpoint}")
    realtime = batch is None if args.mode == "auto" else args.mode == "realtime"
    if batch is None:
        configured = "none configured (real-time)"
        detail = ", one request per event (set VWO_EVENTS_PER_REQUEST to batch)"
    else:
        configured = f"{batch.events_per_request} events or {batch.request_time_interval:g} s per request"
        detail = ""
    if realtime == (batch is None):
        say(f"  batching    {configured}{detail}")
    else:  # --mode overrides what is configured: say both
        sent = "one real-time request" if realtime else "one batch POST"
        say(f"  batching    {configured}; --mode {args.mode}: this check sends {sent}")
    for key in ("max_queue_size", "shutdown_timeout", "retry_budget", "max_payload_bytes"):
        if key in settings:
            say(f"  {key:<11} {settings[key]}")
    if unknown:
        say(f"  note        {describe_unknown(unknown)}")
    misspelt = [(name, close) for name, close in unknown if close and given(close, environ) is None]
    if misspelt:  # the app only warns (an app's own VWO_ names never change anything); a check says no
        say("config error: " + "; ".join(f"{name} looks like a misspelling of {close}, which is not set, so "
                                         "its value is not used" for name, close in misspelt))
        return 2
    if exporter.disabled:  # development mode would "deliver" without a request: that proves nothing
        say("development mode (VWO_DISABLED): the configuration is valid; nothing was sent, so the endpoint "
            "and the key are not checked")
        return 0
    return _send_one(exporter, realtime, args.user_id, say, args.format == "fme")


@dataclasses.dataclass(frozen=True)
class _SendOnce(RetryPolicy):
    """``check`` sends once and reports what came back: no retry, and the request keeps its whole
    ``timeout`` (the budget bounds it too, so it is far larger; a budget of 0 would cut it short)."""

    budget: float = 86400.0

    def is_retryable(self, status: int | None = None, error: TransportError | None = None) -> bool:
        return False


def _send_one(exporter: VWOExporter, realtime: bool, user_id: str, say: Callable[[str], None], fme: bool) -> int:
    statuses: list[int | None] = []
    seconds: list[float] = []

    def observe(method: str, events: int, nbytes: int, status: int | None, error: BaseException | None,
                took: float) -> None:
        statuses.append(status)
        seconds.append(took)

    exporter.add_observer(observe)
    if fme:
        event = from_attributes({A.EVENT_TYPE: A.SYNC_VISITOR_PROP, A.USER_ID: user_id,
                                 A.VISITOR_PROPERTIES: '{"vwo_otel_check":"ok"}'}, time.time_ns())
        what = "FME visitor-attribute event"
    else:
        event = from_attributes({A.EVENT_TYPE: A.CUSTOM_DIMENSION, A.USER_ID: user_id,
                                 A.DIMENSION_KEY: "vwo_otel_check", A.DIMENSION_VALUE: "ok"}, time.time_ns())
        what = "custom-dimension event"
    fmt = exporter.format_of(event)
    request = fmt.realtime(event) if realtime else fmt.batch
    say(f"sending 1 {what} (vwo_otel_check=ok for user {user_id!r}) as {request.method} {request.path}; "
        f"waiting up to {exporter.timeout:g} s for the answer...")
    try:
        outcome = exporter.send_event(event) if realtime else exporter.send_batch([event])[0]
    finally:
        exporter.shutdown()
    if outcome.error is None:
        took = seconds[-1] if seconds else 0.0
        say(f"ok: the endpoint accepted the event (HTTP {statuses[-1] if statuses else None} in "
            f"{took * 1000:.0f} ms)")
        return 0
    say("FAILED: " + _explain(outcome.error, exporter))
    return 1


def _explain(error: VWODeliveryError, exporter: VWOExporter) -> str:
    """What went wrong, for ``check``: what happened, the fix (``hints``, the words the app's
    log uses too) and the error itself."""
    where = exporter.endpoint
    text = str(error)
    fix = hint(error)
    if isinstance(error, PayloadTooLarge):
        return f"the endpoint refused one small event as too large (HTTP 413): {fix} ({text})"
    if isinstance(error, HTTPStatusError):
        status = error.status or 0
        if status in (401, 403):
            return f"the endpoint refused the credentials (HTTP {status}): {fix} ({text})"
        if status == 404:
            return f"no VWO collection endpoint at {where} (HTTP 404): {fix} ({text})"
        if status in (400, 405, 411, 415, 422):
            return f"the endpoint rejected the request (HTTP {status}): {text}"
        if status == 429 or status >= 500:
            return (f"the endpoint is overloaded or failing (HTTP {status}); the processors would retry "
                    f"this within the retry budget ({text})")
        return f"unexpected answer (HTTP {status}): {text}"
    if isinstance(error, NetworkError):
        lowered = text.lower()
        if is_tls_failure(error):  # before "timed out": a handshake that stalls is no slow answer
            return f"the TLS handshake with {where} failed: {fix} ({text})"
        if "certificate" in lowered:
            return (f"the certificate of {where} is not trusted (REQUESTS_CA_BUNDLE names the CA bundle to "
                    f"trust) ({text})")
        if "refused" in lowered:
            return f"connection refused by {where}: nothing listens there; check VWO_ENDPOINT"
        if "timeout" in lowered or "timed out" in lowered:
            return f"no answer from {where} within {exporter.timeout:g} s (VWO_TIMEOUT) ({text})"
        if "name or service not known" in lowered or "nodename" in lowered or "resolve" in lowered:
            return f"cannot resolve the host of {where}: check VWO_ENDPOINT ({text})"
        return f"network error talking to {where}: {text}"
    return text
