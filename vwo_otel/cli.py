"""The ``vwo-otel`` command (also ``python -m vwo_otel``): every option of every command, and the
commands themselves, which call into the demo, the loopback receiver and the gateway.

Exit codes: 0 ok, 1 the command ran but something failed (delivery), 2 bad arguments or configuration.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import datetime
import errno
import json
import logging
import os
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import FrameType
from typing import Any, TextIO

from . import attributes as A
from . import checks
from .config import BatchEvents
from .demo import DEMO_ACCOUNT_ID, DEMO_SDK_KEY, run_demo
from .env import ConfigError, batch_events_from_env, describe_unknown, exporter_from_env, read_env, unknown_names
from .errors import HTTPStatusError, NetworkError, PayloadTooLarge, VWODeliveryError
from .event import from_attributes
from .event_types import TYPES, LegacyWire
from .export.exporter import VWOExporter
from .export.http import TransportError
from .export.retry import RetryPolicy
from .hints import hint, is_tls_failure
from .servers.gateway import CONFIG_KEYS, DEFAULT_MAX_BACKLOG, DEFAULT_PORT, Gateway, config_from_mapping, parse_account
from .testing.receiver import DEFAULT_MAX_BODY_BYTES, Receiver

__all__ = ["check", "demo", "gateway", "main", "parser", "receive"]

#: The most simulated requests ``vwo-otel demo --users`` runs.
MAX_DEMO_USERS = 1_000_000
EXPORT_FORMATS = ("json", "jsonl", "csv")
#: ``receive --export csv``: a legacy event's keys (every row's of ``event_types``), an FME event's
#: ``d`` flattened (its properties as JSON text), the visitor's.
_EVENT_COLUMNS = ("request_id", "format", "eT", "u", "sId",
                  *dict.fromkeys(k.wire for row in TYPES.values() if isinstance(row.wire, LegacyWire)
                                 for k in row.wire.batch),
                  "name", "msgId", "visId", "sessionId", "time", "props", "visitor_props", "visitor_ua", "visitor_ip")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``vwo-otel``: parse ``argv`` (default ``sys.argv[1:]``) and run the command."""
    args = parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    return run(args)


def parser() -> argparse.ArgumentParser:
    """The ``vwo-otel`` parser: one subcommand each for demo, receive, check and gateway."""
    p = argparse.ArgumentParser(prog="vwo-otel", description="VWO events through OpenTelemetry: a demo, a local "
                                "VWO-compatible receiver, a configuration check and the OTLP gateway.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _demo_arguments(sub.add_parser(
        "demo", help="emit VWO events through OpenTelemetry and show what goes over the wire",
        description="A small app emits VWO events through OpenTelemetry with batching, against an embedded "
                    "loopback receiver (or --endpoint), and reports what went over the wire."))
    _receive_arguments(sub.add_parser(
        "receive", help="run the local VWO-compatible receiver, showing each request as it arrives; "
                        "or --list / --export what a --db FILE stored",
        description="Run the local VWO-compatible receiver (loopback only) in the foreground with a line per "
                    "request, or list / export what it stored in a --db FILE."))
    _check_arguments(sub.add_parser(
        "check", help="validate the configuration (arguments / VWO_* variables) and send one test event",
        description="Validate the VWO configuration from arguments and VWO_* variables, then send one harmless "
                    "custom-dimension event and report what is wrong, if anything. Exit 0 ok, 1 delivery "
                    "failed, 2 bad configuration."))
    _gateway_arguments(sub.add_parser(
        "gateway", help="run the OTLP/HTTP gateway that batches VWO events from many processes",
        description="OTLP/HTTP gateway: receives VWO events as spans / log records from any OpenTelemetry "
                    "sender (POST /v1/traces, /v1/logs; protobuf or JSON; gzip) and delivers them to VWO "
                    "in batches, per account."))
    return p


def _fail(command: str, problem: object, err: TextIO | None = None) -> int:
    """Report a bad argument or configuration in one line, as argparse does; exit code 2."""
    (err or sys.stderr).write(f"vwo-otel {command}: error: {problem}\n")
    return 2


def _cannot_listen(host: str, port: int, exc: OSError) -> str:
    """Why a server could not listen on ``host``:``port``, in one line naming the address."""
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return (f"{address} is already in use (another process listens there): stop it, or choose another "
                "--port (0: any free one)")
    if exc.errno == errno.EACCES:
        return f"{address}: permission denied (ports below 1024 need privileges): choose another --port"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{address}: no such address on this machine: check --host"
    return f"cannot listen on {address}: {exc.strerror or exc}"


