"""``vwo-otel demo``: its options and the command (the demo itself is ``vwo_otel.demo``)."""

from __future__ import annotations

import argparse
import sys

from .. import checks
from ..config import BatchEvents
from ..demo import DEMO_ACCOUNT_ID, DEMO_SDK_KEY, run_demo
from .common import fail

#: The most simulated requests ``vwo-otel demo --users`` runs.
MAX_DEMO_USERS = 1_000_000


def arguments(p: argparse.ArgumentParser) -> None:
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
        return fail("demo", exc)
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
