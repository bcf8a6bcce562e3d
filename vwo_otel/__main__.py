"""``vwo-otel`` / ``python -m vwo_otel``: the demo, the local receiver and a configuration check."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vwo-otel`` command."""
    rest = list(sys.argv[1:] if argv is None else argv)
    if rest[:1] == ["gateway"]:  # the gateway parses its own options (vwo-otel gateway --help)
        from .servers.gateway import main as gateway_main

        return gateway_main(rest[1:])
    parser = argparse.ArgumentParser(prog="vwo-otel", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="emit VWO events through OpenTelemetry and show what goes over the wire")
    demo.add_argument("--endpoint", help="send to this VWO-compatible endpoint instead of the embedded receiver")
    demo.add_argument("--account-id", type=int, default=None)
    demo.add_argument("--sdk-key", default=None)
    demo.add_argument("--users", type=int, default=300, help="simulated requests (default 300)")
    demo.add_argument("--events-per-request", type=int, default=100)
    demo.add_argument("--request-time-interval", type=float, default=1.0)
    from . import cli

    receive = sub.add_parser(
        "receive", help="run the local VWO-compatible receiver, showing each request as it arrives; "
                        "or --list / --export what a --db FILE stored",
        description="Run the local VWO-compatible receiver (loopback only) in the foreground with a line per "
                    "request, or list / export what it stored in a --db FILE.")
    cli.add_receive_arguments(receive)
    check = sub.add_parser(
        "check", help="validate the configuration (arguments / VWO_* variables) and send one test event",
        description="Validate the VWO configuration from arguments and VWO_* variables, then send one harmless "
                    "custom-dimension event and report what is wrong, if anything. Exit 0 ok, 1 delivery "
                    "failed, 2 bad configuration.")
    cli.add_check_arguments(check)
    sub.add_parser("gateway", help="run the OTLP/HTTP gateway that batches VWO events from many processes "
                                   "(vwo-otel gateway --help)")
    args = parser.parse_args(argv)

    if args.command == "demo":
        from .demo import DEMO_ACCOUNT_ID, DEMO_SDK_KEY, run_demo

        return run_demo(
            sys.stdout, endpoint=args.endpoint, account_id=args.account_id or DEMO_ACCOUNT_ID,
            sdk_key=args.sdk_key or DEMO_SDK_KEY, users=args.users,
            events_per_request=args.events_per_request, request_time_interval=args.request_time_interval,
        )
    if args.command == "check":
        return cli.check(args)
    return cli.receive(args)


if __name__ == "__main__":
    sys.exit(main())