@contextlib.contextmanager
def until_interrupted() -> Iterator[threading.Event]:
    """Run the block (a foreground server's wait loop) until Ctrl-C or SIGTERM, which both end it quietly.

    SIGTERM sets the event the block gets and raises ``KeyboardInterrupt`` inside it (main
    thread only); its previous handler is restored on the way out. Enter it before announcing
    that the server listens, so a SIGTERM sent as soon as the announcement is read is already
    handled. Wait in short steps (``event.wait(0.5)``): a signal another thread took runs its
    handler only when the main thread next runs Python code."""
    stopped = threading.Event()

    def interrupt(signum: int, frame: FrameType | None) -> None:
        stopped.set()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield stopped
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


@contextlib.contextmanager
def while_stopping(what: str) -> Iterator[None]:
    """Run the block (a server's bounded shutdown) with further SIGTERM / Ctrl-C logged and
    ignored: a second signal must not cut the delivery of what was accepted."""
    def note(signum: int, frame: FrameType | None) -> None:
        logging.getLogger("vwo_otel").warning("%s is already stopping (within its shutdown_timeout); "
                                              "SIGKILL stops it now, losing what it holds in memory", what)

    previous = [(sig, signal.signal(sig, note)) for sig in (signal.SIGTERM, signal.SIGINT)]
    try:
        yield
    finally:
        for sig, handler in previous:
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


# -- demo --------------------------------------------------------------------------------------

def _demo_arguments(p: argparse.ArgumentParser) -> None:
    p.set_defaults(run=demo)
    p.add_argument("--endpoint", help="send to this VWO-compatible endpoint instead of the embedded receiver")
    p.add_argument("--account-id", default=str(DEMO_ACCOUNT_ID),
                   help=f"VWO account id the events are sent for (default {DEMO_ACCOUNT_ID})")
    p.add_argument("--sdk-key", default=DEMO_SDK_KEY,
                   help=f"VWO sdk key the events are sent with (default {DEMO_SDK_KEY!r})")
    p.add_argument("--users", type=int, default=300,
                   help=f"simulated requests, {checks.describe(low=1, high=MAX_DEMO_USERS, integer=True)} "
                        "(default 300)")
    p.add_argument("--events-per-request", type=int, default=100, help="VWO batch size (default 100)")
    p.add_argument("--request-time-interval", type=float, default=1.0,
                   help="max age of a batch in seconds (default 1)")


def demo(args: argparse.Namespace) -> int:
    """``vwo-otel demo``: run the demo app and print its report."""
    try:
        account_id = checks.account_id(args.account_id, "--account-id")
        sdk_key = checks.sdk_key(args.sdk_key, "--sdk-key")
        endpoint = None if args.endpoint is None else checks.endpoint(args.endpoint, "--endpoint")
        checks.number("--users", args.users, low=1, high=MAX_DEMO_USERS, integer=True)
        batch = _demo_batching(args.events_per_request, args.request_time_interval)
    except (TypeError, ValueError) as exc:
        return _fail("demo", exc)
    return run_demo(sys.stdout, endpoint=endpoint, account_id=account_id, sdk_key=sdk_key, users=args.users,
                    events_per_request=batch.events_per_request,
                    request_time_interval=batch.request_time_interval)


def _demo_batching(events_per_request: int, request_time_interval: float) -> BatchEvents:
    """The demo's batching, checked by ``BatchEvents`` (which owns the ranges); errors name the options."""
    try:
        return BatchEvents(events_per_request, request_time_interval)
    except (TypeError, ValueError) as exc:
        message = str(exc)
        for key in ("events_per_request", "request_time_interval"):
            option = "--" + key.replace("_", "-")
            message = message.replace(f"batch_events['{key}']", option).replace(key, option)
        raise ValueError(message) from None


# -- receive ---------------------------------------------------------------------------------

