"""The ``receive`` and ``check`` commands of ``vwo-otel`` (the parser is in ``__main__``)."""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Mapping
from types import FrameType
from typing import Any, TextIO

from . import attributes as A
from .env import ConfigError, batch_events_from_env, exporter_from_env, read_env
from .events import from_attributes
from .exporter import VWOExporter
from .receiver import DEFAULT_MAX_BODY_BYTES, Receiver
from .results import HTTPStatusError, NetworkError, PayloadTooLarge, VWODeliveryError
from .retry import RetryPolicy

EXPORT_FORMATS = ("json", "jsonl", "csv")
_EVENT_COLUMNS = ("request_id", "eT", "u", "sId", "e", "c", "g", "r", "t", "visitor_ua", "visitor_ip")


def add_receive_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="loopback address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port to bind, 0 for any free one (default 8000)")
    p.add_argument("--db", default=":memory:", metavar="FILE",
                   help="SQLite file to store requests and events in (kept after exit)")
    p.add_argument("--account-id", default=None, help="only accept this account id")
    p.add_argument("--sdk-key", default=None, help="only accept this sdk key")
    p.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                   help="answer 413 above this body size (default 10 MiB)")
    p.add_argument("--quiet", action="store_true", help="no line per request, only the summary at exit")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--list", action="store_true", help="list the requests stored in --db FILE and exit")
    what.add_argument("--export", choices=EXPORT_FORMATS, metavar="FORMAT",
                      help="write the events stored in --db FILE as json, jsonl or csv and exit")
    p.add_argument("--output", "-o", default="-", metavar="FILE", help="where --export writes (default stdout)")


def add_check_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--account-id", default=None, help="VWO account id (default: $VWO_ACCOUNT_ID)")
    p.add_argument("--sdk-key", default=None, help="VWO sdk key (default: $VWO_SDK_KEY)")
    p.add_argument("--endpoint", default=None, help="collection endpoint (default: $VWO_ENDPOINT or VWO's)")
    p.add_argument("--timeout", type=float, default=None, help="seconds to wait for the answer (default: "
                   "$VWO_TIMEOUT or 10)")
    p.add_argument("--mode", choices=("auto", "batch", "realtime"), default="auto",
                   help="send as a batch POST or a real-time GET (default: as configured: batch when "
                        "VWO_EVENTS_PER_REQUEST or VWO_REQUEST_TIME_INTERVAL is set)")
    p.add_argument("--user-id", default="vwo-otel-check", help="user id of the test event (default vwo-otel-check)")


# -- receive ---------------------------------------------------------------------------

def _size(n: int) -> str:
    return f"{n} B" if n < 1024 else f"{n / 1024:.1f} KiB" if n < 1024 * 1024 else f"{n / 1048576:.1f} MiB"


def _request_line(r: Mapping[str, Any]) -> str:
    at = datetime.datetime.fromtimestamp(r["received_at"]).strftime("%H:%M:%S.%f")[:-3]
    status = r["status"] or "---"
    what = f"{r['n_events']:5d} event(s) {_size(r['body_bytes']):>10}"
    if r["accepted"]:
        note = "stored"
    else:
        note = f"not stored: {r['error']}" if r["error"] else "not stored"
    return f"{at}  {r['method']:4} {r['path']}  {status}  {what}  {note}"


def _summary_line(s: Mapping[str, Any]) -> str:
    return (f"{s['requests']} request(s), {s['accepted_requests']} accepted, {s['events']} event(s) stored, "
            f"{_size(s['bytes'])}; {s['events_per_request']:.1f} events/request, "
            f"{s['bytes_per_event']:.1f} bytes/event")


def receive(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """``vwo-otel receive``: serve with a line per request as it arrives, or --list / --export a --db."""
    out = out or sys.stdout
    err = err or sys.stderr
    if args.list or args.export:
        return _stored(args, out, err)
    try:
        receiver = Receiver(args.account_id, args.sdk_key, host=args.host, port=args.port, db_path=args.db,
                            max_body_bytes=args.max_body_bytes).start()
    except (OSError, ValueError, sqlite3.Error) as exc:
        err.write(f"error: {exc}\n")
        return 2

    def _terminate(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _terminate)
    db = "" if args.db == ":memory:" else f", storing in {args.db}"
    out.write(f"VWO receiver listening on {receiver.url}{db}; Ctrl-C to stop\n")
    out.flush()
    stored = receiver.requests()
    last = stored[-1]["id"] if stored else 0  # an existing db: show only what arrives now
    try:
        while True:
            time.sleep(0.2)
            for r in receiver.requests(after=last):
                last = r["id"]
                if not args.quiet:
                    out.write(_request_line(r) + "\n")
            out.flush()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        receiver.stop()
    for r in receiver.requests(after=last):
        if not args.quiet:
            out.write(_request_line(r) + "\n")
    out.write("stopped: " + _summary_line(receiver.summary()) + "\n")
    out.flush()
    receiver.close()
    return 0


def _stored(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.db == ":memory:":
        err.write("error: --list and --export read a database: give --db FILE\n")
        return 2
    if not os.path.isfile(args.db):
        err.write(f"error: no database at {args.db}\n")
        return 2
    try:
        receiver = Receiver(db_path=args.db)
        try:
            if args.list:
                for r in receiver.requests():
                    out.write(_request_line(r) + "\n")
                out.write(_summary_line(receiver.summary()) + "\n")
                return 0
            events = receiver.events(with_raw=True)
            if args.output == "-":
                _write_events(events, args.export, out)
            else:
                with open(args.output, "w", newline="", encoding="utf-8") as f:
                    _write_events(events, args.export, f)
            err.write(f"exported {len(events)} event(s) as {args.export} to "
                      f"{'stdout' if args.output == '-' else args.output}\n")
            return 0
        finally:
            receiver.close()
    except (OSError, sqlite3.Error) as exc:
        err.write(f"error: {args.db}: {exc}\n")
        return 2


def _write_events(events: list[dict[str, Any]], fmt: str, f: TextIO) -> None:
    for ev in events:
        ev.pop("raw", None)
    if fmt == "json":
        json.dump(events, f, indent=1)
        f.write("\n")
    elif fmt == "jsonl":
        for ev in events:
            f.write(json.dumps(ev, separators=(",", ":")) + "\n")
    else:
        writer = csv.DictWriter(f, fieldnames=_EVENT_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for ev in events:
            row = dict(ev)
            if isinstance(row.get("t"), dict):
                row["t"] = json.dumps(row["t"], separators=(",", ":"))
            writer.writerow(row)


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
