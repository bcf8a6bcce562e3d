"""``vwo-otel`` / ``python -m vwo_otel``: the demo and the local receiver."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vwo-otel`` command."""
    parser = argparse.ArgumentParser(prog="vwo-otel", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="emit VWO events through OpenTelemetry and show what goes over the wire")
    demo.add_argument("--endpoint", help="send to this VWO-compatible endpoint instead of the embedded receiver")
    demo.add_argument("--account-id", type=int, default=None)
    demo.add_argument("--sdk-key", default=None)
    demo.add_argument("--users", type=int, default=300, help="simulated requests (default 300)")
    demo.add_argument("--events-per-request", type=int, default=100)
    demo.add_argument("--request-time-interval", type=float, default=1.0)
    receive = sub.add_parser("receive", help="run the local VWO-compatible receiver in the foreground")
    receive.add_argument("args", nargs=argparse.REMAINDER, help="options of the receiver (see --help)")
    args = parser.parse_args(argv)

    if args.command == "demo":
        from .demo import DEMO_ACCOUNT_ID, DEMO_SDK_KEY, run_demo

        return run_demo(
            sys.stdout, endpoint=args.endpoint, account_id=args.account_id or DEMO_ACCOUNT_ID,
            sdk_key=args.sdk_key or DEMO_SDK_KEY, users=args.users,
            events_per_request=args.events_per_request, request_time_interval=args.request_time_interval,
        )
    from .receiver import main as receiver_main

    return receiver_main(args.args)


if __name__ == "__main__":
    sys.exit(main())