def _receive_arguments(p: argparse.ArgumentParser) -> None:
    p.set_defaults(run=receive)
    p.add_argument("--host", default="127.0.0.1", help="loopback address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port to bind, 0 for any free one (default 8000)")
    p.add_argument("--db", default=":memory:", metavar="FILE",
                   help="SQLite file to store requests and events in (kept after exit)")
    p.add_argument("--account-id", default=None, help="only accept this account id")
    p.add_argument("--sdk-key", default=None, help="only accept this sdk key")
    p.add_argument("--body-limit", "--max-body-bytes", dest="body_limit", type=int, metavar="BYTES",
                   default=DEFAULT_MAX_BODY_BYTES, help="answer 413 to request bodies above this size (default "
                   f"{DEFAULT_MAX_BODY_BYTES // 1048576} MiB, VWO's limit)")
    bad = p.add_argument_group("VWO's bad days", "rehearse an outage: the receiver answers late, fails or refuses "
                               "on purpose (see README, 'Rehearse an outage')")
    bad.add_argument("--delay", type=float, default=0.0, metavar="MS",
                     help="answer every request this many milliseconds late (default 0)")
    bad.add_argument("--fail-rate", type=float, default=None, metavar="P",
                     help="fail this share of requests, 0 to 1: with --status, answered that status; without, "
                          "a random 429/500/502/503/504 or a dropped connection")
    bad.add_argument("--status", type=int, default=None, metavar="CODE",
                     help="the status failed requests get, 400 to 599; alone, every request is answered it "
                          "(--fail-rate 1)")
    p.add_argument("--quiet", action="store_true", help="no line per request, only the summary at exit")
    p.add_argument("--json", action="store_true", help="print the summary (at exit, or after --list) as one "
                   "JSON object")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--list", action="store_true", help="list the requests stored in --db FILE and exit")
    what.add_argument("--export", choices=EXPORT_FORMATS, metavar="FORMAT",
                      help="write the events stored in --db FILE as json, jsonl or csv and exit")
    p.add_argument("--output", "-o", default="-", metavar="FILE", help="where --export writes (default stdout)")


