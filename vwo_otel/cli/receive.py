"""``vwo-otel receive``: the loopback VWO-compatible receiver in the foreground (a line per request,
outage rehearsal options), or ``--list`` / ``--export`` what a ``--db`` stored."""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import sqlite3
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

from .. import checks
from ..event_types import TYPES, LegacyWire
from ..export.fme import masked, sdk_keys_in
from ..testing.receiver import DEFAULT_MAX_BODY_BYTES, Receiver
from .common import cannot_listen, fail, until_interrupted

EXPORT_FORMATS = ("json", "jsonl", "csv")
#: ``receive --export csv``: a legacy event's keys (every row's of ``event_types``), an FME event's
#: ``d`` flattened (its properties as JSON text), the visitor's.
_EVENT_COLUMNS = ("request_id", "format", "eT", "u", "sId",
                  *dict.fromkeys(k.wire for row in TYPES.values() if isinstance(row.wire, LegacyWire)
                                 for k in row.wire.batch),
                  "name", "msgId", "visId", "sessionId", "time", "props", "visitor_props", "visitor_ua", "visitor_ip")


def arguments(p: argparse.ArgumentParser) -> None:
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
        return fail("receive", exc, err)
    try:
        receiver.start()
    except OSError as exc:
        receiver.close()
        return fail("receive", cannot_listen(receiver.host, args.port, exc), err)
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
        return fail("receive", "--list and --export read a database: give --db FILE", err)
    if not os.path.isfile(args.db):
        return fail("receive", f"no database at {args.db}", err)
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
            # the sdk key is *** in what is written (files get shared): where FME events carry it,
            # and wherever else it or a key they carry occurs (legacy events' values included)
            events = [{k: v for k, v in ev.items() if k != "raw"} for ev in receiver.events(with_raw=True)]
            keys = sdk_keys_in(events) | ({args.sdk_key} if args.sdk_key else set())
            events = [masked(ev, keys) for ev in events]
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
        return fail("receive", f"{args.db}: {exc}", err)


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
        return {"format": "legacy", **event}
    visitor = d.get("visitor")
    return {"request_id": event.get("request_id"), "format": "fme", "name": d["event"]["name"],
            "msgId": d["msgId"], "visId": d["visId"], "sessionId": d["sessionId"], "time": d["event"]["time"],
            "props": json.dumps(d["event"]["props"]),
            "visitor_props": json.dumps(visitor["props"]) if isinstance(visitor, dict) else "",
            "visitor_ua": d.get("visitor_ua", ""), "visitor_ip": d.get("visitor_ip", "")}


def _write_events(events: list[dict[str, Any]], fmt: str, f: TextIO) -> None:
    rows = events
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