def receive(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """``vwo-otel receive``: serve with a line per request as it arrives, or --list / --export a --db."""
    out = out or sys.stdout
    err = err or sys.stderr
    if args.list or args.export:
        return _stored(args, out, err)
    try:
        if args.account_id is not None:
            checks.account_id(args.account_id, "--account-id")
        if args.sdk_key is not None:
            checks.sdk_key(args.sdk_key, "--sdk-key")
        checks.number("--port", args.port, low=0, high=65535, integer=True)
        checks.number("--body-limit", args.body_limit, low=1, integer=True)
        delay = checks.number("--delay", args.delay, low=0, unit="milliseconds") / 1000.0
        status = None if args.status is None else checks.number("--status", args.status, low=400, high=599,
                                                                integer=True)
        rate = checks.number("--fail-rate", args.fail_rate, low=0, high=1) if args.fail_rate is not None else \
            1.0 if status is not None else 0.0
        receiver = Receiver(args.account_id, args.sdk_key, host=args.host, port=args.port, db_path=args.db,
                            max_body_bytes=args.body_limit)
    except (OSError, ValueError, TypeError, sqlite3.Error) as exc:
        return _fail("receive", exc, err)
    try:
        receiver.start()
    except OSError as exc:
        receiver.close()
        return _fail("receive", _cannot_listen(receiver.host, args.port, exc), err)
    if delay:
        receiver.stall(delay)
    if rate:
        receiver.random_faults(rate, statuses=(status,) if status is not None else (429, 500, 502, 503, 504),
                               drop=status is None)
    stored = receiver.requests()
    last = stored[-1]["id"] if stored else 0  # an existing db: show only what arrives now
    try:
        with until_interrupted():
            db = "" if args.db == ":memory:" else f" (storing in {args.db})"
            bad_day = _bad_day(delay, rate, status, args.body_limit)
            out.write(f"VWO receiver listening on {receiver.url}{db}{bad_day}; Ctrl-C to stop\n")
            out.flush()
            while True:
                time.sleep(0.2)
                for r in receiver.requests(after=last):
                    last = r["id"]
                    if not args.quiet:
                        out.write(_request_line(r) + "\n")
                out.flush()
    finally:
        receiver.stop()
    for r in receiver.requests(after=last):
        if not args.quiet:
            out.write(_request_line(r) + "\n")
    out.write(_summary_out(receiver.summary(), args.json, "stopped: ") + "\n")
    out.flush()
    receiver.close()
    return 0


def _bad_day(delay: float, rate: float, status: int | None, body_limit: int) -> str:
    """The faults ``receive`` plays, in words for its first line ("" when none)."""
    faults = []
    if delay:
        faults.append(f"answers {delay * 1000:g} ms late")
    if rate:
        what = f"answered {status}" if status is not None else "answered 429/500/502/503/504 or dropped"
        faults.append(f"{rate * 100:g}% of requests {what}")
    if body_limit != DEFAULT_MAX_BODY_BYTES:
        faults.append(f"bodies over {body_limit} bytes answered 413")
    return "; rehearsing: " + ", ".join(faults) if faults else ""


def _stored(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``receive --list`` / ``--export``: read what a --db FILE holds."""
    if args.db == ":memory:":
        return _fail("receive", "--list and --export read a database: give --db FILE", err)
    if not os.path.isfile(args.db):
        return _fail("receive", f"no database at {args.db}", err)
    try:
        receiver = Receiver(db_path=args.db)
        try:
            if args.list:
                if args.json:  # one JSON document: the requests and the summary
                    out.write(json.dumps({"requests": receiver.requests(), "summary": receiver.summary()}) + "\n")
                    return 0
                for r in receiver.requests():
                    out.write(_request_line(r) + "\n")
                out.write(_summary_out(receiver.summary(), False) + "\n")
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
    except BrokenPipeError:  # the reader stopped early (| head): nothing is wrong with the database
        _quiet_stdout(out)
        return 0
    except (OSError, sqlite3.Error) as exc:
        return _fail("receive", f"{args.db}: {exc}", err)


def _quiet_stdout(out: TextIO) -> None:
    """After a broken pipe on stdout, point it at /dev/null so the interpreter's final flush
    does not complain as well."""
    if out is sys.stdout:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


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


def _summary_out(s: Mapping[str, Any], as_json: bool, prefix: str = "") -> str:
    if as_json:
        return json.dumps(s)
    return (f"{prefix}{s['requests']} request(s), {s['accepted_requests']} accepted, {s['events']} event(s) "
            f"stored, {_size(s['bytes'])}; {s['events_per_request']:.1f} events/request, "
            f"{s['bytes_per_event']:.1f} bytes/event")


def _flat(event: dict[str, Any]) -> dict[str, Any]:
    """One stored event as a CSV row (``_EVENT_COLUMNS``)."""
    d = event.get("d")
    if d is None:
        return {"format": "legacy", **{k: v for k, v in event.items() if k != "raw"}}
    visitor = d.get("visitor")
    return {"request_id": event.get("request_id"), "format": "fme", "name": d["event"]["name"],
            "msgId": d["msgId"], "visId": d["visId"], "sessionId": d["sessionId"], "time": d["event"]["time"],
            "props": json.dumps(d["event"]["props"]),
            "visitor_props": json.dumps(visitor["props"]) if isinstance(visitor, dict) else "",
            "visitor_ua": d.get("visitor_ua", ""), "visitor_ip": d.get("visitor_ip", "")}


def _write_events(events: list[dict[str, Any]], fmt: str, f: TextIO) -> None:
    rows = [{k: v for k, v in ev.items() if k != "raw"} for ev in events]
    if fmt == "json":
        json.dump(rows, f, indent=1)
        f.write("\n")
    elif fmt == "jsonl":
        for row in rows:
            f.write(json.dumps(row, separators=(",", ":")) + "\n")
    else:
        writer = csv.DictWriter(f, fieldnames=_EVENT_COLUMNS)
        writer.writeheader()
        writer.writerows(_flat(ev) for ev in events)


# -- check -----------------------------------------------------------------------------------

def _check_arguments(p: argparse.ArgumentParser) -> None:
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
    unknown = unknown_names(environ)
    if unknown:
        say(f"  note        {describe_unknown(unknown)}")
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


# -- gateway ---------------------------------------------------------------------------------

def _gateway_arguments(p: argparse.ArgumentParser) -> None:
    p.set_defaults(run=gateway)
    p.add_argument("--config", help="JSON file with the settings below (command-line options win); keys: "
                   + ", ".join(CONFIG_KEYS))
    p.add_argument("--account", action="append", default=[], metavar="ID[=SDK_KEY]",
                   help="a VWO account (repeat for several); without =SDK_KEY the key is read from the "
                        "environment variable VWO_SDK_KEY_<ID> (keeps it out of the process list)")
    p.add_argument("--default-account", metavar="ID", help="account for events without vwo.account_id")
    p.add_argument("--endpoint", help=f"VWO collection host (default {checks.DEFAULT_ENDPOINT})")
    p.add_argument("--host", help="address to bind (default 127.0.0.1; 0.0.0.0 to serve other hosts, which "
                   "needs --auth-token-env or auth_tokens)")
    p.add_argument("--auth-token-env", action="append", default=[], metavar="VAR",
                   help="environment variable holding a bearer token senders must present (Authorization: "
                        "Bearer <token>), valid for every account; repeat for several (keeps tokens out of `ps`)")
    p.add_argument("--tls-cert", help="PEM certificate chain: serve HTTPS (with --tls-key unless the file has the key)")
    p.add_argument("--tls-key", help="PEM private key of --tls-cert")
    p.add_argument("--port", type=int, help=f"port to bind, 0 for any (default {DEFAULT_PORT})")
    p.add_argument("--events-per-request", type=int, help="VWO batch size (default 100)")
    p.add_argument("--request-time-interval", type=float, help="max age of a batch in seconds (default 60)")
    p.add_argument("--max-backlog", type=int,
                   help=f"events held per account before answering 429 (default {DEFAULT_MAX_BACKLOG})")
    p.add_argument("--retry-after", type=float, help="seconds in Retry-After of 429/503 answers (default 2)")
    p.add_argument("--shutdown-timeout", type=float, help="seconds to deliver backlogs at shutdown (default 10)")
    p.add_argument("--spool", help="directory for the on-disk spool (one subdirectory per account)")
    p.add_argument("--log-level", default="INFO", help="logging level (default INFO)")


def _tokens_from_env(variables: Sequence[str], environ: Mapping[str, str] | None) -> list[str]:
    """The bearer tokens named by ``--auth-token-env VAR`` (each must be set)."""
    environ = os.environ if environ is None else environ
    tokens = []
    for var in variables:
        token = environ.get(var, "")
        if not token:
            raise ValueError(f"--auth-token-env {var}: the environment variable {var} is not set")
        tokens.append(checks.auth_token(token, f"the token in {var}"))
    return tokens


def gateway(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> int:
    """``vwo-otel gateway``: run in the foreground until Ctrl-C / SIGTERM, then drain and print the stats."""
    try:
        values: dict[str, Any] = {}
        if args.config:
            with open(args.config, encoding="utf-8") as f:
                try:
                    values = json.load(f)
                except ValueError as exc:
                    raise ValueError(f"{args.config} is not valid JSON: {exc}") from None
        accounts = {}
        for text in args.account:
            acct = parse_account(text, environ)
            accounts[acct.account_id] = acct
        config = config_from_mapping(
            values, environ=environ, accounts=accounts, auth_tokens=_tokens_from_env(args.auth_token_env, environ),
            tls_cert=args.tls_cert, tls_key=args.tls_key, default_account=args.default_account,
            endpoint=args.endpoint, host=args.host, port=args.port, events_per_request=args.events_per_request,
            request_time_interval=args.request_time_interval, max_backlog=args.max_backlog,
            retry_after=args.retry_after, shutdown_timeout=args.shutdown_timeout, spool=args.spool)
    except (OSError, ValueError, TypeError) as exc:
        return _fail("gateway", exc)
    level = getattr(logging, str(args.log_level).upper(), None)
    logging.basicConfig(level=level if isinstance(level, int) else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s")  # messages say "vwo_otel: ..."
    try:
        server = Gateway(config).start()
    except OSError as exc:
        return _fail("gateway", _cannot_listen(config.host, config.port, exc))
    except ValueError as exc:
        return _fail("gateway", exc)
    with until_interrupted() as stopped:
        sys.stdout.write(f"vwo-otel gateway listening on {server.url} (POST /v1/traces, /v1/logs) for account(s) "
                         f"{', '.join(str(a) for a in sorted(config.accounts))}; "
                         f"{'bearer tokens required' if config.auth_tokens else 'no authentication (loopback)'}"
                         f"{'; spool ' + str(config.spool) if config.spool else '; no spool (backlog in memory)'}; "
                         "Ctrl-C to stop\n")
        sys.stdout.flush()
        while not stopped.wait(0.5):
            pass
    with while_stopping("the gateway"):
        ok = server.stop()
    stats = server.stats()
    sys.stdout.write(json.dumps(stats) + "\n")
    sys.stdout.flush()
    # 0 only if every accepted event was delivered: none failed or dropped while running either
    lost = any(a["failed"] or any(a["dropped"].values()) for a in stats["accounts"].values())
    return 0 if ok and not lost else 1
